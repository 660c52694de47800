/**
 * The page walk shared by save, update, verify and load: blocks are walked window by window
 * (plan.ts); for each window the command fills the window's tables (prepare), the channels run the
 * window's batches (only where a page has work), then the command consumes the tables (finish).
 * Memory is one window of tables plus the channels' bounded scratch, whatever the block lengths;
 * work follows the pages that have work, so a window without any is never handed to a channel.
 */
import { ChannelPool, mergeStats, type PoolOptions } from './channels/pool';
import { emptyStats, type ChannelBlock, type ChannelStats } from './channels/messages';
import { interruptedError } from './errors';
import { kWindowPages, planBatches, planWindows, type Segment } from './plan';
import { TableArena, type WindowTables } from './tables';

/** A segment of a window with its tables (views of the window's shared arena, zeroed). */
export interface WalkSegment extends Segment {
  tables: WindowTables & {
    /** Where the file read from holds data (filled by the command when it needs it). */
    mask: Uint8Array;
    /** Pages that need a channel; only batches holding an active page are planned. */
    active: Uint8Array;
  };
}

export interface WalkOptions extends PoolOptions {
  blocks: readonly { pages: number; pageSize: number }[];
  batchBytes: number;
  select?: (block: number) => boolean;
  /** Fills a segment's tables, mask and active pages; returns false when no page of it needs a channel. */
  prepare(seg: WalkSegment): boolean;
  /** The channels' view of a segment: a block of seg.count pages starting at page seg.first. */
  channelBlock(seg: WalkSegment): ChannelBlock;
  /** After the window's channels finished, for every segment (worked: it was handed to channels). */
  finish?(seg: WalkSegment, worked: boolean): void;
  /** Logical bytes walked so far. */
  onProgress?(bytesDone: number): void;
  /**
   * Called once the channels are started and ready, before the first window is prepared (vm save
   * stops the VM here: from then on every step is page work).
   */
  beforeFirstWindow?(): Promise<void>;
  /**
   * Channels the caller owns (vm save: one pool for its copy and its refresh, started while the
   * first pass plans): the walk runs on them and leaves them running; its own options apply.
   */
  pool?: ChannelPool;
  /** Awaited before the first window runs on `pool` (its start-up, overlapping the first window's planning). */
  poolReady?: Promise<unknown>;
}

export interface WalkResult extends ChannelStats {
  /** Most channels that ran at once. */
  channelsUsed: number;
}

/** Walks the selected blocks; bad pages come back with block indexes and page numbers of the whole block. */
export async function walk(opts: WalkOptions): Promise<WalkResult> {
  const select = opts.select ?? ((): boolean => true);
  let pages = 0;
  opts.blocks.forEach((b, i) => {
    if (select(i)) pages += b.pages;
  });
  const arena = new TableArena(Math.min(kWindowPages, pages));
  const total = emptyStats();
  const capacity = opts.badCapacity ?? 0;
  const pool = opts.pool ?? new ChannelPool(opts);
  let poolReady = opts.poolReady;
  let done = 0;
  try {
    if (opts.beforeFirstWindow) {
      if (pages > 0) await pool.prestart(opts.channels);
      await opts.beforeFirstWindow();
    }
    for (const window of planWindows(opts.blocks, select)) {
      if (opts.signal?.aborted) throw interruptedError('interrupted');
      let at = 0;
      const segs: WalkSegment[] = window.map((s) => {
        const seg = { ...s, tables: arena.slice(at, s.count) };
        at += s.count;
        return seg;
      });
      const work = segs.filter((seg) => opts.prepare(seg));
      const windowBytes = segs.reduce((sum, s) => sum + s.count * opts.blocks[s.block]!.pageSize, 0);
      const before = done;
      if (work.length) {
        const blocks = work.map((seg) => opts.channelBlock(seg));
        const plan = planBatches(blocks, opts.batchBytes, undefined, (i) => work[i]!.tables.active);
        if (poolReady) {
          await poolReady;
          poolReady = undefined;
        }
        const stats = await pool.run(blocks, plan, (bytes) => {
          done += bytes;
          opts.onProgress?.(done);
        });
        for (const bad of stats.bad) {
          const seg = work[bad.block]!;
          if (total.bad.length < capacity) total.bad.push({ ...bad, block: seg.block, page: seg.first + bad.page });
        }
        stats.bad = [];
        mergeStats(total, stats);
      }
      for (const seg of segs) opts.finish?.(seg, work.includes(seg));
      done = before + windowBytes;
      opts.onProgress?.(done);
      // let signals and progress through between windows
      await new Promise((resolve) => setImmediate(resolve));
    }
  } finally {
    if (pool !== opts.pool) await pool.close();
  }
  return { ...total, channelsUsed: pool.used };
}
