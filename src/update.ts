/**
 * `fixedram save --update`: refreshes a complete snapshot in place, writing only the pages whose
 * content changed (found by comparing each source page's XXH3 with the stored one), punching pages
 * that became zero, and writing pages that became non-zero.
 *
 * Commit protocol (docs/format-v1.md):
 *  1. validate: the snapshot is complete (or an interrupted update) and has exactly the same blocks;
 *  2. header := UPDATING (not COMPLETE), fdatasync — from here on readers refuse the file;
 *  3. channels rewrite changed pages; bitmaps and checksum tables are rewritten; fdatasync;
 *  4. header := COMPLETE, fdatasync.
 * Why a repair rewrites everything: after an interrupted update the stored checksums describe the
 * old pages while some slots already hold new ones, so "unchanged against the table" proves nothing.
 * A repair run therefore writes every present page and punches every absent one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { checkUnchanged, closeQuietly, pageSizeFor, type BlockArg } from './blocks';
import { runChannels } from './channels/pool';
import type { ChannelBlock } from './channels/messages';
import { explainInterrupt, ioError, isSystemError, snapshotError } from './errors';
import { encodeHeader, kFlagComplete, kFlagUpdating } from './format';
import { lockOutput } from './lock';
import { kSaveMask, kSaveRewrite, kSaveUpdate, kSaveWriteback, native } from './native';
import { kDefaultBatchBytes, planBatches } from './plan';
import type { ProgressSink } from './progress';
import { checkWriteOptions, dataMask, fsyncDir, openSources, refuseAliasing, writeHeader, writeTables } from './save';
import { newTables, openSnapshot, readTables, type BlockTables } from './snapshot';

export interface UpdateOptions {
  output: string;
  blocks: BlockArg[];
  channels?: number;
  pageSize?: number;
  fsync?: boolean;
  followSymlinks?: boolean;
  allowDevice?: boolean;
  batchBytes?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
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
}

/**
 * Updates the snapshot `output` in place from the blocks.
 * @throws ERR_SNAPSHOT_* (exit 3) when the file is not a complete snapshot with the same blocks —
 *   nothing is modified then; ERR_USAGE; system errors; ERR_INTERRUPTED (the file is left marked
 *   UPDATING; re-running repairs it).
 */
