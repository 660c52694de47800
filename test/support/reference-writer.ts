/**
 * A deliberately simple, single-threaded writer of format v1, used as an oracle: the parallel
 * native path must produce a byte-identical file. It reads every page with readSync, decides zero
 * pages by comparing with a zero buffer, and writes with writeSync; only XXH3 comes from the addon.
 */
import * as fs from 'node:fs';
import { encodeHeader, kFlagComplete, packBitmap, planLayout } from '../../src/format';
import { native } from '../../src/native';

export function referenceSave(output: string, blocks: { name: string; path: string }[], pageSize = 4096): void {
  const sizes = blocks.map((b) => fs.statSync(b.path).size);
  const layout = planLayout(blocks.map((b, i) => ({ name: b.name, length: sizes[i]!, pageSize })));
  const fd = fs.openSync(output, 'w');
  const zero = Buffer.alloc(pageSize);
  const page = Buffer.alloc(pageSize);
  const counts: number[] = [];
  const sums: bigint[] = [];
  try {
    fs.ftruncateSync(fd, layout.fileSize);
    layout.blocks.forEach((b, i) => {
      const src = fs.openSync(blocks[i]!.path, 'r');
      const present = new Uint8Array(b.pages);
      const csums = Buffer.alloc(b.pages * 8);
      for (let p = 0; p < b.pages; p++) {
        fs.readSync(src, page, 0, pageSize, p * pageSize);
        if (page.equals(zero)) continue;
        present[p] = 1;
        csums.writeBigUInt64LE(native().hash64(page), p * 8);
        fs.writeSync(fd, page, 0, pageSize, b.pagesOffset + p * pageSize);
      }
      fs.closeSync(src);
      const bitmap = packBitmap(present, b.pages);
      fs.writeSync(fd, bitmap, 0, bitmap.length, b.bitmapOffset);
      fs.writeSync(fd, csums, 0, csums.length, b.checksumsOffset);
      counts.push(present.reduce((s, v) => s + v, 0));
      sums.push(native().hash64(Buffer.concat([bitmap, csums])));
    });
    const header = encodeHeader(layout, kFlagComplete, counts, sums, native().hash64);
    fs.writeSync(fd, header, 0, header.length, 0);
  } finally {
    fs.closeSync(fd);
  }
}
