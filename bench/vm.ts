/**
 * The VM section of `npm run bench` (issue 12): a running guest (the counting multiboot kernel of
 * test/support/guest.S) with 1 GiB of RAM in a memory-backend-file in /dev/shm, filled like the
 * bench image, snapshotted to disk and restored
 *   - by `fixedram vm save -j 2` (fsync included) and `fixedram vm restore -j 2`, and
 *   - by QEMU's own mapped-ram + multifd (2 channels) migration to a file (+ fsync) and back,
 * side by side in the same run, on the same VM. Both saves are timed to a durable file: fixedram's
 * whole process (node start-up, QMP, copy, stop, refresh, cont, metadata, fdatasync, rename,
 * directory fsync); QEMU's from `stop` through the completed migration and `cont` to the end of an
 * fsync of its file (`sync FILE`), timed as one; its capabilities and parameters are set before
 * the clock starts. Downtime is VM stopped → running again: for QEMU `stop` → `cont` after the
 * migration completed (its fsync comes after `cont`); fixedram copies the RAM while the VM runs and
 * resumes it once the copy is refreshed (its metadata and fsync follow while the VM runs). Every
 * QEMU runs daemonized with a pidfile in the bench's work directory and is only ever killed by that
 * pid while its command line names the directory. The accelerator is named in the table as QEMU
 * reports it over QMP (query-kvm; TCG here: no /dev/kvm).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { QmpClient } from '../src/qmp';
import { buildGuest, type GuestKernel } from '../test/support/guest';
import { kDefaultMix, makeImage } from './image';
import { evict, measure, median, quiesce, run, type RunResult } from './measure';
import { acceleratorOf, noteAccelerator, qemuBinary, reportedAccelerator } from './qemu';
import { fmt, GiB, MiB, plainTable, type Target } from './report';

export interface VmBenchOptions {
  shm: string;
  disk: string;
  runs: number;
  /** Guest RAM bytes (default 1 GiB). */
  ram?: number;
  fixedram: string[];
  log: (s: string) => void;
}

export interface VmBenchResult {
  text: string;
  targets: Target[];
  notes: string[];
}

/**
 * The accelerator asked for: TCG unless QEMU_ACCEL says otherwise (/dev/kvm may exist without a
 * usable KVM). What QEMU really runs with is asked over QMP (query-kvm) and named in the table.
 */
const accel = (): string => process.env.QEMU_ACCEL ?? 'tcg';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Vm {
  pid: number;
  qmp: QmpClient;
  fxQmp: string;
}

