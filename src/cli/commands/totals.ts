/** Totals over a result's blocks, under the names docs/json.md gives them. */
export function blockTotals(
  blocks: readonly { length: number; pages?: number; presentPages: number; zeroPages: number }[],
) {
  let bytes = 0;
  let pages = 0;
  let presentPages = 0;
  let zeroPages = 0;
  for (const b of blocks) {
    bytes += b.length;
    pages += b.pages ?? b.presentPages + b.zeroPages;
    presentPages += b.presentPages;
    zeroPages += b.zeroPages;
  }
  return { bytes, pages, presentPages, zeroPages };
}
