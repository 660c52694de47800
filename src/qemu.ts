/**
 * Reader of QEMU mapped-ram migration files (QEMU >= 9, `migrate file:PATH` with the `mapped-ram`
 * capability, with or without multifd), also inside a libvirt save image ("sparse" format).
 *
 * What is read: the stream header, the configuration section (machine type, capabilities), the
 * START of section "ram" with every RAM block's name, length and 28-byte mapped-ram header, each
 * block's bitmap, and the short records after the blocks up to the END record of "ram". Device
 * state after that is never read: QEMU writes the bitmaps just before the END record, so reaching it
 * proves the save finished; a file that stops earlier is an interrupted save (state 'incomplete').
 *
 * Nothing read is trusted: every u64 is read as a BigInt and refused above 2^53 - 1; every region is
 * checked against the file size before it is read or used to size an allocation; the byte layout and
 * QEMU's own checks are in shared/reference/qemu-mapped-ram.md.
 */
import * as fs from 'node:fs';
import { FixedramError, snapshotError } from './errors';
import { nameProblem, unpackBitmap } from './format';
import { newTables, openImageFile, type BlockTables, type ImageBlock, type RamImage } from './snapshot';

const kQevm = Buffer.from('QEVM', 'latin1');
const kLibvirt = Buffer.from('LibvirtQemudSave', 'latin1');
const kLibvirtPart = Buffer.from('LibvirtQemudPart', 'latin1');

/** QEMU stream version written by every QEMU since 2.x (2 is an obsolete format QEMU refuses). */
const kStreamVersion = 3;
/** Record types of the migration stream. */
const kSecStart = 0x01;
const kSecPart = 0x02;
const kSecEnd = 0x03;
const kSecFull = 0x04;
const kSecSub = 0x05;
const kSecConfig = 0x07;
const kSecCommand = 0x08;
const kSecFooter = 0x7e;
/** RAM word flags (below the target page size). */
const kRamFlagMemSize = 0x04n;
const kRamFlagEos = 0x10n;
/** Version of section "ram" and of the per-block mapped-ram header. */
const kRamSectionVersion = 4;
const kMappedRamVersion = 1;
const kMappedRamHeaderBytes = 28;
/** Commands that may sit between the RAM blocks and the END record: ping, switchover start. */
const kHarmlessCommands = new Map([[2, 'ping'], [11, 'switchover-start']]);
/** libvirt's header: magic, version, data_len, was_running, format, cookie offset, 14 unused u32. */
const kLibvirtHeaderBytes = 92;
const kLibvirtFormats = ['raw', 'gzip', 'bzip2', 'xz', 'lzop', 'zstd', 'sparse'];
const kLibvirtSparse = 6;
/** Bounds on what a hostile file can make us allocate or loop over. */
const kMaxMachineTypeBytes = 256;
const kMaxCapabilities = 64;
const kMaxSubsections = 64;
const kMaxBlocks = 65536;
const kMaxTrailingRecords = 1 << 20;
const kMinPageSize = 512;
const kMaxPageSize = 2 ** 30;
const kMaxSafe = BigInt(Number.MAX_SAFE_INTEGER);

/** True when the first bytes of a file are a QEMU stream or a libvirt save image. */
export function isQemuMagic(head: Buffer): boolean {
  return (head.length >= 4 && head.subarray(0, 4).equals(kQevm)) ||
    (head.length >= 16 && (head.subarray(0, 16).equals(kLibvirt) || head.subarray(0, 16).equals(kLibvirtPart)));
}

/** The libvirt save-image wrapper in front of the QEMU stream. */
export interface LibvirtWrapper {
  magic: 'LibvirtQemudSave' | 'LibvirtQemudPart';
  version: number;
  /** Bytes between the 92-byte header and the QEMU stream (XML, cookie, padding). */
  dataLen: number;
  wasRunning: boolean;
  format: string;
  formatCode: number;
  cookieOffset: number;
  /** The domain's <name>, when the XML has one. */
  domainName?: string;
}

/** A parsed RAM block of a QEMU file (offsets are absolute file offsets). */
export interface QemuBlock extends ImageBlock {
  /** Offset of the block's name length byte. */
  entryOffset: number;
  /** Offset of its 28-byte mapped-ram header. */
  headerOffset: number;
  bitmapBytes: number;
}

