/**
 * Parser of QEMU mapped-ram migration streams (QEMU >= 9, `migrate file:PATH` with the `mapped-ram`
 * capability, with or without multifd), also inside a libvirt save image ("sparse" format). A pure
 * format module: it reads through a {@link ByteSource} (offset, length → bytes) and touches no file
 * system; image.ts opens files and adapts the result to the image interface.
 *
 * What is read and checked:
 * - the stream header, the configuration section (machine type, capabilities, target page bits);
 * - the START of section "ram" with every RAM block's name, length and 28-byte mapped-ram header, each
 *   block's bitmap; every block's page size must be the target page size (QEMU computes offsets with
 *   it, whatever the header says);
 * - the short records after the blocks up to the END record of "ram" (QEMU writes the bitmaps just
 *   before it, so reaching it proves the save finished; a file that stops earlier is an interrupted
 *   save: state 'incomplete');
 * - the rest of the stream to its end: every device-state section's framing (type, id, name,
 *   instance, version, subsection headers, footer) walked with the sizes the stream's own JSON
 *   description (QEMU_VM_VMDESCRIPTION, written last) gives for every field, then the end-of-stream
 *   marker right where the last section ends and the description after it, ending at the end of the
 *   file. A stream cut or damaged anywhere after the RAM is refused.
 * NOT checked: the contents of device fields (values are opaque: QEMU's own loader is the judge).
 *
 * Nothing read is trusted: every u64 is read as a BigInt and refused above 2^53 - 1; every region is
 * checked against the size before it is read or used to size an allocation; the byte layout and
 * QEMU's own checks are in shared/reference/qemu-mapped-ram.md.
 */
import { FixedramError, snapshotError } from './errors';
import {
  bitmapBytesFor,
  decodeUtf8,
  kMaxBlocks,
  kMaxPageSize,
  kMinPageSize,
  nameProblem,
  safeU64,
  unpackBitmap,
} from './format';

/** Where the parser reads from: `read` returns exactly `length` bytes, or fewer only at the end of the data. */
export interface ByteSource {
  size: number;
  read(offset: number, length: number): Uint8Array;
}

/** A {@link ByteSource} over bytes in memory (tests, fuzzers, streams received whole). */
export function bufferSource(buf: Uint8Array): ByteSource {
  return { size: buf.length, read: (offset, length) => buf.subarray(offset, offset + length) };
}

export const kQevm = Buffer.from('QEVM', 'latin1');
export const kLibvirt = Buffer.from('LibvirtQemudSave', 'latin1');
export const kLibvirtPart = Buffer.from('LibvirtQemudPart', 'latin1');

/** QEMU stream version written by every QEMU since 2.x (2 is an obsolete format QEMU refuses). */
export const kStreamVersion = 3;
/** Record types of the migration stream. */
export const kSecEof = 0x00;
export const kSecStart = 0x01;
export const kSecPart = 0x02;
export const kSecEnd = 0x03;
export const kSecFull = 0x04;
export const kSecSub = 0x05;
export const kSecVmdesc = 0x06;
export const kSecConfig = 0x07;
export const kSecCommand = 0x08;
export const kSecFooter = 0x7e;
/** RAM word flags (below the target page size). */
export const kRamFlagMemSize = 0x04n;
export const kRamFlagEos = 0x10n;
/** Version of section "ram" and of the per-block mapped-ram header. */
export const kRamSectionVersion = 4;
export const kMappedRamVersion = 1;
export const kMappedRamHeaderBytes = 28;
/** QEMU's target page size when the stream has no configuration/target-page-bits (x86 and most targets). */
export const kDefaultTargetPageSize = 4096;
/** Commands that may sit between the RAM blocks and the END record: ping, switchover start. */
const kHarmlessCommands = new Map([
  [2, 'ping'],
  [11, 'switchover-start'],
]);
/** libvirt's header: magic, version, data_len, was_running, format, cookie offset, 14 unused u32. */
export const kLibvirtHeaderBytes = 92;
const kLibvirtFormats = ['raw', 'gzip', 'bzip2', 'xz', 'lzop', 'zstd', 'sparse'];
export const kLibvirtSparse = 6;
/** Bounds on what a hostile file can make us allocate or loop over. */
const kMaxMachineTypeBytes = 256;
const kMaxCapabilities = 64;
const kMaxSubsections = 64;
const kMaxTrailingRecords = 1 << 20;
/** The device description (JSON) at the end of the stream: at most 16 MiB (51 KB for a default q35). */
const kMaxVmdescBytes = 16 * 1024 * 1024;
/** Nesting of subsections in the device description. */
const kMaxVmdescDepth = 32;

