/**
 * Splitting blocks into batches of pages for the channels. A batch never spans two blocks; the
 * channels take batches from a shared counter, so a slow channel never holds up the others.
 */

/** Bytes of pages a batch covers (the channel's buffer size). */
export const kDefaultBatchBytes = 4 << 20;

export interface Batch {
  block: number;
  first: number;
  count: number;
}

export interface BatchPlan {
  /** (block, first page, page count) triples, in a shared Float64Array. */
  batches: SharedArrayBuffer;
  count: number;
  /** Largest batch in bytes (the scratch buffer a channel needs). */
  maxBatchBytes: number;
}

/** Plans batches of about `batchBytes` (at least one page) over the selected blocks. */
export function planBatches(
  blocks: readonly { pages: number; pageSize: number }[],
  batchBytes = kDefaultBatchBytes,
  select: (index: number) => boolean = () => true,
): BatchPlan {
  const list: Batch[] = [];
  let maxBatchBytes = 0;
  blocks.forEach((b, block) => {
    if (!select(block)) return;
    const per = Math.max(1, Math.floor(batchBytes / b.pageSize));
    for (let first = 0; first < b.pages; first += per) {
      const count = Math.min(per, b.pages - first);
      list.push({ block, first, count });
      maxBatchBytes = Math.max(maxBatchBytes, count * b.pageSize);
    }
  });
  const sab = new SharedArrayBuffer(Math.max(list.length * 3 * 8, 8));
  const view = new Float64Array(sab);
  list.forEach((b, i) => {
    view[3 * i] = b.block;
    view[3 * i + 1] = b.first;
    view[3 * i + 2] = b.count;
  });
  return { batches: sab, count: list.length, maxBatchBytes };
}
