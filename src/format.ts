/**
 * fixedram snapshot format v1: layout planning, encoding and strict decoding of the file header,
 * the block table and the per-block bitmaps and checksum tables. The byte layout is specified in
 * docs/format-v1.md; keep the two in step.
 *
 * Nothing read from a file is trusted: every 64-bit field is read as a BigInt, capped, and only then
 * turned into a number; every offset and length is checked against the file size before it is used
 * to allocate or to read.
 */
import { checkDeviceStatePlace, placeDeviceState } from './devstate';
import { snapshotError } from './errors';
import { native } from './native';

export const kMagic = Buffer.from('FIXEDRAM', 'latin1');
/** The version of the snapshot format (docs/format-v1.md) in the header; the package version is kPackageVersion in cli/program.ts. */
export const kFormatVersion = 1;
export const kHeaderBytes = 64;
export const kEntryBytes = 320;
export const kMaxNameBytes = 255;
export const kMaxBlocks = 65536;
export const kMinPageSize = 4096;
export const kMaxPageSize = 1 << 30;
/** Every block's page region starts on a multiple of this (as QEMU's mapped-ram does). */
export const kPagesAlign = 1 << 20;
/** Largest block length accepted: 1 PiB. */
export const kMaxBlockLength = 2 ** 50;

/** Header flags. */
export const kFlagComplete = 1 << 0;
export const kFlagUpdating = 1 << 1;
/** The file ends with a device-state record (see devstate.ts); readers that do not know it refuse the file. */
export const kFlagDeviceState = 1 << 2;
const kKnownFlags = kFlagComplete | kFlagUpdating | kFlagDeviceState;

/** What a block is, before it is placed. */
export interface BlockSpec {
  name: string;
  length: number;
  pageSize: number;
}

/** A block placed in a snapshot. All values are byte counts or absolute file offsets. */
export interface BlockLayout extends BlockSpec {
  nameBytes: Buffer;
  pages: number;
  bitmapOffset: number;
  bitmapBytes: number;
  checksumsOffset: number;
  checksumsBytes: number;
  pagesOffset: number;
}

export interface SnapshotLayout {
  blocks: BlockLayout[];
  /** End of the metadata (header, block table, bitmaps, checksum tables). */
  metadataEnd: number;
  /** Size of the whole file: the end of the last page region (or of the device-state record). */
  fileSize: number;
  /** The device-state record at the end of the file (flag DEVICE_STATE), when there is one. */
  deviceState?: { offset: number; bytes: number };
}

/** Header and block table as read from a file, with the per-block state. */
export interface SnapshotHeader extends SnapshotLayout {
  version: number;
  flags: number;
  /** Present-page count per block, as stored in the block table. */
  presentPages: number[];
  /** XXH3-64 of each block's bitmap followed by its checksum table. */
  metadataChecksums: bigint[];
}

export const roundUp = (v: number, a: number): number => Math.ceil(v / a) * a;
export const bitmapBytesFor = (pages: number): number => Math.ceil(pages / 64) * 8;
export const isPowerOfTwo = (v: number): boolean =>
  Number.isSafeInteger(v) && v > 0 && (v & (v - 1)) === 0 && v <= 2 ** 30;

/** Problem with a block name, or undefined when it is acceptable (UTF-8, 1–255 bytes, no NUL). */
export function nameProblem(name: string): string | undefined {
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes === 0) return 'a block name must not be empty';
  if (bytes > kMaxNameBytes) return `a block name must be at most ${kMaxNameBytes} bytes (got ${bytes})`;
  if (name.includes('\0')) return 'a block name must not contain NUL';
  if (Buffer.from(name, 'utf8').toString('utf8') !== name) return 'a block name must be valid UTF-8';
  return undefined;
}

/**
 * Places blocks: header, block table, then each block's bitmap and checksum table (8-byte aligned),
 * then each block's pages on a 1 MiB boundary, in the order given.
 */
