/**
 * A channel: takes batches from the shared counter until none are left (or the run is cancelled)
 * and moves their pages with the native addon. It never logs; it reports progress, its totals, or
 * one failure as messages. It runs in a worker thread (worker.ts), or inline on the main thread for
 * a job of a single batch, where starting a thread would cost more than the work.
 */
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { reopenChecked } from '../reopen';
import { integrityError, toRecord } from '../errors';
import {
  fromNativeError,
  kBadChecksum,
  kDiffersFromLive,
  kLoadMmapTarget,
  kLoadWillNeed,
  kLoadVerify,
  kLoadZeroAbsent,
  kSaveMask,
  kSaveRewrite,
  kSaveUpdate,
  kSaveWriteback,
  kVerifyAbsentZero,
  kVerifyChecksums,
  kVerifyDataMask,
  native,
  type Native,
} from '../native';
import {
  emptyStats,
  kCtlCancel,
  kCtlNextBatch,
  type BadPage,
  type ChannelBlock,
  type ChannelJob,
  type ChannelKind,
  type ChannelMessage,
} from './messages';

const kMaxOpenLive = 64;
const kNoMask = new Uint8Array(0);

const hex = (v: bigint): string => v.toString(16).padStart(16, '0');

/**
 * The first part of the mask of the pages [first, first + count) that is not final yet, or -1
 * when all of it is (the main thread's extent walk publishes it part by part, see
 * ChannelBlock.maskReady).
 */
function unfinishedPart(b: ChannelBlock, first: number, count: number): number {
  const ready = b.maskReady!;
  const per = b.maskPartPages!;
  for (let k = Math.floor(first / per); k * per < first + count; k++) {
    if (Atomics.load(ready, k) < Math.min(first + count, (k + 1) * per) - k * per) return k;
  }
  return -1;
}

/** Waits until the mask of the pages is final; false when the run is cancelled meanwhile. */
function awaitMask(b: ChannelBlock, first: number, count: number, control: Int32Array): boolean {
  for (let k = unfinishedPart(b, first, count); k >= 0; k = unfinishedPart(b, first, count)) {
    if (Atomics.load(control, kCtlCancel) !== 0) return false;
    // the walk (native, on the libuv pool) never notifies: look again after 1 ms
    Atomics.wait(b.maskReady!, k, Atomics.load(b.maskReady!, k), 1);
  }
  return true;
}

/** The page mover's flags for a block: the one place where intent becomes native flag bits. */
export function nativeFlags(kind: ChannelKind, b: Pick<ChannelBlock, 'intent' | 'mask' | 'liveMmap'>): number {
  const i = b.intent;
  if (kind === 'save') {
    return (
      (b.mask ? kSaveMask : 0) |
      (i.writeback ? kSaveWriteback : 0) |
      (i.update ? kSaveUpdate : 0) |
      (i.rewrite ? kSaveRewrite : 0)
    );
  }
  if (kind === 'load') {
    return (
      (i.verify ? kLoadVerify : 0) |
      (i.zeroAbsent ? kLoadZeroAbsent : 0) |
      (b.liveMmap ? kLoadMmapTarget : 0) |
      (i.readAhead ? kLoadWillNeed : 0)
    );
  }
  return (i.checksums ? kVerifyChecksums | kVerifyAbsentZero : 0) | (b.mask ? kVerifyDataMask : 0);
}

/** Runs a channel to the end; every outcome is reported through `post`, nothing is thrown. */
export function runChannel(job: ChannelJob, post: (m: ChannelMessage) => void): void {
  const ch = openChannel(job, post);
  if (!ch) return;
  while (ch.step(true) === 'more');
  ch.close();
}

/**
 * Runs a channel on the main thread beside the workers, one batch per turn of the event loop, so
 * that signals, the workers' messages and the pool's callbacks are still heard between batches (a
 * batch is a few milliseconds of work). It starts at once, while the workers are still starting
 * (a worker thread takes tens of milliseconds to start, longer on a busy machine): the main thread
 * would otherwise only wait for them. A batch whose extent walk is not there yet is not waited for
 * here (that would stop the event loop): the channel looks again on the next turn.
 */
export async function runChannelHere(job: ChannelJob, post: (m: ChannelMessage) => void): Promise<void> {
  const ch = openChannel(job, post);
  if (!ch) return;
  for (;;) {
    const s = ch.step(false);
    if (s === 'end') break;
    await new Promise((resolve) => (s === 'wait' ? setTimeout(resolve, 1) : setImmediate(resolve)));
  }
  ch.close();
}

