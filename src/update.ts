/**
 * `fixedram save --update`: refreshes a complete snapshot in place, writing only the pages whose
 * content changed (found by comparing each source page's XXH3 with the stored one), punching pages
 * that became zero, and writing pages that became non-zero.
 *
 * Commit protocol (docs/format-v1.md):
 *  1. validate: the snapshot is complete (or an interrupted update) and has exactly the same blocks;
 *  2. header := UPDATING (not COMPLETE), fdatasync — from here on readers refuse the file;
 *  3. channels rewrite changed pages; bitmaps and checksum tables are rewritten (not when no page
 *     changed: then only the header is ever written); fdatasync;
 *  4. header := COMPLETE, fdatasync.
 * Why a repair rewrites everything: after an interrupted update the stored checksums describe the
 * old pages while some slots already hold new ones, so "unchanged against the table" proves nothing.
 * A repair run therefore writes every present page and punches every absent one.
 *
 * Where the time goes (UpdateResult.phases; --log-level debug logs them as 'update: phases (ms)'):
 * the channels' threads (started before the sources are even opened when the CLI runs, see
 * cli/early.ts) and the sources' data-extent walks start before the tables are read; the
 * UPDATING header's fdatasync runs on the libuv pool beside the walks (markSync), and the channels
 * start once it has settled, not once the walks have: each waits only until the walk has passed
 * its batch (ChannelBlock.maskReady); each channel hashes its batch straight from a mapping of the
 * source (native UpdatePages); write-back of the written pages is started from a pool thread while
 * the channels work, so no channel waits for the device and the final fdatasync finds little left.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import {
  checkUnchanged,
  closeQuietly,
  openSources,
  pageSizeFor,
  refuseAliasing,
  reopenChecked,
  sharedPageBytes,
  type OpenFile,
} from './blocks';
import type { BlockArg } from './block-args';
import { prestartChannels, type ChannelTeam } from './channels/pool';
import type { ChannelBlock } from './channels/messages';
import { encodeDeviceState, placeDeviceState, type DeviceState } from './devstate';
import { ioError, isSystemError, snapshotError } from './errors';
import { encodeHeader, kFlagComplete, kFlagUpdating } from './format';
import { fsyncDir } from './commit';
import { checkBatchBytes, checkFsync, checkWriteOptions } from './options';
import { phaseClock } from './phases';
import { lockOutput } from './lock';
import { fromNativeError, native } from './native';
import { kWindowPages, planBatches, windowPagesFor } from './plan';
import type { ProgressSink } from './progress';
import { writeHeader, writeTables, type MetadataSummary } from './writer';
import { newTables, openSnapshot, readTables, type BlockTables } from './snapshot';
import { checkTables, ExtentCursor, readTableWindow, tableSummary, writeTableWindow } from './tables';
import { segmentBlock, transfer, type TransferResult } from './transfer';
import { writebackPump } from './writeback';
import type { SnapshotHeader } from './format';

export interface UpdateOptions {
  output: string;
  blocks: BlockArg[];
  channels?: number;
  pageSize?: number;
  fsync?: boolean;
  followSymlinks?: boolean;
  allowDevice?: boolean;
  batchBytes?: number;
  /** Replaces the stored device state (vm save --update); without it the stored one is kept. */
  deviceState?: DeviceState;
  /** Called once every page has been compared and written, before the metadata and the fsync. */
  onPagesCopied?: () => void;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
  /**
   * Channel threads the caller started ahead (prestartChannels), so that their start-up overlaps
   * its own (the CLI starts them before it loads, see cli/early.ts): the update takes as many as
   * it needs instead of starting its own, and stops the rest.
   */
  team?: ChannelTeam;
}

export interface UpdateResult {
  command: 'update';
  output: string;
  /** True when the run repaired an interrupted update (every page rewritten). */
  repaired: boolean;
  blocks: { name: string; length: number; pageSize: number; pages: number; presentPages: number; zeroPages: number }[];
  pagesChecked: number;
  pagesWritten: number;
  pagesPunched: number;
  pagesUnchanged: number;
  presentPages: number;
  bytesRead: number;
  /** Page bytes plus metadata bytes written. */
  bytesWritten: number;
  channels: number;
  seconds: number;
  /**
   * Where the time went, in milliseconds: the phases in order (startup = the process's age at the
   * call: for the CLI, node and the modules), then what the channels spent inside 'pages', summed
   * over them (chRead, chHash, chWrite, chPunch, chCpu: their threads' CPU time in the page mover),
   * and writeback (the pump's calls). Also logged at debug level ('update: phases (ms)').
   */
  phases: Record<string, number>;
}

