/**
 * Stamped RAM blocks: every data page starts with (block id, page index, generation), so a lost,
 * stale or misplaced page is caught by a byte comparison, and zero pages come in every shape
 * (single pages, whole 64-page bitmap words, long runs, the tail, never-written holes).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

export type PageKind = 'stamp' | 'zero' | 'hole' | 'random';

/** The default mix: holes and explicit zeros, stamped and random pages. */
export function defaultKind(i: number, pages: number): PageKind {
  if (i >= pages - 3) return 'hole'; // the tail
  if (i % 64 === 0 && Math.floor(i / 64) % 5 === 4) return 'zero';
  if (Math.floor(i / 64) % 7 === 3) return 'hole'; // a whole bitmap word
  if (i % 3 === 2) return 'zero';
  if (i % 11 === 5) return 'random';
  return 'stamp';
}

export function stampPage(buf: Buffer, blockId: number, page: number, generation: number): void {
  buf.fill(0);
  buf.writeUInt32LE(blockId, 0);
  buf.writeUInt32LE(generation, 4);
  buf.writeBigUInt64LE(BigInt(page), 8);
  buf.write(`FXR b${blockId} p${page} g${generation} `, 16, 'latin1');
  // filler that differs per page, so equal-looking pages never collide
  for (let o = 64; o + 8 <= buf.length; o += 64) buf.writeUInt32LE((page * 2654435761 + o + blockId) >>> 0, o);
}

/**
 * Writes a block file of `pages` pages. Holes are never written (the file stays sparse there);
 * explicit zero pages are written as zeros. Returns the kinds used.
 */
export function makeBlock(
  file: string,
  blockId: number,
  pages: number,
  opts: { pageSize?: number; generation?: number; kind?: (i: number, n: number) => PageKind; seed?: number } = {},
): PageKind[] {
  const ps = opts.pageSize ?? 4096;
  const kind = opts.kind ?? defaultKind;
  const fd = fs.openSync(file, 'w');
  const page = Buffer.alloc(ps);
  const kinds: PageKind[] = [];
  try {
    fs.ftruncateSync(fd, pages * ps);
    for (let i = 0; i < pages; i++) {
      const k = kind(i, pages);
      kinds.push(k);
      if (k === 'hole') continue;
      if (k === 'zero') page.fill(0);
      else if (k === 'random') crypto.randomFillSync(page);
      else stampPage(page, blockId, i, opts.generation ?? 1);
      fs.writeSync(fd, page, 0, ps, i * ps);
    }
  } finally {
    fs.closeSync(fd);
  }
  return kinds;
}

/** Fills a file with one byte value (a "dirty" load target). */
export function fillFile(file: string, bytes: number, value: number): void {
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.alloc(Math.min(bytes, 1 << 20), value);
  try {
    for (let o = 0; o < bytes; o += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - o), o);
  } finally {
    fs.closeSync(fd);
  }
}

/** Index of the first differing page of two files, or -1 when equal. */
export function firstDifferentPage(a: string, b: string, pageSize = 4096): number {
  const x = fs.readFileSync(a);
  const y = fs.readFileSync(b);
  if (x.length !== y.length) return Math.floor(Math.min(x.length, y.length) / pageSize);
  for (let o = 0; o < x.length; o += pageSize) {
    if (!x.subarray(o, o + pageSize).equals(y.subarray(o, o + pageSize))) return o / pageSize;
  }
  return -1;
}
