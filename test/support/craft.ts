/**
 * Crafting hostile-but-valid snapshots: huge sparse files whose header and metadata checksums are
 * right (so every structural check passes) but whose lengths, gaps and page sizes ask a reader for
 * far more work or memory than the bytes on disk. Pages are written sparsely, the tables too, so a
 * 2^48-byte block costs a few KiB of disk (on tmpfs, whose files may be that large).
 */
import * as fs from 'node:fs';
import { encodeHeader, kFlagComplete, planLayout, roundUp, type SnapshotLayout } from '../../src/format';
import { native } from '../../src/native';

export interface CraftBlock {
  name: string;
  pageSize: number;
  length: number;
  /** Present pages: their data (at most the page size; the rest of the slot stays a hole), or 'hole'. */
  present?: Map<number, Buffer | 'hole'>;
  /** Bytes of gap (a multiple of 1 MiB) added before this block's pages. */
  gapBefore?: number;
}

/** Writes the crafted snapshot; returns its layout. */
export function craftSnapshot(file: string, blocks: CraftBlock[], flags = kFlagComplete): SnapshotLayout {
  const layout = planLayout(blocks.map((b) => ({ name: b.name, pageSize: b.pageSize, length: b.length })));
  let shift = 0;
  layout.blocks.forEach((b, i) => {
    shift += blocks[i]!.gapBefore ?? 0;
    b.pagesOffset += shift;
  });
  const last = layout.blocks[layout.blocks.length - 1];
  layout.fileSize = last ? Math.max(last.pagesOffset + last.length, roundUp(layout.metadataEnd, 8)) : layout.fileSize;
  const fd = fs.openSync(file, 'w+', 0o600);
  const hashes = new Map<number, bigint>();
  const pageHash = (size: number, data: Buffer | 'hole'): bigint => {
    if (data !== 'hole' && data.length === size) return native().hash64(data);
    if (data === 'hole' && hashes.has(size)) return hashes.get(size)!;
    // a partly written page: hash its slot as it is in the file
    return -1n;
  };
  try {
    fs.ftruncateSync(fd, layout.fileSize);
    const counts: number[] = [];
    layout.blocks.forEach((b, i) => {
      const present = blocks[i]!.present ?? new Map();
      for (const [page, data] of present) {
        const at = b.pagesOffset + page * b.pageSize;
        if (data !== 'hole') fs.writeSync(fd, data, 0, data.length, at);
        let h = pageHash(b.pageSize, data);
        if (h < 0n) h = native().hashRanges(fd, [at, b.pageSize])[0];
        if (data === 'hole') hashes.set(b.pageSize, h);
        const word = Buffer.alloc(1);
        fs.readSync(fd, word, 0, 1, b.bitmapOffset + (page >> 3));
        word[0]! |= 1 << (page & 7);
        fs.writeSync(fd, word, 0, 1, b.bitmapOffset + (page >> 3));
        const entry = Buffer.alloc(8);
        entry.writeBigUInt64LE(h);
        fs.writeSync(fd, entry, 0, 8, b.checksumsOffset + 8 * page);
      }
      counts.push(present.size);
    });
    const sums = layout.blocks.map(
      (b) => native().hashRanges(fd, [b.bitmapOffset, b.bitmapBytes, b.checksumsOffset, b.checksumsBytes])[0],
    );
    const header = encodeHeader(layout, flags, counts, sums, native().hash64);
    fs.writeSync(fd, header, 0, header.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  return layout;
}
