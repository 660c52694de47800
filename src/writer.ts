/**
 * The writer of a new snapshot: its layout, its pages (through the transfer of the channels), its
 * bitmaps, checksum tables, device state and header, committed with the protocol of commit.ts.
 * Used by save and convert; update rewrites tables and header in place with writeTables/writeHeader.
 *
 * Order of events (the commit protocol, see docs/format-v1.md):
 *  1. check the output path (a regular file or nothing); open and check every source; plan the
 *     layout; take the output's lock; remove provably stale temp files (cleanup.ts);
 *  2. create a private (0600) temp file beside the output, size it (sparse) to the final length and
 *     write a provisional header (magic, no COMPLETE flag) that marks it as an incomplete snapshot;
 *  3. channels write the present pages at their fixed offsets and fill the bitmaps and checksums;
 *  4. write bitmaps, checksum tables and the header WITHOUT the complete flag; fdatasync;
 *  5. rewrite the header WITH the complete flag; fdatasync;
 *  6. give it the mode and owner of the snapshot it replaces; rename over the output; fsync the directory.
 * A crash before 6 leaves the old output untouched; every failure path removes the temp file.
 * Steps 1 (lock, stale temps), 2, 5 and 6 are the shared protocol of commit.ts.
 */
import * as fs from 'node:fs';
import type { Logger } from 'pino';
import { reopenChecked } from './blocks';
import type { ChannelBlock } from './channels/messages';
import { encodeDeviceState, type DeviceState } from './devstate';
import { encodeHeader, kFlagComplete, packBitmapCount, planLayout, type SnapshotLayout } from './format';
import { writeAt, writeAtomically, type CommitPhase } from './commit';
import { checkBatchBytes } from './options';
import { fromNativeError, native } from './native';
import type { ProgressSink } from './progress';
import type { BlockTables } from './snapshot';
import { ExtentCursor, readTableWindow, tableSummary, writeTableWindow } from './tables';
import { ChannelPool } from './channels/pool';
import { segmentBlock, transfer } from './transfer';
import { writebackPump } from './writeback';

export type Writeback = 'channels' | 'pump' | 'commit';

export interface SavedBlock {
  name: string;
  path: string;
  length: number;
  pageSize: number;
  pages: number;
  presentPages: number;
  zeroPages: number;
  pagesOffset: number;
}

/** Per-block present counts and metadata checksums, as the header stores them. */
export interface MetadataSummary {
  counts: number[];
  sums: bigint[];
}

/**
 * Writes every block's bitmap and checksum table at its offset, and returns what the header needs
 * to describe them.
 */
export function writeTables(fd: number, layout: SnapshotLayout, tables: readonly BlockTables[]): MetadataSummary {
  const hash64 = native().hash64;
  const summary: MetadataSummary = { counts: [], sums: [] };
  layout.blocks.forEach((b, i) => {
    const t = tables[i]!;
    const meta = new Uint8Array(b.bitmapBytes + b.checksumsBytes);
    const { bitmap, count } = packBitmapCount(t.present, b.pages);
    meta.set(bitmap, 0);
    meta.set(t.csums, b.bitmapBytes);
    summary.counts.push(count);
    summary.sums.push(hash64(meta));
    writeAt(fd, meta.subarray(0, b.bitmapBytes), b.bitmapOffset);
    writeAt(fd, meta.subarray(b.bitmapBytes), b.checksumsOffset);
  });
  return summary;
}

/** Writes the header and block table with `flags`. */
export function writeHeader(fd: number, layout: SnapshotLayout, summary: MetadataSummary, flags: number): void {
  writeAt(fd, encodeHeader(layout, flags, summary.counts, summary.sums, native().hash64), 0);
}

/** Where the pages of one block of a new snapshot come from. */
export interface SnapshotSource {
  name: string;
  length: number;
  pageSize: number;
  /** The file holding the block; page i is at base + i * pageSize. */
  path: string;
  base: number;
  /** An open descriptor of it (channels reopen it), or else the identity channels check when they open path. */
  fd?: number;
  identity?: { dev: bigint; ino: bigint; follow: boolean };
  /**
   * Pages that may hold data (e.g. a QEMU bitmap); the others are taken as zero without reading.
   * @deprecated one byte per page of the whole block: use maskWindow.
   */
  mask?: Uint8Array;
  /** The same, one window at a time: one byte per page of [first, first + count). */
  maskWindow?: (first: number, count: number) => Uint8Array;
}

export interface WriteOptions {
  command: 'save' | 'convert';
  channels: number;
  fsync: boolean;
  directIo?: boolean;
  batchBytes?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
  /** Called after the pages are written and before the commit: throw to abort (e.g. a source changed). */
  beforeCommit?: () => void | Promise<void>;
  /** Stored after the last page region (flag DEVICE_STATE). */
  deviceState?: DeviceState;
  /** See SaveOptions.beforePages. */
  beforePages?: () => Promise<DeviceState | undefined>;
  /** See SaveOptions.writeback (default 'channels'). */
  writeback?: Writeback;
  /** See SaveOptions.preCopy. */
  preCopy?: boolean;
  /** What an interrupt leaves behind, said in the interrupted error's message. */
  interrupted?: string;
  /** See SaveOptions.onPhase. */
  onPhase?: (phase: WritePhase) => void;
}