/** What `inspect` reports beyond the blocks (RamImage.details of a QEMU image). */
export interface QemuDetails {
  streamVersion: number;
  /** File offset of the QEMU stream's magic: 0, or 92 + dataLen inside a libvirt image. */
  streamOffset: number;
  machineType: string;
  capabilities: string[];
  targetPageBits?: number;
  uuid?: string;
  ramSectionId: number;
  ramInstanceId: number;
  /** Sum of every block's used_length, as the RAM size record states it. */
  ramTotal: number;
  /** Offset of the end-of-section marker after the last block's pages. */
  ramEndOffset: number;
  /** Offset just after the END record of "ram" (the save finished), when there is one. */
  ramSectionEnd?: number;
  /** PART records (iteration passes) and commands between the blocks and the END record. */
  ramPasses?: number;
  commands?: string[];
  libvirt?: LibvirtWrapper;
}

/** Thrown inside the trailing-record walk when the file ends: the save did not finish. */
class EndOfFile extends Error {
  constructor(readonly at: number) {
    super('end of file');
  }
}

const hex = (v: number): string => `0x${v.toString(16)}`;

/** Bounds-checked reads of one open file. */
class FileReader {
  constructor(readonly fd: number, readonly size: number, readonly path: string) {}

  /**
   * Reads exactly `length` bytes at `offset` after checking they lie inside the file.
   * @throws ERR_SNAPSHOT_TRUNCATED naming `what` (and the block), the offset and the file size.
   */
  read(offset: number, length: number, what: string, block?: string): Buffer {
    if (offset > this.size || length > this.size - offset) {
      throw truncated(`${block !== undefined ? `block '${block}' ` : ''}${what} needs ${length} byte${length === 1 ? '' : 's'} ` +
        `at offset ${hex(offset)}`, this.size, { offset, ...(block !== undefined ? { block } : {}) });
    }
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd, buf, done, length - done, offset + done);
      if (n === 0) {
        throw truncated(`${block !== undefined ? `block '${block}' ` : ''}${what}: end of file at offset ${hex(offset + done)} ` +
          '(the file shrank while it was read)', this.size, { offset: offset + done, ...(block !== undefined ? { block } : {}) });
      }
      done += n;
    }
    return buf;
  }
}

function truncated(what: string, size: number, ctx: { offset: number; block?: string }): FixedramError {
  return snapshotError('ERR_SNAPSHOT_TRUNCATED', `truncated QEMU file: ${what}, file size is ${size} (${hex(size)})`, ctx);
}

