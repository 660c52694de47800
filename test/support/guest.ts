/**
 * A guest that runs code, for the VM tests: test/support/guest.S (a multiboot kernel that counts in
 * RAM and prints "count N" on COM1 twenty times a second) built with binutils, and QEMU
 * started on it with its RAM in a shared memory-backend-file (or anonymous RAM), two QMP sockets
 * (one for the test, one for fixedram: a QMP socket serves one client at a time) and the serial
 * port in a file. Every QEMU is daemonized with a pidfile and only ever signalled by that pid after
 * checking that its command line names the test's directory.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { alive, daemonizeQemu, killOurs, quitQemu, sleep, type Qmp } from './qemu';

const kSource = path.resolve(__dirname, '..', '..', '..', 'test', 'support', 'guest.S');

/** Why the guest cannot be built here (binutils missing), or undefined. */
export function guestMissing(): string | undefined {
  for (const tool of ['as', 'ld', 'nm']) {
    const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
    if (r.error || r.status !== 0) return `${tool} (binutils) is not installed: the VM tests build their guest with it`;
  }
  return undefined;
}

export interface GuestKernel {
  elf: string;
  /** Guest-physical address of the 32-bit counter (= its offset in the RAM block at address 0). */
  countAddress: number;
  /** Guest-physical address of the scratch pages the guest stamps the count into. */
  scratchAddress: number;
}

/** Assembles and links the guest into dir (`as --32`, `ld -m elf_i386`). */
export function buildGuest(dir: string): GuestKernel {
  const obj = path.join(dir, 'guest.o');
  const elf = path.join(dir, 'guest.elf');
  const run = (cmd: string, args: string[]): string => {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    if (r.error || r.status !== 0)
      throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.error?.message ?? ''}${r.stderr}`);
    return r.stdout;
  };
  run('as', ['--32', '-o', obj, kSource]);
  // -N: one RWX segment at 1 MiB and no separate header segment (which would land in the BIOS area)
  run('ld', ['-m', 'elf_i386', '-N', '-Ttext', '0x100000', '-e', '_start', '--no-warn-rwx-segments', '-o', elf, obj]);
  const syms = new Map(
    run('nm', [elf])
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((p) => p.length === 3)
      .map((p) => [p[2]!, parseInt(p[0]!, 16)]),
  );
  const countAddress = syms.get('count');
  const scratchAddress = syms.get('scratch');
  if (countAddress === undefined || scratchAddress === undefined)
    throw new Error('guest.elf has no count/scratch symbols');
  return { elf, countAddress, scratchAddress };
}

export interface GuestVm {
  pid: number;
  tag: string;
  /** The test's own QMP connection. */
  qmp: Qmp;
  /** A second QMP socket, for fixedram. */
  fixedramQmp: string;
  serial: string;
  /** The RAM backend file (shared RAM only). */
  memPath?: string;
  /** QMP quit, then SIGKILL to our pid if it is still there. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL now (a crash). */
  kill(): void;
  alive(): boolean;
}

export interface GuestOptions {
  kernel: GuestKernel;
  /** RAM size in MiB (default 64). */
  mib?: number;
  /** A shared memory-backend-file at this path (created by QEMU if missing); else anonymous RAM. */
  memPath?: string;
  /** Start with -incoming defer (a restore target). */
  incoming?: boolean;
  /** Start paused (-S). */
  paused?: boolean;
  extra?: string[];
}

/** The QEMU command line for the guest (also used by the libvirt test for its domain XML). */
export function guestArgs(dir: string, tag: string, o: GuestOptions): string[] {
  const mib = o.mib ?? 64;
  const mem = o.memPath
    ? [
        '-object',
        `memory-backend-file,id=mem0,size=${mib}M,mem-path=${o.memPath},share=on`,
        '-machine',
        'memory-backend=mem0',
      ]
    : [];
  return [
    '-machine',
    'q35',
    '-accel',
    'tcg',
    '-nodefaults',
    '-display',
    'none',
    '-m',
    `${mib}M`,
    ...mem,
    '-kernel',
    o.kernel.elf,
    '-serial',
    `file:${path.join(dir, `${tag}.serial`)}`,
    ...(o.incoming ? ['-incoming', 'defer'] : []),
    ...(o.paused ? ['-S'] : []),
    ...(o.extra ?? []),
  ];
}

/** Starts QEMU on the guest, daemonized, with two QMP sockets; resolves once the test's QMP answers. */
export async function startGuest(dir: string, tag: string, o: GuestOptions): Promise<GuestVm> {
  const fxSock = path.join(dir, `${tag}.fx.qmp`);
  const serial = path.join(dir, `${tag}.serial`);
  const { pid, qmp } = await daemonizeQemu(dir, tag, [
    ...guestArgs(dir, tag, o),
    '-qmp',
    `unix:${fxSock},server=on,wait=off`,
  ]);
  let stopped = false;
  return {
    pid,
    tag,
    qmp,
    fixedramQmp: fxSock,
    serial,
    ...(o.memPath ? { memPath: o.memPath } : {}),
    alive: () => alive(pid),
    kill: () => killOurs(pid, dir),
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await quitQemu(pid, dir, qmp, 3000, 3000);
    },
  };
}

/** The counts the guest printed so far. */
export function serialCounts(serial: string): number[] {
  let text: string;
  try {
    text = fs.readFileSync(serial, 'latin1');
  } catch {
    return [];
  }
  return [...text.matchAll(/^count (\d+)$/gm)].map((m) => Number(m[1]));
}

/** Waits until the guest has printed at least `n` lines (and returns them). */
export async function waitForCounts(serial: string, n: number, timeoutMs = 60_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = serialCounts(serial);
    if (c.length >= n) return c;
    if (Date.now() > deadline)
      throw new Error(`the guest printed ${c.length} of ${n} counts within ${timeoutMs / 1000} s (${serial})`);
    await sleep(50);
  }
}

/** Waits until QEMU's run state is `status`. */
export async function waitForStatus(qmp: Qmp, status: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await qmp.execute<{ status: string }>('query-status');
    if (s.status === status) return;
    if (Date.now() > deadline)
      throw new Error(`QEMU status is '${s.status}', not '${status}', after ${timeoutMs / 1000} s`);
    await sleep(20);
  }
}
