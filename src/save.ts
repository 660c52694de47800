/**
 * `fixedram save`: a fresh, atomic snapshot of RAM block files (the writer, writer.ts, does the work).
 */
import type { Logger } from 'pino';
import { checkUnchanged, closeQuietly, openSources, pageSizeFor, refuseAliasing } from './blocks';
import type { BlockArg } from './block-args';
import type { DeviceState } from './devstate';
import { checkBatchBytes, checkFsync, checkWriteOptions } from './options';
import type { ProgressSink } from './progress';
import { writeSnapshot, type SavedBlock, type SnapshotSource, type Writeback, type WritePhase } from './writer';

export type { SavedBlock, Writeback } from './writer';

export interface SaveOptions {
  output: string;
  blocks: BlockArg[];
  /** Worker threads; default: the number of CPUs. */
  channels?: number;
  /** Page size in bytes; default 4096, or the huge page size for hugetlbfs sources. */
  pageSize?: number;
  /** fsync the data and the directory (default true). */
  fsync?: boolean;
  followSymlinks?: boolean;
  /** Accept block devices as sources. */
  allowDevice?: boolean;
  /** Write page data with O_DIRECT (falls back to buffered I/O with a warning where refused). */
  directIo?: boolean;
  batchBytes?: number;
  /** A VM's device state to store with the RAM (see devstate.ts), e.g. from `vm save`. */
  deviceState?: DeviceState;
  /**
   * Called once the sources are checked, the temp file exists and the channels are started and
   * ready, just before the first page is read; the device state it returns is stored with the
   * RAM (instead of `deviceState`). vm save stops the VM and captures its device state here, so
   * none of the preparation falls into the VM's downtime.
   */
  beforePages?: () => Promise<DeviceState | undefined>;
  /**
   * When the device starts writing the pages (with fsync): 'channels' (default) each channel
   * starts write-back of what it wrote (sync_file_range) and may wait for a busy device; 'pump' a
   * libuv pool thread starts it again and again while the channels copy, and no channel ever
   * waits for the device (vm save: the VM is stopped while they copy); 'commit' nothing before the
   * fdatasync of the commit. Durability comes from that fdatasync in every case.
   */
  writeback?: Writeback;
  /**
   * Called once every page has been copied and checked unchanged, before the metadata and the
   * fsync, and awaited (vm save resumes the VM here: its RAM is no longer needed).
   */
  onPagesCopied?: () => void | Promise<void>;
  /**
   * With beforePages (vm save): copy every page while the source still changes (read, hash and
   * write as save does), then call beforePages (the VM stops) and write only the pages that changed
   * since (hashed in place in a mapping of the source, compared with the first pass's table): the
   * instant saved is the second pass, and it costs a read and hash of the RAM, not a copy.
   */
  preCopy?: boolean;
  /** Told where the save is ('pre-copied', 'pages', 'tables', the commit's steps): vm save's timing. */
  onPhase?: (phase: WritePhase) => void;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
}

export interface SaveResult {
  command: 'save';
  output: string;
  fileSize: number;
  blocks: SavedBlock[];
  presentPages: number;
  zeroPages: number;
  bytesRead: number;
  bytesWritten: number;
  channels: number;
  seconds: number;
}

/**
 * Saves the blocks into a new snapshot at `output`, atomically.
 * @throws ERR_USAGE (bad options), system errors (ENOENT, ENOSPC, …), ERR_LOCKED, ERR_SOURCE_CHANGED,
 *   ERR_INTERRUPTED.
 */
export async function save(opts: SaveOptions): Promise<SaveResult> {
  const started = process.hrtime.bigint();
  const { channels, output } = checkWriteOptions(opts);
  const files = openSources(opts.blocks, opts);
  try {
    refuseAliasing(
      output,
      opts.blocks.map((b, i) => ({ name: b.name, file: files[i]! })),
    );
    const sources = opts.blocks.map((b, i): SnapshotSource => ({
      name: b.name,
      length: files[i]!.size,
      pageSize: pageSizeFor(files[i]!, opts.pageSize),
      path: files[i]!.path,
      base: 0,
      identity: { dev: files[i]!.dev, ino: files[i]!.ino, follow: files[i]!.follow },
    }));
    const w = await writeSnapshot(output, sources, {
      command: 'save',
      interrupted: `no snapshot was written; '${output}' is unchanged`,
      channels,
      fsync: checkFsync(opts.fsync),
      batchBytes: checkBatchBytes(opts.batchBytes),
      ...(opts.directIo !== undefined ? { directIo: opts.directIo } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
      ...(opts.deviceState ? { deviceState: opts.deviceState } : {}),
      ...(opts.beforePages ? { beforePages: opts.beforePages } : {}),
      ...(opts.writeback !== undefined ? { writeback: opts.writeback } : {}),
      ...(opts.preCopy ? { preCopy: true } : {}),
      ...(opts.onPhase ? { onPhase: opts.onPhase } : {}),
      beforeCommit: async () => {
        files.forEach((f, i) => checkUnchanged(f, opts.blocks[i]!.name));
        await opts.onPagesCopied?.();
      },
    });
    const saved = w.layout.blocks.map((b, i): SavedBlock => ({
      name: b.name,
      path: files[i]!.path,
      length: b.length,
      pageSize: b.pageSize,
      pages: b.pages,
      presentPages: w.summary.counts[i]!,
      zeroPages: b.pages - w.summary.counts[i]!,
      pagesOffset: b.pagesOffset,
    }));
    return {
      command: 'save',
      output,
      fileSize: w.layout.fileSize,
      blocks: saved,
      presentPages: saved.reduce((s, b) => s + b.presentPages, 0),
      zeroPages: saved.reduce((s, b) => s + b.zeroPages, 0),
      bytesRead: w.bytesRead,
      bytesWritten: w.bytesWritten,
      channels: w.channels,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } finally {
    for (const f of files) closeQuietly(f.fd);
  }
}