/**
 * Updates the snapshot `output` in place from the blocks.
 * @throws ERR_SNAPSHOT_* (exit 3) when the file is not a complete snapshot with the same blocks —
 *   nothing is modified then; ERR_USAGE; system errors; ERR_INTERRUPTED (the file is left marked
 *   UPDATING; re-running repairs it).
 */
export async function update(opts: UpdateOptions): Promise<UpdateResult> {
  const started = process.hrtime.bigint();
  const phases = phaseClock();
  // the first debug line loads the logger (pino, tens of milliseconds): a phase of its own
  opts.logger?.debug({ output: opts.output, channelsStartedAhead: opts.team !== undefined }, 'update: start');
  phases.lap('logger');
  let files: OpenFile[];
  let channels: number;
  let output: string;
  let doSync: boolean;
  let batchBytes: number;
  try {
    ({ channels, output } = checkWriteOptions(opts));
    doSync = checkFsync(opts.fsync);
    batchBytes = checkBatchBytes(opts.batchBytes);
    files = openSources(opts.blocks, opts);
  } catch (err) {
    opts.team?.dispose(); // given to be used or stopped
    throw err;
  }
  const hash64 = native().hash64;
  let lock: ReturnType<typeof lockOutput> | undefined;
  let snapFd: number | undefined;
  let team: ChannelTeam | undefined = opts.team;
  let scan: ReturnType<typeof scanSources> | undefined;
  let durable: Promise<number> | undefined;
  try {
    // The channels' threads start first, so that their start-up (a new isolate, the modules, the
    // addon: 30-90 ms each) overlaps all of the main thread's preparation below (lock, header,
    // tables, mark). The main thread is one of the channels (it has nothing else to do meanwhile):
    // one thread fewer; no more than the sources have batches; none for a windowed walk (its own
    // pool). What the header says later may still leave some unused (stopped then).
    if (!team && channels > 1) {
      const guess = files.map((f) => {
        const pageSize = pageSizeFor(f, opts.pageSize);
        return { pageSize, pages: Math.floor(f.size / pageSize) };
      });
      const batches = guess.reduce(
        (s, b) => s + Math.ceil(b.pages / Math.max(1, Math.floor(batchBytes / b.pageSize))),
        0,
      );
      if (batches > 1 && fitsOneWindow(guess)) team = prestartChannels(Math.min(channels, batches) - 1);
    }
    refuseAliasing(
      output,
      opts.blocks.map((b, i) => ({ name: b.name, file: files[i]! })),
    );
    lock = lockOutput(output);
    let snap: ReturnType<typeof openSnapshot>;
    try {
      snap = openSnapshot(output, true);
    } catch (err) {
      if (isSystemError(err) && err.code === 'ENOENT') {
        throw snapshotError(
          'ERR_SNAPSHOT_INVALID',
          `'${output}' does not exist; --update needs a complete snapshot (run a full save first)`,
          { path: output },
        );
      }
      throw err;
    }
    snapFd = snap.fd;
    if (!native().flock(snap.fd, true)) {
      throw ioError('ERR_LOCKED', `'${output}' is in use by another process (a load or verify is reading it)`, {
        path: output,
      });
    }
    const h = snap.header;
    const repair = (h.flags & kFlagUpdating) !== 0;
    if (!repair && !(h.flags & kFlagComplete)) {
      throw snapshotError(
        'ERR_SNAPSHOT_INCOMPLETE',
        `'${output}' is an incomplete snapshot (its save did not finish); ` + 'run a full save instead of --update',
        { path: output },
      );
    }

    // validate: same blocks, in any order on the command line
    const byName = new Map(opts.blocks.map((b, i) => [b.name, i]));
    const mismatch = (msg: string): never => {
      throw snapshotError(
        'ERR_SNAPSHOT_INVALID',
        `cannot update '${output}': ${msg}; nothing was changed (run a full save)`,
        { path: output },
      );
    };
    for (const b of h.blocks) if (!byName.has(b.name)) mismatch(`block '${b.name}' is in the snapshot but not given`);
    for (const a of opts.blocks)
      if (!h.blocks.some((b) => b.name === a.name)) mismatch(`block '${a.name}' is not in the snapshot`);
    const order = h.blocks.map((b) => byName.get(b.name)!);
    h.blocks.forEach((b, i) => {
      const f = files[order[i]!]!;
      const ps = pageSizeFor(f, opts.pageSize ?? b.pageSize);
      if (f.size !== b.length) mismatch(`block '${b.name}' is ${f.size} bytes, the snapshot has ${b.length}`);
      if (ps !== b.pageSize) mismatch(`block '${b.name}' has page size ${ps}, the snapshot has ${b.pageSize}`);
    });
    phases.lap('open');
    // Blocks with more pages than one window (whole tables would not fit the memory bound): the
    // windowed walk of updatePages below, whose memory is one window of tables
    const windowed = !fitsOneWindow(h.blocks);
    const plan = windowed ? undefined : planBatches(h.blocks, batchBytes);
    if (!plan || plan.count <= 1) {
      team?.dispose(); // (runChannels stops any the plan has no batch for)
      team = undefined;
    }
    // started now, so that they overlap reading the tables and marking: the walks of the sources'
    // data extents on the libuv pool
    scan = windowed
      ? undefined
      : scanSources(
          h.blocks.map((b, i) => ({ name: b.name, pages: b.pages, pageSize: b.pageSize, file: files[order[i]!]! })),
          channels,
        );
    const tables: BlockTables[] = windowed
      ? []
      : h.blocks.map((b, i) => (repair ? newTables(b.pages) : readTables(snap, b, i)));
    // the stored tables are checked whole (streamed) before the first byte changes
    if (windowed && !repair)
      h.blocks.forEach((b, i) => checkTables(snap.fd, output, b, h.metadataChecksums[i]!, h.presentPages[i]!));
    phases.lap('tablesRead');

    // mark: UPDATING, durably, before the first page is overwritten
    const marked = encodeHeader(h, kFlagUpdating, h.presentPages, h.metadataChecksums, hash64);
    fs.writeSync(snap.fd, marked, 0, marked.length, 0);
    // made durable on the libuv pool while the extent walks and the channels' start-up finish; no
    // page changes before it is (the channels start only once it has settled, see below)
    durable = doSync ? syncAsync(snap.fd) : Promise.resolve(0);
    phases.lap('mark');

    // pages
    let stats: TransferResult;
    let windowedSummary: MetadataSummary | undefined;
    let pump: ReturnType<typeof writebackPump> | undefined;
    if (windowed) {
      phases.ms.markSync = await durable;
      phases.lap('scan');
      opts.logger?.debug({ output, repair }, 'update: marked in progress');
      // the pages and the windows' tables go to the device while the walk goes on (as below)
      pump = doSync ? writebackPump(snap.fd, h.fileSize) : undefined;
      try {
        ({ stats, summary: windowedSummary } = await updatePages(
          snap.fd,
          output,
          h,
          h.blocks.map((_, i) => files[order[i]!]!),
          {
            repair,
            channels,
            fsync: doSync,
            batchBytes,
            ...(opts.signal ? { signal: opts.signal } : {}),
            ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
            ...(opts.logger ? { logger: opts.logger } : {}),
          },
        ));
      } finally {
        await pump?.stop();
      }
    } else {
      // Channels in worker threads start before the extent walks end: each waits until the mask of
      // its batch is final (ChannelBlock.maskReady). A failed walk stops them (scanStop) and is the
      // update's error. A single batch runs here, on the main thread, after the walks.
      const streamed = plan!.count > 1;
      const scanStop = new AbortController();
      let scanError: unknown;
      if (streamed) {
        scan!.masks.catch((err: unknown) => {
          scanError = err;
          scanStop.abort();
        });
      }
      const [masks, markSync] = await Promise.all([streamed ? scan!.arrays : scan!.masks, durable]);
      phases.ms.markSync = markSync;
      opts.logger?.debug({ output, repair }, 'update: marked in progress');
      const blocks: ChannelBlock[] = h.blocks.map((b, i) => {
        const f = files[order[i]!]!;
        return {
          name: b.name,
          pageSize: b.pageSize,
          pages: b.pages,
          snapBase: b.pagesOffset,
          live: { path: f.path, dev: f.dev, ino: f.ino, follow: f.follow },
          liveBase: 0,
          present: tables[i]!.present,
          csums: tables[i]!.csums,
          mask: masks[i]!,
          ...(streamed ? { maskReady: scan!.ready[i]!.ready, maskPartPages: scan!.ready[i]!.per } : {}),
          // no writeback: the channels never wait for the device; the pump below starts write-back
          intent: { update: true, rewrite: repair },
        };
      });
      phases.lap('scan');
      pump = doSync ? writebackPump(snap.fd, h.fileSize) : undefined;
      try {
        stats = await transfer({
          kind: 'save',
          command: 'save',
          channels,
          snapshot: { fd: snap.fd, path: output },
          batchBytes,
          ...(streamed
            ? { signal: opts.signal ? AbortSignal.any([opts.signal, scanStop.signal]) : scanStop.signal }
            : opts.signal
              ? { signal: opts.signal }
              : {}),
          ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
          ...(opts.logger ? { logger: opts.logger } : {}),
          interrupted: leftMarked(output),
          planned: { blocks, plan: plan!, mainJoins: true, ...(team ? { team } : {}) },
        }).catch((err: unknown) => {
          if (scanError !== undefined) throw scanError as Error; // what stopped the channels
          throw err;
        });
      } finally {
        await pump?.stop();
      }
    }
    phases.lap('pages');
    h.blocks.forEach((b, i) => checkUnchanged(files[order[i]!]!, b.name));
    opts.onPagesCopied?.();
    opts.logger?.debug(
      { written: stats.writtenPages, punched: stats.punchedPages, channelsTakenAhead: team?.taken ?? 0 },
      'update: pages written',
    );

    // commit. Nothing changed (and no repair): the tables on disk are already right, so only the
    // header is written (UPDATING above, COMPLETE here).
    const changed = repair || stats.writtenPages > 0 || stats.punchedPages > 0;
    const summary =
      windowedSummary ??
      (changed ? writeTables(snap.fd, h, tables) : { counts: [...h.presentPages], sums: [...h.metadataChecksums] });
    if (opts.deviceState) {
      // the new record replaces the old one at the end of the file (still marked UPDATING)
      const record = encodeDeviceState(opts.deviceState, hash64);
      const offset = h.deviceState?.offset ?? placeDeviceState(h.fileSize, record.length).offset;
      for (let done = 0; done < record.length;)
        done += fs.writeSync(snap.fd, record, done, record.length - done, offset + done);
      fs.ftruncateSync(snap.fd, offset + record.length);
      h.deviceState = { offset, bytes: record.length };
      h.fileSize = offset + record.length;
    }
    phases.lap('tablesWrite');
    if (doSync && (changed || opts.deviceState)) fs.fdatasyncSync(snap.fd);
    phases.lap('syncData');
    opts.logger?.debug('update: data synced');
    writeHeader(snap.fd, h, summary, kFlagComplete);
    if (doSync) {
      fs.fdatasyncSync(snap.fd);
      fsyncDir(path.dirname(output));
    }
    phases.lap('commit');
    const ms = (ns: number): number => Math.round(ns / 1e5) / 10;
    const timings = {
      ...phases.ms,
      // summed over the channels (channel-milliseconds), inside 'pages'
      chRead: ms(stats.readNs),
      chHash: ms(stats.hashNs),
      chWrite: ms(stats.writeNs),
      chPunch: ms(stats.punchNs),
      // CPU time of the channels' threads in the page mover (on a busy machine the wall times
      // above include waiting for a CPU; this does not)
      chCpu: ms(stats.cpuNs),
      writeback: pump?.calls ?? 0,
    };
    opts.logger?.debug({ phases: timings, xxh3: native().hashUnit() }, 'update: phases (ms)');
    const metaBytes =
      (changed ? h.blocks.reduce((s, b) => s + b.bitmapBytes + b.checksumsBytes, 0) : 0) + 2 * marked.length;
    const presentPages = summary.counts.reduce((s, c) => s + c, 0);
    return {
      command: 'update',
      output,
      repaired: repair,
      blocks: h.blocks.map((b, i) => ({
        name: b.name,
        length: b.length,
        pageSize: b.pageSize,
        pages: b.pages,
        presentPages: summary.counts[i]!,
        zeroPages: b.pages - summary.counts[i]!,
      })),
      pagesChecked: h.blocks.reduce((s, b) => s + b.pages, 0),
      pagesWritten: stats.writtenPages,
      pagesPunched: stats.punchedPages,
      // (the windowed walk never looks at pages without data before or now: they are unchanged too)
      pagesUnchanged: windowed
        ? h.blocks.reduce((s, b) => s + b.pages, 0) - stats.writtenPages - stats.punchedPages
        : stats.unchangedPages,
      presentPages,
      bytesRead: stats.bytesRead,
      bytesWritten: stats.bytesWritten + metaBytes,
      channels: stats.channels,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
      phases: timings,
    };
  } catch (err) {
    if (isSystemError(err) && err.path === undefined) err.path = output;
    throw err;
  } finally {
    team?.dispose();
    await scan?.done;
    await durable?.catch(() => undefined); // the descriptor stays open until its fdatasync has run
    closeQuietly(snapFd);
    lock?.release();
    for (const f of files) closeQuietly(f.fd);
  }
}