/** A u64 as a number, refusing values a double cannot hold exactly. */
function safeU64(v: bigint, what: string, ctx: { offset: number; block?: string }): number {
  if (v > kMaxSafe) throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: ${what} is out of range (${v})`, ctx);
  return Number(v);
}

/** Sequential reader of the stream records, on top of {@link FileReader}. */
class Cursor {
  constructor(readonly r: FileReader, public pos: number, private block?: string) {}

  forBlock(name: string | undefined): this {
    this.block = name;
    return this;
  }

  take(n: number, what: string): Buffer {
    const b = this.r.read(this.pos, n, what, this.block);
    this.pos += n;
    return b;
  }

  u8(what: string): number {
    return this.take(1, what)[0]!;
  }

  be16(what: string): number {
    return this.take(2, what).readUInt16BE(0);
  }

  be32(what: string): number {
    return this.take(4, what).readUInt32BE(0);
  }

  be64(what: string): bigint {
    return this.take(8, what).readBigUInt64BE(0);
  }

  /** A u8-length-prefixed string (section, subsection, block and capability names). */
  name(what: string): { bytes: Buffer; at: number } {
    const at = this.pos;
    const len = this.u8(`${what} length`);
    return { bytes: this.take(len, what), at };
  }
}

function decodeUtf8(bytes: Buffer): string | undefined {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

/** Number of set bits of a byte, for bitmap popcounts. */
const kPopcount = Uint8Array.from({ length: 256 }, (_, v) => {
  let c = 0;
  for (let x = v; x; x >>= 1) c += x & 1;
  return c;
});

/**
 * Reads the libvirt header (92 bytes, host byte order = little-endian on x86) and returns the
 * wrapper facts; the QEMU stream starts at 92 + dataLen.
 */
function readLibvirt(r: FileReader): LibvirtWrapper {
  const h = r.read(0, kLibvirtHeaderBytes, 'libvirt save-image header');
  const magic = h.subarray(0, 16).toString('latin1') as LibvirtWrapper['magic'];
  const version = h.readUInt32LE(16);
  if (version !== 1 && version !== 2) {
    const swapped = h.readUInt32BE(16);
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', swapped === 1 || swapped === 2
      ? 'unsupported libvirt save image: its header was written on a host of the other byte order'
      : `unsupported libvirt save image: header version ${version}`, { offset: 16 });
  }
  const formatCode = h.readUInt32LE(28);
  const format = kLibvirtFormats[formatCode] ?? `unknown (${formatCode})`;
  if (formatCode !== kLibvirtSparse) {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED',
      `unsupported libvirt save image: format '${format}' carries an ordinary (not mapped-ram) QEMU stream; ` +
        "only the 'sparse' format (virsh save --image-format sparse) is a mapped-ram file", { offset: 28 });
  }
  const dataLen = h.readUInt32LE(20);
  const wrapper: LibvirtWrapper = {
    magic, version, dataLen, wasRunning: h.readUInt32LE(24) !== 0, format, formatCode, cookieOffset: h.readUInt32LE(32),
  };
  // the domain name, from the start of the XML (bounded: the XML is small, the rest is padding)
  const xmlBytes = Math.min(dataLen, 1 << 16, Math.max(0, r.size - kLibvirtHeaderBytes));
  if (xmlBytes > 0) {
    const xml = r.read(kLibvirtHeaderBytes, xmlBytes, 'libvirt domain XML').toString('utf8');
    const m = /<name>([^<]{1,256})<\/name>/.exec(xml.slice(0, xml.indexOf('\0') >= 0 ? xml.indexOf('\0') : undefined));
    if (m) wrapper.domainName = m[1]!;
  }
  return wrapper;
}

/** Reads the configuration section: machine type, then subsections while the next byte is 05. */
function readConfiguration(c: Cursor, d: Partial<QemuDetails>): number {
  const len = c.be32('machine type length');
  if (len === 0 || len > kMaxMachineTypeBytes) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: machine type length ${len} at offset ${hex(c.pos - 4)}`,
      { offset: c.pos - 4 });
  }
  const machine = decodeUtf8(c.take(len, 'machine type'));
  if (machine === undefined || /[\0-\x1f]/.test(machine)) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', 'corrupt QEMU file: the machine type is not printable text', { offset: c.pos - len });
  }
  d.machineType = machine;
  d.capabilities = [];
  for (let n = 0; ; n++) {
    const at = c.pos;
    const kind = c.u8('section type');
    if (kind !== kSecSub) return kind;
    if (n >= kMaxSubsections) throw snapshotError('ERR_SNAPSHOT_INVALID', 'corrupt QEMU file: too many configuration subsections', { offset: at });
    const sub = c.name('subsection name').bytes.toString('latin1');
    c.be32(`subsection '${sub}' version`);
    if (sub === 'configuration/capabilities') {
      const count = c.be32('capability count');
      if (count > kMaxCapabilities) {
        throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: ${count} capabilities`, { offset: c.pos - 4 });
      }
      for (let i = 0; i < count; i++) {
        const capAt = c.pos;
        const cap = decodeUtf8(c.name('capability').bytes);
        if (cap === undefined || cap.length === 0) {
          throw snapshotError('ERR_SNAPSHOT_INVALID', 'corrupt QEMU file: malformed capability name', { offset: capAt });
        }
        d.capabilities.push(cap);
      }
    } else if (sub === 'configuration/target-page-bits') {
      d.targetPageBits = c.be32('target page bits');
    } else if (sub === 'configuration/uuid') {
      d.uuid = c.take(16, 'uuid').toString('hex').replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
    } else {
      throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported QEMU file: unknown configuration subsection '${sub}'`, { offset: at });
    }
  }
}

interface Parsed {
  details: QemuDetails;
  blocks: QemuBlock[];
  bitmaps: Buffer[];
  incomplete?: FixedramError;
}

