/**
 * The checks of the options every command core shares (channels, batch size, page size, fsync, the
 * required ones), in one place: the CLI parses flags into these options, library callers pass them
 * directly, and each core checks them here before any work. Messages speak of options, not flags.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import type { BlockArg } from './block-args';
import { usageError } from './errors';
import { isPowerOfTwo, kMaxPageSize, kMinPageSize } from './format';
import { checkOutputPath } from './outputs';
import { kDefaultBatchBytes } from './plan';

/**
 * The most channels a run may ask for. Why 64: each channel is a worker thread with its own batch
 * buffer (8 MiB by default) and descriptors, and page movement is bound by the disk and memory
 * bandwidth long before that; past a few channels per CPU more threads only add start-up and
 * contention (-j 256 on a sparse file took 70× the time of -j 2).
 */
export const kMaxChannels = 64;

/** The default channel count: one per CPU (at most kMaxChannels). */
export const defaultChannels = (): number => Math.min(kMaxChannels, Math.max(1, os.availableParallelism()));

/** Option channels: an integer from 1 to kMaxChannels; default one per CPU. */
export function checkChannels(n: number | undefined): number {
  const v = n ?? defaultChannels();
  if (!Number.isSafeInteger(v) || v < 1 || v > kMaxChannels) {
    throw usageError(`option channels must be an integer from 1 to ${kMaxChannels} (got ${n})`);
  }
  return v;
}

/** Option batchBytes: the bytes of pages a batch covers (at least one page is always taken); default kDefaultBatchBytes. */
export function checkBatchBytes(n: number | undefined): number {
  const v = n ?? kDefaultBatchBytes;
  if (!Number.isSafeInteger(v) || v < 0)
    throw usageError(`option batchBytes must be a non-negative integer (got ${n})`);
  return v;
}

/** Option fsync: default true (sync the data and the directory). */
export const checkFsync = (v: boolean | undefined): boolean => v ?? true;

/** Option pageSize, when given: a power of two from kMinPageSize to kMaxPageSize (1 GiB). */
export function checkPageSize(requested: number | undefined): number | undefined {
  if (requested !== undefined && (!isPowerOfTwo(requested) || requested < kMinPageSize || requested > kMaxPageSize)) {
    throw usageError(
      `option pageSize must be a power of two from ${kMinPageSize} to 1 GiB (${kMaxPageSize}) (got ${requested})`,
    );
  }
  return requested;
}

/** Refuses duplicate block names. */
export function checkUniqueNames(args: readonly BlockArg[]): void {
  const seen = new Set<string>();
  for (const a of args) {
    if (seen.has(a.name)) throw usageError(`block '${a.name}' is given more than once`, { block: a.name });
    seen.add(a.name);
  }
}

/** A required option that is a non-empty string (a path); `message` says what is missing. */
export function requireOption(value: string | undefined, message: string): string {
  if (!value) throw usageError(message);
  return value;
}

/**
 * Checks the options common to save and update: channels, output, blocks (at least one, unique
 * names); the output must be a regular file or nothing, before any work.
 * @returns the channel count and the absolute output path.
 */
export function checkWriteOptions(opts: { output: string; blocks: readonly BlockArg[]; channels?: number }): {
  channels: number;
  output: string;
} {
  const channels = checkChannels(opts.channels);
  requireOption(opts.output, 'an output file is required (-o FILE)');
  if (opts.blocks.length === 0) throw usageError('at least one block is required (-b NAME=PATH)');
  checkUniqueNames(opts.blocks);
  const output = path.resolve(opts.output);
  checkOutputPath(output); // a regular file or nothing, before any work
  return { channels, output };
}
