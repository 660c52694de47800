/**
 * Writer of QEMU mapped-ram migration streams: the byte layout QEMU >= 9 restores with
 * `migrate-incoming file:FILE` and the `mapped-ram` capability (with or without multifd), optionally
 * behind a libvirt save-image header. A pure format module beside the parser (qemu.ts): it plans
 * where everything goes and builds the bytes of every record; it touches no file system. The page
 * data itself is copied by the caller (export.ts) to each block's pages_offset.
 *
 * The stream is rebuilt from a device state of kind `qemu-mapped-ram` (devstate.ts):
 *   [libvirt part]  head (magic, version, configuration)
 *   START of "ram" (01, section id, "ram", instance id, version), be64 RAM total | 0x04
 *   per block: u8 name length, name, be64 used_length, 28-byte mapped-ram header
 *              (be32 version 1, be64 page_size, be64 bitmap_offset, be64 pages_offset),
 *              bitmap at bitmap_offset, hole up to pages_offset (a multiple of 1 MiB),
 *              used_length bytes of pages at pages_offset (absent pages are holes)
 *   be64 0x10 (end of section) [footer 7e + id], END of "ram" (03, id, be64 0x10) [footer]
 *   tail (device sections, end of stream, device description)
 * Every offset in a header is absolute in the file (also behind a libvirt header), as QEMU writes.
 * See shared/reference/qemu-mapped-ram.md.
 */
import type { DeviceState } from './devstate';
import { bitmapBytesFor, kPagesAlign, roundUp } from './format';
import {
  kDefaultTargetPageSize,
  kMappedRamHeaderBytes,
  kMappedRamVersion,
  kQevm,
  kRamFlagEos,
  kRamFlagMemSize,
  kSecEnd,
  kSecFooter,
  kSecStart,
} from './qemu';

export interface StreamBlock {
  name: string;
  length: number;
  pageSize: number;
}

export interface PlannedBlock extends StreamBlock {
  entryOffset: number;
  bitmapOffset: number;
  bitmapBytes: number;
  pagesOffset: number;
}

export interface PlannedStream {
  /** Where the QEMU stream (its magic) starts: 0, or the size of the libvirt part. */
  streamOffset: number;
  fileSize: number;
  blocks: PlannedBlock[];
  /** Everything but the page data: libvirt part, records, bitmaps, tail; disjoint, in file order. */
  pieces: { offset: number; bytes: Buffer }[];
}

const be32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const be64 = (v: bigint | number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};
const name8 = (s: string): Buffer => {
  const b = Buffer.from(s, 'utf8');
  if (b.length < 1 || b.length > 255) throw new RangeError(`name '${s}' must be 1 to 255 bytes`);
  return Buffer.concat([Buffer.from([b.length]), b]);
};

/**
 * Plans a mapped-ram stream for `blocks` around the device state `ds` (kind qemu-mapped-ram).
 * `bitmaps[i]` is block i's bitmap in QEMU's x86-64 layout (little-endian words, bit j of byte k =
 * page 8k + j: format.ts's packBitmap); `libvirt` puts the stored libvirt part in front.
 * @throws RangeError when the device state cannot make a mapped-ram stream or a block does not fit it.
 */
export function planMappedRamStream(
  ds: DeviceState,
  blocks: readonly StreamBlock[],
  bitmaps: readonly Uint8Array[],
  opts: { libvirt: boolean },
): PlannedStream {
  if (ds.kind !== 'qemu-mapped-ram' || !ds.head || !ds.tail || !ds.ramSection) {
    throw new RangeError(`a device state of kind '${ds.kind}' does not hold the parts of a mapped-ram stream`);
  }
  if (ds.head.length < 9 || !Buffer.from(ds.head.subarray(0, 4)).equals(kQevm))
    throw new RangeError('the stored stream head does not start with QEVM');
  if (opts.libvirt && !ds.libvirt) throw new RangeError('the device state holds no libvirt header and domain XML');
  const pageSize = typeof ds.origin.targetPageSize === 'number' ? ds.origin.targetPageSize : kDefaultTargetPageSize;
  const rs = ds.ramSection;
  const pieces: { offset: number; bytes: Buffer }[] = [];
  let pos = 0;
  const put = (bytes: Uint8Array): void => {
    pieces.push({ offset: pos, bytes: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length) });
    pos += bytes.length;
  };
  if (opts.libvirt) put(ds.libvirt!);
  const streamOffset = pos;
  put(ds.head);
  const total = blocks.reduce((s, b) => s + b.length, 0);
  if (!Number.isSafeInteger(total)) throw new RangeError('the blocks are too large');
  put(
    Buffer.concat([
      Buffer.from([kSecStart]),
      be32(rs.sectionId),
      name8('ram'),
      be32(rs.instanceId),
      be32(rs.version),
      be64(BigInt(total) | kRamFlagMemSize),
    ]),
  );
  const planned: PlannedBlock[] = [];
  blocks.forEach((b, i) => {
    if (b.pageSize !== pageSize)
      throw new RangeError(
        `block '${b.name}' has ${b.pageSize}-byte pages; the stream's target page size is ${pageSize}`,
      );
    if (b.length % b.pageSize !== 0)
      throw new RangeError(`block '${b.name}' length is not a multiple of its page size`);
    const pages = b.length / b.pageSize;
    const bitmapBytes = bitmapBytesFor(pages);
    const bitmap = bitmaps[i];
    if (!bitmap || bitmap.length !== bitmapBytes)
      throw new RangeError(`block '${b.name}' needs a bitmap of ${bitmapBytes} bytes`);
    const entryOffset = pos;
    const head = Buffer.concat([name8(b.name), be64(b.length)]);
    const bitmapOffset = entryOffset + head.length + kMappedRamHeaderBytes;
    // QEMU rounds up to 1 MiB (the loader checks 4 KiB alignment): page data stays O_DIRECT-aligned
    const pagesOffset = roundUp(bitmapOffset + bitmapBytes, kPagesAlign);
    const header = Buffer.concat([be32(kMappedRamVersion), be64(b.pageSize), be64(bitmapOffset), be64(pagesOffset)]);
    put(Buffer.concat([head, header, bitmap]));
    planned.push({ ...b, entryOffset, bitmapOffset, bitmapBytes, pagesOffset });
    pos = pagesOffset + b.length;
  });
  const footer = rs.footers ? Buffer.concat([Buffer.from([kSecFooter]), be32(rs.sectionId)]) : Buffer.alloc(0);
  put(
    Buffer.concat([be64(kRamFlagEos), footer, Buffer.from([kSecEnd]), be32(rs.sectionId), be64(kRamFlagEos), footer]),
  );
  put(ds.tail);
  if (!Number.isSafeInteger(pos)) throw new RangeError('the stream would exceed 2^53 bytes');
  return { streamOffset, fileSize: pos, blocks: planned, pieces };
}

/**
 * The whole stream in memory, with each block's pages from `pageData(i)` (length bytes, zeros where
 * absent). For tests and small streams; export.ts writes the pieces and moves pages with channels.
 */
export function materializeStream(plan: PlannedStream, pageData: (block: number) => Uint8Array): Buffer {
  const out = Buffer.alloc(plan.fileSize);
  for (const p of plan.pieces) p.bytes.copy(out, p.offset);
  plan.blocks.forEach((b, i) => {
    const data = pageData(i);
    if (data.length !== b.length)
      throw new RangeError(`block '${b.name}': ${data.length} bytes of pages, expected ${b.length}`);
    out.set(data, b.pagesOffset);
  });
  return out;
}