/** fdatasync on the libuv pool; resolves with the milliseconds it took. */
function syncAsync(fd: number): Promise<number> {
  const at = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    fs.fdatasync(fd, (err) => {
      if (err) reject(err);
      else resolve(Math.round(Number(process.hrtime.bigint() - at) / 1e5) / 10);
    });
  });
}

/**
 * Walks the sources' data extents (SEEK_DATA/SEEK_HOLE, as save's page walk does) on the libuv pool,
 * each block split into up to `parts` ranges walked at once. masks: one byte per page, 1 where the
 * source may hold data. done: settles when every walk has finished and its descriptor is closed
 * (the caller awaits it before returning, also after an error).
 */
function scanSources(
  list: readonly { name: string; pages: number; pageSize: number; file: OpenFile }[],
  parts: number,
): {
  masks: Promise<Uint8Array[]>;
  /** The masks, filled as the walks go (see ready). */
  arrays: Uint8Array[];
  /** Per block: how far each part's walk has come (markDataAsync's ready), parts of `per` pages. */
  ready: { ready: Int32Array; per: number }[];
  done: Promise<void>;
} {
  const fds: number[] = [];
  try {
    for (const b of list) {
      fds.push(
        reopenChecked(
          b.file.path,
          fs.constants.O_RDONLY,
          { dev: b.file.dev, ino: b.file.ino, follow: b.file.follow },
          b.name,
        ),
      );
    }
  } catch (err) {
    for (const fd of fds) closeQuietly(fd);
    throw err;
  }
  const masks = list.map((b) => sharedPageBytes(b.pages));
  const ready: { ready: Int32Array; per: number }[] = [];
  const walks: Promise<unknown>[] = [];
  list.forEach((b, i) => {
    // ranges of at least 64 Ki pages: a walk's fixed cost is a few system calls
    const n = Math.max(1, Math.min(parts, 4, Math.floor(b.pages / 65536)));
    const per = Math.max(1, Math.ceil(b.pages / n));
    const r = new Int32Array(new SharedArrayBuffer(4 * n));
    ready.push({ ready: r, per });
    for (let first = 0, k = 0; first < b.pages; first += per, k++) {
      walks.push(
        native()
          .markDataAsync(fds[i]!, 0, b.pageSize, first, Math.min(per, b.pages - first), masks[i]!, r.subarray(k, k + 1))
          .catch((err: unknown) => {
            throw fromNativeError(err, { path: b.file.path, block: b.name });
          }),
      );
    }
  });
  const all = Promise.all(walks).then(() => masks);
  all.catch(() => undefined); // handled by whoever awaits masks; never an unhandled rejection
  const done = Promise.allSettled(walks).then(() => {
    for (const fd of fds) closeQuietly(fd);
  });
  return { masks: all, arrays: masks, ready, done };
}

