/**
 * The per-page tables of a fixedram block (the bitmap and the XXH3 table, docs/format-v1.md), read,
 * checked and written window by window, and the data-extent walk of a page region.
 *
 * Nothing here holds a whole block's tables: a block of 2^38 pages has a 32 GiB bitmap and a 2 TiB
 * checksum table. The metadata checksum is streamed over the file (holes hashed as zeros, not
 * read); table windows of at most kWindowPages pages are read, checked and written one at a time;
 * runs of the tables that are all zero are skipped on read (they are holes) and left as holes (or
 * punched) on write. Every read is bounded by a window, every allocation by the window size.
 */
import * as fs from 'node:fs';
import { isSystemError, snapshotError } from './errors';
import { firstAbsentNonZero, packBitmapCount, unpackWholeBytes, type BlockLayout } from './format';
import { fromNativeError, native } from './native';
import { windowPagesFor } from './plan';

/** Tables of one segment: present[i] and csums[8i..8i+8) stand for page first + i. */
export interface WindowTables {
  present: Uint8Array;
  csums: Uint8Array;
}

/**
 * Shared memory for the tables of one window (present bytes, checksums, data mask), reused window
 * after window, so channels on other threads can read and fill them.
 */
export class TableArena {
  readonly present: Uint8Array;
  readonly csums: Uint8Array;
  readonly mask: Uint8Array;
  readonly active: Uint8Array;

  constructor(readonly pages: number) {
    const n = Math.max(pages, 1);
    this.present = new Uint8Array(new SharedArrayBuffer(n));
    this.csums = new Uint8Array(new SharedArrayBuffer(8 * n));
    this.mask = new Uint8Array(new SharedArrayBuffer(n));
    this.active = new Uint8Array(n);
  }

  /** Zeroed views of `count` pages at page `at` of the arena. */
  slice(at: number, count: number): WindowTables & { mask: Uint8Array; active: Uint8Array } {
    const v = {
      present: this.present.subarray(at, at + count),
      csums: this.csums.subarray(8 * at, 8 * (at + count)),
      mask: this.mask.subarray(at, at + count),
      active: this.active.subarray(at, at + count),
    };
    v.present.fill(0);
    v.csums.fill(0);
    v.mask.fill(0);
    v.active.fill(0);
    return v;
  }
}

function readExact(fd: number, into: Uint8Array, position: number, file: string): void {
  let done = 0;
  while (done < into.length) {
    let n: number;
    try {
      n = fs.readSync(fd, into, done, into.length - done, position + done);
    } catch (err) {
      if (isSystemError(err) && (err.code === 'EINTR' || err.code === 'EAGAIN')) continue;
      throw isSystemError(err) ? Object.assign(err, { path: file }) : err;
    }
    if (n === 0) {
      throw snapshotError('ERR_SNAPSHOT_TRUNCATED', `truncated snapshot: end of file at offset ${position + done}`, {
        offset: position + done,
        path: file,
      });
    }
    done += n;
  }
}

function writeAll(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, position + done);
}

/** Whether [lo, hi) of the file holds any data extent (true when the file system cannot tell). */
export function hasData(fd: number, lo: number, hi: number, file: string): boolean {
  if (hi <= lo) return false;
  try {
    const e = native().dataExtents(fd, lo, hi, 1);
    return e === null || e.length > 0;
  } catch (err) {
    throw fromNativeError(err, { path: file });
  }
}

/**
 * Where a region of a file holds data, walked once from start to end with SEEK_DATA/SEEK_HOLE
 * (one pair of calls per extent, never per page or per window): holes cost nothing, whatever their
 * length. Windows must be asked for in increasing order.
 */
export class ExtentCursor {
  private start = 0;
  private end = 0;
  private pos: number;
  private allData = false;
  private fd: number;

  /**
   * `fd`: an open descriptor of the file, or a function opening it (the cursor then holds a
   * descriptor only while the region is being walked, and closes it after its last window).
   */
  constructor(
    private readonly open: number | (() => number),
    private readonly file: string,
    lo: number,
    private readonly hi: number,
  ) {
    this.pos = lo;
    this.fd = typeof open === 'number' ? open : -1;
  }

  /** Closes a descriptor the cursor opened itself. */
  close(): void {
    if (typeof this.open === 'number' || this.fd < 0) return;
    try {
      fs.closeSync(this.fd);
    } catch {
      /* closed */
    }
    this.fd = -1;
  }