/** Parses the whole RAM part of the stream; see the file comment for what is checked. */
function parse(r: FileReader): Parsed {
  // wrapper, stream header, configuration
  const head = r.read(0, Math.min(16, r.size), 'magic');
  let libvirt: LibvirtWrapper | undefined;
  let streamOffset = 0;
  if (head.length === 16 && !head.subarray(0, 4).equals(kQevm)) {
    libvirt = readLibvirt(r);
    streamOffset = kLibvirtHeaderBytes + libvirt.dataLen;
  }
  const c = new Cursor(r, streamOffset);
  const magic = c.take(4, libvirt ? 'QEMU stream after the libvirt header' : 'magic');
  if (!magic.equals(kQevm)) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', `not a QEMU migration stream at offset ${hex(streamOffset)} (bad magic)`,
      { offset: streamOffset });
  }
  const version = c.be32('stream version');
  if (version !== kStreamVersion) {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported QEMU stream version ${version} (fixedram reads version ${kStreamVersion})`,
      { offset: streamOffset + 4 });
  }
  const d: Partial<QemuDetails> = { streamVersion: version, streamOffset };
  if (libvirt) d.libvirt = libvirt;
  let kind = c.u8('section type');
  if (kind !== kSecConfig) {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED',
      'unsupported QEMU file: no configuration section, so nothing says it was saved with mapped-ram', { offset: c.pos - 1 });
  }
  kind = readConfiguration(c, d);
  const caps = d.capabilities!;
  if (!caps.includes('mapped-ram')) {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED',
      `unsupported QEMU file: not saved with the mapped-ram capability (capabilities: ${caps.length ? caps.join(', ') : 'none'})`,
      { offset: streamOffset });
  }
  if (caps.includes('x-ignore-shared')) {
    // QEMU <= 10 writes an extra be64 per block that its own loader does not read, and fails the save
    // anyway; QEMU 11 changed the layout for this combination. Refuse rather than guess.
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED',
      'unsupported QEMU file: saved with x-ignore-shared, whose mapped-ram layout differs between QEMU versions', { offset: streamOffset });
  }

  // START of section "ram"
  const startAt = c.pos - 1;
  if (kind !== kSecStart) {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED',
      `unsupported QEMU file: expected the START of section 'ram' at offset ${hex(startAt)}, found record type 0x${kind.toString(16)}`,
      { offset: startAt });
  }
  const sid = c.be32('section id');
  const secName = c.name('section name').bytes.toString('latin1');
  const instance = c.be32('instance id');
  const secVersion = c.be32('section version');
  if (secName !== 'ram') {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported QEMU file: the first section is '${secName}', not 'ram'`, { offset: startAt });
  }
  if (secVersion !== kRamSectionVersion) {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported QEMU file: section 'ram' version ${secVersion} (expected ${kRamSectionVersion})`,
      { offset: startAt });
  }
  const pageBits = Math.min(d.targetPageBits ?? 12, 12);
  const flagMask = (1n << BigInt(pageBits)) - 1n;
  const sizeAt = c.pos;
  const word = c.be64('RAM size record');
  if ((word & flagMask) !== kRamFlagMemSize) {
    throw snapshotError('ERR_SNAPSHOT_INVALID',
      `corrupt QEMU file: expected the RAM size record at offset ${hex(sizeAt)}, found flags 0x${(word & flagMask).toString(16)}`,
      { offset: sizeAt });
  }
  const ramTotal = safeU64(word & ~flagMask, 'the RAM total', { offset: sizeAt });

  // blocks, until the total is used up
  const blocks: QemuBlock[] = [];
  const bitmaps: Buffer[] = [];
  const names = new Set<string>();
  let remaining = ramTotal;
  while (remaining > 0) {
    const entryOffset = c.pos;
    if (blocks.length >= kMaxBlocks) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: more than ${kMaxBlocks} RAM blocks`, { offset: entryOffset });
    }
    const what = `RAM block ${blocks.length + 1} (after ${blocks.length ? `'${blocks[blocks.length - 1]!.name}'` : 'the RAM size record'})`;
    const rawName = c.forBlock(undefined).name(`${what} name`).bytes;
    const name = decodeUtf8(rawName);
    const problem = name === undefined ? 'a block name must be valid UTF-8' : nameProblem(name);
    if (name === undefined || problem) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: ${what} at offset ${hex(entryOffset)}: ${problem}`,
        { offset: entryOffset });
    }
    const ctx = { block: name, offset: entryOffset };
    if (names.has(name)) throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: duplicate RAM block '${name}'`, ctx);
    names.add(name);
    c.forBlock(name);
    const lengthAt = c.pos;
    const length = safeU64(c.be64('used_length'), `block '${name}' used_length`, { block: name, offset: lengthAt });
    const headerOffset = c.pos;
    const h = c.take(kMappedRamHeaderBytes, 'mapped-ram header');
    const hctx = { block: name, offset: headerOffset };
    const hv = h.readUInt32BE(0);
    if (hv !== kMappedRamVersion) {
      throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED',
        `unsupported QEMU file: block '${name}' has mapped-ram header version ${hv} (fixedram reads version ${kMappedRamVersion})`, hctx);
    }
    const pageSize = safeU64(h.readBigUInt64BE(4), `block '${name}' page size`, hctx);
    const bitmapOffset = safeU64(h.readBigUInt64BE(12), `block '${name}' bitmap_offset`, hctx);
    const pagesOffset = safeU64(h.readBigUInt64BE(20), `block '${name}' pages_offset`, hctx);
    if (pageSize < kMinPageSize || pageSize > kMaxPageSize || (pageSize & (pageSize - 1)) !== 0) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: block '${name}' page size ${pageSize} is not a power of two ` +
        `from ${kMinPageSize} to ${kMaxPageSize}`, hctx);
    }
    if (length % pageSize !== 0) {
      throw snapshotError('ERR_SNAPSHOT_INVALID',
        `corrupt QEMU file: block '${name}' used_length ${length} is not a multiple of its page size ${pageSize}`, { block: name, offset: lengthAt });
    }
    if (length > remaining) {
      throw snapshotError('ERR_SNAPSHOT_INVALID',
        `corrupt QEMU file: block '${name}' used_length ${length} exceeds what is left of the RAM total (${remaining} of ${ramTotal})`,
        { block: name, offset: lengthAt });
    }
    const pages = length / pageSize;
    const bitmapBytes = Math.ceil(pages / 64) * 8;
    if (bitmapOffset !== headerOffset + kMappedRamHeaderBytes) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: block '${name}' bitmap_offset ${hex(bitmapOffset)} is not ` +
        `right after its header (${hex(headerOffset + kMappedRamHeaderBytes)})`, hctx);
    }
    if (pagesOffset % pageSize !== 0 || pagesOffset % 4096 !== 0) {
      throw snapshotError('ERR_SNAPSHOT_INVALID',
        `corrupt QEMU file: block '${name}' pages_offset ${hex(pagesOffset)} is not aligned to its page size ${pageSize}`, hctx);
    }
    if (pagesOffset < bitmapOffset + bitmapBytes) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: block '${name}' pages_offset ${hex(pagesOffset)} overlaps ` +
        `its bitmap (${bitmapBytes} bytes at ${hex(bitmapOffset)})`, hctx);
    }
    // every region inside the file before anything is read from it
    if (bitmapBytes > r.size - Math.min(bitmapOffset, r.size)) {
      throw truncated(`block '${name}' bitmap needs ${bitmapBytes} bytes at offset ${hex(bitmapOffset)}`, r.size,
        { block: name, offset: bitmapOffset });
    }
    if (pagesOffset > r.size || length > r.size - pagesOffset) {
      const end = BigInt(pagesOffset) + BigInt(length);
      throw truncated(`block '${name}' pages end at offset 0x${end.toString(16)} (${length} bytes at ${hex(pagesOffset)})`, r.size,
        { block: name, offset: Math.min(r.size, pagesOffset) });
    }
    const bitmap = r.read(bitmapOffset, bitmapBytes, 'bitmap', name);
    let present = 0;
    for (let k = 0; k < bitmap.length; k++) present += kPopcount[bitmap[k]!]!;
    // bits of the last word past the last page must be clear (QEMU does not check this)
    const tailBits = bitmapBytes * 8 - pages;
    if (tailBits > 0) {
      for (let page = pages; page < bitmapBytes * 8; page++) {
        if (bitmap[page >> 3]! & (1 << (page & 7))) {
          throw snapshotError('ERR_SNAPSHOT_INVALID',
            `corrupt QEMU file: block '${name}' bitmap bit ${page} is set past the last page ${pages - 1}`,
            { block: name, offset: bitmapOffset + (page >> 3) });
        }
      }
    }
    blocks.push({ name, length, pageSize, pages, pagesOffset, bitmapOffset, presentPages: present, entryOffset, headerOffset, bitmapBytes });
    bitmaps.push(bitmap);
    remaining -= length;
    // the next block's name (or the end-of-section marker) follows this block's pages
    c.pos = pagesOffset + length;
  }
  c.forBlock(undefined);
  const ramEndOffset = c.pos;
  const details: QemuDetails = {
    streamVersion: version, streamOffset, machineType: d.machineType!, capabilities: caps,
    ...(d.targetPageBits !== undefined ? { targetPageBits: d.targetPageBits } : {}),
    ...(d.uuid !== undefined ? { uuid: d.uuid } : {}),
    ramSectionId: sid, ramInstanceId: instance, ramTotal, ramEndOffset,
    ...(libvirt ? { libvirt } : {}),
  };

  // after the blocks: EOS, then PART records and commands up to the END record of "ram"
  const end = walkToEnd(c, sid, details);
  let incomplete: FixedramError | undefined;
  if (end.incomplete) {
    incomplete = snapshotError('ERR_SNAPSHOT_INCOMPLETE',
      `incomplete QEMU file: ${end.incomplete}; the save did not finish and the page bitmaps are not valid`,
      { offset: end.at, path: r.path });
  } else if (libvirt?.magic === 'LibvirtQemudPart') {
    incomplete = snapshotError('ERR_SNAPSHOT_INCOMPLETE',
      'incomplete libvirt save image: the header still says LibvirtQemudPart (libvirt did not finish the save)', { offset: 0, path: r.path });
  }
  const { libvirt: wrapper, ...rest } = details;
  return { details: { ...rest, ...(wrapper ? { libvirt: wrapper } : {}) }, blocks, bitmaps, ...(incomplete ? { incomplete } : {}) };
}

/**
 * {@link parse}, except that a libvirt image still marked LibvirtQemudPart (libvirt did not finish
 * the save) that is cut short is reported as incomplete rather than truncated.
 */
function parseOrIncomplete(r: FileReader): Parsed {
  try {
    return parse(r);
  } catch (err) {
    if (!(err instanceof FixedramError) || err.code !== 'ERR_SNAPSHOT_TRUNCATED' || r.size < 16) throw err;
    if (!r.read(0, 16, 'magic').equals(kLibvirtPart)) throw err;
    throw snapshotError('ERR_SNAPSHOT_INCOMPLETE',
      `incomplete libvirt save image (still marked LibvirtQemudPart, libvirt did not finish the save): ${err.message}`,
      { ...(err.block !== undefined ? { block: err.block } : {}), ...(err.offset !== undefined ? { offset: err.offset } : {}) });
  }
}

/**
 * Walks from the end-of-section marker at ramEndOffset to the END record of "ram". Returns the
 * reason the file is incomplete (it ends first), or throws for records that do not belong here.
 */
function walkToEnd(c: Cursor, sid: number, d: QemuDetails): { incomplete?: string; at: number } {
  const r = c.r;
  const need = (n: number): void => {
    if (c.pos + n > r.size) throw new EndOfFile(c.pos);
  };
  const eos = (what: string): void => {
    need(8);
    const at = c.pos;
    const w = c.be64(what);
    if (w !== kRamFlagEos) {
      throw snapshotError('ERR_SNAPSHOT_INVALID',
        `corrupt QEMU file: expected the end-of-section marker 0x10 of section 'ram' at offset ${hex(at)}, found 0x${w.toString(16)}`,
        { offset: at });
    }
  };
  let footers: boolean | undefined;
  const footer = (): void => {
    if (footers === false) return;
    need(1);
    const at = c.pos;
    if (footers === undefined) {
      footers = r.read(at, 1, 'section footer')[0] === kSecFooter;
      if (!footers) return;
    }
    need(5);
    const f = c.take(5, 'section footer');
    if (f[0] !== kSecFooter || f.readUInt32BE(1) !== sid) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: bad section footer of 'ram' at offset ${hex(at)}`, { offset: at });
    }
  };
  const commands: string[] = [];
  let passes = 0;
  try {
    eos('end-of-section marker');
    footer();
    for (let n = 0; ; n++) {
      if (n > kMaxTrailingRecords) {
        throw snapshotError('ERR_SNAPSHOT_INVALID', "corrupt QEMU file: too many records before the END of section 'ram'", { offset: c.pos });
      }
      need(1);
      const at = c.pos;
      const kind = c.u8('record type');
      if (kind === kSecPart || kind === kSecEnd) {
        need(4);
        const id = c.be32('section id');
        if (id !== sid) {
          throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported QEMU file: a record of another iterable section (id ${id}) at ` +
            `offset ${hex(at)} before the END of section 'ram'; fixedram reads files whose only iterable section is 'ram'`,
            { offset: at });
        }
        eos(kind === kSecEnd ? 'END record of ram' : 'PART record of ram');
        footer();
        if (kind === kSecEnd) {
          d.ramSectionEnd = c.pos;
          d.ramPasses = passes;
          d.commands = commands;
          return { at: c.pos };
        }
        passes++;
      } else if (kind === kSecCommand) {
        need(4);
        const cmd = c.be16('command');
        const len = c.be16('command length');
        const known = kHarmlessCommands.get(cmd);
        if (known === undefined) {
          throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED',
            `unsupported QEMU file: migration command ${cmd} at offset ${hex(at)} before the END of section 'ram'`, { offset: at });
        }
        need(len);
        c.pos += len;
        commands.push(known);
      } else if (kind === kSecStart || kind === kSecFull) {
        throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported QEMU file: another section starts at offset ${hex(at)} before ` +
          "the END of section 'ram'; fixedram reads files whose only iterable section is 'ram'", { offset: at });
      } else {
        throw snapshotError('ERR_SNAPSHOT_INVALID',
          `corrupt QEMU file: unexpected record type 0x${kind.toString(16)} at offset ${hex(at)} before the END of section 'ram'`,
          { offset: at });
      }
    }
  } catch (err) {
    if (!(err instanceof EndOfFile)) throw err;
    d.ramPasses = passes;
    d.commands = commands;
    return {
      incomplete: `the file ends at offset ${hex(r.size)}, before the END record of section 'ram' (RAM blocks end at ${hex(d.ramEndOffset)})`,
      at: err.at,
    };
  }
}

