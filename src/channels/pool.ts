/**
 * Runs a job on N channels (worker threads) and collects their results. runChannels: the pool is
 * created per job (channels start, drain the shared batch counter, report and exit). ChannelPool:
 * the channels live for a whole walk and are sent one job per window (see walk.ts).
 *
 * Why no message per batch: batches are planned up front into shared memory and each channel
 * claims the next one with Atomics.add, so an idle channel never waits for the main thread, and a
 * slow channel (a page-cache stall, a hole-free region) simply claims fewer batches.
 */
import { explainWorkerError } from '../limits';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { runChannel, runChannelHere } from './channel';
import { fromRecord, interruptedError } from '../errors';
import {
  emptyStats,
  kCtlCancel,
  kCtlNextBatch,
  kCtlWords,
  type ChannelBlock,
  type ChannelJob,
  type ChannelKind,
  type ChannelMessage,
  type ChannelStats,
} from './messages';
import type { BatchPlan } from '../plan';

export interface RunOptions {
  kind: ChannelKind;
  channels: number;
  snapshotFd: number;
  snapshotPath: string;
  blocks: ChannelBlock[];
  plan: BatchPlan;
  badCapacity?: number;
  signal?: AbortSignal;
  /** Called as batches finish, with the logical bytes covered so far. */
  onProgress?: (bytesDone: number) => void;
  /** Open the snapshot with O_DIRECT in the channels. */
  directIo?: boolean;
  /** Warnings from channels (the main thread logs them: channels never log). */
  onWarning?: (message: string) => void;
  /** Channels started ahead with prestartChannels; the job runs on them (any left over are stopped). */
  team?: ChannelTeam;
  /**
   * The main thread is one of the channels (runChannelHere): it starts on the batches at once,
   * while the worker threads (one fewer) are still starting. For a job whose main thread has
   * nothing else to do but wait.
   */
  mainJoins?: boolean;
}

/**
 * Worker threads started before their job is known, so that their start-up (a new isolate, the
 * modules, the addon: tens of milliseconds each) overlaps the main thread's own preparation. The
 * job is handed over by runChannels as the first message. dispose() stops channels never used.
 */
const kWorkerFile = path.join(__dirname, 'worker.js');

export interface ChannelTeam {
  /** The next idle channel, with what happened to it while it waited (undefined: none left). */
  take(): TeamSlot | undefined;
  /** Stops the channels not taken. */
  dispose(): void;
  /** How many channels were taken so far. */
  readonly taken: number;
}

export interface TeamSlot {
  worker: Worker;
  /** An error the worker reported before it was taken (its start-up failed). */
  early?: Error;
  exited: boolean;
}

export function prestartChannels(count: number): ChannelTeam {
  const idle: (TeamSlot & { detach(): void })[] = [];
  for (let i = 0; i < count; i++) {
    let worker: Worker;
    try {
      worker = new Worker(kWorkerFile, { name: `fixedram-channel-${i}` });
    } catch {
      // a thread or descriptor limit: fewer start ahead; runChannels starts the rest itself and
      // reports such a failure in one line
      break;
    }
    const slot: TeamSlot & { detach(): void } = {
      worker,
      exited: false,
      detach: () => {
        slot.worker.off('error', onError).off('exit', onExit).ref();
      },
    };
    // until runChannels takes it, a failing start-up is remembered (an unheard 'error' would be thrown)
    const onError = (err: Error): void => {
      slot.early ??= err;
    };
    const onExit = (): void => {
      slot.exited = true;
    };
    slot.worker.on('error', onError).on('exit', onExit).unref();
    idle.push(slot);
  }
  let taken = 0;
  return {
    take: () => {
      const slot = idle.shift();
      if (slot) {
        taken++;
        slot.detach();
      }
      return slot;
    },
    dispose: () => {
      for (const slot of idle.splice(0)) void slot.worker.terminate();
    },
    get taken() {
      return taken;
    },
  };
}

