/**
 * `fixedram vm save`: snapshots a running QEMU over QMP.
 *
 * Shared-file RAM (every memory-backend block a memory-backend-file with share=on): with the VM
 * still running, ask QEMU for its RAM, set the capabilities, check the RAM files, lock the output,
 * create the temp file and copy every page of the RAM files into it with N channels (read, hash,
 * write, as save does; block names = QEMU's RAM block idstrs: save's preCopy; the channels stay
 * for the refresh), then stop the VM (save's beforePages), migrate with `x-ignore-shared` to a
 * temp file (the device state: everything but the shared RAM, a few hundred KB), and refresh the
 * copy: every page is hashed in place in a mapping of the RAM file and only the pages that
 * differ from the copy's checksum are written (those the guest changed meanwhile; the update
 * mover). Then resume / stay paused / quit, and only then write the metadata, fdatasync and
 * rename (save's commit).
 * Downtime = device state + one read and hash of the RAM + the changed pages. The snapshot is of
 * one instant (stopped from before the device state until the RAM files were checked unchanged
 * after the refresh) and replaces the output atomically once on disk; success is reported after
 * the commit.
 * Other RAM: QEMU's own mapped-ram (+ multifd) migration into a temp file beside the output, then
 * `convert` (which keeps the device state).
 * A failed save resumes a VM that it stopped, unless `then` is 'pause'.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { registerTemp, unregisterTemp } from '../cleanup';
import { FixedramError, usageError } from '../errors';
import type { ProgressSink } from '../progress';
import { escapeText, QmpClient, QmpError } from '../qmp';
import { checkChannels, checkFsync } from '../options';
import type { DeviceState } from '../devstate';
import { kMaxDeviceStateBytes, sharedFileDeviceState } from './devstate';
import { runState, setCapabilities, waitMigration } from './migrate';
import { vmRam } from './ram';
import type { WritePhase } from '../writer';
import { phaseClock } from '../phases';

export type VmThen = 'resume' | 'pause' | 'quit';

export interface VmSaveOptions {
  /** QEMU's QMP unix socket (one that no other client is connected to). */
  qmp: string;
  output: string;
  channels?: number;
  /** Refresh an existing snapshot of the same VM in place (shared-file RAM only). */
  update?: boolean;
  /** What the VM does afterwards (default 'resume': it runs). */
  then?: VmThen;
  fsync?: boolean;
  /** Milliseconds QEMU's migration may take (default 10 minutes). */
  migrationTimeoutMs?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
}

export interface VmSavedBlock {
  name: string;
  path?: string;
  length: number;
  pageSize: number;
  presentPages: number;
  zeroPages: number;
}

export interface VmSaveResult {
  command: 'vm save';
  output: string;
  /** shared-file: fixedram moved the RAM files; mapped-ram: QEMU wrote its RAM, fixedram converted it. */
  mode: 'shared-file' | 'mapped-ram';
  qemuVersion: string;
  machineType?: string;
  blocks: VmSavedBlock[];
  presentPages: number;
  zeroPages: number;
  /** --update only: pages rewritten / punched / unchanged. */
  pagesWritten?: number;
  pagesPunched?: number;
  pagesUnchanged?: number;
  deviceStateBytes: number;
  channels: number;
  then: VmThen;
  /** Seconds from the VM stopping to it running again (absent when it was not resumed). */
  downtimeSeconds?: number;
  /** Seconds the VM was stopped before fixedram had everything (device state + RAM) on disk. */
  stoppedSeconds: number;
  seconds: number;
}

const now = (): bigint => process.hrtime.bigint();
const secs = (a: bigint, b: bigint): number => Number(b - a) / 1e9;

/** A private temp file beside `output` (0600, created here so QEMU's O_TRUNC keeps our mode). */
function tempBeside(output: string, what: string): string {
  const tmp = path.join(
    path.dirname(output),
    `.${path.basename(output)}.${what}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`,
  );
  registerTemp(tmp);
  fs.closeSync(
    fs.openSync(
      tmp,
      fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW,
      0o600,
    ),
  );
  return tmp;
}

function dropTemp(tmp: string | undefined): void {
  if (tmp === undefined) return;
  fs.rmSync(tmp, { force: true });
  unregisterTemp(tmp);
}

