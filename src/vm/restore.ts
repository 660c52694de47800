/**
 * `fixedram vm restore`: brings a VM saved by `vm save` back into a QEMU started with
 * `-incoming defer` and the same RAM backends.
 *
 * Order: the snapshot and its device state are read and checked, QEMU is asked for its state and
 * RAM blocks, and the blocks are matched (names, sizes, page sizes) — any mismatch is exit 3 before
 * anything is written. Then the RAM files are loaded with N channels, the device state is fed to
 * `migrate-incoming` (x-ignore-shared on the incoming side too), and once QEMU has loaded it the VM
 * resumes (default) or stays paused.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { snapshotError, usageError } from '../errors';
import type { ProgressSink } from '../progress';
import { escapeText, QmpClient } from '../qmp';
import { checkChannels } from '../options';
import { isSharedFileState, readVmDeviceState } from './devstate';
import { expectIncoming, migrateIncoming } from './migrate';
import { vmRam, type VmRamBlock } from './ram';

export interface VmRestoreOptions {
  qmp: string;
  snapshot: string;
  channels?: number;
  /** What the VM does once restored (default 'resume'). */
  then?: 'resume' | 'pause';
  /** Check page checksums while loading (default true). */
  verify?: boolean;
  migrationTimeoutMs?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
}

export interface VmRestoreResult {
  command: 'vm restore';
  snapshot: string;
  mode: 'shared-file' | 'mapped-ram';
  qemuVersion: string;
  /** `path`: the RAM backend file loaded (shared-file RAM only). */
  blocks: { name: string; path?: string; length: number; pageSize: number; presentPages: number; zeroPages: number }[];
  presentPages: number;
  zeroPages: number;
  deviceStateBytes: number;
  channels: number;
  then: 'resume' | 'pause';
  /** Seconds from the start of the RAM load to the VM running (absent with --then pause). */
  downtimeSeconds?: number;
  seconds: number;
}

const now = (): bigint => process.hrtime.bigint();
const secs = (a: bigint, b: bigint): number => Number(b - a) / 1e9;
const mib = (n: number): string => (n % (1 << 20) === 0 ? `${n / (1 << 20)} MiB` : `${n} bytes`);

/** Every snapshot block must be one of QEMU's shared-file blocks, and every one of those in the snapshot. */
function matchBlocks(
  snapshot: string,
  blocks: readonly { name: string; length: number; pageSize: number }[],
  shared: readonly (VmRamBlock & { backend: { memPath: string } })[] | undefined,
  all: readonly VmRamBlock[],
  reason: string | undefined,
): { name: string; path: string }[] {
  const mismatch = (why: string): never => {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `snapshot '${snapshot}' does not match this VM: ${why}; nothing was written`,
    );
  };
  if (!shared) return mismatch(`the snapshot holds shared-file RAM, but ${reason ?? 'this VM has none'}`);
  const out: { name: string; path: string }[] = [];
  for (const b of blocks) {
    const vm = all.find((v) => v.name === b.name);
    if (!vm)
      return mismatch(
        `QEMU has no RAM block '${escapeText(b.name)}' (it has ${all.map((v) => `'${escapeText(v.name)}'`).join(', ')})`,
      );
    const s = shared.find((v) => v.name === b.name);
    if (!s) return mismatch(`QEMU's RAM block '${escapeText(b.name)}' is not a shared memory-backend-file`);
    if (s.length !== b.length)
      return mismatch(`block '${escapeText(b.name)}' is ${mib(b.length)} in the snapshot, ${mib(s.length)} in QEMU`);
    if (s.pageSize !== b.pageSize)
      return mismatch(
        `block '${escapeText(b.name)}' has ${b.pageSize}-byte pages in the snapshot, ${s.pageSize} in QEMU`,
      );
    out.push({ name: b.name, path: s.backend.memPath });
  }
  for (const s of shared) {
    if (!blocks.some((b) => b.name === s.name))
      return mismatch(`QEMU's RAM block '${escapeText(s.name)}' is not in the snapshot`);
  }
  return out;
}