/** Whether every block's tables fit in one window of the windowed walk (plan.ts), all at once. */
function fitsOneWindow(blocks: readonly { pages: number; pageSize: number }[]): boolean {
  let pages = 0;
  for (const b of blocks) {
    if (b.pages > windowPagesFor(b.pageSize)) return false;
    pages += b.pages;
  }
  return pages <= kWindowPages;
}

/**
 * The update of blocks too large to hold their tables at once, window by window: reads the
 * window's stored tables, finds where the source holds data (SEEK_DATA/SEEK_HOLE, one walk per
 * block), hands the channels only pages that hold data now or were present before, and writes the
 * window's new tables (punching runs that became zero). A repair (an interrupted update) trusts no
 * stored table: every page of a window with data is rewritten, and the page slots and tables of a
 * window without are punched. Returns the statistics and the header's present counts and metadata
 * checksums (streamed over the file). Memory: one window of tables, whatever the block lengths.
 */
async function updatePages(
  fd: number,
  file: string,
  h: SnapshotHeader,
  sources: readonly OpenFile[],
  opts: {
    repair: boolean;
    channels: number;
    fsync: boolean;
    batchBytes: number;
    signal?: AbortSignal;
    onProgress?: ProgressSink;
    logger?: Logger;
  },
): Promise<{ stats: TransferResult; summary: MetadataSummary }> {
  const cursors = h.blocks.map((b, i) => {
    const f = sources[i]!;
    return new ExtentCursor(() => reopenChecked(f.path, fs.constants.O_RDONLY, f, b.name), f.path, 0, b.length);
  });
  try {
    const stats = await transfer({
      kind: 'save',
      command: 'save',
      channels: opts.channels,
      snapshot: { fd, path: file },
      batchBytes: opts.batchBytes,
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
      interrupted: leftMarked(file),
      blocks: h.blocks,
      prepare: (seg) => {
        const b = h.blocks[seg.block]!;
        const t = seg.tables;
        if (!opts.repair) readTableWindow(fd, file, b, seg.first, seg.count, t);
        cursors[seg.block]!.mark(seg.first * b.pageSize, b.pageSize, seg.count, t.mask);
        let any = false;
        for (let i = 0; i < seg.count; i++) {
          if (t.mask[i] || t.present[i]) {
            t.active[i] = 1;
            any = true;
          }
        }
        if (any && opts.repair) t.active.fill(1);
        return any;
      },
      channelBlock: (seg): ChannelBlock => {
        const b = h.blocks[seg.block]!;
        const f = sources[seg.block]!;
        return segmentBlock(b, seg, {
          live: { path: f.path, dev: f.dev, ino: f.ino, follow: f.follow },
          mask: true,
          intent: { update: true, rewrite: opts.repair },
        });
      },
      finish: (seg, worked) => {
        const b = h.blocks[seg.block]!;
        if (worked) {
          writeTableWindow(fd, b, seg.first, seg.count, seg.tables, true);
        } else if (opts.repair) {
          const off = b.pagesOffset + seg.first * b.pageSize;
          if (!native().punchHole(fd, off, seg.count * b.pageSize)) zeroFill(fd, off, seg.count * b.pageSize);
          writeTableWindow(fd, b, seg.first, seg.count, seg.tables, true);
        }
      },
    });
    const summary: MetadataSummary = { counts: [], sums: [] };
    for (const b of h.blocks) {
      const t = tableSummary(fd, file, b);
      summary.counts.push(t.count);
      summary.sums.push(t.sum);
    }
    return { stats, summary };
  } finally {
    for (const c of cursors) c.close();
  }
}

/** What an interrupted update leaves behind. */
function leftMarked(output: string): string {
  return `'${output}' is left marked as being updated; re-run \`fixedram save --update\` to repair it`;
}

function zeroFill(fd: number, offset: number, length: number): void {
  const zeros = new Uint8Array(Math.min(length, 1 << 20));
  for (let at = 0; at < length; at += zeros.length) {
    const n = Math.min(zeros.length, length - at);
    let done = 0;
    while (done < n) done += fs.writeSync(fd, zeros, done, n - done, offset + at + done);
  }
}