export function planLayout(specs: readonly BlockSpec[], deviceStateBytes?: number): SnapshotLayout {
  if (specs.length > kMaxBlocks) throw new RangeError(`at most ${kMaxBlocks} blocks (got ${specs.length})`);
  let pos = kHeaderBytes + specs.length * kEntryBytes;
  const blocks: BlockLayout[] = [];
  for (const s of specs) {
    const problem = nameProblem(s.name);
    if (problem) throw new RangeError(problem);
    if (!isPowerOfTwo(s.pageSize) || s.pageSize < kMinPageSize) {
      throw new RangeError(`page size of '${s.name}' must be a power of two >= ${kMinPageSize} (got ${s.pageSize})`);
    }
    if (!Number.isSafeInteger(s.length) || s.length < 0 || s.length > kMaxBlockLength || s.length % s.pageSize !== 0) {
      throw new RangeError(`length of '${s.name}' must be a multiple of ${s.pageSize} up to 1 PiB (got ${s.length})`);
    }
    const pages = s.length / s.pageSize;
    const bitmapOffset = roundUp(pos, 8);
    const bitmapBytes = bitmapBytesFor(pages);
    const checksumsOffset = bitmapOffset + bitmapBytes;
    const checksumsBytes = pages * 8;
    pos = checksumsOffset + checksumsBytes;
    blocks.push({
      ...s,
      nameBytes: Buffer.from(s.name, 'utf8'),
      pages,
      bitmapOffset,
      bitmapBytes,
      checksumsOffset,
      checksumsBytes,
      pagesOffset: 0,
    });
  }
  const metadataEnd = pos;
  for (const b of blocks) {
    b.pagesOffset = roundUp(pos, kPagesAlign);
    pos = b.pagesOffset + b.length;
  }
  if (!Number.isSafeInteger(pos)) throw new RangeError('snapshot would exceed 2^53 bytes');
  const end = Math.max(pos, roundUp(metadataEnd, 8));
  if (deviceStateBytes === undefined) return { blocks, metadataEnd, fileSize: end };
  const ds = placeDeviceState(end, deviceStateBytes);
  return { blocks, metadataEnd, fileSize: ds.fileSize, deviceState: { offset: ds.offset, bytes: deviceStateBytes } };
}

/**
 * Encodes the header and block table. The header checksum (XXH3-64 of header bytes 0–55 followed by
 * the block table) is filled in with `hash64`.
 */
export function encodeHeader(
  layout: SnapshotLayout,
  flags: number,
  presentPages: readonly number[],
  metadataChecksums: readonly bigint[],
  hash64: (b: Uint8Array) => bigint,
): Buffer {
  const buf = Buffer.alloc(kHeaderBytes + layout.blocks.length * kEntryBytes);
  kMagic.copy(buf, 0);
  buf.writeUInt32LE(kFormatVersion, 8);
  buf.writeUInt32LE(layout.deviceState ? flags | kFlagDeviceState : flags & ~kFlagDeviceState, 12);
  buf.writeUInt32LE(layout.blocks.length, 16);
  buf.writeUInt32LE(kEntryBytes, 20);
  buf.writeBigUInt64LE(BigInt(kHeaderBytes), 24);
  buf.writeBigUInt64LE(BigInt(layout.metadataEnd), 32);
  buf.writeBigUInt64LE(BigInt(layout.fileSize), 40);
  buf.writeBigUInt64LE(BigInt(layout.deviceState?.offset ?? 0), 48);
  layout.blocks.forEach((b, i) => {
    const o = kHeaderBytes + i * kEntryBytes;
    buf.writeUInt16LE(b.nameBytes.length, o);
    buf.writeUInt32LE(b.pageSize, o + 4);
    buf.writeBigUInt64LE(BigInt(b.length), o + 8);
    buf.writeBigUInt64LE(BigInt(b.bitmapOffset), o + 16);
    buf.writeBigUInt64LE(BigInt(b.checksumsOffset), o + 24);
    buf.writeBigUInt64LE(BigInt(b.pagesOffset), o + 32);
    buf.writeBigUInt64LE(BigInt(presentPages[i] ?? 0), o + 40);
    buf.writeBigUInt64LE(metadataChecksums[i] ?? 0n, o + 48);
    b.nameBytes.copy(buf, o + 64);
  });
  buf.writeBigUInt64LE(headerChecksum(buf, hash64), 56);
  return buf;
}