export async function vmRestore(opts: VmRestoreOptions): Promise<VmRestoreResult> {
  const started = now();
  const channels = checkChannels(opts.channels);
  if (!opts.qmp) throw usageError('a QMP socket is required (--qmp SOCKET)');
  const then = opts.then ?? 'resume';
  const snapshot = path.resolve(opts.snapshot);
  const { inspect } = await import('../inspect');
  const info = inspect(snapshot);
  if (info.format !== 'fixedram') {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `'${snapshot}' is a ${info.format} file, not a fixedram snapshot (convert it first)`,
    );
  }
  if (info.state !== 'complete')
    throw snapshotError('ERR_SNAPSHOT_INCOMPLETE', `'${snapshot}' is ${info.state}: ${info.stateMessage ?? ''}`);
  const device = readVmDeviceState(snapshot);
  if (!device) {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `'${snapshot}' holds no device state (a save of RAM files, not of a VM): ` +
        'it cannot restore a VM; use fixedram load for its blocks',
    );
  }
  if (device.kind === 'qemu-mapped-ram')
    return restoreMappedRam(opts, snapshot, info.blocks, device.streamBytes, started);
  if (!isSharedFileState(device) || !device.stream) {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `'${snapshot}' holds a ${device.kind} device state that vm restore cannot feed to QEMU`,
    );
  }
  const stream = device.stream;
  const checked = now();

  const q = await QmpClient.connect(opts.qmp);
  let dir: string | undefined;
  try {
    await expectIncoming(q, 'start it with -incoming defer and the same RAM backends');
    const ram = await vmRam(q);
    const targets = matchBlocks(snapshot, info.blocks, ram.sharedFiles, ram.blocks, ram.reason);

    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-vmstate-'));
    const stateFile = path.join(dir, 'state');
    fs.writeFileSync(stateFile, stream, { mode: 0o600, flag: 'wx' });

    const t0 = now();
    const ms = (a: bigint, b: bigint): number => Math.round(Number(b - a) / 1e5) / 10;
    const r = await (
      await import('../load')
    ).load({
      snapshot,
      blocks: targets,
      channels,
      verify: opts.verify ?? true,
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
    });
    const loaded = now();
    await migrateIncoming(q, {
      uri: `file:${stateFile}`,
      caps: ['x-ignore-shared'],
      what: 'incoming migration of the device state',
      timeoutMs: opts.migrationTimeoutMs ?? 600_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
      failed: (message) =>
        snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `QEMU could not load the device state of '${snapshot}': ${message}`),
    });
    const incoming = now();
    let resumed: bigint | undefined;
    if (then === 'resume') {
      await q.execute('cont');
      resumed = now();
    }
    opts.logger?.debug(
      {
        check: ms(started, checked),
        qmp: ms(checked, t0),
        ram: ms(t0, loaded),
        deviceState: ms(loaded, incoming),
        cont: resumed !== undefined ? ms(incoming, resumed) : undefined,
        total: ms(started, now()),
      },
      'vm restore: phases (ms)',
    );
    return {
      command: 'vm restore',
      snapshot,
      mode: 'shared-file',
      qemuVersion: q.version,
      blocks: r.blocks.map((b) => ({
        name: b.name,
        path: b.path,
        length: b.length,
        pageSize: b.pageSize,
        presentPages: b.presentPages,
        zeroPages: b.zeroPages,
      })),
      presentPages: r.blocks.reduce((s, b) => s + b.presentPages, 0),
      zeroPages: r.blocks.reduce((s, b) => s + b.zeroPages, 0),
      deviceStateBytes: stream.length,
      channels: r.channels,
      then,
      ...(resumed !== undefined ? { downtimeSeconds: secs(t0, resumed) } : {}),
      seconds: secs(started, now()),
    };
  } finally {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    q.close();
  }
}

/**
 * A VM whose RAM is not in shared files (device state of kind qemu-mapped-ram): the snapshot is
 * exported to a QEMU mapped-ram file in a private temp directory (N channels) and QEMU loads it
 * with mapped-ram + multifd (N channels). The RAM blocks must match QEMU's (names, sizes, page
 * sizes) before anything is written.
 */
async function restoreMappedRam(
  opts: VmRestoreOptions,
  snapshot: string,
  blocks: readonly { name: string; length: number; pageSize: number; presentPages: number; zeroPages: number }[],
  deviceStateBytes: number,
  started: bigint,
): Promise<VmRestoreResult> {
  const channels = checkChannels(opts.channels);
  const then = opts.then ?? 'resume';
  const q = await QmpClient.connect(opts.qmp);
  let dir: string | undefined;
  try {
    await expectIncoming(q, 'start it with -incoming defer, the same machine type and memory size');
    const ram = await vmRam(q);
    const mismatch = (why: string): never => {
      throw snapshotError(
        'ERR_SNAPSHOT_UNSUPPORTED',
        `snapshot '${snapshot}' does not match this VM: ${why}; nothing was written`,
      );
    };
    for (const b of blocks) {
      const v = ram.blocks.find((x) => x.name === b.name);
      if (!v) mismatch(`QEMU has no RAM block '${escapeText(b.name)}'`);
      else if (v.length !== b.length)
        mismatch(`block '${escapeText(b.name)}' is ${mib(b.length)} in the snapshot, ${mib(v.length)} in QEMU`);
      else if (v.pageSize !== b.pageSize)
        mismatch(`block '${escapeText(b.name)}' has ${b.pageSize}-byte pages in the snapshot, ${v.pageSize} in QEMU`);
    }
    for (const v of ram.blocks)
      if (!blocks.some((b) => b.name === v.name))
        mismatch(`QEMU's RAM block '${escapeText(v.name)}' is not in the snapshot`);

    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-vmrestore-'));
    const file = path.join(dir, 'vm.mig');
    const t0 = now();
    await (
      await import('../export')
    ).exportSnapshot({
      snapshot,
      output: file,
      format: 'qemu',
      channels,
      fsync: false,
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
    });
    await migrateIncoming(q, {
      uri: `file:${file}`,
      caps: ['mapped-ram', 'multifd'],
      params: { 'multifd-channels': Math.min(channels, 255) },
      what: 'incoming migration',
      timeoutMs: opts.migrationTimeoutMs ?? 600_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
      failed: (message) => snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `QEMU could not load '${snapshot}': ${message}`),
    });
    let resumed: bigint | undefined;
    if (then === 'resume') {
      await q.execute('cont');
      resumed = now();
    }
    return {
      command: 'vm restore',
      snapshot,
      mode: 'mapped-ram',
      qemuVersion: q.version,
      blocks: blocks.map((b) => ({
        name: b.name,
        length: b.length,
        pageSize: b.pageSize,
        presentPages: b.presentPages,
        zeroPages: b.zeroPages,
      })),
      presentPages: blocks.reduce((s, b) => s + b.presentPages, 0),
      zeroPages: blocks.reduce((s, b) => s + b.zeroPages, 0),
      deviceStateBytes,
      channels,
      then,
      ...(resumed !== undefined ? { downtimeSeconds: secs(t0, resumed) } : {}),
      seconds: secs(started, now()),
    };
  } finally {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    q.close();
  }
}