/** One channel's state between batches (see runChannel, runChannelHere). */
interface OpenChannel {
  /**
   * Claims and runs the next batch: 'more' when there may be more, 'end' when none is left, the
   * run is cancelled or this channel failed (reported), 'wait' (only when !block) when the claimed
   * batch's mask is not final yet: the batch is kept and run by a later step.
   */
  step(block: boolean): 'more' | 'wait' | 'end';
  /** Reports the totals (unless the channel failed) and closes its descriptors. */
  close(): void;
}

function openChannel(job: ChannelJob, post: (m: ChannelMessage) => void): OpenChannel | undefined {
  const control = new Int32Array(job.control);
  let addon: Native;
  try {
    // loading the addon in this thread can fail too (EMFILE under a small `ulimit -n`): a record, like every failure
    addon = native();
  } catch (err) {
    Atomics.store(control, kCtlCancel, 2);
    post({ type: 'failed', error: toRecord(err) });
    return undefined;
  }
  const batches = new Float64Array(job.batches);
  const stats = emptyStats();
  const scratch = job.directIo
    ? new Uint8Array(addon.alignedBuffer(Math.max(job.scratchBytes, 4096)))
    : Buffer.allocUnsafe(Math.max(job.scratchBytes, 64));
  const scratch2 =
    job.kind === 'verify' && job.blocks.some((b) => b.live !== undefined)
      ? Buffer.allocUnsafe(Math.max(job.scratchBytes, 64))
      : Buffer.alloc(0);
  const bad = new BigUint64Array(Math.max(job.badCapacity, 1) * 3);
  const live = new Map<number, number>();
  const reopen = (fd: number, flags: number): number => fs.openSync(`/proc/self/fd/${fd}`, flags);
  let snapFd = -1;
  let direct = job.directIo;
  const snapFlags = (): number =>
    (job.kind === 'save' ? fs.constants.O_WRONLY : fs.constants.O_RDONLY) | (direct ? fs.constants.O_DIRECT : 0);

  const liveFd = (i: number, b: ChannelBlock): number => {
    const have = live.get(i);
    if (have !== undefined) return have;
    if (live.size >= kMaxOpenLive) {
      const [oldest, fd] = live.entries().next().value as [number, number];
      fs.closeSync(fd);
      live.delete(oldest);
    }
    const flags =
      job.kind === 'load' ? (b.liveMmap ? fs.constants.O_RDWR : fs.constants.O_WRONLY) : fs.constants.O_RDONLY;
    const to = b.live!;
    const fd =
      'fd' in to
        ? reopen(to.fd, flags)
        : reopenChecked(to.path, flags, { dev: to.dev, ino: to.ino, follow: to.follow }, b.name, to.beneath);
    live.set(i, fd);
    return fd;
  };

  let failed = false;
  const fail = (err: unknown): void => {
    failed = true;
    Atomics.store(control, kCtlCancel, 2);
    post({ type: 'failed', error: toRecord(err) });
  };
  try {
    snapFd = reopen(job.snapshotFd, snapFlags());
  } catch (err) {
    fail(err);
  }
  let pending = -1; // a claimed batch whose mask was not final yet (step(false))
  // load: while this batch is read, the device already reads the next one nobody has claimed yet
  // (its pages are asked for before a channel needs them: a channel's own read-ahead of its batch
  // starts only when it claims it, and the device idles between one channel's batches)
  const readAheadNext = (): void => {
    const k = Atomics.load(control, kCtlNextBatch);
    if (k >= job.batchCount) return;
    const nb = job.blocks[batches[3 * k]!]!;
    if (!nb.intent.readAhead) return;
    addon.willNeed(snapFd, nb.snapBase + batches[3 * k + 1]! * nb.pageSize, batches[3 * k + 2]! * nb.pageSize);
  };

  const step = (block: boolean): 'more' | 'wait' | 'end' => {
    if (failed) return 'end';
    try {
      if (Atomics.load(control, kCtlCancel) !== 0) return 'end';
      const i = pending >= 0 ? pending : Atomics.add(control, kCtlNextBatch, 1);
      pending = -1;
      if (i >= job.batchCount) return 'end';
      const blockIndex = batches[3 * i]!;
      const first = batches[3 * i + 1]!;
      const count = batches[3 * i + 2]!;
      const b = job.blocks[blockIndex]!;
      if (b.maskReady) {
        if (block) {
          if (!awaitMask(b, first, count, control)) return 'end'; // cancelled while waiting
        } else if (unfinishedPart(b, first, count) >= 0) {
          pending = i;
          return 'wait';
        }
      }
      const where = { block: b.name };
      const flags = nativeFlags(job.kind, b);
      const once = (): void => {
        if (job.kind === 'save') {
          // save and update take the same options and report the same counts first
          const o = {
            srcFd: liveFd(blockIndex, b),
            srcBase: b.liveBase,
            dstFd: snapFd,
            dstBase: b.snapBase,
            pageSize: b.pageSize,
            firstPage: first,
            pageCount: count,
            scratch,
            csums: b.csums,
            present: b.present,
            mask: b.mask ?? kNoMask,
            flags,
          };
          const update = b.intent.update === true;
          const r = update ? addon.updatePages(o) : addon.savePages(o);
          stats.presentPages += r[0];
          stats.bytesRead += r[1];
          stats.bytesWritten += r[2];
          stats.writtenPages += r[3];
          stats.punchedPages += r[4];
          stats.unchangedPages += r[5];
          if (update) {
            // the update mover's phase times (wall) and the thread's CPU time
            stats.readNs += r[6]!;
            stats.hashNs += r[7]!;
            stats.writeNs += r[8]!;
            stats.punchNs += r[9]!;
            stats.cpuNs += r[10]!;
          }
        } else if (job.kind === 'load') {
          if (b.intent.readAhead) readAheadNext();
          const r = addon.loadPages({
            snapFd,
            snapBase: b.snapBase,
            dstFd: liveFd(blockIndex, b),
            dstBase: b.liveBase,
            pageSize: b.pageSize,
            firstPage: first,
            pageCount: count,
            scratch,
            csums: b.csums,
            present: b.present,
            flags,
          });
          stats.bytesRead += r[0];
          stats.bytesWritten += r[1];
          stats.zeroedPages += r[2];
          if (r[3] >= 0) {
            const page = r[3];
            const expected = Buffer.from(b.csums.buffer, b.csums.byteOffset + 8 * page, 8).readBigUInt64LE(0);
            throw integrityError(
              `block '${b.name}' page ${page}: checksum mismatch (expected ${hex(expected)}, got ${hex(r[4])}) at ` +
                `offset 0x${(b.snapBase + page * b.pageSize).toString(16)}; the targets are incomplete`,
              { block: b.name, page, offset: b.snapBase + page * b.pageSize, path: job.snapshotPath },
            );
          }
        } else {
          const fd = b.live ? liveFd(blockIndex, b) : -1;
          const r = addon.verifyPages({
            snapFd,
            snapBase: b.snapBase,
            pageSize: b.pageSize,
            firstPage: first,
            pageCount: count,
            scratch,
            csums: b.csums,
            present: b.present,
            againstFd: fd,
            againstBase: b.liveBase,
            scratch2,
            bad,
            flags,
            mask: b.mask ?? kNoMask,
          });
          stats.bytesRead += r[0];
          const reported = Math.min(r[1], job.badCapacity - stats.bad.length);
          for (let k = 0; k < reported; k++) {
            const page = Number(bad[3 * k]!);
            const kind = Number(bad[3 * k + 1]!);
            const entry: BadPage = {
              block: blockIndex,
              page,
              kind: kind === kBadChecksum ? 'checksum' : kind === kDiffersFromLive ? 'differs' : 'absent-not-zero',
              actual: hex(bad[3 * k + 2]!),
            };
            if (kind === kBadChecksum) {
              entry.expected = hex(Buffer.from(b.csums.buffer, b.csums.byteOffset + 8 * page, 8).readBigUInt64LE(0));
            }
            stats.bad.push(entry);
          }
          stats.badCount += r[1];
        }
      };
      try {
        try {
          once();
        } catch (err) {
          // O_DIRECT refused on this file system or for this transfer: go on buffered, once.
          const e = err as { errno?: number; file?: number };
          const snapRole = job.kind === 'save' ? 1 : 0;
          if (!direct || e.errno !== osConstants.errno.EINVAL || e.file !== snapRole) throw err;
          direct = false;
          fs.closeSync(snapFd);
          snapFd = -1;
          snapFd = reopen(job.snapshotFd, snapFlags());
          post({
            type: 'warning',
            message: `direct I/O failed with EINVAL on '${job.snapshotPath}'; continuing with buffered I/O`,
          });
          once();
        }
      } catch (err) {
        // The addon says which of the call's two files failed: 0 is the first (the source of a save,
        // the snapshot of a load or verify), 1 the second.
        const file = (err as { file?: number }).file;
        const first = job.kind === 'save' ? b.live?.path : job.snapshotPath;
        const second = job.kind === 'save' ? job.snapshotPath : b.live?.path;
        const path = file === 0 ? first : file === 1 ? second : undefined;
        throw fromNativeError(err, { ...where, ...(path !== undefined ? { path } : {}) });
      }
      stats.batches++;
      post({ type: 'progress', bytes: count * b.pageSize });
      return 'more';
    } catch (err) {
      fail(err);
      return 'end';
    }
  };
  const close = (): void => {
    try {
      if (!failed) post({ type: 'done', stats });
    } finally {
      for (const fd of live.values()) fs.closeSync(fd);
      if (snapFd >= 0) fs.closeSync(snapFd);
    }
  };
  return { step, close };
}
