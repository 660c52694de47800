/** Small formatters for the human summaries on stdout. */
import type { PushResult } from '../s3/transfer';

export const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
export const rate = (bytes: number, s: number): string =>
  s > 0 && Number.isFinite(bytes / s) ? `${mib(bytes / s)}/s` : '-';
export const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;
export const sum = <T>(xs: readonly T[], f: (x: T) => number): number => xs.reduce((s, x) => s + f(x), 0);

/** The block fields shared by every JSON result that lists blocks (docs/json.md). */
export interface JsonBlock {
  name: string;
  length: number;
  pageSize: number;
  pages: number;
  presentPages: number;
  zeroPages: number;
  path?: string;
}

/** A block in the documented order of fields; `pages` is derived when the core result lacks it. */
export function jsonBlock<B extends Omit<JsonBlock, 'pages'> & { pages?: number }>(
  b: B,
): JsonBlock & Record<string, unknown> {
  const { name, length, pageSize, pages, presentPages, zeroPages, ...rest } = b;
  return { name, length, pageSize, pages: pages ?? presentPages + zeroPages, presentPages, zeroPages, ...rest };
}

/** The one-line summary of an upload (also printed by `save -o s3://`). */
export function s3PushLine(r: PushResult): string {
  if (r.mode === 'patch') {
    return (
      `  ${r.url}: page-level update: ${plural(r.pagesChanged, 'page')} changed; ${mib(r.bytesUploaded)} uploaded ` +
      `(changed pages and metadata) as patch layer ${r.patchLayers}; ${r.seconds.toFixed(2)} s, ${plural(r.channels, 'channel')}`
    );
  }
  return (
    `  ${r.url}: ${r.chunksPresent} of ${r.chunks} chunks of ${mib(r.chunkBytes)} hold data; ${r.chunksUploaded} uploaded ` +
    `(${mib(r.bytesUploaded)}), ${r.chunksReused} already there; ${r.seconds.toFixed(2)} s (${rate(r.bytesUploaded, r.seconds)}), ` +
    `${plural(r.channels, 'channel')}`
  );
}