/** Reads a file of at most `max` bytes (the device state QEMU wrote). */
function readBounded(file: string, max: number): Buffer {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const size = fs.fstatSync(fd).size;
    if (size > max)
      throw new FixedramError(
        'ERR_DEVICE_STATE_TOO_LARGE',
        4,
        `QEMU's device state is ${size} bytes, more than ${max}`,
      );
    const buf = Buffer.alloc(size);
    let off = 0;
    while (off < size) {
      const n = fs.readSync(fd, buf, off, size - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    fs.closeSync(fd);
  }
}

/** QEMU's machine type, e.g. `pc-q35-10.0` (undefined when QEMU does not say). */
export async function machineType(q: QmpClient): Promise<string | undefined> {
  const t = await q.execute<string>('qom-get', { path: '/machine', property: 'type' }).catch(() => undefined);
  return typeof t === 'string' ? t.replace(/-machine$/, '') : undefined;
}

export async function vmSave(opts: VmSaveOptions): Promise<VmSaveResult> {
  const started = now();
  // 'vm save: phases (ms)' at debug level: each phase's milliseconds since the one before
  const phases = phaseClock();
  const channels = checkChannels(opts.channels);
  if (!opts.output) throw usageError('an output file is required (-o FILE)');
  if (!opts.qmp) throw usageError('a QMP socket is required (--qmp SOCKET)');
  const then: VmThen = opts.then ?? 'resume';
  const output = path.resolve(opts.output);
  const fsync = checkFsync(opts.fsync);
  const log = opts.logger;

  const q = await QmpClient.connect(opts.qmp);
  phases.lap('qmpConnect');
  let stoppedAt: bigint | undefined;
  let tmp: string | undefined;
  let resuming: Promise<unknown> | undefined;
  let resumed: bigint | undefined;
  let restoreCaps: (() => Promise<void>) | undefined;
  try {
    const ram = await vmRam(q);
    const state = await runState(q);
    if (state.status === 'inmigrate') {
      throw new QmpError(
        'ERR_VM_STATE',
        'QEMU is waiting for an incoming migration (-incoming): there is no VM to save yet',
        { path: q.path },
      );
    }
    if (!ram.sharedFiles && opts.update) {
      throw usageError(`--update needs guest RAM in shared files (memory-backend-file,share=on): ${ram.reason}`);
    }
    const mType = await machineType(q);
    log?.info({ blocks: ram.blocks, shared: ram.sharedFiles !== undefined, reason: ram.reason }, 'vm save: RAM blocks');
    tmp = tempBeside(output, ram.sharedFiles ? 'vmstate' : 'mapped-ram');
    // the capabilities only matter to a migration: set before the VM stops, put back after it runs
    restoreCaps = await setCapabilities(q, ram.sharedFiles ? ['x-ignore-shared'] : ['mapped-ram', 'multifd']);
    if (!ram.sharedFiles) await q.execute('migrate-set-parameters', { 'multifd-channels': Math.min(channels, 255) });
    phases.lap('qmpQueries');

    const stop = async (): Promise<void> => {
      if (state.running) {
        await q.execute('stop');
        stoppedAt = now();
        phases.lap('stop');
      }
    };
    /** QEMU's migration into tmp (the VM is stopped); short polls: this is downtime. */
    const migrate = async (): Promise<void> => {
      await q.execute('migrate', { uri: `file:${tmp}` });
      await waitMigration(
        q,
        'migration to a file',
        opts.migrationTimeoutMs ?? 600_000,
        opts.signal,
        ram.sharedFiles ? 2 : 20,
      );
      phases.lap('deviceState');
    };

    let result: Omit<
      VmSaveResult,
      | 'command'
      | 'output'
      | 'mode'
      | 'qemuVersion'
      | 'channels'
      | 'then'
      | 'seconds'
      | 'stoppedSeconds'
      | 'downtimeSeconds'
      | 'machineType'
    >;
    // the VM resumes as soon as its RAM is copied (the metadata and the fsync happen while it runs)
    // (awaited by save: its fdatasync blocks this thread, and QEMU's answer is read before it)
    const onPagesCopied = async (): Promise<void> => {
      phases.lap('checked');
      if (then !== 'resume') return;
      resuming = q.execute('cont').then(() => {
        resumed = now();
        phases.lap('cont');
      });
      await resuming.catch(() => undefined);
    };
    const common = {
      output,
      channels,
      fsync,
      onPagesCopied,
      // the writer's phases, named by what ended: the copy while the VM ran, the refresh (or all
      // pages), the metadata, the commit's syncs and rename
      onPhase: (p: WritePhase): void =>
        phases.lap(
          {
            'pre-copied': 'preCopy',
            pages: 'refresh',
            tables: 'tables',
            synced: 'dataSync',
            completed: 'completeSync',
            renamed: 'rename',
            'dir synced': 'dirSync',
          }[p],
        ),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(log ? { logger: log } : {}),
    };
    if (ram.sharedFiles) {
      const blocks = ram.sharedFiles.map((b) => ({ name: b.name, path: b.backend.memPath }));
      let streamBytes = 0;
      /** Stops the VM and captures its device state (everything but the shared RAM). */
      const capture = async (): Promise<DeviceState> => {
        await stop();
        await migrate();
        const stream = readBounded(tmp!, kMaxDeviceStateBytes - 65536);
        streamBytes = stream.length;
        dropTemp(tmp);
        tmp = undefined;
        return sharedFileDeviceState(stream, { qemuVersion: q.version, ...(mType ? { machineType: mType } : {}) });
      };
      if (opts.update) {
        const deviceState = await capture();
        const r = await (await import('../update')).update({ ...common, blocks, deviceState });
        result = {
          blocks: r.blocks.map((b, i) => ({
            name: b.name,
            path: blocks[i]!.path,
            length: b.length,
            pageSize: b.pageSize,
            presentPages: b.presentPages,
            zeroPages: b.zeroPages,
          })),
          presentPages: r.presentPages,
          zeroPages: r.blocks.reduce((s, b) => s + b.zeroPages, 0),
          pagesWritten: r.pagesWritten,
          pagesPunched: r.pagesPunched,
          pagesUnchanged: r.pagesUnchanged,
          deviceStateBytes: streamBytes,
        };
      } else {
        // everything that can be done with the VM running is done first (sources checked, temp
        // file made, every page copied, channels started again): the VM stops just before the
        // refresh, which reads and hashes the RAM and writes only the pages changed since the copy.
        // While the copy runs a pool thread keeps the device writing it (no channel waits for the
        // device); the rest is written back by the commit's fdatasync, after the VM runs again.
        const r = await (
          await import('../save')
        ).save({
          ...common,
          blocks,
          beforePages: capture,
          preCopy: true,
          writeback: 'pump',
        });
        result = {
          blocks: r.blocks.map((b) => ({
            name: b.name,
            path: b.path,
            length: b.length,
            pageSize: b.pageSize,
            presentPages: b.presentPages,
            zeroPages: b.zeroPages,
          })),
          presentPages: r.presentPages,
          zeroPages: r.zeroPages,
          deviceStateBytes: streamBytes,
        };
      }
    } else {
      await stop();
      await migrate();
      await onPagesCopied(); // QEMU has written the RAM: the VM may run while it is converted
      const r = await (await import('../convert')).convert({ ...common, input: tmp });
      dropTemp(tmp);
      tmp = undefined;
      result = {
        blocks: r.blocks.map((b) => ({
          name: b.name,
          length: b.length,
          pageSize: b.pageSize,
          presentPages: b.presentPages,
          zeroPages: b.zeroPages,
        })),
        presentPages: r.blocks.reduce((s, b) => s + b.presentPages, 0),
        zeroPages: r.blocks.reduce((s, b) => s + b.zeroPages, 0),
        deviceStateBytes: r.deviceStateBytes,
      };
    }
    const saved = now();

    if (then === 'resume') {
      if (resuming) {
        await resuming;
      } else {
        await q.execute('cont');
        resumed = now();
      }
    } else if (then === 'quit') {
      await q.execute('quit').catch((err: unknown) => {
        if (!(err instanceof QmpError) || err.code !== 'ERR_QMP_DISCONNECTED') throw err;
      });
    }
    await restoreCaps();
    restoreCaps = undefined;
    phases.lap('end');
    log?.debug({ phases: { ...phases.ms, total: phases.total() } }, 'vm save: phases (ms)');
    return {
      command: 'vm save',
      output,
      mode: ram.sharedFiles ? 'shared-file' : 'mapped-ram',
      qemuVersion: q.version,
      ...(mType ? { machineType: mType } : {}),
      ...result,
      channels,
      then,
      ...(resumed !== undefined && stoppedAt !== undefined ? { downtimeSeconds: secs(stoppedAt, resumed) } : {}),
      stoppedSeconds: stoppedAt !== undefined ? secs(stoppedAt, saved) : 0,
      seconds: secs(started, now()),
    };
  } catch (err) {
    // a failed save resumes the VM it stopped (unless asked to leave it paused)
    if (resuming && err instanceof Error) {
      err.message += await resuming.then(
        () => '; the VM was resumed',
        (e: Error) => `; the VM could not be resumed: ${e.message}`,
      );
    } else if (stoppedAt !== undefined && then !== 'pause' && err instanceof Error) {
      if (q.closed) {
        err.message += '; QEMU is gone, the VM could not be resumed';
      } else {
        try {
          await q.execute('cont');
          err.message += '; the VM was resumed';
        } catch (e) {
          err.message += `; the VM could not be resumed: ${escapeText((e as Error).message)}`;
        }
      }
    } else if (stoppedAt !== undefined && err instanceof Error) {
      err.message += '; the VM stays paused (--then pause)';
    }
    throw err;
  } finally {
    await restoreCaps?.();
    dropTemp(tmp);
    q.close();
  }
}
