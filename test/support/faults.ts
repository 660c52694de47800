/**
 * Shared helpers of the fault tests (test/faults-*.test.ts): the LD_PRELOAD shim, small tmpfs
 * mounts, the hugetlbfs mount, progress-driven child processes and leftover checks.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestContext } from 'node:test';
import { kBin, kChildTimeoutMs } from './cli';
import { stampPage } from './stamp';

type After = Pick<TestContext, 'after'>;

export const isRoot = (): boolean => process.getuid?.() === 0;

// ---- the LD_PRELOAD shim (test/support/short_io.c) ----

let shim: { so?: string; reason?: string } | undefined;

/**
 * Builds the shim once per process into a temp dir; returns the .so path, or a string starting
 * with 'skip:' saying why it could not be built.
 */
export function shimPath(): string {
  if (shim) return shim.so ?? shim.reason!;
  const src = path.resolve(__dirname, '..', '..', '..', 'test', 'support', 'short_io.c');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-shim-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const so = path.join(dir, 'short_io.so');
  const r = spawnSync('cc', ['-shared', '-fPIC', '-O2', '-Wall', '-o', so, src, '-ldl'], { encoding: 'utf8' });
  shim =
    r.status === 0
      ? { so }
      : { reason: `skip: cannot build the LD_PRELOAD shim with cc (${r.error?.message ?? r.stderr.trim()})` };
  return shim.so ?? shim.reason!;
}

export interface ShimOptions {
  funcs?: string;
  mode?: string;
  delayUs?: number;
  direct?: 'refuse-open' | 'einval-io';
  fallocate?: 'eopnotsupp';
  /** "eio:N": from the Nth SEEK_DATA/SEEK_HOLE lseek on a matching file on, each fails with EIO. */
  lseek?: string;
  report?: string;
  /** Only disturb files below this path prefix (default: all). */
  path?: string;
}

/** Environment that preloads the shim with the given behaviour. */
export function shimEnv(so: string, o: ShimOptions): NodeJS.ProcessEnv {
  // After any preload already set (the sanitizer runtime of .ci/sanitizers must stay first).
  const env: NodeJS.ProcessEnv = { LD_PRELOAD: process.env.LD_PRELOAD ? `${process.env.LD_PRELOAD} ${so}` : so };
  if (o.funcs) env.FXR_SHIM_FUNCS = o.funcs;
  if (o.mode) env.FXR_SHIM_MODE = o.mode;
  if (o.delayUs) env.FXR_SHIM_DELAY_US = String(o.delayUs);
  if (o.direct) env.FXR_SHIM_DIRECT = o.direct;
  if (o.fallocate) env.FXR_SHIM_FALLOCATE = o.fallocate;
  if (o.lseek) env.FXR_SHIM_LSEEK = o.lseek;
  if (o.report) env.FXR_SHIM_REPORT = o.report;
  if (o.path) env.FXR_SHIM_PATH = o.path;
  return env;
}

export interface ShimReport {
  calls: number;
  short: number;
  eintr: number;
  eagain: number;
  direct: number;
  fallocate: number;
  /** Opens with O_DIRECT that succeeded (direct I/O really used). */
  dopen: number;
  /** 1 per process that slept in a delayed call (written at once, so SIGKILLed runs count). */
  delayed: number;
}

/** Sums the lines the shim appended to a report file (one per process that exited normally). */
export function readShimReport(file: string): ShimReport {
  const sum: ShimReport = { calls: 0, short: 0, eintr: 0, eagain: 0, direct: 0, fallocate: 0, dopen: 0, delayed: 0 };
  if (!fs.existsSync(file)) return sum;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    for (const kv of line.split(' ')) {
      const [k, v] = kv.split('=');
      if (k && v && k in sum) sum[k as keyof ShimReport] += Number(v);
    }
  }
  return sum;
}

/**
 * The environment of a run slowed by the shim (every transfer sleeps `delayUs`), with a report file;
 * when the test ends it asserts that the slow-down was really injected (a slow-down that never
 * happened makes a race test pass for the wrong reason).
 */