/** True when the first bytes of a file are a QEMU stream or a libvirt save image. */
export function isQemuMagic(head: Uint8Array): boolean {
  const h = Buffer.from(head.buffer, head.byteOffset, head.length);
  return (
    (h.length >= 4 && h.subarray(0, 4).equals(kQevm)) ||
    (h.length >= 16 && (h.subarray(0, 16).equals(kLibvirt) || h.subarray(0, 16).equals(kLibvirtPart)))
  );
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
export interface QemuBlock {
  name: string;
  length: number;
  pageSize: number;
  pages: number;
  pagesOffset: number;
  bitmapOffset: number;
  presentPages: number;
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
  /** The page size QEMU computes offsets with: 2^targetPageBits, else 4096. */
  targetPageSize: number;
  uuid?: string;
  ramSectionId: number;
  ramInstanceId: number;
  ramSectionVersion: number;
  /** Sum of every block's used_length, as the RAM size record states it. */
  ramTotal: number;
  /** Offset of the end-of-section marker after the last block's pages. */
  ramEndOffset: number;
  /** Offset just after the END record of "ram" (the save finished), when there is one. */
  ramSectionEnd?: number;
  /** PART records (iteration passes) and commands between the blocks and the END record. */
  ramPasses?: number;
  commands?: string[];
  /** QEMU wrote section footers (0x7e + section id). */
  sectionFooters?: boolean;
  /** Device-state sections after the RAM, the end-of-stream marker's offset and the description's size. */
  deviceSections?: number;
  eofOffset?: number;
  vmdescBytes?: number;
  libvirt?: LibvirtWrapper;
}

/** Byte ranges of the stream that are not RAM pages (what a snapshot keeps as device state). */
export interface QemuStreamParts {
  /** [0, streamOffset): the libvirt header, XML, cookie and padding, inside a libvirt image. */
  libvirt?: { offset: number; length: number };
  /** From the stream's magic to the START record of "ram" (header, configuration section). */
  head: { offset: number; length: number };
  /** From just after the END record of "ram" to the end of the file (device sections, EOF, description). */
  tail: { offset: number; length: number };
}

export interface QemuParsed {
  details: QemuDetails;
  blocks: QemuBlock[];
  /** Each block's bitmap as stored (little-endian words on x86-64 hosts). */
  bitmaps: Uint8Array[];
  /** Set for an interrupted save (no END record of "ram", or a libvirt image still marked Part). */
  incomplete?: FixedramError;
  /** The non-RAM byte ranges, when the stream is complete. */
  parts?: QemuStreamParts;
}

/** Thrown inside the trailing-record walk when the data ends: the save did not finish. */
class EndOfData extends Error {
  constructor(readonly at: number) {
    super('end of data');
  }
}

const hex = (v: number): string => `0x${v.toString(16)}`;
const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.length);

function truncated(what: string, size: number, ctx: { offset: number; block?: string }): FixedramError {
  return snapshotError(
    'ERR_SNAPSHOT_TRUNCATED',
    `truncated QEMU file: ${what}, file size is ${size} (${hex(size)})`,
    ctx,
  );
}

const invalid = (m: string, offset: number, block?: string): FixedramError =>
  snapshotError('ERR_SNAPSHOT_INVALID', `corrupt QEMU file: ${m}`, {
    offset,
    ...(block !== undefined ? { block } : {}),
  });