export async function update(opts: UpdateOptions): Promise<UpdateResult> {
  const started = process.hrtime.bigint();
  const { channels, output } = checkWriteOptions(opts);
  const doSync = opts.fsync ?? true;
  const hash64 = native().hash64;

  const files = openSources(opts.blocks, opts);
  let lock: ReturnType<typeof lockOutput> | undefined;
  let snapFd: number | undefined;
  try {
    refuseAliasing(output, opts.blocks.map((b, i) => ({ name: b.name, file: files[i]! })));
    lock = lockOutput(output);
    let snap: ReturnType<typeof openSnapshot>;
    try {
      snap = openSnapshot(output, true);
    } catch (err) {
      if (isSystemError(err) && err.code === 'ENOENT') {
        throw snapshotError('ERR_SNAPSHOT_INVALID', `'${output}' does not exist; --update needs a complete snapshot (run a full save first)`,
          { path: output });
      }
      throw err;
    }
    snapFd = snap.fd;
    if (!native().flock(snap.fd, true)) {
      throw ioError('ERR_LOCKED', `'${output}' is in use by another process (a load or verify is reading it)`, { path: output });
    }
    const h = snap.header;
    const repair = (h.flags & kFlagUpdating) !== 0;
    if (!repair && !(h.flags & kFlagComplete)) {
      throw snapshotError('ERR_SNAPSHOT_INCOMPLETE', `'${output}' is an incomplete snapshot (its save did not finish); ` +
        'run a full save instead of --update', { path: output });
    }

    // validate: same blocks, in any order on the command line
    const byName = new Map(opts.blocks.map((b, i) => [b.name, i]));
    const mismatch = (msg: string): never => {
      throw snapshotError('ERR_SNAPSHOT_INVALID', `cannot update '${output}': ${msg}; nothing was changed (run a full save)`,
        { path: output });
    };
    for (const b of h.blocks) if (!byName.has(b.name)) mismatch(`block '${b.name}' is in the snapshot but not given`);
    for (const a of opts.blocks) if (!h.blocks.some((b) => b.name === a.name)) mismatch(`block '${a.name}' is not in the snapshot`);
    const order = h.blocks.map((b) => byName.get(b.name)!);
    h.blocks.forEach((b, i) => {
      const f = files[order[i]!]!;
      const ps = pageSizeFor(f, opts.pageSize ?? b.pageSize);
      if (f.size !== b.length) mismatch(`block '${b.name}' is ${f.size} bytes, the snapshot has ${b.length}`);
      if (ps !== b.pageSize) mismatch(`block '${b.name}' has page size ${ps}, the snapshot has ${b.pageSize}`);
    });
    const tables: BlockTables[] = h.blocks.map((b, i) => (repair ? newTables(b.pages) : readTables(snap, b, i)));

    // mark: UPDATING, durably, before the first page is overwritten
    const marked = encodeHeader(h, kFlagUpdating, h.presentPages, h.metadataChecksums, hash64);
    fs.writeSync(snap.fd, marked, 0, marked.length, 0);
    if (doSync) fs.fdatasyncSync(snap.fd);
    opts.logger?.debug({ output, repair }, 'update: marked in progress');

    // pages
    const blocks: ChannelBlock[] = h.blocks.map((b, i) => {
      const f = files[order[i]!]!;
      const mask = dataMask({ name: b.name, path: f.path, base: 0, pageSize: b.pageSize,
        identity: { dev: f.dev, ino: f.ino, follow: f.follow } }, b.pages);
      return {
        name: b.name, pageSize: b.pageSize, pages: b.pages, snapBase: b.pagesOffset,
        livePath: f.path, liveDev: f.dev, liveIno: f.ino, liveFollow: f.follow, liveBase: 0,
        present: tables[i]!.present, csums: tables[i]!.csums, mask,
        flags: kSaveMask | kSaveUpdate | (repair ? kSaveRewrite : 0) | (doSync ? kSaveWriteback : 0),
      };
    });
    const plan = planBatches(h.blocks, opts.batchBytes ?? kDefaultBatchBytes);
    const total = h.blocks.reduce((s, b) => s + b.length, 0);
    opts.onProgress?.({ command: 'save', bytesDone: 0, bytesTotal: total });
    const stats = await runChannels({
      kind: 'save', channels, snapshotFd: snap.fd, snapshotPath: output, blocks, plan,
      ...(opts.signal ? { signal: opts.signal } : {}),
      onProgress: (done) => opts.onProgress?.({ command: 'save', bytesDone: done, bytesTotal: total }),
    }).catch((err: unknown) => {
      throw explainInterrupt(err, `'${output}' is left marked as being updated; re-run \`fixedram save --update\` to repair it`);
    });
    h.blocks.forEach((b, i) => checkUnchanged(files[order[i]!]!, b.name));
    opts.logger?.debug({ written: stats.writtenPages, punched: stats.punchedPages }, 'update: pages written');

    // commit
    const summary = writeTables(snap.fd, h, tables);
    if (doSync) fs.fdatasyncSync(snap.fd);
    opts.logger?.debug('update: data synced');
    writeHeader(snap.fd, h, summary, kFlagComplete);
    if (doSync) {
      fs.fdatasyncSync(snap.fd);
      fsyncDir(path.dirname(output));
    }
    const metaBytes = h.blocks.reduce((s, b) => s + b.bitmapBytes + b.checksumsBytes, 0) + 2 * marked.length;
    const presentPages = summary.counts.reduce((s, c) => s + c, 0);
    return {
      command: 'update', output, repaired: repair,
      blocks: h.blocks.map((b, i) => ({
        name: b.name, length: b.length, pageSize: b.pageSize, pages: b.pages,
        presentPages: summary.counts[i]!, zeroPages: b.pages - summary.counts[i]!,
      })),
      pagesChecked: h.blocks.reduce((s, b) => s + b.pages, 0),
      pagesWritten: stats.writtenPages,
      pagesPunched: stats.punchedPages,
      pagesUnchanged: stats.unchangedPages,
      presentPages,
      bytesRead: stats.bytesRead,
      bytesWritten: stats.bytesWritten + metaBytes,
      channels: Math.min(channels, Math.max(plan.count, 1)),
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } catch (err) {
    if (isSystemError(err) && err.path === undefined) err.path = output;
    throw err;
  } finally {
    closeQuietly(snapFd);
    lock?.release();
    for (const f of files) closeQuietly(f.fd);
  }
}