function headerChecksum(headerAndTable: Buffer, hash64: (b: Uint8Array) => bigint): bigint {
  const copy = Buffer.from(headerAndTable);
  copy.fill(0, 56, 64);
  return hash64(copy);
}

/** Reads a u64 field as a number, refusing values a double cannot hold exactly. */
function u64(buf: Buffer, at: number, what: string, offset: number): number {
  return safeU64(buf.readBigUInt64LE(at), what, { offset: offset + at });
}

/** A 64-bit value read from a file as a number, refusing values a double cannot hold exactly (exit 3). */
export function safeU64(v: bigint, what: string, ctx: { offset: number; block?: string }): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER))
    throw snapshotError('ERR_SNAPSHOT_INVALID', `${what} is out of range (${v})`, ctx);
  return Number(v);
}

/** Strict UTF-8 decoding: the text, or undefined when the bytes are not valid UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

/** Reads and checks the 64-byte file header; returns the block count and table size. */
export function decodeFixedHeader(head: Buffer, fileSize: number): { blockCount: number; tableBytes: number } {
  if (fileSize < kHeaderBytes || head.length < kHeaderBytes) {
    throw snapshotError(
      'ERR_SNAPSHOT_TRUNCATED',
      `truncated snapshot: the ${kHeaderBytes}-byte header is cut at offset ${fileSize}`,
      { offset: fileSize },
    );
  }
  if (!head.subarray(0, 8).equals(kMagic)) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', 'not a fixedram snapshot (bad magic)', { offset: 0 });
  }
  const version = head.readUInt32LE(8);
  if (version !== kFormatVersion) {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `unsupported snapshot version ${version} (this fixedram reads ${kFormatVersion})`,
      { offset: 8 },
    );
  }
  const entryBytes = head.readUInt32LE(20);
  const tableOffset = head.readBigUInt64LE(24);
  const blockCount = head.readUInt32LE(16);
  if (entryBytes !== kEntryBytes || tableOffset !== BigInt(kHeaderBytes)) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', 'corrupt header: bad block table geometry', { offset: 20 });
  }
  if (blockCount > kMaxBlocks) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt header: block count ${blockCount} exceeds ${kMaxBlocks}`, {
      offset: 16,
    });
  }
  const tableBytes = blockCount * kEntryBytes;
  if (kHeaderBytes + tableBytes > fileSize) {
    throw snapshotError(
      'ERR_SNAPSHOT_TRUNCATED',
      `truncated snapshot: the block table needs ${tableBytes} bytes at offset ${kHeaderBytes}, file size is ${fileSize}`,
      { offset: fileSize },
    );
  }
  return { blockCount, tableBytes };
}

/**
 * Decodes and validates the header and block table (`buf` holds both). Checks the header checksum,
 * flags, every block's name, page size and length, alignment, that every region lies inside the
 * file and that no two regions overlap. Does not look at the completion flags: callers decide.
 */
export function decodeHeader(buf: Buffer, fileSize: number, hash64: (b: Uint8Array) => bigint): SnapshotHeader {
  const { blockCount } = decodeFixedHeader(buf, fileSize);
  const tableEnd = kHeaderBytes + blockCount * kEntryBytes;
  if (buf.length < tableEnd) throw new RangeError('decodeHeader needs the whole block table');
  const table = buf.subarray(0, tableEnd);
  const stored = table.readBigUInt64LE(56);
  if (headerChecksum(table, hash64) !== stored) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', 'corrupt header: header checksum mismatch', { offset: 56 });
  }
  const flags = table.readUInt32LE(12);
  if ((flags & ~kKnownFlags) !== 0) {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported header flags 0x${flags.toString(16)}`, { offset: 12 });
  }
  const metadataEnd = u64(table, 32, 'metadata end', 0);
  const declaredSize = u64(table, 40, 'file size', 0);

  const blocks: BlockLayout[] = [];
  const presentPages: number[] = [];
  const metadataChecksums: bigint[] = [];
  const names = new Set<string>();
  for (let i = 0; i < blockCount; i++) {
    const o = kHeaderBytes + i * kEntryBytes;
    const at = { offset: o };
    const nameLen = table.readUInt16LE(o);
    if (nameLen < 1 || nameLen > kMaxNameBytes || table.readUInt16LE(o + 2) !== 0) {
      throw snapshotError(
        'ERR_SNAPSHOT_INVALID',
        `corrupt block table: entry ${i} has a bad name length ${nameLen}`,
        at,
      );
    }
    const nameBytes = Buffer.from(table.subarray(o + 64, o + 64 + nameLen));
    let name: string;
    try {
      name = new TextDecoder('utf-8', { fatal: true }).decode(nameBytes);
    } catch {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt block table: entry ${i} has a name that is not UTF-8`, at);
    }
    if (nameBytes.includes(0) || table.subarray(o + 64 + nameLen, o + kEntryBytes).some((b) => b !== 0)) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt block table: entry ${i} has a malformed name`, at);
    }
    if (names.has(name))
      throw snapshotError('ERR_SNAPSHOT_INVALID', `corrupt block table: duplicate block name '${name}'`, at);
    names.add(name);
    const ctx = { block: name, offset: o };
    const pageSize = table.readUInt32LE(o + 4);
    if (!isPowerOfTwo(pageSize) || pageSize < kMinPageSize) {
      throw snapshotError(
        'ERR_SNAPSHOT_INVALID',
        `block '${name}': page size ${pageSize} is not a power of two >= ${kMinPageSize}`,
        ctx,
      );
    }
    const length = u64(table, o + 8, `block '${name}' length`, 0);
    if (length % pageSize !== 0) {
      throw snapshotError(
        'ERR_SNAPSHOT_INVALID',
        `block '${name}': length ${length} is not a multiple of page size ${pageSize}`,
        ctx,
      );
    }
    if (length > kMaxBlockLength) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `block '${name}': length ${length} exceeds the maximum 2^50`, ctx);
    }
    const pages = length / pageSize;
    const b: BlockLayout = {
      name,
      nameBytes,
      length,
      pageSize,
      pages,
      bitmapOffset: u64(table, o + 16, `block '${name}' bitmap offset`, 0),
      bitmapBytes: bitmapBytesFor(pages),
      checksumsOffset: u64(table, o + 24, `block '${name}' checksum table offset`, 0),
      checksumsBytes: pages * 8,
      pagesOffset: u64(table, o + 32, `block '${name}' pages offset`, 0),
    };
    const present = u64(table, o + 40, `block '${name}' present pages`, 0);
    if (present > pages)
      throw snapshotError(
        'ERR_SNAPSHOT_INVALID',
        `block '${name}': ${present} present pages but only ${pages} pages`,
        ctx,
      );
    if (b.bitmapOffset % 8 !== 0 || b.checksumsOffset % 8 !== 0 || b.pagesOffset % kPagesAlign !== 0) {
      throw snapshotError(
        'ERR_SNAPSHOT_INVALID',
        `block '${name}': misaligned bitmap, checksum table or pages offset`,
        ctx,
      );
    }
    blocks.push(b);
    presentPages.push(present);
    metadataChecksums.push(table.readBigUInt64LE(o + 48));
  }

  // regions: inside the declared file, not overlapping, metadata before metadataEnd
  type Region = { start: number; end: number; what: string; block?: string };
  const regions: Region[] = [{ start: 0, end: tableEnd, what: 'header and block table' }];
  for (const b of blocks) {
    regions.push({ start: b.bitmapOffset, end: b.bitmapOffset + b.bitmapBytes, what: 'bitmap', block: b.name });
    regions.push({
      start: b.checksumsOffset,
      end: b.checksumsOffset + b.checksumsBytes,
      what: 'checksum table',
      block: b.name,
    });
    regions.push({ start: b.pagesOffset, end: b.pagesOffset + b.length, what: 'pages', block: b.name });
    if (b.checksumsOffset + b.checksumsBytes > metadataEnd || b.bitmapOffset + b.bitmapBytes > metadataEnd) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `block '${b.name}': metadata lies past the metadata end`, {
        block: b.name,
      });
    }
    if (b.length > 0 && b.pagesOffset < metadataEnd) {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `block '${b.name}': pages overlap the metadata`, { block: b.name });
    }
  }
  const sorted = regions.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.start < prev.end) {
      throw snapshotError(
        'ERR_SNAPSHOT_INVALID',
        `overlapping regions: ${cur.what}${cur.block ? ` of '${cur.block}'` : ''} at 0x${cur.start.toString(16)} and ` +
          `${prev.what}${prev.block ? ` of '${prev.block}'` : ''}`,
        { offset: cur.start, ...(cur.block ? { block: cur.block } : {}) },
      );
    }
  }
  // a loop, not Math.max(...): with tens of thousands of blocks the spread overflows the stack
  let end = tableEnd;
  for (const r of sorted) end = Math.max(end, r.end);
  let deviceState: SnapshotLayout['deviceState'];
  if (flags & kFlagDeviceState) {
    const offset = u64(table, 48, 'device-state offset', 0);
    checkDeviceStatePlace(offset, Math.max(end, metadataEnd), declaredSize);
    deviceState = { offset, bytes: declaredSize - offset };
    sorted.push({ start: offset, end: declaredSize, what: 'device-state record' });
    end = declaredSize;
  }
  if (metadataEnd > declaredSize || end > declaredSize) {
    throw snapshotError(
      'ERR_SNAPSHOT_INVALID',
      `corrupt header: regions end at 0x${end.toString(16)} past the declared size 0x${declaredSize.toString(16)}`,
      { offset: 40 },
    );
  }
  if (fileSize < declaredSize) {
    const cut = sorted.find((r) => r.end > fileSize);
    const where = cut
      ? ` ${cut.start < fileSize ? 'inside' : 'before'} the ${cut.what}${cut.block ? ` of block '${cut.block}'` : ''}`
      : '';
    throw snapshotError(
      'ERR_SNAPSHOT_TRUNCATED',
      `truncated snapshot: file size is ${fileSize} (0x${fileSize.toString(16)}), expected ${declaredSize}${where}`,
      { offset: fileSize, ...(cut?.block ? { block: cut.block } : {}) },
    );
  }
  if (fileSize > declaredSize) {
    throw snapshotError(
      'ERR_SNAPSHOT_INVALID',
      `snapshot has ${fileSize - declaredSize} unexpected bytes after offset 0x${declaredSize.toString(16)}`,
      { offset: declaredSize },
    );
  }
  return {
    version: kFormatVersion,
    flags,
    blocks,
    metadataEnd,
    fileSize: declaredSize,
    presentPages,
    metadataChecksums,
    ...(deviceState ? { deviceState } : {}),
  };
}