/** Runs the job; resolves with the merged statistics or rejects with the first channel's error. */
export async function runChannels(opts: RunOptions): Promise<ChannelStats & { channelsUsed: number }> {
  const control = new SharedArrayBuffer(kCtlWords * 4);
  const ctl = new Int32Array(control);
  const n = Math.max(1, Math.min(opts.channels, opts.plan.count));
  const job = {
    kind: opts.kind,
    snapshotFd: opts.snapshotFd,
    snapshotPath: opts.snapshotPath,
    blocks: opts.blocks,
    batches: opts.plan.batches,
    batchCount: opts.plan.count,
    control,
    scratchBytes: opts.plan.maxBatchBytes,
    badCapacity: opts.badCapacity ?? 0,
    directIo: opts.directIo ?? false,
  };
  const total = emptyStats();
  let done = 0;
  let firstError: Error | undefined;
  const cancel = (): void => {
    Atomics.store(ctl, kCtlCancel, 1);
  };
  if (opts.signal?.aborted) cancel();
  opts.signal?.addEventListener('abort', cancel, { once: true });

  const onMessage = (m: ChannelMessage, fail: (err: Error) => void): boolean => {
    if (m.type === 'progress') {
      done += m.bytes;
      opts.onProgress?.(done);
    } else if (m.type === 'warning') {
      opts.onWarning?.(m.message);
    } else if (m.type === 'done') {
      merge(total, m.stats);
      return true;
    } else {
      fail(fromRecord(m.error));
      return true;
    }
    return false;
  };
  const failWith = (err: Error): void => {
    if (!firstError) firstError = err;
    Atomics.store(ctl, kCtlCancel, 2);
  };

  // One batch: run it here. A worker thread would cost more to start than the batch takes.
  const inline =
    opts.plan.count <= 1 ? async (): Promise<void> => runChannel(job, (m) => void onMessage(m, failWith)) : undefined;

  const one = (index: number): Promise<void> =>
    new Promise<void>((resolve) => {
      const slot = opts.team?.take();
      if (slot && (slot.early || slot.exited)) {
        failWith(
          slot.early
            ? (explainWorkerError(slot.early, index) as Error)
            : new Error(`channel ${index} exited before its job was handed over`),
        );
        resolve();
        return;
      }
      let w: Worker;
      try {
        w = slot?.worker ?? new Worker(kWorkerFile, { workerData: job, name: `fixedram-channel-${index}` });
      } catch (err) {
        failWith(explainWorkerError(err, index) as Error); // a thread or descriptor limit says so in one line
        resolve();
        return;
      }
      if (slot) w.postMessage(job);
      let finished = false;
      w.on('message', (m: ChannelMessage) => {
        if (onMessage(m, failWith)) finished = true;
      });
      w.on('error', (err) => {
        finished = true;
        failWith(explainWorkerError(err, index) as Error); // a thread or descriptor limit says so in one line
      });
      w.on('exit', (code) => {
        if (!finished) failWith(new Error(`channel ${index} exited with code ${code} before finishing`));
        resolve();
      });
    });

  // the main thread as channel 0 beside n - 1 workers
  const joins = !inline && opts.mainJoins === true;
  try {
    await (inline
      ? inline()
      : Promise.all([
          // the workers first: their job is posted before the main thread takes its first batch
          ...Array.from({ length: joins ? n - 1 : n }, (_, i) => one(i + (joins ? 1 : 0))),
          ...(joins ? [runChannelHere(job, (m) => void onMessage(m, failWith))] : []),
        ]));
  } finally {
    opts.team?.dispose();
    opts.signal?.removeEventListener('abort', cancel);
  }
  if (firstError) throw firstError;
  if (Atomics.load(ctl, kCtlCancel) === 1) throw interruptedError('interrupted');
  total.bad.sort((a, b) => a.block - b.block || a.page - b.page);
  return { ...total, channelsUsed: n };
}

/** The part of a job that stays the same for every window of a walk. */
export interface PoolOptions {
  kind: ChannelKind;
  channels: number;
  snapshotFd: number;
  snapshotPath: string;
  badCapacity?: number;
  signal?: AbortSignal;
  directIo?: boolean;
  onWarning?: (message: string) => void;
}

/**
 * Channels that live for a whole walk: each window's job is posted to the workers already running
 * (more are started only when a window has more batches than running workers), so a walk over many
 * windows does not pay a thread start per window. Cancellation (the signal, a failed channel) is
 * shared by every window.
 */
export class ChannelPool {
  private readonly control = new SharedArrayBuffer(kCtlWords * 4);
  private readonly ctl = new Int32Array(this.control);
  private readonly workers: Worker[] = [];
  private firstError: Error | undefined;
  private readonly cancel = (): void => {
    Atomics.store(this.ctl, kCtlCancel, 1);
  };
  /** Most channels that ran one window at once. */
  used = 0;

  constructor(private readonly opts: PoolOptions) {
    if (opts.signal?.aborted) this.cancel();
    opts.signal?.addEventListener('abort', this.cancel, { once: true });
  }