function killOurs(pid: number, dir: string): void {
  try {
    if (!fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(dir)) return;
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

async function startVm(
  dir: string,
  tag: string,
  kernel: GuestKernel,
  memPath: string,
  mib: number,
  incoming: boolean,
): Promise<Vm> {
  const sock = path.join(dir, `${tag}.qmp`);
  const fxQmp = path.join(dir, `${tag}.fx.qmp`);
  const pidfile = path.join(dir, `${tag}.pid`);
  const r = spawnSync(
    qemuBinary,
    [
      '-machine',
      'q35',
      '-accel',
      accel(),
      '-nodefaults',
      '-display',
      'none',
      '-m',
      `${mib}M`,
      '-object',
      `memory-backend-file,id=mem0,size=${mib}M,mem-path=${memPath},share=on`,
      '-machine',
      'memory-backend=mem0',
      '-kernel',
      kernel.elf,
      '-serial',
      `file:${path.join(dir, `${tag}.serial`)}`,
      ...(incoming ? ['-incoming', 'defer'] : []),
      '-qmp',
      `unix:${sock},server=on,wait=off`,
      '-qmp',
      `unix:${fxQmp},server=on,wait=off`,
      '-daemonize',
      '-pidfile',
      pidfile,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  if (r.error || r.status !== 0) throw new Error(`QEMU ${tag} did not start: ${r.error?.message ?? ''}${r.stderr}`);
  const pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
  try {
    const qmp = await QmpClient.connect(sock);
    // the accelerator as QEMU reports it, named next to every ratio
    noteAccelerator(acceleratorOf(await qmp.execute('query-kvm')));
    return { pid, qmp, fxQmp };
  } catch (err) {
    killOurs(pid, dir);
    throw err;
  }
}

async function stopVm(vm: Vm | undefined, dir: string): Promise<void> {
  if (!vm) return;
  await vm.qmp.execute('quit').catch(() => undefined);
  vm.qmp.close();
  for (let i = 0; i < 100; i++) {
    try {
      process.kill(vm.pid, 0);
    } catch {
      return;
    }
    await sleep(20);
  }
  killOurs(vm.pid, dir);
}

async function waitMigration(q: QmpClient): Promise<void> {
  for (;;) {
    const st = await q.execute<{ status: string; 'error-desc'?: string }>('query-migrate');
    if (st.status === 'completed') return;
    if (st.status === 'failed' || st.status === 'cancelled')
      throw new Error(`QEMU migration ${st.status}: ${st['error-desc'] ?? ''}`);
    await sleep(2);
  }
}

const now = (): number => performance.now() / 1000;

/** Counts the guest printed (it must keep counting after every restore). */
function lastCount(serial: string): number {
  const m = [...fs.readFileSync(serial, 'latin1').matchAll(/^count (\d+)$/gm)];
  return m.length ? Number(m[m.length - 1]![1]) : -1;
}

async function waitCounting(serial: string, after: number): Promise<number> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const c = fs.existsSync(serial) ? lastCount(serial) : -1;
    if (c > after) return c;
    if (Date.now() > deadline) {
      const tail = fs.existsSync(serial)
        ? JSON.stringify(fs.readFileSync(serial, 'latin1').slice(-80))
        : 'no serial file';
      throw new Error(`the guest did not count past ${after} within 60 s (${serial}: ${tail})`);
    }
    await sleep(20);
  }
}

export async function vmBench(o: VmBenchOptions): Promise<VmBenchResult> {
  const ram = o.ram ?? GiB;
  const mib = ram / MiB;
  const work = fs.mkdtempSync(path.join(o.shm, 'vm.'));
  const notes: string[] = [];
  const kernel = buildGuest(work);
  const src = path.join(work, 'src.ram');
  const stats = makeImage(src, ram, kDefaultMix, 12);
  o.log(`vm: guest RAM ${src}: ${mib} MiB, ${(stats.dataBytes / 1e9).toFixed(2)} GB of data`);
  const fxr = path.join(o.disk, 'vm.fxr');
  const mig = path.join(o.disk, 'vm-qemu.mig');
  const rows = {
    fxSave: [] as { wall: number; downtime: number; cpu: number }[],
    qSave: [] as { wall: number; downtime: number }[],
    fxRestore: [] as { wall: number; downtime: number; cpu: number }[],
    qRestore: [] as { wall: number; downtime: number }[],
  };
  let a: Vm | undefined;
  const vms: Vm[] = [];
  try {
    a = await startVm(work, 'a', kernel, src, mib, false);
    vms.push(a);
    let count = await waitCounting(path.join(work, 'a.serial'), 2);
    for (let r = 0; r < o.runs; r++) {
      // fixedram vm save (fsync included: the snapshot is on disk before the VM resumes)
      fs.rmSync(fxr, { force: true });
      quiesce(o.disk);
      const res: RunResult = await measure([
        ...o.fixedram,
        'vm',
        'save',
        '--qmp',
        a.fxQmp,
        '-o',
        fxr,
        '-j',
        '2',
        '--json',
        '--progress',
        'none',
      ]);
      if (res.status !== 0) throw new Error(`fixedram vm save failed: ${res.stderr.trim()}`);
      const j = JSON.parse(res.stdout.trim().split('\n').pop()!) as { downtimeSeconds: number };
      rows.fxSave.push({ wall: res.wall, downtime: j.downtimeSeconds, cpu: res.user + res.sys });
      count = await waitCounting(path.join(work, 'a.serial'), count);

      // QEMU mapped-ram + multifd 2 channels to a file, then fsync (capabilities set before the clock)
      fs.rmSync(mig, { force: true });
      quiesce(o.disk);
      await a.qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'mapped-ram', state: true },
          { capability: 'multifd', state: true },
          { capability: 'x-ignore-shared', state: false },
        ],
      });
      await a.qmp.execute('migrate-set-parameters', { 'multifd-channels': 2, 'max-bandwidth': 0 });
      const t0 = now();
      await a.qmp.execute('stop');
      const stopped = now();
      await a.qmp.execute('migrate', { uri: `file:${mig}` });
      await waitMigration(a.qmp);
      await a.qmp.execute('cont');
      const resumed = now();
      run(['sync', mig]);
      const t1 = now();
      await a.qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'mapped-ram', state: false },
          { capability: 'multifd', state: false },
        ],
      });
      rows.qSave.push({ wall: t1 - t0, downtime: resumed - stopped });
      o.log(
        `vm: run ${r + 1}: vm save ${res.wall.toFixed(3)} s (downtime ${j.downtimeSeconds.toFixed(3)} s), ` +
          `QEMU save ${(t1 - t0).toFixed(3)} s (downtime ${(resumed - stopped).toFixed(3)} s)`,
      );
      count = await waitCounting(path.join(work, 'a.serial'), count);

      // fixedram vm restore into a fresh QEMU waiting with -incoming defer
      const dstF = path.join(work, `fx-dst${r}.ram`);
      const b = await startVm(work, `b${r}`, kernel, dstF, mib, true);
      vms.push(b);
      evict([fxr]);
      const rr = await measure([
        ...o.fixedram,
        'vm',
        'restore',
        '--qmp',
        b.fxQmp,
        fxr,
        '-j',
        '2',
        '--json',
        '--progress',
        'none',
      ]);
      if (rr.status !== 0) throw new Error(`fixedram vm restore failed: ${rr.stderr.trim()}`);
      const jr = JSON.parse(rr.stdout.trim().split('\n').pop()!) as { downtimeSeconds: number };
      rows.fxRestore.push({ wall: rr.wall, downtime: jr.downtimeSeconds, cpu: rr.user + rr.sys });
      await waitCounting(path.join(work, `b${r}.serial`), 1);
      await stopVm(b, work);
      fs.rmSync(dstF, { force: true });

      // QEMU's own restore of its file (mapped-ram + multifd 2 channels)
      const dstQ = path.join(work, `q-dst${r}.ram`);
      const c = await startVm(work, `c${r}`, kernel, dstQ, mib, true);
      vms.push(c);
      evict([mig]);
      await c.qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'mapped-ram', state: true },
          { capability: 'multifd', state: true },
        ],
      });
      await c.qmp.execute('migrate-set-parameters', { 'multifd-channels': 2 });
      const q0 = now();
      await c.qmp.execute('migrate-incoming', { uri: `file:${mig}` });
      await waitMigration(c.qmp);
      await c.qmp.execute('cont');
      const q1 = now();
      rows.qRestore.push({ wall: q1 - q0, downtime: q1 - q0 });
      await waitCounting(path.join(work, `c${r}.serial`), 1);
      await stopVm(c, work);
      fs.rmSync(dstQ, { force: true });
      o.log(`vm: run ${r + 1}: vm restore ${rr.wall.toFixed(3)} s, QEMU restore ${(q1 - q0).toFixed(3)} s`);
    }
  } finally {
    for (const vm of vms) await stopVm(vm, work);
    fs.rmSync(work, { recursive: true, force: true });
    fs.rmSync(fxr, { force: true });
    fs.rmSync(mig, { force: true });
  }

  const med = (xs: number[]): number => median(xs);
  const fs1 = med(rows.fxSave.map((x) => x.wall));
  const fsD = med(rows.fxSave.map((x) => x.downtime));
  const qs1 = med(rows.qSave.map((x) => x.wall));
  const qsD = med(rows.qSave.map((x) => x.downtime));
  const fr1 = med(rows.fxRestore.map((x) => x.wall));
  const frD = med(rows.fxRestore.map((x) => x.downtime));
  const qr1 = med(rows.qRestore.map((x) => x.wall));
  const ac = reportedAccelerator() ?? `not reported (asked for ${accel()})`;
  const title =
    `vm: ${mib} MiB guest (memory-backend-file in /dev/shm, running, ${ac}) to disk and back: ` +
    `fixedram -j 2 vs QEMU mapped-ram + multifd 2 ch`;
  const text =
    plainTable(
      title,
      ['what', 'median s', 'downtime s', 'QEMU s', 'QEMU downtime s', `time ÷ QEMU (${ac})`, `downtime ÷ QEMU (${ac})`],
      1,
      [
        [
          'vm save (+ fsync)',
          fmt(fs1, 3),
          fmt(fsD, 3),
          fmt(qs1, 3),
          fmt(qsD, 3),
          `${fmt(fs1 / qs1)}×`,
          `${fmt(fsD / qsD)}×`,
        ],
        ['vm restore', fmt(fr1, 3), fmt(frD, 3), fmt(qr1, 3), fmt(qr1, 3), `${fmt(fr1 / qr1)}×`, `${fmt(frD / qr1)}×`],
      ],
    ) +
    `\nBoth saves end with the snapshot durable. fixedram: the whole process (node start-up, QMP, the copy while the VM runs, stop, device state, refresh of the copy, cont, metadata, fdatasync, rename, directory fsync). QEMU: from its stop through the completed migration and cont to the end of an fsync of its file (sync FILE); capabilities set before. Save downtime: stop → cont (QEMU's fsync and fixedram's metadata and fdatasync come after cont). Restore: fixedram's whole process (node start-up, checks, RAM load with checksums, migrate-incoming of the device state, cont); QEMU from migrate-incoming to cont; both read a snapshot dropped from the page cache. Accelerator: ${ac}.\n`;
  const t = (what: string, target: string, v: number, ok: boolean): Target => ({
    issue: '12',
    what: `${what} (${ac})`,
    target,
    measured: `${fmt(v)}×`,
    verdict: ok ? 'PASS' : 'MISS',
  });
  return {
    text,
    notes,
    targets: [
      t('vm save vs QEMU mapped-ram + multifd 2 ch (+ fsync)', '≥ 2× faster', qs1 / fs1, qs1 / fs1 >= 2),
      t('vm restore vs QEMU mapped-ram + multifd 2 ch', '≥ 2× faster', qr1 / fr1, qr1 / fr1 >= 2),
      { ...t("vm save downtime vs QEMU's", '≤ 0.5×', fsD / qsD, fsD / qsD <= 0.5), measured: `${fmt(fsD / qsD)}×` },
    ],
  };
}