const unsupported = (m: string, offset: number): FixedramError =>
  snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported QEMU file: ${m}`, { offset });

/** Bounds-checked reads of a {@link ByteSource}. */
function readExact(src: ByteSource, offset: number, length: number, what: string, block?: string): Buffer {
  const where = block !== undefined ? `block '${block}' ` : '';
  const ctx = { offset, ...(block !== undefined ? { block } : {}) };
  if (offset > src.size || length > src.size - offset) {
    throw truncated(
      `${where}${what} needs ${length} byte${length === 1 ? '' : 's'} at offset ${hex(offset)}`,
      src.size,
      ctx,
    );
  }
  const b = src.read(offset, length);
  if (b.length !== length) {
    throw truncated(
      `${where}${what}: end of file at offset ${hex(offset + b.length)} (the file shrank while it was read)`,
      src.size,
      { ...ctx, offset: offset + b.length },
    );
  }
  return buf(b);
}

/** Sequential reader of the stream records. */
class Cursor {
  constructor(
    readonly src: ByteSource,
    public pos: number,
    private block?: string,
  ) {}

  forBlock(name: string | undefined): this {
    this.block = name;
    return this;
  }

  take(n: number, what: string): Buffer {
    const b = readExact(this.src, this.pos, n, what, this.block);
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
  name(what: string): Buffer {
    const len = this.u8(`${what} length`);
    return this.take(len, what);
  }
}

/**
 * Reads the libvirt header (92 bytes, host byte order = little-endian on x86) and returns the
 * wrapper facts; the QEMU stream starts at 92 + dataLen.
 */
function readLibvirt(src: ByteSource): LibvirtWrapper {
  const h = readExact(src, 0, kLibvirtHeaderBytes, 'libvirt save-image header');
  const magic = h.subarray(0, 16).toString('latin1') as LibvirtWrapper['magic'];
  const version = h.readUInt32LE(16);
  if (version !== 1 && version !== 2) {
    const swapped = h.readUInt32BE(16);
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      swapped === 1 || swapped === 2
        ? 'unsupported libvirt save image: its header was written on a host of the other byte order'
        : `unsupported libvirt save image: header version ${version}`,
      { offset: 16 },
    );
  }
  const formatCode = h.readUInt32LE(28);
  const format = kLibvirtFormats[formatCode] ?? `unknown (${formatCode})`;
  if (formatCode !== kLibvirtSparse) {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `unsupported libvirt save image: format '${format}' carries an ordinary (not mapped-ram) QEMU stream; ` +
        "only the 'sparse' format (virsh save --image-format sparse) is a mapped-ram file",
      { offset: 28 },
    );
  }
  const dataLen = h.readUInt32LE(20);
  const wrapper: LibvirtWrapper = {
    magic,
    version,
    dataLen,
    wasRunning: h.readUInt32LE(24) !== 0,
    format,
    formatCode,
    cookieOffset: h.readUInt32LE(32),
  };
  // the domain name, from the start of the XML (bounded: the XML is small, the rest is padding)
  const xmlBytes = Math.min(dataLen, 1 << 16, Math.max(0, src.size - kLibvirtHeaderBytes));
  if (xmlBytes > 0) {
    const xml = readExact(src, kLibvirtHeaderBytes, xmlBytes, 'libvirt domain XML').toString('utf8');
    const m = /<name>([^<]{1,256})<\/name>/.exec(xml.slice(0, xml.indexOf('\0') >= 0 ? xml.indexOf('\0') : undefined));
    if (m) wrapper.domainName = m[1]!;
  }
  return wrapper;
}

/** Reads the configuration section: machine type, then subsections while the next byte is 05. */
function readConfiguration(c: Cursor, d: Partial<QemuDetails>): number {
  const len = c.be32('machine type length');
  if (len === 0 || len > kMaxMachineTypeBytes)
    throw invalid(`machine type length ${len} at offset ${hex(c.pos - 4)}`, c.pos - 4);
  const machine = decodeUtf8(c.take(len, 'machine type'));
  // eslint-disable-next-line no-control-regex -- control characters are what we refuse
  if (machine === undefined || /[\0-\x1f]/.test(machine))
    throw invalid('the machine type is not printable text', c.pos - len);
  d.machineType = machine;
  d.capabilities = [];
  for (let n = 0; ; n++) {
    const at = c.pos;
    const kind = c.u8('section type');
    if (kind !== kSecSub) return kind;
    if (n >= kMaxSubsections) throw invalid('too many configuration subsections', at);
    const sub = c.name('subsection name').toString('latin1');
    c.be32(`subsection '${sub}' version`);
    if (sub === 'configuration/capabilities') {
      const count = c.be32('capability count');
      if (count > kMaxCapabilities) throw invalid(`${count} capabilities`, c.pos - 4);
      for (let i = 0; i < count; i++) {
        const capAt = c.pos;
        const cap = decodeUtf8(c.name('capability'));
        // eslint-disable-next-line no-control-regex -- control characters are what we refuse
        if (cap === undefined || cap.length === 0 || /[\0-\x1f]/.test(cap))
          throw invalid('malformed capability name', capAt);
        d.capabilities.push(cap);
      }
    } else if (sub === 'configuration/target-page-bits') {
      const bitsAt = c.pos;
      const bits = c.be32('target page bits');
      if (bits < 9 || bits > 30) throw invalid(`target page bits ${bits}`, bitsAt);
      d.targetPageBits = bits;
    } else if (sub === 'configuration/uuid') {
      d.uuid = c
        .take(16, 'uuid')
        .toString('hex')
        .replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
    } else {
      throw unsupported(`unknown configuration subsection '${sub}'`, at);
    }
  }
}

/**
 * Parses a QEMU mapped-ram stream (see the file comment for what is checked).
 * @throws ERR_SNAPSHOT_TRUNCATED, ERR_SNAPSHOT_INVALID, ERR_SNAPSHOT_UNSUPPORTED (exit 3); an
 *   interrupted save is returned with `incomplete` set instead.
 */
export function parseQemu(src: ByteSource): QemuParsed {
  try {
    return parseStream(src);
  } catch (err) {
    // a libvirt image still marked LibvirtQemudPart that is cut short: libvirt did not finish the save
    if (!(err instanceof FixedramError) || err.code !== 'ERR_SNAPSHOT_TRUNCATED' || src.size < 16) throw err;
    if (!readExact(src, 0, 16, 'magic').equals(kLibvirtPart)) throw err;
    throw snapshotError(
      'ERR_SNAPSHOT_INCOMPLETE',
      `incomplete libvirt save image (still marked LibvirtQemudPart, libvirt did not finish the save): ${err.message}`,
      {
        ...(err.block !== undefined ? { block: err.block } : {}),
        ...(err.offset !== undefined ? { offset: err.offset } : {}),
      },
    );
  }
}

function parseStream(src: ByteSource): QemuParsed {
  // wrapper, stream header, configuration
  const head = readExact(src, 0, Math.min(16, src.size), 'magic');
  let libvirt: LibvirtWrapper | undefined;
  let streamOffset = 0;
  if (head.length === 16 && !head.subarray(0, 4).equals(kQevm)) {
    libvirt = readLibvirt(src);
    streamOffset = kLibvirtHeaderBytes + libvirt.dataLen;
  }
  const c = new Cursor(src, streamOffset);
  const magic = c.take(4, libvirt ? 'QEMU stream after the libvirt header' : 'magic');
  if (!magic.equals(kQevm)) {
    throw snapshotError(
      'ERR_SNAPSHOT_INVALID',
      `not a QEMU migration stream at offset ${hex(streamOffset)} (bad magic)`,
      { offset: streamOffset },
    );
  }
  const version = c.be32('stream version');
  if (version !== kStreamVersion) {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `unsupported QEMU stream version ${version} (fixedram reads version ${kStreamVersion})`,
      { offset: streamOffset + 4 },
    );
  }
  const d: Partial<QemuDetails> = {};
  let kind = c.u8('section type');
  if (kind !== kSecConfig)
    throw unsupported('no configuration section, so nothing says it was saved with mapped-ram', c.pos - 1);
  kind = readConfiguration(c, d);
  const caps = d.capabilities!;
  if (!caps.includes('mapped-ram')) {
    throw unsupported(
      `not saved with the mapped-ram capability (capabilities: ${caps.length ? caps.join(', ') : 'none'})`,
      streamOffset,
    );
  }
  if (caps.includes('x-ignore-shared')) {
    // QEMU <= 10 writes an extra be64 per block that its own loader does not read, and fails the save
    // anyway; QEMU 11 changed the layout for this combination. Refuse rather than guess.
    throw unsupported(
      'saved with x-ignore-shared, whose mapped-ram layout differs between QEMU versions',
      streamOffset,
    );
  }
  const targetPageSize = d.targetPageBits !== undefined ? 2 ** d.targetPageBits : kDefaultTargetPageSize;

  // START of section "ram"
  const startAt = c.pos - 1;
  if (kind !== kSecStart) {
    throw unsupported(
      `expected the START of section 'ram' at offset ${hex(startAt)}, found record type 0x${kind.toString(16)}`,
      startAt,
    );
  }
  const sid = c.be32('section id');
  const secName = c.name('section name').toString('latin1');
  const instance = c.be32('instance id');
  const secVersion = c.be32('section version');
  if (secName !== 'ram') throw unsupported(`the first section is '${secName}', not 'ram'`, startAt);
  if (secVersion !== kRamSectionVersion)
    throw unsupported(`section 'ram' version ${secVersion} (expected ${kRamSectionVersion})`, startAt);
  const pageBits = Math.min(d.targetPageBits ?? 12, 12);
  const flagMask = (1n << BigInt(pageBits)) - 1n;
  const sizeAt = c.pos;
  const word = c.be64('RAM size record');
  if ((word & flagMask) !== kRamFlagMemSize) {
    throw invalid(
      `expected the RAM size record at offset ${hex(sizeAt)}, found flags 0x${(word & flagMask).toString(16)}`,
      sizeAt,
    );
  }
  const ramTotal = safeU64(word & ~flagMask, 'corrupt QEMU file: the RAM total', { offset: sizeAt });

  // blocks, until the total is used up
  const blocks: QemuBlock[] = [];
  const bitmaps: Uint8Array[] = [];
  const names = new Set<string>();
  let remaining = ramTotal;
  while (remaining > 0) {
    const entryOffset = c.pos;
    if (blocks.length >= kMaxBlocks) throw invalid(`more than ${kMaxBlocks} RAM blocks`, entryOffset);
    const what = `RAM block ${blocks.length + 1} (after ${blocks.length ? `'${blocks[blocks.length - 1]!.name}'` : 'the RAM size record'})`;
    const rawName = c.forBlock(undefined).name(`${what} name`);
    const name = decodeUtf8(rawName);
    const problem = name === undefined ? 'a block name must be valid UTF-8' : nameProblem(name);
    if (name === undefined || problem) throw invalid(`${what} at offset ${hex(entryOffset)}: ${problem}`, entryOffset);
    if (names.has(name)) throw invalid(`duplicate RAM block '${name}'`, entryOffset, name);
    names.add(name);
    c.forBlock(name);
    const lengthAt = c.pos;
    const length = safeU64(c.be64('used_length'), `corrupt QEMU file: block '${name}' used_length`, {
      block: name,
      offset: lengthAt,
    });
    const headerOffset = c.pos;
    const h = c.take(kMappedRamHeaderBytes, 'mapped-ram header');
    const hctx = { block: name, offset: headerOffset };
    const hv = h.readUInt32BE(0);
    if (hv !== kMappedRamVersion) {
      throw snapshotError(
        'ERR_SNAPSHOT_UNSUPPORTED',
        `unsupported QEMU file: block '${name}' has mapped-ram header version ${hv} (fixedram reads version ${kMappedRamVersion})`,
        hctx,
      );
    }
    const pageSize = safeU64(h.readBigUInt64BE(4), `corrupt QEMU file: block '${name}' page size`, hctx);
    const bitmapOffset = safeU64(h.readBigUInt64BE(12), `corrupt QEMU file: block '${name}' bitmap_offset`, hctx);
    const pagesOffset = safeU64(h.readBigUInt64BE(20), `corrupt QEMU file: block '${name}' pages_offset`, hctx);
    if (pageSize !== targetPageSize) {
      // QEMU places and reads pages with its target page size, whatever this field says
      throw invalid(
        `block '${name}' page size ${pageSize} differs from the target page size ${targetPageSize}` +
          `${d.targetPageBits === undefined ? ' (no target-page-bits in the configuration: 4096)' : ''}`,
        headerOffset,
        name,
      );
    }
    if (pageSize < kMinPageSize || pageSize > kMaxPageSize) {
      throw unsupported(
        `block '${name}' has ${pageSize}-byte pages (fixedram handles ${kMinPageSize} to ${kMaxPageSize})`,
        headerOffset,
      );
    }
    if (length % pageSize !== 0)
      throw invalid(
        `block '${name}' used_length ${length} is not a multiple of its page size ${pageSize}`,
        lengthAt,
        name,
      );
    if (length > remaining) {
      throw invalid(
        `block '${name}' used_length ${length} exceeds what is left of the RAM total (${remaining} of ${ramTotal})`,
        lengthAt,
        name,
      );
    }
    const pages = length / pageSize;
    const bitmapBytes = bitmapBytesFor(pages);
    if (bitmapOffset !== headerOffset + kMappedRamHeaderBytes) {
      throw invalid(
        `block '${name}' bitmap_offset ${hex(bitmapOffset)} is not right after its header (${hex(headerOffset + kMappedRamHeaderBytes)})`,
        headerOffset,
        name,
      );
    }
    if (pagesOffset % pageSize !== 0) {
      throw invalid(
        `block '${name}' pages_offset ${hex(pagesOffset)} is not aligned to its page size ${pageSize}`,
        headerOffset,
        name,
      );
    }
    if (pagesOffset < bitmapOffset + bitmapBytes) {
      throw invalid(
        `block '${name}' pages_offset ${hex(pagesOffset)} overlaps its bitmap (${bitmapBytes} bytes at ${hex(bitmapOffset)})`,
        headerOffset,
        name,
      );
    }
    // every region inside the file before anything is read from it
    if (bitmapBytes > src.size - Math.min(bitmapOffset, src.size)) {
      throw truncated(`block '${name}' bitmap needs ${bitmapBytes} bytes at offset ${hex(bitmapOffset)}`, src.size, {
        block: name,
        offset: bitmapOffset,
      });
    }
    if (pagesOffset > src.size || length > src.size - pagesOffset) {
      const end = BigInt(pagesOffset) + BigInt(length);
      throw truncated(
        `block '${name}' pages end at offset 0x${end.toString(16)} (${length} bytes at ${hex(pagesOffset)})`,
        src.size,
        { block: name, offset: Math.min(src.size, pagesOffset) },
      );
    }
    const bitmap = readExact(src, bitmapOffset, bitmapBytes, 'bitmap', name);
    // popcount, and bits of the last word past the last page must be clear (QEMU does not check this)
    const presentPages = countBits(bitmap, pages, name, bitmapOffset);
    blocks.push({
      name,
      length,
      pageSize,
      pages,
      pagesOffset,
      bitmapOffset,
      presentPages,
      entryOffset,
      headerOffset,
      bitmapBytes,
    });
    bitmaps.push(bitmap);
    remaining -= length;
    // the next block's name (or the end-of-section marker) follows this block's pages
    c.pos = pagesOffset + length;
  }
  c.forBlock(undefined);
  const details: QemuDetails = {
    streamVersion: version,
    streamOffset,
    machineType: d.machineType!,
    capabilities: caps,
    ...(d.targetPageBits !== undefined ? { targetPageBits: d.targetPageBits } : {}),
    targetPageSize,
    ...(d.uuid !== undefined ? { uuid: d.uuid } : {}),
    ramSectionId: sid,
    ramInstanceId: instance,
    ramSectionVersion: secVersion,
    ramTotal,
    ramEndOffset: c.pos,
  };

  // after the blocks: EOS, then PART records and commands up to the END record of "ram"
  const end = walkToRamEnd(c, sid, details);
  let incomplete: FixedramError | undefined;
  let parts: QemuStreamParts | undefined;
  if (end.incomplete) {
    incomplete = snapshotError(
      'ERR_SNAPSHOT_INCOMPLETE',
      `incomplete QEMU file: ${end.incomplete}; the save did not finish and the page bitmaps are not valid`,
      { offset: end.at },
    );
  } else {
    // the rest of the stream: device sections, end of stream, device description
    walkDevices(src, details);
    parts = {
      ...(streamOffset > 0 ? { libvirt: { offset: 0, length: streamOffset } } : {}),
      head: { offset: streamOffset, length: startAt - streamOffset },
      tail: { offset: details.ramSectionEnd!, length: src.size - details.ramSectionEnd! },
    };
    if (libvirt?.magic === 'LibvirtQemudPart') {
      incomplete = snapshotError(
        'ERR_SNAPSHOT_INCOMPLETE',
        'incomplete libvirt save image: the header still says LibvirtQemudPart (libvirt did not finish the save)',
        { offset: 0 },
      );
    }
  }
  if (libvirt) details.libvirt = libvirt;
  return {
    details,
    blocks,
    bitmaps,
    ...(incomplete ? { incomplete } : {}),
    ...(parts && !incomplete ? { parts } : {}),
  };
}

/** Set bits of a bitmap (format.ts's unpacking: refuses bits at or past `pages`). */
function countBits(bitmap: Uint8Array, pages: number, name: string, offset: number): number {
  try {
    return unpackBitmap(bitmap, pages, new Uint8Array(pages), name, offset);
  } catch (err) {
    if (err instanceof FixedramError) err.message = `corrupt QEMU file: ${err.message}`;
    throw err;
  }
}

/**
 * Walks from the end-of-section marker at ramEndOffset to the END record of "ram". Returns the
 * reason the stream is incomplete (it ends first), or throws for records that do not belong here.
 */
function walkToRamEnd(c: Cursor, sid: number, d: QemuDetails): { incomplete?: string; at: number } {
  const src = c.src;
  const need = (n: number): void => {
    if (c.pos + n > src.size) throw new EndOfData(c.pos);
  };
  const eos = (what: string): void => {
    need(8);
    const at = c.pos;
    const w = c.be64(what);
    if (w !== kRamFlagEos)
      throw invalid(
        `expected the end-of-section marker 0x10 of section 'ram' at offset ${hex(at)}, found 0x${w.toString(16)}`,
        at,
      );
  };
  let footers: boolean | undefined;
  const footer = (): void => {
    if (footers === false) return;
    need(1);
    const at = c.pos;
    if (footers === undefined) {
      footers = readExact(src, at, 1, 'section footer')[0] === kSecFooter;
      if (!footers) return;
    }
    need(5);
    const f = c.take(5, 'section footer');
    if (f[0] !== kSecFooter || f.readUInt32BE(1) !== sid)
      throw invalid(`bad section footer of 'ram' at offset ${hex(at)}`, at);
  };
  const commands: string[] = [];
  let passes = 0;
  try {
    eos('end-of-section marker');
    footer();
    for (let n = 0; ; n++) {
      if (n > kMaxTrailingRecords) throw invalid("too many records before the END of section 'ram'", c.pos);
      need(1);
      const at = c.pos;
      const kind = c.u8('record type');
      if (kind === kSecPart || kind === kSecEnd) {
        need(4);
        const id = c.be32('section id');
        if (id !== sid) {
          throw unsupported(
            `a record of another iterable section (id ${id}) at offset ${hex(at)} before the END of section 'ram'; ` +
              "fixedram reads files whose only iterable section is 'ram'",
            at,
          );
        }
        eos(kind === kSecEnd ? 'END record of ram' : 'PART record of ram');
        footer();
        if (kind === kSecEnd) {
          d.ramSectionEnd = c.pos;
          d.ramPasses = passes;
          d.commands = commands;
          d.sectionFooters = footers ?? false;
          return { at: c.pos };
        }
        passes++;
      } else if (kind === kSecCommand) {
        need(4);
        const cmd = c.be16('command');
        const len = c.be16('command length');
        const known = kHarmlessCommands.get(cmd);
        if (known === undefined)
          throw unsupported(`migration command ${cmd} at offset ${hex(at)} before the END of section 'ram'`, at);
        need(len);
        c.pos += len;
        commands.push(known);
      } else if (kind === kSecStart || kind === kSecFull) {
        throw unsupported(
          `another section starts at offset ${hex(at)} before the END of section 'ram'; ` +
            "fixedram reads files whose only iterable section is 'ram'",
          at,
        );
      } else {
        throw invalid(
          `unexpected record type 0x${kind.toString(16)} at offset ${hex(at)} before the END of section 'ram'`,
          at,
        );
      }
    }
  } catch (err) {
    if (!(err instanceof EndOfData)) throw err;
    d.ramPasses = passes;
    d.commands = commands;
    return {
      incomplete: `the file ends at offset ${hex(src.size)}, before the END record of section 'ram' (RAM blocks end at ${hex(d.ramEndOffset)})`,
      at: err.at,
    };
  }
}

/** One entry of the device description: a section's (or subsection's) fields and subsections. */
interface VmdescNode {
  name?: unknown;
  instance_id?: unknown;
  vmsd_name?: unknown;
  version?: unknown;
  fields?: unknown;
  subsections?: unknown;
}

/**
 * Finds the device description at the end of the stream: the end-of-stream byte 00, then 06, a be32
 * length and that many bytes of JSON that run exactly to the end of the file. QEMU's JSON writer
 * escapes control characters, so the last 06 preceded by 00 is the record's type byte.
 */
function findVmdesc(src: ByteSource, from: number): { eof: number; json: Buffer } {
  const whole = src.size - from;
  const window = Math.min(whole, kMaxVmdescBytes + 6);
  const start = src.size - window;
  const tail = readExact(src, start, window, 'device description');
  const missing = (why: string): FixedramError =>
    snapshotError(
      'ERR_SNAPSHOT_TRUNCATED',
      `truncated QEMU file: the device state after the RAM section (${whole} bytes from offset ${hex(from)}) ${why}; ` +
        'the stream is cut or damaged after its RAM',
      { offset: src.size },
    );
  for (let p = tail.lastIndexOf(kSecVmdesc); p >= 1; p = tail.lastIndexOf(kSecVmdesc, p - 1)) {
    if (tail[p - 1] !== kSecEof) continue;
    if (p + 5 > tail.length) break;
    const len = tail.readUInt32BE(p + 1);
    if (len !== tail.length - p - 5) break;
    return { eof: start + p - 1, json: tail.subarray(p + 5) };
  }
  throw missing(`does not end with the end-of-stream marker and the device description QEMU writes last`);
}

/**
 * Walks the device-state sections after the END of "ram" with the sizes of the device description:
 * each section must be a complete section of the described device (name, instance, version), its
 * fields take exactly the described bytes, its subsections have their headers where expected, its
 * footer follows; the end-of-stream marker must come right after the last section.
 */
function walkDevices(src: ByteSource, d: QemuDetails): void {
  const from = d.ramSectionEnd!;
  const { eof, json } = findVmdesc(src, from);
  let desc: { devices?: unknown; page_size?: unknown };
  try {
    desc = JSON.parse(json.toString('utf8')) as typeof desc;
  } catch {
    throw invalid(`the device description at offset ${hex(eof + 6)} is not JSON`, eof + 6);
  }
  if (typeof desc !== 'object' || desc === null || !Array.isArray(desc.devices)) {
    throw invalid(`the device description at offset ${hex(eof + 6)} has no device list`, eof + 6);
  }
  if (desc.page_size !== undefined && desc.page_size !== d.targetPageSize) {
    throw invalid(
      `the device description says the target page size is ${JSON.stringify(desc.page_size)}, the stream implies ${d.targetPageSize}`,
      eof + 6,
    );
  }
  const c = new Cursor(src, from);
  const bad = (m: string, at: number): FixedramError => invalid(`device state: ${m}`, at);
  const int = (v: unknown, what: string, at: number): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      throw bad(`the description gives ${what} as ${JSON.stringify(v)}`, at);
    return v;
  };
  // bytes of one (sub)section's contents, its subsections walked in the stream
  const contents = (node: VmdescNode, depth: number, owner: string): void => {
    if (depth > kMaxVmdescDepth) throw bad(`subsections of '${owner}' nest deeper than ${kMaxVmdescDepth}`, c.pos);
    const fields = node.fields ?? [];
    if (!Array.isArray(fields)) throw bad(`the description of '${owner}' has a malformed field list`, c.pos);
    let bytes = 0;
    for (const f of fields as { size?: unknown; array_len?: unknown }[]) {
      if (typeof f !== 'object' || f === null) throw bad(`the description of '${owner}' has a malformed field`, c.pos);
      bytes +=
        int(f.size, `a field size of '${owner}'`, c.pos) *
        (f.array_len === undefined ? 1 : int(f.array_len, `an array length of '${owner}'`, c.pos));
      if (!Number.isSafeInteger(bytes) || c.pos + bytes > eof) {
        throw bad(
          `section '${owner}' at offset ${hex(c.pos)} needs more bytes than lie before the end-of-stream marker at ${hex(eof)}`,
          c.pos,
        );
      }
    }
    c.pos += bytes;
    const subs = node.subsections ?? [];
    if (!Array.isArray(subs)) throw bad(`the description of '${owner}' has a malformed subsection list`, c.pos);
    for (const s of subs as VmdescNode[]) {
      if (typeof s !== 'object' || s === null || typeof s.vmsd_name !== 'string')
        throw bad(`the description of '${owner}' has a malformed subsection`, c.pos);
      const at = c.pos;
      const type = c.u8('subsection type');
      const name = c.name('subsection name').toString('latin1');
      const version = c.be32('subsection version');
      if (type !== kSecSub || name !== s.vmsd_name || (s.version !== undefined && version !== s.version)) {
        throw bad(`expected subsection '${s.vmsd_name}' of '${owner}' at offset ${hex(at)}`, at);
      }
      contents(s, depth + 1, `${owner}/${name}`);
    }
  };
  let count = 0;
  for (const dev of desc.devices as VmdescNode[]) {
    const at = c.pos;
    if (typeof dev !== 'object' || dev === null || typeof dev.name !== 'string')
      throw bad(`malformed device ${count} in the description`, at);
    if (at >= eof)
      throw bad(`section '${dev.name}' is missing: the end-of-stream marker comes first, at ${hex(eof)}`, at);
    const type = c.u8('section type');
    if (type !== kSecFull) {
      throw bad(
        `expected the section of '${dev.name}' at offset ${hex(at)}, found record type 0x${type.toString(16)}`,
        at,
      );
    }
    const id = c.be32('section id');
    const name = c.name('section name').toString('latin1');
    const instance = c.be32('instance id');
    const version = c.be32('section version');
    if (
      name !== dev.name ||
      instance !== int(dev.instance_id, `the instance of '${dev.name}'`, at) ||
      (dev.vmsd_name !== undefined && dev.version !== undefined && version !== dev.version)
    ) {
      throw bad(
        `expected section '${dev.name}' instance ${String(dev.instance_id)} at offset ${hex(at)}, found '${name}' instance ${instance} version ${version}`,
        at,
      );
    }
    contents(dev, 0, name);
    if (d.sectionFooters) {
      const fat = c.pos;
      const f = c.take(5, 'section footer');
      if (f[0] !== kSecFooter || f.readUInt32BE(1) !== id)
        throw bad(`bad footer of section '${name}' at offset ${hex(fat)}`, fat);
    }
    count++;
  }
  if (c.pos !== eof) {
    throw bad(
      `the described sections end at offset ${hex(c.pos)}, but the end-of-stream marker is at ${hex(eof)}`,
      c.pos,
    );
  }
  d.deviceSections = count;
  d.eofOffset = eof;
  d.vmdescBytes = json.length;
}