/**
 * Opens a QEMU mapped-ram file (or a libvirt "sparse" save image) read-only and validates its RAM
 * part. An interrupted save is returned with state 'incomplete' (load and verify refuse it).
 * @throws ERR_SNAPSHOT_TRUNCATED, ERR_SNAPSHOT_INVALID, ERR_SNAPSHOT_UNSUPPORTED (exit 3), system errors.
 */
export function openQemuImage(file: string): RamImage {
  const { fd, size } = openImageFile(file);
  try {
    const reader = new FileReader(fd, size, file);
    const p = parseOrIncomplete(reader);
    let closed = false;
    return {
      format: 'qemu-mapped-ram',
      path: file,
      fd,
      size,
      blocks: p.blocks.map((b) => ({
        name: b.name, length: b.length, pageSize: b.pageSize, pages: b.pages, pagesOffset: b.pagesOffset,
        bitmapOffset: b.bitmapOffset, presentPages: b.presentPages,
      })),
      hasChecksums: false,
      state: p.incomplete ? 'incomplete' : 'complete',
      ...(p.incomplete ? { incomplete: p.incomplete } : {}),
      details: { ...p.details },
      readTables: (i: number): BlockTables => {
        const b = p.blocks[i];
        if (!b) throw new RangeError(`no block ${i}`);
        const t = newTables(b.pages);
        t.presentCount = unpackBitmap(p.bitmaps[i]!, b.pages, t.present, b.name, b.bitmapOffset);
        return t;
      },
      close: () => {
        if (closed) return;
        closed = true;
        fs.closeSync(fd);
      },
    };
  } catch (err) {
    fs.closeSync(fd);
    // (FixedramError declares `path`, so the property exists even when it is undefined)
    if (err && typeof err === 'object' && (err as { path?: unknown }).path === undefined) Object.assign(err, { path: file });
    throw err;
  }
}
