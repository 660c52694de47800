/**
 * A packed chunk object (manifest version 2, docs/s3.md): the page map of one chunk of the snapshot
 * file (one bit per 4 KiB page, set when the page holds a non-zero byte), then the bytes of those
 * pages, in order. Zero pages cost one bit. Builds and parses bytes; touches no file system and no
 * network. Nothing read is trusted: the length must be exactly what the map announces.
 */
import { snapshotError } from '../errors';

/** The unit of the page map (the smallest page size of the format). */
export const kPackPage = 4096;

const pagesOf = (chunkLength: number): number => Math.ceil(chunkLength / kPackPage);
export const mapBytes = (chunkLength: number): number => Math.ceil(pagesOf(chunkLength) / 8);

/** Length of page `p` of a chunk of `chunkLength` bytes (the last one may be short). */
const pageLength = (chunkLength: number, p: number): number => Math.min(kPackPage, chunkLength - p * kPackPage);

function isZero(b: Buffer, zero: Buffer): boolean {
  return b.equals(zero.length === b.length ? zero : zero.subarray(0, b.length));
}

const kZero = Buffer.alloc(kPackPage);

/** The packed object of `chunk`, or undefined when every byte is zero (no object at all). */
export function packChunk(chunk: Buffer): Buffer | undefined {
  const pages = pagesOf(chunk.length);
  const map = Buffer.alloc(mapBytes(chunk.length));
  let data = 0;
  for (let p = 0; p < pages; p++) {
    const len = pageLength(chunk.length, p);
    if (!isZero(chunk.subarray(p * kPackPage, p * kPackPage + len), kZero)) {
      map[p >> 3]! |= 1 << (p & 7);
      data += len;
    }
  }
  if (data === 0) return undefined;
  const out = Buffer.allocUnsafe(map.length + data);
  map.copy(out, 0);
  let o = map.length;
  for (let p = 0; p < pages; p++) {
    if (!(map[p >> 3]! & (1 << (p & 7)))) continue;
    const len = pageLength(chunk.length, p);
    o += chunk.copy(out, o, p * kPackPage, p * kPackPage + len);
  }
  return out;
}

/** A run of present pages: `length` bytes at `chunkOffset` in the chunk, at `objectOffset` in the object. */
export interface PackedRun {
  chunkOffset: number;
  objectOffset: number;
  length: number;
}

/**
 * The runs of present pages of a packed object for a chunk of `chunkLength` bytes (adjacent present
 * pages merged). Throws "not a snapshot" (exit 3) when the object's length does not match its map.
 */
export function packedRuns(object: Buffer, chunkLength: number, what: string): PackedRun[] {
  const mb = mapBytes(chunkLength);
  const pages = pagesOf(chunkLength);
  if (object.length < mb) throw snapshotError('ERR_SNAPSHOT_TRUNCATED', `${what} is shorter than its page map`);
  const runs: PackedRun[] = [];
  let o = mb;
  for (let p = 0; p < pages; p++) {
    if (!(object[p >> 3]! & (1 << (p & 7)))) continue;
    const len = pageLength(chunkLength, p);
    const last = runs[runs.length - 1];
    if (last && last.chunkOffset + last.length === p * kPackPage) last.length += len;
    else runs.push({ chunkOffset: p * kPackPage, objectOffset: o, length: len });
    o += len;
  }
  // bits beyond the last page must be clear, and the pages must fill the object exactly
  for (let p = pages; p < mb * 8; p++) {
    if (object[p >> 3]! & (1 << (p & 7)))
      throw snapshotError('ERR_SNAPSHOT_INVALID', `${what}: its page map names pages beyond the chunk`);
  }
  if (o !== object.length) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', `${what}: ${object.length} bytes, its page map announces ${o}`);
  }
  return runs;
}
