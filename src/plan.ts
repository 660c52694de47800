/**
 * Splitting blocks into windows and batches. Work and memory follow the pages that need work, never
 * a length field:
 *  - a *window* is a run of pages (of one or several blocks) whose per-page tables are held in
 *    memory at a time: at most kWindowPages pages (about 10 bytes each) and kWindowBytes of data,
 *    so a 2^50-byte block is walked window by window with bounded memory, and a small snapshot is
 *    one window;
 *  - a *batch* is a range of pages of one segment handed to a channel; batches are planned per
 *    window and only where a page has work (present, holds data, ...), so empty ranges cost nothing.
 * A batch never spans two blocks; the channels take batches from a shared counter, so a slow
 * channel never holds up the others.
 */
import { kPieceBytes } from './native';

/** Bytes of pages a batch covers (the channel's buffer size). */
export const kDefaultBatchBytes = 4 << 20;
/** Most pages whose tables are in memory at once (present byte + checksum + mask: 10 bytes a page). */
export const kWindowPages = 1 << 21;
/** Most bytes of block data in one window (bounds the number of batches planned at once). */
export const kWindowBytes = 2 ** 33;

/** Pages [first, first + count) of block `block`. */
export interface Segment {
  block: number;
  first: number;
  count: number;
}

export interface Batch {
  block: number;
  first: number;
  count: number;
}

export interface BatchPlan {
  /** (block, first page, page count) triples, in a shared Float64Array. */
  batches: SharedArrayBuffer;
  count: number;
  /** Largest batch in bytes (the scratch buffer a channel needs; one piece for a page moved in pieces). */
  maxBatchBytes: number;
}

/** Pages of one window of a block with this page size: a multiple of 64 (whole bitmap words). */
export function windowPagesFor(pageSize: number): number {
  return Math.max(64, Math.min(kWindowPages, Math.floor(kWindowBytes / pageSize / 64) * 64));
}

/**
 * The windows over the selected blocks, generated lazily: each is a list of segments, in block
 * order, whose pages and bytes stay within the window bounds. A block larger than a window is split
 * at multiples of 64 pages; blocks smaller than a window share one.
 */
export function* planWindows(
  blocks: readonly { pages: number; pageSize: number }[],
  select: (index: number) => boolean = () => true,
): Generator<Segment[]> {
  let window: Segment[] = [];
  let pages = 0;
  let bytes = 0;
  for (let block = 0; block < blocks.length; block++) {
    const b = blocks[block]!;
    if (!select(block) || b.pages === 0) continue;
    const per = windowPagesFor(b.pageSize);
    for (let first = 0; first < b.pages; first += per) {
      const count = Math.min(per, b.pages - first);
      if (window.length && (pages + count > kWindowPages || bytes + count * b.pageSize > kWindowBytes)) {
        yield window;
        window = [];
        pages = 0;
        bytes = 0;
      }
      window.push({ block, first, count });
      pages += count;
      bytes += count * b.pageSize;
    }
  }
  if (window.length) yield window;
}

/**
 * Plans batches of about `batchBytes` (at least one page) over the selected blocks. With `active`
 * (one byte per page of a block), a batch is planned only where some page is active.
 */
export function planBatches(
  blocks: readonly { pages: number; pageSize: number }[],
  batchBytes = kDefaultBatchBytes,
  select: (index: number) => boolean = () => true,
  active?: (index: number) => Uint8Array | undefined,
): BatchPlan {
  const list: number[] = [];
  let maxBatchBytes = 0;
  blocks.forEach((b, block) => {
    if (!select(block)) return;
    const act = active?.(block);
    const per = Math.max(1, Math.floor(batchBytes / b.pageSize));
    for (let first = 0; first < b.pages; first += per) {
      const count = Math.min(per, b.pages - first);
      if (act && !hasActive(act, first, count)) continue;
      list.push(block, first, count);
      // a page larger than a piece is moved in pieces: the channel needs one piece of scratch
      const bytes = count === 1 && b.pageSize > kPieceBytes ? kPieceBytes : count * b.pageSize;
      maxBatchBytes = Math.max(maxBatchBytes, bytes);
    }
  });
  const sab = new SharedArrayBuffer(Math.max(list.length * 8, 8));
  new Float64Array(sab).set(list);
  return { batches: sab, count: list.length / 3, maxBatchBytes };
}

function hasActive(act: Uint8Array, first: number, count: number): boolean {
  for (let i = first; i < first + count; i++) if (act[i]) return true;
  return false;
}