/**
 * Where a write is (for a caller's timing): the copy made while the source ran ('pre-copied'),
 * every page written ('pages'), the metadata written ('tables'), then the commit's steps.
 */
export type WritePhase = 'pre-copied' | 'pages' | 'tables' | CommitPhase;

export interface WriteResult {
  layout: SnapshotLayout;
  summary: MetadataSummary;
  bytesRead: number;
  bytesWritten: number;
  channels: number;
}

/**
 * Writes the pages of every source into a fresh (sparse) snapshot file and its bitmaps and checksum
 * tables, window by window; returns what the header needs. Memory: one window of tables and the
 * channels' bounded scratch, whatever the block lengths.
 */
async function writePages(
  fd: number,
  file: string,
  layout: SnapshotLayout,
  sources: readonly SnapshotSource[],
  opts: WriteOptions & {
    beforeFirstWindow?: () => Promise<void>;
    /**
     * 'refresh': the temp file holds an earlier pass's pages and tables: only what changed since is
     * written (the update mover), the tables rewritten.
     */
    pass?: 'refresh';
    /** Channels shared by the passes of one snapshot (see WalkOptions.pool). */
    pool?: ChannelPool;
    poolReady?: Promise<unknown>;
  },
): Promise<{ summary: MetadataSummary; bytesRead: number; bytesWritten: number; channels: number }> {
  const refresh = opts.pass === 'refresh';
  const cursors = layout.blocks.map((b, i) => {
    const src = sources[i]!;
    return new ExtentCursor(
      src.fd ?? ((): number => reopenChecked(src.path, fs.constants.O_RDONLY, src.identity!, src.name)),
      src.path,
      src.base,
      src.base + b.length,
    );
  });
  const counts = layout.blocks.map(() => 0);
  const writeback = opts.fsync && (opts.writeback ?? 'channels') === 'channels';
  try {
    const stats = await transfer({
      kind: 'save',
      command: opts.command,
      channels: opts.channels,
      snapshot: { fd, path: file },
      directIo: opts.directIo ?? false,
      batchBytes: checkBatchBytes(opts.batchBytes),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
      ...(opts.interrupted !== undefined ? { interrupted: opts.interrupted } : {}),
      blocks: layout.blocks,
      ...(opts.beforeFirstWindow ? { beforeFirstWindow: opts.beforeFirstWindow } : {}),
      ...(opts.pool ? { pool: opts.pool } : {}),
      ...(opts.poolReady ? { poolReady: opts.poolReady } : {}),
      prepare: (seg) => {
        const b = layout.blocks[seg.block]!;
        const src = sources[seg.block]!;
        const t = seg.tables;
        if (refresh) readTableWindow(fd, file, b, seg.first, seg.count, t);
        try {
          cursors[seg.block]!.mark(src.base + seg.first * b.pageSize, b.pageSize, seg.count, t.mask);
        } catch (err) {
          throw fromNativeError(err, { path: src.path, block: src.name });
        }
        if (src.mask) for (let i = 0; i < seg.count; i++) t.mask[i]! &= src.mask[seg.first + i]!;
        if (src.maskWindow) {
          const m = src.maskWindow(seg.first, seg.count);
          for (let i = 0; i < seg.count; i++) t.mask[i]! &= m[i]!;
        }
        let any = false;
        for (let i = 0; i < seg.count; i++) {
          if (t.mask[i] || t.present[i]) {
            t.active[i] = 1;
            any = true;
          }
        }
        return any;
      },
      channelBlock: (seg): ChannelBlock => {
        const b = layout.blocks[seg.block]!;
        const src = sources[seg.block]!;
        return segmentBlock(b, seg, {
          live: src.fd !== undefined ? { fd: src.fd, path: src.path } : { path: src.path, ...src.identity! },
          liveBase: src.base,
          mask: true,
          intent: { writeback, update: refresh },
        });
      },
      finish: (seg, worked) => {
        if (worked)
          counts[seg.block]! += writeTableWindow(
            fd,
            layout.blocks[seg.block]!,
            seg.first,
            seg.count,
            seg.tables,
            refresh,
          );
      },
    });
    // the metadata checksums, streamed over the tables as written (their holes are not read)
    const summary: MetadataSummary = { counts, sums: layout.blocks.map((b) => tableSummary(fd, file, b).sum) };
    return {
      summary,
      bytesRead: stats.bytesRead,
      bytesWritten: stats.bytesWritten,
      channels: stats.channels,
    };
  } finally {
    for (const c of cursors) c.close();
  }
}

/**
 * Writes a new snapshot of `sources` at `output` with the commit protocol described at the top of
 * this file: lock, temp file, channels, metadata, complete flag, rename. The caller has checked
 * that the output is none of the sources.
 */
