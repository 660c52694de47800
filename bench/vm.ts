/**
 * The VM section of `npm run bench` (issue 12): a running guest (the counting multiboot kernel of
 * test/support/guest.S) with 1 GiB of RAM in a memory-backend-file in /dev/shm, filled like the
 * bench image, snapshotted to disk and restored
 *   - by `fixedram vm save -j 2` (fsync included) and `fixedram vm restore -j 2`, and
 *   - by QEMU's own mapped-ram + multifd (2 channels) migration to a file (+ fsync) and back,
 * side by side in the same run, on the same VM; with, in the same run, the device's own rate (dd
 * oflag=direct of the whole RAM size + fsync: the floor of any save is the data at that rate) and a
 * plain `fixedram save -j 2` of the same RAM file (no QMP, no stop, no refresh). Each save is timed
 * twice: to a new file, and over the file the previous save left (where the file system frees the
 * old file's blocks: fixedram's rename drops it, QEMU's open truncates it). Both saves are timed to
 * a durable file: fixedram's
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
import { ddWriteArgv, evict, measure, median, phasesOf, quiesce, run, type RunResult } from './measure';
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
  const plain = path.join(o.disk, 'vm-plain.fxr');
  const ddOut = path.join(o.disk, 'vm-dd.bin');
  const rows = {
    dd: [] as number[],
    fxSave: [] as { wall: number; downtime: number; cpu: number }[],
    fxSaveOver: [] as { wall: number; downtime: number; cpu: number }[],
    plainSave: [] as number[],
    qSave: [] as { wall: number; downtime: number }[],
    qSaveOver: [] as { wall: number; downtime: number }[],
    phases: [] as Record<string, number>[],
    fxRestore: [] as { wall: number; downtime: number; cpu: number }[],
    qRestore: [] as { wall: number; downtime: number }[],
  };
  let a: Vm | undefined;
  const vms: Vm[] = [];
  try {
    a = await startVm(work, 'a', kernel, src, mib, false);
    vms.push(a);
    let count = await waitCounting(path.join(work, 'a.serial'), 2);
    const fxSave = async (
      debug = false,
    ): Promise<{ wall: number; downtime: number; cpu: number; phases: Record<string, number> }> => {
      const res: RunResult = await measure([
        ...o.fixedram,
        'vm',
        'save',
        '--qmp',
        a!.fxQmp,
        '-o',
        fxr,
        '-j',
        '2',
        '--json',
        '--progress',
        'none',
        ...(debug ? ['--log-level', 'debug'] : []),
      ]);
      if (res.status !== 0) throw new Error(`fixedram vm save failed: ${res.stderr.trim()}`);
      const j = JSON.parse(res.stdout.trim().split('\n').pop()!) as { downtimeSeconds: number };
      count = await waitCounting(path.join(work, 'a.serial'), count);
      return { wall: res.wall, downtime: j.downtimeSeconds, cpu: res.user + res.sys, phases: phasesOf(res.stderr) };
    };
    // QEMU mapped-ram + multifd 2 channels to a file, then fsync (capabilities set before the clock)
    const qSave = async (): Promise<{ wall: number; downtime: number }> => {
      const q = a!.qmp;
      await q.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'mapped-ram', state: true },
          { capability: 'multifd', state: true },
          { capability: 'x-ignore-shared', state: false },
        ],
      });
      await q.execute('migrate-set-parameters', { 'multifd-channels': 2, 'max-bandwidth': 0 });
      const t0 = now();
      await q.execute('stop');
      const stopped = now();
      await q.execute('migrate', { uri: `file:${mig}` });
      await waitMigration(q);
      await q.execute('cont');
      const resumed = now();
      run(['sync', mig]);
      const t1 = now();
      await q.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'mapped-ram', state: false },
          { capability: 'multifd', state: false },
        ],
      });
      count = await waitCounting(path.join(work, 'a.serial'), count);
      return { wall: t1 - t0, downtime: resumed - stopped };
    };
    for (let r = 0; r < o.runs; r++) {
      // the device: the whole RAM size with O_DIRECT + fsync, as the save section's dd row
      fs.rmSync(ddOut, { force: true });
      quiesce(o.disk);
      const dd = await measure(ddWriteArgv(ddOut, ram));
      if (dd.status !== 0) throw new Error(`dd failed: ${dd.stderr.trim()}`);
      rows.dd.push(dd.wall);
      fs.rmSync(ddOut, { force: true });

      // fixedram vm save to a new file (fsync included: the snapshot is durable when it exits)
      fs.rmSync(fxr, { force: true });
      quiesce(o.disk);
      const fx = await fxSave();
      rows.fxSave.push(fx);

      // a plain save of the same RAM file (the VM runs on: no QMP, no stop, no refresh)
      fs.rmSync(plain, { force: true });
      quiesce(o.disk);
      const ps = await measure([
        ...o.fixedram,
        'save',
        '-b',
        `mem0=${src}`,
        '-o',
        plain,
        '-j',
        '2',
        '--progress',
        'none',
      ]);
      if (ps.status !== 0) throw new Error(`fixedram save failed: ${ps.stderr.trim()}`);
      rows.plainSave.push(ps.wall);
      fs.rmSync(plain, { force: true });

      fs.rmSync(mig, { force: true });
      quiesce(o.disk);
      const qs = await qSave();
      rows.qSave.push(qs);

      // both again, each over the file its previous save left
      quiesce(o.disk);
      const fxo = await fxSave();
      rows.fxSaveOver.push(fxo);
      quiesce(o.disk);
      const qso = await qSave();
      rows.qSaveOver.push(qso);
      // where vm save's time goes: one more save to a new file with --log-level debug (not in the
      // medians above: the debug log costs time of its own)
      fs.rmSync(fxr, { force: true });
      quiesce(o.disk);
      rows.phases.push((await fxSave(true)).phases);
      o.log(
        `vm: run ${r + 1}: dd ${dd.wall.toFixed(3)} s; vm save ${fx.wall.toFixed(3)} s (downtime ${fx.downtime.toFixed(3)} s), ` +
          `save ${ps.wall.toFixed(3)} s, QEMU save ${qs.wall.toFixed(3)} s (downtime ${qs.downtime.toFixed(3)} s); ` +
          `over the previous file: vm save ${fxo.wall.toFixed(3)} s, QEMU ${qso.wall.toFixed(3)} s`,
      );

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
    fs.rmSync(plain, { force: true });
    fs.rmSync(ddOut, { force: true });
  }

  const med = (xs: number[]): number => median(xs);
  const range = (xs: number[]): string => `${fmt(Math.min(...xs), 3)}–${fmt(Math.max(...xs), 3)}`;
  const walls = (xs: { wall: number }[]): number[] => xs.map((x) => x.wall);
  const fs1 = med(walls(rows.fxSave));
  const fsD = med(rows.fxSave.map((x) => x.downtime));
  const fsC = med(rows.fxSave.map((x) => x.cpu));
  const fo1 = med(walls(rows.fxSaveOver));
  const foD = med(rows.fxSaveOver.map((x) => x.downtime));
  const qs1 = med(walls(rows.qSave));
  const qsD = med(rows.qSave.map((x) => x.downtime));
  const qo1 = med(walls(rows.qSaveOver));
  const qoD = med(rows.qSaveOver.map((x) => x.downtime));
  const ps1 = med(rows.plainSave);
  const dd1 = med(rows.dd);
  // the floor of any save of this guest: its data at the device's own rate (dd oflag=direct, this run)
  const floor = stats.dataBytes / (ram / dd1);
  const fr1 = med(walls(rows.fxRestore));
  const frD = med(rows.fxRestore.map((x) => x.downtime));
  const qr1 = med(rows.qRestore.map((x) => x.wall));
  const ac = reportedAccelerator() ?? `not reported (asked for ${accel()})`;
  // the row labels name the accelerator short (TCG, KVM); the title and the note say it in full
  const Q = `QEMU ${ac.split(' ')[0]}`;
  const speedUp = (peer: number, v: number): string => `${fmt(peer / v)}×`;
  const onFloor = (v: number): string => `${fmt(v / floor)}×`;
  const title =
    `vm: ${mib} MiB guest (memory-backend-file in /dev/shm, running, ${ac}) to disk and back: ` +
    `fixedram -j 2 vs QEMU (${ac}) mapped-ram + multifd 2 ch`;
  const row = (what: string, xs: number[], downtime: string, floorRatio: string, vs: string, dvs: string): string[] => [
    what,
    fmt(med(xs), 3),
    range(xs),
    downtime,
    floorRatio,
    vs,
    dvs,
  ];
  const text =
    plainTable(
      title,
      ['what', 'median s', 'min–max s', 'downtime s', '÷ device floor', `speed-up vs ${Q}`, `downtime ÷ ${Q}`],
      1,
      [
        row(
          `${Q}: mapped-ram + multifd 2 ch save + fsync (peer)`,
          walls(rows.qSave),
          fmt(qsD, 3),
          onFloor(qs1),
          '1.00×',
          '1.00×',
        ),
        row(
          'fixedram vm save -j 2 (+ fsync)',
          walls(rows.fxSave),
          fmt(fsD, 3),
          onFloor(fs1),
          speedUp(qs1, fs1),
          `${fmt(fsD / qsD)}×`,
        ),
        row(
          'fixedram save -j 2 of the same RAM file (no QMP, no stop)',
          rows.plainSave,
          '-',
          onFloor(ps1),
          speedUp(qs1, ps1),
          '-',
        ),
        [
          `device floor: ${(stats.dataBytes / 1e9).toFixed(2)} GB of data at the dd oflag=direct rate`,
          fmt(floor, 3),
          '-',
          '-',
          '1.00×',
          speedUp(qs1, floor),
          '-',
        ],
        row(`dd oflag=direct of ${mib} MiB + fsync (${fmt(ram / dd1 / 1e9)} GB/s)`, rows.dd, '-', '-', '-', '-'),
        row(
          `${Q}: save over its previous file (peer)`,
          walls(rows.qSaveOver),
          fmt(qoD, 3),
          onFloor(qo1),
          '1.00×',
          '1.00×',
        ),
        row(
          'fixedram vm save over its previous snapshot',
          walls(rows.fxSaveOver),
          fmt(foD, 3),
          onFloor(fo1),
          speedUp(qo1, fo1),
          `${fmt(foD / qoD)}×`,
        ),
        row(
          `${Q}: mapped-ram + multifd 2 ch restore (peer)`,
          rows.qRestore.map((x) => x.wall),
          fmt(qr1, 3),
          '-',
          '1.00×',
          '1.00×',
        ),
        row(
          'fixedram vm restore -j 2',
          walls(rows.fxRestore),
          fmt(frD, 3),
          '-',
          speedUp(qr1, fr1),
          `${fmt(frD / qr1)}×`,
        ),
      ],
    ) +
    `\nAll saves end with the snapshot durable. fixedram: the whole process (node start-up, QMP, the copy while the VM runs, stop, device state, refresh of the copy, cont, metadata, fdatasync, rename, directory fsync; ${fmt(fsC)} CPU s). QEMU: from its stop through the completed migration and cont to the end of an fsync of its file (sync FILE); capabilities set before. Save downtime: stop → cont (QEMU's fsync and fixedram's metadata and fdatasync come after cont). Device floor: no save of this guest can be faster than writing its data at the device's rate (the dd row, same run), whatever it does with the CPU. Over the previous file: the file system frees the old file's blocks (fixedram: when the rename drops it, before the directory fsync; QEMU: when its open truncates it, inside its downtime). Restore: fixedram's whole process (node start-up, checks, RAM load with checksums, migrate-incoming of the device state, cont); QEMU from migrate-incoming to cont; both read a snapshot dropped from the page cache. Accelerator: ${ac}.\n`;
  const phaseNames = [...new Set(rows.phases.flatMap((p) => Object.keys(p)))];
  const phaseText = phaseNames.length
    ? plainTable(
        `vm save: where the time goes (--log-level debug, one more save per run; median ms of ${rows.phases.length})`,
        ['phase', 'median ms'],
        1,
        phaseNames.map((n) => [
          n,
          fmt(med(rows.phases.map((p) => p[n]).filter((x): x is number => x !== undefined)), 1),
        ]),
      ) +
      '\nstartup: process start to the command; qmpConnect, qmpQueries: QMP; preCopy: lock, temp file, plan, the copy while the VM runs (channels started meanwhile); stop, deviceState: the VM stopped, its device state captured; refresh: the RAM hashed in place, changed pages written; checked, cont: sources checked, VM running again; tables: metadata; dataSync, completeSync, rename, dirSync: the commit; end: QMP capabilities put back.\n'
    : '';
  const t = (what: string, target: string, v: number, ok: boolean, why?: string): Target => ({
    issue: '12',
    what: `${what} (${ac})`,
    target,
    measured: `${fmt(v)}×`,
    verdict: ok ? 'PASS' : 'MISS',
    ...(why ? { why } : {}),
  });
  // 2× faster than QEMU means at most half its time; when the data alone takes longer than that at
  // the device's rate, no save can meet it on this disk: said with the numbers, the target kept
  const missWhy =
    qs1 / fs1 >= 2
      ? undefined
      : floor > qs1 / 2
        ? `beyond this disk: the data alone takes ${fmt(floor, 3)} s at the dd oflag=direct rate, more than half of QEMU's ${fmt(qs1, 3)} s; at most ${fmt(qs1 / floor)}× here`
        : `needs the whole save in ${fmt(qs1 / 2, 3)} s; the data alone takes ${fmt(floor, 3)} s at the dd oflag=direct rate (at most ${fmt(qs1 / floor)}× here)`;
  return {
    text: text + phaseText,
    notes,
    targets: [
      t('vm save vs QEMU mapped-ram + multifd 2 ch (+ fsync)', '≥ 2× faster', qs1 / fs1, qs1 / fs1 >= 2, missWhy),
      t('vm restore vs QEMU mapped-ram + multifd 2 ch', '≥ 2× faster', qr1 / fr1, qr1 / fr1 >= 2),
      t("vm save downtime vs QEMU's", '≤ 0.5×', fsD / qsD, fsD / qsD <= 0.5),
    ],
  };
}