/** A byte range of a snapshot that no region covers; it must read as zero. */
export interface Padding {
  start: number;
  end: number;
  /** The block whose region follows the padding (or precedes it, at the end of the file); '' if none. */
  block: string;
  /** The regions around it: "between the checksum table of 'a' and the pages of 'b'", "after ...". */
  where: string;
}

/**
 * The padding of a validated layout: every byte range in [0, fileSize) outside the header, block
 * table, bitmaps, checksum tables and page regions (in a file from planLayout: the hole after the
 * metadata and the holes between page regions, each under 1 MiB).
 */
export function paddingOf(layout: SnapshotLayout): Padding[] {
  const tableEnd = kHeaderBytes + layout.blocks.length * kEntryBytes;
  const regions = [
    { start: 0, end: tableEnd, block: '', what: layout.blocks.length ? 'the block table' : 'the header' },
  ];
  for (const b of layout.blocks) {
    regions.push({
      start: b.bitmapOffset,
      end: b.bitmapOffset + b.bitmapBytes,
      block: b.name,
      what: `the bitmap of '${b.name}'`,
    });
    regions.push({
      start: b.checksumsOffset,
      end: b.checksumsOffset + b.checksumsBytes,
      block: b.name,
      what: `the checksum table of '${b.name}'`,
    });
    regions.push({
      start: b.pagesOffset,
      end: b.pagesOffset + b.length,
      block: b.name,
      what: `the pages of '${b.name}'`,
    });
  }
  if (layout.deviceState) {
    const d = layout.deviceState;
    regions.push({ start: d.offset, end: d.offset + d.bytes, block: '', what: 'the device-state record' });
  }
  const used = regions.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  const out: Padding[] = [];
  let pos = 0;
  let last = used[0]!;
  for (const r of used) {
    if (r.start > pos)
      out.push({ start: pos, end: r.start, block: r.block, where: `between ${last.what} and ${r.what}` });
    pos = Math.max(pos, r.end);
    last = r;
  }
  if (pos < layout.fileSize)
    out.push({ start: pos, end: layout.fileSize, block: last.block, where: `after ${last.what}` });
  return out;
}