export function slowEnv(t: After, so: string, o: ShimOptions & { delayUs: number }): NodeJS.ProcessEnv {
  const report = path.join(os.tmpdir(), `fixedram-slow-${process.pid}-${crypto.randomBytes(4).toString('hex')}.txt`);
  t.after(() => {
    const r = readShimReport(report);
    fs.rmSync(report, { force: true });
    if (r.delayed < 1) throw new Error(`the shim's slow-down was never injected: ${JSON.stringify(r)}`);
  });
  return shimEnv(so, { ...o, report });
}

// ---- mounts ----

/**
 * Mounts a fresh tmpfs of `size` (e.g. '8m') on a temp mount point, unmounted in t.after; returns
 * the mount point, or a string starting with 'skip:'.
 */
export function mountTmpfs(t: After, size: string): string {
  if (!isRoot()) return 'skip: mounting a tmpfs needs root';
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-mnt-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', mnt], { encoding: 'utf8' });
  if (r.status !== 0) {
    fs.rmdirSync(mnt);
    return `skip: mount -t tmpfs failed: ${r.stderr.trim() || r.error?.message}`;
  }
  t.after(() => {
    spawnSync('umount', ['-l', mnt]);
    fs.rmSync(mnt, { recursive: true, force: true });
  });
  return mnt;
}

export const kHugeDefault = '/mnt/fixedram-huge';
const kHugetlbfsMagic = 0x958458f6;

/**
 * A fresh directory on hugetlbfs (FIXEDRAM_HUGETLBFS or /mnt/fixedram-huge, mounted by
 * .ci/hugetlbfs-setup), removed in t.after; or a string starting with 'skip:'.
 */
