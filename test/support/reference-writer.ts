/**
 * A deliberately simple, single-threaded writer of format v1, used as an oracle: the parallel
 * native path must produce a byte-identical file. Written from docs/format-v1.md alone: it imports
 * nothing from src/ (layout, header encoding and bitmap packing are done here again, from the spec)
 * and hashes with the `xxhsum` tool, so a bug in the code under test cannot be shared by its oracle.
 * It reads every page with readSync, decides zero pages by comparing with a zero buffer, and writes
 * with writeSync.
 */
import * as fs from 'node:fs';
import { xxh3, xxh3Many } from './oracle-reader';

const roundUp = (v: number, a: number): number => Math.ceil(v / a) * a;

export function referenceSave(output: string, blocks: { name: string; path: string }[], pageSize = 4096): void {
  // layout, as "Overall layout" says: header, table, per block bitmap (8-aligned) then checksums,
  // then each block's pages on the next 1 MiB boundary
  let pos = 64 + 320 * blocks.length;
  const placed = blocks.map((b) => {
    const length = fs.statSync(b.path).size;
    const pages = length / pageSize;
    const bitmapOffset = roundUp(pos, 8);
    const checksumsOffset = bitmapOffset + Math.ceil(pages / 64) * 8;
    pos = checksumsOffset + 8 * pages;
    return { ...b, name8: Buffer.from(b.name, 'utf8'), length, pages, bitmapOffset, checksumsOffset, pagesOffset: 0 };
  });
  const metadataEnd = pos;
  for (const b of placed) {
    b.pagesOffset = roundUp(pos, 2 ** 20);
    pos = b.pagesOffset + b.length;
  }
  const fileSize = Math.max(pos, roundUp(metadataEnd, 8));

  const fd = fs.openSync(output, 'w');
  const zero = Buffer.alloc(pageSize);
  const header = Buffer.alloc(64 + 320 * blocks.length);
  try {
    fs.ftruncateSync(fd, fileSize);
    placed.forEach((b, i) => {
      const src = fs.openSync(b.path, 'r');
      const bitmap = Buffer.alloc(Math.ceil(b.pages / 64) * 8);
      const csums = Buffer.alloc(b.pages * 8);
      const pages: { p: number; data: Buffer }[] = [];
      for (let p = 0; p < b.pages; p++) {
        const page = Buffer.alloc(pageSize);
        fs.readSync(src, page, 0, pageSize, p * pageSize);
        if (page.equals(zero)) continue;
        bitmap[p >> 3]! |= 1 << (p & 7);
        pages.push({ p, data: page });
        fs.writeSync(fd, page, 0, pageSize, b.pagesOffset + p * pageSize);
      }
      fs.closeSync(src);
      xxh3Many(pages.map((x) => x.data)).forEach((h, k) => csums.writeBigUInt64LE(h, 8 * pages[k]!.p));
      fs.writeSync(fd, bitmap, 0, bitmap.length, b.bitmapOffset);
      fs.writeSync(fd, csums, 0, csums.length, b.checksumsOffset);
      const e = 64 + 320 * i;
      header.writeUInt16LE(b.name8.length, e);
      header.writeUInt32LE(pageSize, e + 4);
      header.writeBigUInt64LE(BigInt(b.length), e + 8);
      header.writeBigUInt64LE(BigInt(b.bitmapOffset), e + 16);
      header.writeBigUInt64LE(BigInt(b.checksumsOffset), e + 24);
      header.writeBigUInt64LE(BigInt(b.pagesOffset), e + 32);
      header.writeBigUInt64LE(BigInt(pages.length), e + 40);
      header.writeBigUInt64LE(xxh3(Buffer.concat([bitmap, csums])), e + 48);
      b.name8.copy(header, e + 64);
    });
    header.write('FIXEDRAM', 0, 'latin1');
    header.writeUInt32LE(1, 8);
    header.writeUInt32LE(1, 12); // COMPLETE
    header.writeUInt32LE(blocks.length, 16);
    header.writeUInt32LE(320, 20);
    header.writeBigUInt64LE(64n, 24);
    header.writeBigUInt64LE(BigInt(metadataEnd), 32);
    header.writeBigUInt64LE(BigInt(fileSize), 40);
    header.writeBigUInt64LE(xxh3(header), 56); // bytes 56-63 are still zero here
    fs.writeSync(fd, header, 0, header.length, 0);
  } finally {
    fs.closeSync(fd);
  }
}