/** Packs one byte per page (non-zero = present) into the v1 bitmap: LE u64 words, bit i = page i. */
export function packBitmap(present: Uint8Array, pages: number): Buffer {
  return packBitmapCount(present, pages).bitmap;
}

/** packBitmap, and the number of pages present. (The loops over pages are native: see native.ts.) */
export function packBitmapCount(present: Uint8Array, pages: number): { bitmap: Buffer; count: number } {
  const bitmap = Buffer.alloc(bitmapBytesFor(pages));
  const count = native().packBits(present, Math.max(0, Math.min(pages, present.length)), bitmap);
  return { bitmap, count };
}

/**
 * Unpacks the first `bytes` bytes of a bitmap into pages [0, 8 * bytes) of `into` (one byte per
 * page: 1 present, 0 absent; the pages of a zero byte are left as they are, so `into` must be
 * zeroed, and a huge sparse block's table is never touched). Returns the set bits.
 */
export function unpackWholeBytes(bitmap: Uint8Array, bytes: number, into: Uint8Array): number {
  return native().unpackBits(bitmap, Math.max(0, Math.min(bytes, bitmap.length, into.length >> 3)), into);
}

/**
 * The first page of [0, pages) that is absent in `bitmap` but whose 8-byte checksum entry in
 * `csums` is not 0 (format v1: an absent page's entry is 0), or -1.
 */
export function firstAbsentNonZero(bitmap: Uint8Array, csums: Uint8Array, pages: number): number {
  return native().absentNonZero(bitmap, csums, pages);
}

/**
 * Unpacks a bitmap into one byte per page. Returns the number of set bits, or throws when a bit at
 * or past `pages` is set.
 */
export function unpackBitmap(
  bitmap: Uint8Array,
  pages: number,
  into: Uint8Array,
  block: string,
  offset: number,
): number {
  const whole = Math.min(bitmap.length, pages >> 3, into.length >> 3);
  let count = unpackWholeBytes(bitmap, whole, into);
  for (let k = whole; k < bitmap.length; k++) {
    const byte = bitmap[k]!;
    if (byte === 0) continue;
    for (let j = 0; j < 8; j++) {
      if (!(byte & (1 << j))) continue;
      const page = k * 8 + j;
      if (page >= pages) {
        throw snapshotError(
          'ERR_SNAPSHOT_INVALID',
          `block '${block}': bitmap bit ${page} is set past the last page ${pages - 1}`,
          { block, offset: offset + k },
        );
      }
      into[page] = 1;
      count++;
    }
  }
  return count;
}