  private next(from: number): void {
    if (this.fd < 0 && typeof this.open !== 'number') this.fd = this.open();
    let e: number[] | null;
    try {
      e = native().dataExtents(this.fd, from, this.hi, 1);
    } catch (err) {
      throw fromNativeError(err, { path: this.file });
    }
    if (e === null) {
      this.allData = true;
      return;
    }
    [this.start, this.end] = e.length ? [e[0]!, e[1]!] : [this.hi, this.hi];
    this.pos = this.end;
  }

  /**
   * Sets mask[i] = 1 for each page i of [base, base + count × pageSize) that overlaps data: a page
   * partly filled counts as data (start rounded down, end rounded up). Returns the pages marked.
   */
  mark(base: number, pageSize: number, count: number, mask: Uint8Array): number {
    try {
      return this.markRange(base, pageSize, count, mask);
    } finally {
      if (base + count * pageSize >= this.hi) this.close();
    }
  }

  private markRange(base: number, pageSize: number, count: number, mask: Uint8Array): number {
    const lo = base;
    const hi = base + count * pageSize;
    if (this.allData) {
      mask.fill(1, 0, count);
      return count;
    }
    if (this.end <= lo) this.next(Math.max(this.pos, lo));
    let marked = 0;
    while (!this.allData && this.start < hi && this.end > lo) {
      const p0 = Math.floor((Math.max(this.start, lo) - lo) / pageSize);
      const p1 = Math.ceil((Math.min(this.end, hi) - lo) / pageSize);
      for (let p = p0; p < p1; p++) {
        if (!mask[p]) marked++;
        mask[p] = 1;
      }
      if (this.end > hi) break;
      this.next(this.end);
    }
    if (this.allData) {
      mask.fill(1, 0, count);
      return count;
    }
    return marked;
  }
}

const corrupt = (b: BlockLayout, file: string, message: string, extra: { offset: number; page?: number }): Error =>
  snapshotError('ERR_SNAPSHOT_INVALID', message, { block: b.name, path: file, ...extra });

/**
 * Reads the tables of pages [first, first + count) of a block (first a multiple of 64) into `into`
 * and checks them: absent pages have a zero checksum entry. A checksum window that is a hole is not
 * read. Returns the number of present pages.
 */
export function readTableWindow(
  fd: number,
  file: string,
  b: BlockLayout,
  first: number,
  count: number,
  into: WindowTables,
): number {
  const words = Math.ceil(count / 64);
  const bits = Buffer.alloc(words * 8);
  const bitmapAt = b.bitmapOffset + first / 8;
  if (hasData(fd, bitmapAt, bitmapAt + bits.length, file)) readExact(fd, bits, bitmapAt, file);
  into.present.fill(0, 0, count);
  const whole = count >> 3;
  let present = unpackWholeBytes(bits, whole, into.present);
  for (let k = whole; k < bits.length; k++) {
    const byte = bits[k]!;
    if (byte === 0) continue;
    for (let j = 0; j < 8; j++) {
      if (!(byte & (1 << j))) continue;
      const i = 8 * k + j;
      if (i >= count) {
        throw corrupt(b, file, `block '${b.name}': bitmap bit ${first + i} is set past the last page ${b.pages - 1}`, {
          offset: bitmapAt + k,
        });
      }
      into.present[i] = 1;
      present++;
    }
  }
  const csums = into.csums.subarray(0, 8 * count);
  const at = b.checksumsOffset + 8 * first;
  if (present === 0 && !hasData(fd, at, at + csums.length, file)) {
    csums.fill(0);
    return 0;
  }
  readExact(fd, csums, at, file);
  // the checksum of an absent page is 0 (format v1); anything else is a corrupt table
  const i = firstAbsentNonZero(bits, csums, count);
  if (i >= 0) {
    throw corrupt(
      b,
      file,
      `corrupt metadata: block '${b.name}' page ${first + i} is absent but its checksum entry is not 0`,
      { page: first + i, offset: at + 8 * i },
    );
  }
  return present;
}

/**
 * Checks a block's tables before any of them is used: the metadata checksum (streamed over the
 * file, holes hashed without being read), no bitmap bit past the last page, the present count, and
 * a zero checksum entry for every absent page (only windows of the checksum table that hold data
 * are read). Memory: one window.
 */