export async function writeSnapshot(
  output: string,
  sources: readonly SnapshotSource[],
  opts: WriteOptions,
): Promise<WriteResult> {
  let record = opts.deviceState ? encodeDeviceState(opts.deviceState, native().hash64) : undefined;
  const specs = sources.map((s) => ({ name: s.name, length: s.length, pageSize: s.pageSize }));
  let layout = planLayout(specs, record?.length);
  let summary: MetadataSummary | undefined;
  const pages = await writeAtomically(
    output,
    {
      size: layout.fileSize,
      fsync: opts.fsync,
      removeStaleTemps: true,
      ...(opts.logger ? { logger: opts.logger } : {}),
      ...(opts.onPhase ? { onPhase: opts.onPhase } : {}),
      // a provisional header (magic, no COMPLETE flag) from the start: it marks the file as an
      // incomplete snapshot of ours, which is what lets a later save remove it if we are killed
      provisional: (fd) =>
        writeHeader(fd, layout, { counts: layout.blocks.map(() => 0), sums: layout.blocks.map(() => 0n) }, 0),
      complete: (fd) => writeHeader(fd, layout, summary!, kFlagComplete),
    },
    async ({ fd, path: tmp }) => {
      opts.logger?.debug({ output, tmp, fileSize: layout.fileSize, channels: opts.channels }, 'layout planned');
      // pages, window by window: where the source holds data (one SEEK_DATA/SEEK_HOLE walk per
      // block), batches only there, and each window's tables written as soon as it is done
      const beforePages = opts.beforePages;
      let pump: ReturnType<typeof writebackPump> | undefined;
      const startPump = (): void => {
        if (opts.fsync && opts.writeback === 'pump') pump = writebackPump(fd, layout.fileSize);
      };
      let written: Awaited<ReturnType<typeof writePages>>;
      // a copy and its refresh run on one pool of channels, started as the copy plans its first
      // window (buffered I/O only: the pool keeps the options it was made with)
      let pool: ChannelPool | undefined;
      let poolReady: Promise<unknown> | undefined;
      let pumpStopping: Promise<void> | undefined;
      try {
        let preCopy: Awaited<ReturnType<typeof writePages>> | undefined;
        if (opts.preCopy && beforePages) {
          if (!opts.directIo) {
            pool = new ChannelPool({
              kind: 'save',
              channels: opts.channels,
              snapshotFd: fd,
              snapshotPath: tmp,
              directIo: false,
              ...(opts.signal ? { signal: opts.signal } : {}),
              onWarning: (message: string) => opts.logger?.warn(message),
            });
            poolReady = pool.prestart(opts.channels);
            poolReady.catch(() => undefined); // the walk awaits it; a failure before that must not go unheard
          }
          // the copy made while the source still changes; with 'pump' the device writes it meanwhile
          startPump();
          try {
            preCopy = await writePages(fd, tmp, layout, sources, {
              ...opts,
              ...(pool ? { pool, poolReady: poolReady! } : {}),
            });
          } finally {
            // told to stop, not waited for: its last sync_file_range may still be submitting the
            // copy while the VM stops and the refresh runs (it costs the device, not the CPU)
            pumpStopping = pump?.stop();
            pump = undefined;
          }
          opts.logger?.debug({ bytesWritten: preCopy.bytesWritten }, 'pages pre-copied');
          opts.onPhase?.('pre-copied');
        }
        if (!beforePages) startPump();
        written = await writePages(fd, tmp, layout, sources, {
          ...opts,
          ...(preCopy ? { pass: 'refresh' as const } : {}),
          ...(pool ? { pool } : {}),
          // a second pass over the same bytes: progress was reported by the first
          ...(preCopy ? { onProgress: undefined } : {}),
          ...(beforePages
            ? {
                beforeFirstWindow: async (): Promise<void> => {
                  const ds = await beforePages();
                  if (ds) {
                    // the device state goes after the last page region: the pages stay where they were planned
                    record = encodeDeviceState(ds, native().hash64);
                    layout = planLayout(specs, record.length);
                    fs.ftruncateSync(fd, layout.fileSize);
                  }
                  if (!preCopy) startPump();
                },
              }
            : {}),
        });
        if (preCopy) {
          written = {
            ...written,
            bytesRead: preCopy.bytesRead + written.bytesRead,
            bytesWritten: preCopy.bytesWritten + written.bytesWritten,
          };
        }
        opts.onPhase?.('pages');
        opts.logger?.debug({ bytesWritten: written.bytesWritten }, 'pages written');
        await opts.beforeCommit?.();
      } finally {
        // after beforeCommit (vm save resumes the VM there): neither the pump's last call nor the
        // channels' exit falls into the VM's downtime
        await pumpStopping;
        await pump?.stop();
        await pool?.close();
      }

      // the metadata, still without the COMPLETE flag (writeAtomically syncs, marks complete, renames)
      summary = written.summary;
      if (record && layout.deviceState) writeAt(fd, record, layout.deviceState.offset);
      writeHeader(fd, layout, summary, 0);
      opts.onPhase?.('tables');
      return written;
    },
  );
  return {
    layout,
    summary: pages.summary,
    bytesRead: pages.bytesRead,
    bytesWritten: pages.bytesWritten,
    channels: pages.channels,
  };
}