  /** Runs one window's batches; resolves with its statistics or rejects with the first channel's error. */
  async run(blocks: ChannelBlock[], plan: BatchPlan, onProgress?: (bytes: number) => void): Promise<ChannelStats> {
    const total = emptyStats();
    if (this.firstError) throw this.firstError;
    if (Atomics.load(this.ctl, kCtlCancel) === 1) throw interruptedError('interrupted');
    if (plan.count === 0) return total;
    Atomics.store(this.ctl, kCtlNextBatch, 0);
    const job: ChannelJob = {
      kind: this.opts.kind,
      snapshotFd: this.opts.snapshotFd,
      snapshotPath: this.opts.snapshotPath,
      blocks,
      batches: plan.batches,
      batchCount: plan.count,
      control: this.control,
      scratchBytes: plan.maxBatchBytes,
      badCapacity: this.opts.badCapacity ?? 0,
      directIo: this.opts.directIo ?? false,
    };
    const n = Math.max(1, Math.min(this.opts.channels, plan.count));
    this.used = Math.max(this.used, n);
    const onMessage = (m: ChannelMessage): boolean => {
      if (m.type === 'progress') {
        onProgress?.(m.bytes);
      } else if (m.type === 'warning') {
        this.opts.onWarning?.(m.message);
      } else if (m.type === 'done') {
        merge(total, m.stats);
        return true;
      } else {
        this.fail(fromRecord(m.error));
        return true;
      }
      return false;
    };
    if (plan.count <= 1) {
      // One batch: run it here. A worker thread would cost more to start than the batch takes.
      runChannel(job, (m) => void onMessage(m));
    } else {
      this.start(n, false);
      await Promise.all(
        this.workers.slice(0, n).map(
          (w, index) =>
            new Promise<void>((resolve) => {
              const off = (): void => {
                w.off('message', message);
                w.off('error', error);
                w.off('exit', exit);
                resolve();
              };
              const message = (m: ChannelMessage): void => {
                if (onMessage(m)) off();
              };
              const error = (err: Error): void => {
                this.fail(explainWorkerError(err, index) as Error); // a thread or descriptor limit says so in one line
                off();
              };
              const exit = (code: number): void => {
                this.fail(new Error(`channel ${index} exited with code ${code} before finishing`));
                off();
              };
              w.on('message', message);
              w.on('error', error);
              w.on('exit', exit);
              w.postMessage(job);
            }),
        ),
      );
    }
    // eslint-disable-next-line @typescript-eslint/only-throw-error -- set by the workers' callbacks, an Error
    if (this.firstError) throw this.firstError;
    if (Atomics.load(this.ctl, kCtlCancel) === 1) throw interruptedError('interrupted');
    total.bad.sort((a, b) => a.block - b.block || a.page - b.page);
    return total;
  }

  /**
   * Starts `count` channels ahead of the first window and resolves once each has loaded its
   * modules and the addon (vm save does this before it stops the VM, so no thread start-up falls
   * into the VM's downtime). Bounded: a channel that neither says it is ready nor fails within
   * `timeoutMs` is an error.
   */
  async prestart(count: number, timeoutMs = 30_000): Promise<void> {
    const fresh = this.start(Math.min(this.opts.channels, count), true);
    await Promise.all(
      fresh.map(
        (w, i) =>
          new Promise<void>((resolve, reject) => {
            const timer = setTimeout(
              () => done(new Error(`channel ${i} did not start within ${timeoutMs / 1000} s`)),
              timeoutMs,
            );
            const done = (err?: Error): void => {
              clearTimeout(timer);
              w.off('message', message).off('error', error).off('exit', exit);
              if (err) reject(err);
              else resolve();
            };
            const message = (m: { type?: string }): void => {
              if (m.type === 'ready') done();
            };
            const error = (err: Error): void => done(explainWorkerError(err, i) as Error);
            const exit = (code: number): void =>
              done(new Error(`channel ${i} exited with code ${code} before its first window`));
            w.on('message', message).on('error', error).on('exit', exit);
          }),
      ),
    );
  }

  /** Starts channels until `n` run; returns the new ones. */
  private start(n: number, announce: boolean): Worker[] {
    const fresh: Worker[] = [];
    while (this.workers.length < n) {
      try {
        const w = new Worker(kWorkerFile, {
          workerData: { persistent: true, announce },
          name: `fixedram-channel-${this.workers.length}`,
        });
        this.workers.push(w);
        fresh.push(w);
      } catch (err) {
        throw explainWorkerError(err, this.workers.length, true); // e.g. EAGAIN at the thread limit
      }
    }
    return fresh;
  }

  /** Stops the workers (idle between windows). */
  async close(): Promise<void> {
    this.opts.signal?.removeEventListener('abort', this.cancel);
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.terminate()));
  }

  private fail(err: Error): void {
    if (!this.firstError) this.firstError = err;
    Atomics.store(this.ctl, kCtlCancel, 2);
  }
}

/** Adds the statistics of s to into. */
export function mergeStats(into: ChannelStats, s: ChannelStats): void {
  merge(into, s);
}

function merge(into: ChannelStats, s: ChannelStats): void {
  into.batches += s.batches;
  into.bytesRead += s.bytesRead;
  into.bytesWritten += s.bytesWritten;
  into.presentPages += s.presentPages;
  into.writtenPages += s.writtenPages;
  into.punchedPages += s.punchedPages;
  into.unchangedPages += s.unchangedPages;
  into.zeroedPages += s.zeroedPages;
  into.readNs += s.readNs;
  into.hashNs += s.hashNs;
  into.writeNs += s.writeNs;
  into.punchNs += s.punchNs;
  into.cpuNs += s.cpuNs;
  into.badCount += s.badCount;
  for (const b of s.bad) into.bad.push(b);
}