export function checkTables(fd: number, file: string, b: BlockLayout, expectedSum: bigint, presentPages: number): void {
  let sum: bigint;
  let count: number;
  try {
    [sum, count] = native().hashRanges(fd, [b.bitmapOffset, b.bitmapBytes, b.checksumsOffset, b.checksumsBytes]);
  } catch (err) {
    throw fromNativeError(err, { path: file, block: b.name });
  }
  if (sum !== expectedSum) {
    throw corrupt(
      b,
      file,
      `corrupt metadata: the bitmap or checksum table of block '${b.name}' fails its checksum ` +
        `(bitmap at 0x${b.bitmapOffset.toString(16)}, checksums at 0x${b.checksumsOffset.toString(16)})`,
      { offset: b.bitmapOffset },
    );
  }
  if (b.pages % 64 !== 0) {
    const last = Buffer.alloc(8);
    const at = b.bitmapOffset + b.bitmapBytes - 8;
    readExact(fd, last, at, file);
    for (let page = b.pages; page < b.bitmapBytes * 8; page++) {
      const bit = page - (b.bitmapBytes - 8) * 8;
      if (last[bit >> 3]! & (1 << (bit & 7))) {
        throw corrupt(b, file, `block '${b.name}': bitmap bit ${page} is set past the last page ${b.pages - 1}`, {
          offset: at + (bit >> 3),
        });
      }
    }
  }
  if (count !== presentPages) {
    throw corrupt(
      b,
      file,
      `corrupt metadata: block '${b.name}' bitmap has ${count} pages set, the block table says ${presentPages}`,
      { offset: b.bitmapOffset },
    );
  }
  const per = windowPagesFor(b.pageSize);
  let scratch: WindowTables | undefined;
  for (let first = 0; first < b.pages; first += per) {
    const n = Math.min(per, b.pages - first);
    const at = b.checksumsOffset + 8 * first;
    if (!hasData(fd, at, at + 8 * n, file)) continue;
    scratch ??= { present: new Uint8Array(Math.min(per, b.pages)), csums: new Uint8Array(8 * Math.min(per, b.pages)) };
    readTableWindow(fd, file, b, first, n, scratch);
  }
}

/**
 * Writes the tables of pages [first, first + count) of a block (first a multiple of 64). Runs of
 * the checksum table that are all zero are not written (a fresh file: they are holes already) or,
 * with `zeroOld` (an update: they may hold old entries), punched. Returns the present pages.
 */
export function writeTableWindow(
  fd: number,
  b: BlockLayout,
  first: number,
  count: number,
  t: WindowTables,
  zeroOld: boolean,
): number {
  const { bitmap: bits, count: present } = packBitmapCount(t.present, count);
  if (present > 0 || zeroOld) writeAll(fd, bits, b.bitmapOffset + first / 8);
  const csums = t.csums.subarray(0, 8 * count);
  const base = b.checksumsOffset + 8 * first;
  const chunk = 4096;
  const zero = (lo: number, hi: number): void => {
    if (!zeroOld || hi <= lo) return;
    if (!native().punchHole(fd, base + lo, hi - lo)) writeAll(fd, new Uint8Array(hi - lo), base + lo);
  };
  let runStart = 0;
  let runZero = true;
  const flush = (end: number): void => {
    if (runZero) zero(runStart, end);
    else writeAll(fd, csums.subarray(runStart, end), base + runStart);
  };
  for (let lo = 0; lo < csums.length; lo += chunk) {
    const hi = Math.min(lo + chunk, csums.length);
    const isZero = present === 0 || allZero(csums, lo, hi);
    if (lo === 0) runZero = isZero;
    else if (isZero !== runZero) {
      flush(lo);
      runStart = lo;
      runZero = isZero;
    }
  }
  if (csums.length) flush(csums.length);
  return present;
}

function allZero(a: Uint8Array, lo: number, hi: number): boolean {
  const w = new Uint32Array(a.buffer, a.byteOffset + lo, (hi - lo) / 4);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
  return true;
}

/** The metadata checksum and present count of a block's tables as they are in the file (streamed). */
export function tableSummary(fd: number, file: string, b: BlockLayout): { sum: bigint; count: number } {
  try {
    const [sum, count] = native().hashRanges(fd, [b.bitmapOffset, b.bitmapBytes, b.checksumsOffset, b.checksumsBytes]);
    return { sum, count };
  } catch (err) {
    throw fromNativeError(err, { path: file, block: b.name });
  }
}
