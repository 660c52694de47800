/**
 * The transfer: the one way a command moves pages between a snapshot and live files. It reports
 * progress, probes O_DIRECT on the snapshot, runs the channels (window by window through walk.ts,
 * or over blocks planned whole up front), logs the channels' warnings on the main thread, explains
 * an interrupt, and returns what it did. Commands say what is to be done with each block (its
 * intent, see channels/messages.ts) and how the channels reach its live file; the native flags
 * are the channel's business.
 */
import * as fs from 'node:fs';
import type { Logger } from 'pino';
import { probeDirectIo } from './blocks';
import type { ChannelBlock, ChannelKind, ChannelStats } from './channels/messages';
import { runChannels, type ChannelPool, type ChannelTeam } from './channels/pool';
import { explainInterrupt } from './errors';
import { planBatches, type BatchPlan } from './plan';
import type { ProgressSink } from './progress';
import { walk, type WalkSegment } from './walk';

/** Blocks walked window by window: the command fills each window's tables and consumes them. */
export interface WindowedWork {
  blocks: readonly { pages: number; pageSize: number }[];
  select?: (block: number) => boolean;
  /** Fills a segment's tables, mask and active pages; returns false when no page of it needs a channel. */
  prepare: (seg: WalkSegment) => boolean;
  /** The channels' view of a segment: a block of seg.count pages starting at page seg.first. */
  channelBlock: (seg: WalkSegment) => ChannelBlock;
  /** After the window's channels finished, for every segment (worked: it was handed to channels). */
  finish?: (seg: WalkSegment, worked: boolean) => void;
  /**
   * Called once the channels are started and ready, before the first window is prepared (vm save
   * stops the VM here: from then on every step is page work).
   */
  beforeFirstWindow?: () => Promise<void>;
  /** See WalkOptions.pool and poolReady (channels the caller owns; their options apply). */
  pool?: ChannelPool;
  poolReady?: Promise<unknown>;
}

/** Blocks whose tables are all in memory, planned in one go (default: batches of batchBytes). */
export interface PlannedWork {
  blocks: ChannelBlock[];
  plan?: BatchPlan;
  /** Channels started ahead (prestartChannels), so their start-up overlapped the caller's preparation. */
  team?: ChannelTeam;
  /** The main thread is one of the channels (see RunOptions.mainJoins); the team is one fewer. */
  mainJoins?: boolean;
}

export interface TransferCommon {
  /** save: live files → snapshot; load: snapshot → live files; verify: read both. */
  kind: ChannelKind;
  /** The command named by the progress events. */
  command: string;
  channels: number;
  snapshot: { fd: number; path: string };
  /** Move the snapshot's pages with O_DIRECT: probed first; where refused, a warning and buffered I/O. */
  directIo?: boolean;
  batchBytes: number;
  /** verify: how many bad pages are reported in detail. */
  badCapacity?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  /** Gets the channels' warnings (channels never log). */
  logger?: Logger;
  /** What an interrupt leaves behind, added to the interrupted error's message. */
  interrupted?: string;
}

/** The work: blocks walked window by window, or planned whole up front. */
export type TransferOptions = TransferCommon & (WindowedWork | { planned: PlannedWork });

export interface TransferResult extends ChannelStats {
  /** Most channels that ran at once (at least 1). */
  channels: number;
  /** Logical bytes of block data covered (the progress total). */
  bytesTotal: number;
}

/** Moves the pages; see the top of this file. */
export async function transfer(opts: TransferOptions): Promise<TransferResult> {
  const planned = 'planned' in opts ? opts.planned : undefined;
  const select = (!planned && (opts as WindowedWork).select) || ((): boolean => true);
  const blocks = planned ? planned.blocks : (opts as WindowedWork).blocks;
  const total = blocks.reduce((s, b, i) => (select(i) ? s + b.pages * b.pageSize : s), 0);
  const onProgress = (done: number): void =>
    opts.onProgress?.({ command: opts.command, bytesDone: done, bytesTotal: total });
  onProgress(0);
  let directIo = opts.directIo ?? false;
  const snapFlags = opts.kind === 'save' ? fs.constants.O_WRONLY : fs.constants.O_RDONLY;
  if (directIo && !probeDirectIo(opts.snapshot.path, snapFlags)) {
    opts.logger?.warn({ path: opts.snapshot.path }, 'the file system refuses O_DIRECT; using buffered I/O');
    directIo = false;
  }
  const common = {
    kind: opts.kind,
    channels: opts.channels,
    snapshotFd: opts.snapshot.fd,
    snapshotPath: opts.snapshot.path,
    directIo,
    onWarning: (message: string) => opts.logger?.warn(message),
    ...(opts.badCapacity !== undefined ? { badCapacity: opts.badCapacity } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    onProgress,
  };
  try {
    const stats = planned
      ? await runChannels({
          ...common,
          blocks: planned.blocks,
          plan: planned.plan ?? planBatches(planned.blocks, opts.batchBytes),
          ...(planned.team ? { team: planned.team } : {}),
          ...(planned.mainJoins ? { mainJoins: true } : {}),
        })
      : await walk({ ...common, ...windowedWork(opts as WindowedWork), batchBytes: opts.batchBytes });
    const { channelsUsed, ...rest } = stats;
    return { ...rest, channels: Math.max(1, channelsUsed), bytesTotal: total };
  } catch (err) {
    throw opts.interrupted !== undefined ? explainInterrupt(err, opts.interrupted) : err;
  }
}

/**
 * The channels' view of a window's segment of a block: seg.count pages from page seg.first, their
 * slots in the snapshot and their tables (with `mask`, the segment's data mask too). The caller says
 * how the channels reach the live file, where its page 0 lies in it (liveBase, default 0), and what
 * is to be done (intent).
 */
export function segmentBlock(
  b: { name: string; pageSize: number; pagesOffset: number },
  seg: WalkSegment,
  how: Pick<ChannelBlock, 'intent' | 'live' | 'liveMmap'> & { liveBase?: number; mask?: boolean },
): ChannelBlock {
  return {
    name: b.name,
    pageSize: b.pageSize,
    pages: seg.count,
    snapBase: b.pagesOffset + seg.first * b.pageSize,
    ...(how.live ? { live: how.live } : {}),
    liveBase: (how.liveBase ?? 0) + seg.first * b.pageSize,
    ...(how.liveMmap !== undefined ? { liveMmap: how.liveMmap } : {}),
    present: seg.tables.present,
    csums: seg.tables.csums,
    ...(how.mask ? { mask: seg.tables.mask } : {}),
    intent: how.intent,
  };
}

/** The walk's part of the options (only its own fields). */
function windowedWork(w: WindowedWork): WindowedWork {
  return {
    blocks: w.blocks,
    prepare: w.prepare,
    channelBlock: w.channelBlock,
    ...(w.select ? { select: w.select } : {}),
    ...(w.finish ? { finish: w.finish } : {}),
    ...(w.beforeFirstWindow ? { beforeFirstWindow: w.beforeFirstWindow } : {}),
    ...(w.pool ? { pool: w.pool } : {}),
    ...(w.poolReady ? { poolReady: w.poolReady } : {}),
  };
}