export function hugetlbfsDir(t: After): string {
  const mnt = process.env.FIXEDRAM_HUGETLBFS ?? kHugeDefault;
  const r = spawnSync('stat', ['-f', '-c', '%t %S', mnt], { encoding: 'utf8' });
  if (r.status !== 0) return `skip: ${mnt} does not exist (run .ci/hugetlbfs-setup as root)`;
  const [type, bsize] = r.stdout.trim().split(' ');
  if (parseInt(type!, 16) !== kHugetlbfsMagic)
    return `skip: ${mnt} is not a hugetlbfs mount (run .ci/hugetlbfs-setup as root)`;
  if (Number(bsize) !== 2 << 20) return `skip: ${mnt} has huge pages of ${bsize} bytes; the tests expect 2 MiB`;
  let dir: string;
  try {
    dir = fs.mkdtempSync(path.join(mnt, 'fixedram-test-'));
  } catch (err) {
    return `skip: ${mnt} is not writable: ${(err as Error).message}`;
  }
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Free huge pages of the default size (from /proc/meminfo). */
export function freeHugePages(): number {
  const m = /HugePages_Free:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : 0;
}

// ---- files ----

/** Temp and lock files a run may have left beside an output. */
export function leftovers(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.tmp') || f.endsWith('.lock'))
    .sort();
}

export function sha1(file: string): string {
  return crypto.createHash('sha1').update(fs.readFileSync(file)).digest('hex');
}

/**
 * A block of `pages` stamped pages with no holes (every page data), written in one go: fast for big
 * blocks, and every batch costs exactly one read and one write (good for the delay shim).
 */
export function denseBlock(
  file: string,
  blockId: number,
  pages: number,
  opts: { generation?: number; pageSize?: number } = {},
): void {
  const ps = opts.pageSize ?? 4096;
  const chunkPages = 256;
  const buf = Buffer.alloc(chunkPages * ps);
  const page = Buffer.alloc(ps);
  const fd = fs.openSync(file, 'w');
  try {
    for (let first = 0; first < pages; first += chunkPages) {
      const n = Math.min(chunkPages, pages - first);
      for (let i = 0; i < n; i++) {
        stampPage(page, blockId, first + i, opts.generation ?? 1);
        page.copy(buf, i * ps);
      }
      fs.writeSync(fd, buf, 0, n * ps, first * ps);
    }
  } finally {
    fs.closeSync(fd);
  }
}

// ---- children driven by progress events ----

export interface ProgressEvent {
  event: 'progress';
  command: string;
  bytesDone: number;
  bytesTotal: number;
}

export interface Exit {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** ms from spawn to exit */
  ms: number;
}

/**
 * A fixedram child whose `--progress json` events on stderr can be awaited. `waitFor` resolves with
 * the first event (already seen or future) for which pred holds, or undefined once the child has
 * exited without one.
 */
/** What each thread of a process is doing (for a hung child): name, state, kernel wait, syscall. */
export function threadStates(pid: number): string {
  try {
    return fs
      .readdirSync(`/proc/${pid}/task`)
      .map((tid) => {
        const read = (f: string): string => {
          try {
            return fs.readFileSync(`/proc/${pid}/task/${tid}/${f}`, 'utf8').trim();
          } catch {
            return '?';
          }
        };
        const stat = read('stat');
        const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
        return `${tid} ${state} wchan=${read('wchan')} syscall=${read('syscall').split(' ')[0]}`;
      })
      .join('; ');
  } catch {
    return 'gone';
  }
}

export class Watched {
  readonly child: ChildProcess;
  readonly events: ProgressEvent[] = [];
  readonly exited: Promise<Exit>;
  stdout = '';
  stderr = '';
  private waiters: { pred: (e: ProgressEvent) => boolean; resolve: (e: ProgressEvent | undefined) => void }[] = [];
  private done = false;
  private buffered = '';

  /**
   * A child still running after opts.timeoutMs (default kChildTimeoutMs) is hung: it is killed
   * with SIGKILL and its exit carries a note with what its threads were doing, so a hang fails the
   * test that met it instead of stalling the whole run.
   */
  constructor(args: string[], env: NodeJS.ProcessEnv = {}, opts: { argv0?: string[]; timeoutMs?: number } = {}) {
    const started = Date.now();
    const limit = opts.timeoutMs ?? kChildTimeoutMs;
    const cmd = opts.argv0 ? opts.argv0[0]! : process.execPath;
    const pre = opts.argv0 ? [...opts.argv0.slice(1), process.execPath] : [];
    this.child = spawn(cmd, [...pre, kBin, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      this.stdout += s;
    });
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      this.stderr += s;
      this.buffered += s;
      let nl: number;
      while ((nl = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        if (!line.startsWith('{"event":"progress"')) continue;
        const e = JSON.parse(line) as ProgressEvent;
        this.events.push(e);
        this.waiters = this.waiters.filter((w) => {
          if (!w.pred(e)) return true;
          w.resolve(e);
          return false;
        });
      }
    });
    let hung = '';
    const watchdog = setTimeout(() => {
      hung =
        `\n[test watchdog] \`fixedram ${args.join(' ')}\` still running after ${limit / 1000} s, killed; threads: ` +
        threadStates(this.child.pid ?? -1);
      this.child.kill('SIGKILL');
    }, limit);
    watchdog.unref();
    this.exited = new Promise<Exit>((resolve) => {
      this.child.on('close', (status, signal) => {
        clearTimeout(watchdog);
        this.stderr += hung;
        this.done = true;
        for (const w of this.waiters) w.resolve(undefined);
        this.waiters = [];
        resolve({ status, signal, stdout: this.stdout, stderr: this.stderr, ms: Date.now() - started });
      });
    });
  }

  waitFor(pred: (e: ProgressEvent) => boolean): Promise<ProgressEvent | undefined> {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    if (this.done) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push({ pred, resolve }));
  }

  /** The first progress event with 0 < bytesDone < bytesTotal (some pages moved, not all). */
  midway(): Promise<ProgressEvent | undefined> {
    return this.waitFor((e) => e.bytesDone > 0 && e.bytesDone < e.bytesTotal);
  }

  kill(sig: NodeJS.Signals): void {
    if (!this.done) this.child.kill(sig);
  }
}

/** Stops a child at the end of a test if it is still running. */
export function reap(t: After, w: Watched): void {
  t.after(async () => {
    w.kill('SIGKILL');
    await w.exited;
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** No JavaScript stack trace in a CLI's stderr. */
export function assertNoStack(stderr: string): void {
  if (/\n\s+at .+:\d+:\d+\)?\n/.test(stderr) || /internal error/.test(stderr)) {
    throw new Error(`stderr holds a stack trace:\n${stderr}`);
  }
}
