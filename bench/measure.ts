/**
 * Running one measured command: a child process under a tiny Python wrapper that forks, execs and
 * reaps it with wait4(2), so the wall time, user + sys CPU seconds, peak RSS (ru_maxrss) and block
 * writes (ru_oublock) are the child's own (and those of the processes it waited for), without the
 * wrapper's start-up. The wrapper reports on fd 3; the child's stdout and stderr are captured.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';

export interface Usage {
  /** Wall seconds from fork to reaping. */
  wall: number;
  user: number;
  sys: number;
  /** Peak resident set size in bytes (ru_maxrss; includes mapped file pages that were resident). */
  maxRss: number;
  /** Bytes the process sent (or dirtied) for block devices (ru_oublock × 512). */
  diskWrite: number;
  /** Bytes the process read from block devices (ru_inblock × 512). */
  diskRead: number;
  /** Bytes passed to write system calls (wchar of /proc/PID/io, read before reaping). */
  written?: number;
}

export interface RunResult extends Usage {
  status: number;
  stdout: string;
  stderr: string;
}

const kWrapper = `
import json, os, sys, time
argv = sys.argv[1:]
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except BaseException as e:
        os.write(2, ('bench: cannot run %r: %s\\n' % (argv[0], e)).encode())
    os._exit(127)
wchar = -1
try:
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    with open('/proc/%d/io' % pid) as f:
        wchar = int(dict(l.split(':') for l in f.read().split('\\n') if l)['wchar'])
except (OSError, KeyError, ValueError):
    pass
while True:
    try:
        _, status, ru = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
t1 = time.monotonic()
os.write(3, json.dumps({'wall': t1 - t0, 'user': ru.ru_utime, 'sys': ru.ru_stime,
    'maxrss_kib': ru.ru_maxrss, 'oublock': ru.ru_oublock, 'inblock': ru.ru_inblock, 'wchar': wchar,
    'status': os.waitstatus_to_exitcode(status)}).encode())
`;

/** The child that is running now (SIGINT handling kills it). */
let current: ChildProcess | undefined;

/** Kills the measured command that is running now, if any, with its process group. */
export function killCurrent(): void {
  const c = current;
  if (!c || c.exitCode !== null || c.pid === undefined) return;
  try {
    process.kill(-c.pid, 'SIGKILL');
  } catch {
    return; // already gone
  }
  // wait (up to 5 s) until the group is gone, so nothing writes into directories being removed
  for (let i = 0; i < 100 && groupAlive(c.pid); i++) sleepSync(50);
}

/** True while a process of group `pgid` is alive (zombies do not count). */
function groupAlive(pgid: number): boolean {
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(f[2]) === pgid && f[0] !== 'Z') return true;
    } catch {
      /* gone */
    }
  }
  return false;
}

/** Runs argv under the rusage wrapper and resolves with its usage, status and output. */
export function measure(
  argv: readonly string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', kWrapper, ...argv], {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      detached: true, // its own process group: an interrupted bench kills the wrapper and the command
    });
    current = child;
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const rep: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    (child.stdio[3] as NodeJS.ReadableStream).on('data', (b: Buffer) => rep.push(b));
    child.on('error', (e) => {
      current = undefined;
      reject(e);
    });
    child.on('close', (code, signal) => {
      current = undefined;
      const text = Buffer.concat(rep).toString();
      const stderr = Buffer.concat(err).toString();
      if (!text) {
        reject(new Error(`rusage wrapper failed (exit ${code ?? signal}) running ${argv.join(' ')}: ${stderr.trim()}`));
        return;
      }
      const r = JSON.parse(text) as {
        wall: number;
        user: number;
        sys: number;
        maxrss_kib: number;
        oublock: number;
        inblock: number;
        status: number;
        wchar: number;
      };
      resolve({
        wall: r.wall,
        user: r.user,
        sys: r.sys,
        maxRss: r.maxrss_kib * 1024,
        diskWrite: r.oublock * 512,
        diskRead: r.inblock * 512,
        ...(r.wchar >= 0 ? { written: r.wchar } : {}),
        status: r.status,
        stdout: Buffer.concat(out).toString(),
        stderr,
      });
    });
  });
}

/** Runs a helper command to completion (not measured); throws with its stderr on failure. */
export function run(
  argv: readonly string[],
  opts: { allowFail?: boolean } = {},
): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  const status = r.status ?? 128;
  if (status !== 0 && !opts.allowFail) {
    throw new Error(`${argv.join(' ')} failed (exit ${status}): ${r.stderr.trim()}`);
  }
  return { status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Drops the page cache of files on disk (posix_fadvise DONTNEED after fsync): the next read comes
 * from the device. /proc/sys/vm/drop_caches is not writable in containers; this works per file.
 */
export function evict(files: readonly string[]): void {
  const existing = files.filter((f) => fs.existsSync(f));
  if (existing.length === 0) return;
  run([
    'python3',
    '-c',
    `
import os, sys
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
`,
    ...existing,
  ]);
}

/** Flushes the dirty data of the file system holding dir (before a measurement, not timed). */
export function quiesce(dir: string): void {
  run(['sync', '-f', dir], { allowFail: true });
}

/** CPU seconds (user + sys) of a process that is not our child, from /proc/PID/stat. */
export function procCpu(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks / clockTicks();
}

let ticksPerSecond: number | undefined;
function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    ticksPerSecond = Number(r.stdout.trim()) || 100;
  }
  return ticksPerSecond;
}

/** Peak RSS (VmHWM) in bytes of a live process. */
export function procPeakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** A field of /proc/PID/io: write_bytes (accounted to storage), wchar (passed to write calls). */
export function procIo(pid: number, field: 'write_bytes' | 'wchar'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)$`, 'm').exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Sleeps synchronously (used only in exit-time cleanup). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * The phase breakdown of a fixedram command (`{ phases }`), from a line of its output: the --json
 * result on stdout (save --update) or the --log-level debug line on stderr ('update: phases (ms)',
 * 'vm save: phases (ms)'); {} when there is none.
 */
export function phasesOf(output: string): Record<string, number> {
  for (const line of output.split('\n')) {
    if (!line.includes('"phases"')) continue;
    try {
      const p = (JSON.parse(line) as { phases?: Record<string, unknown> }).phases ?? {};
      return Object.fromEntries(Object.entries(p).filter(([, v]) => typeof v === 'number')) as Record<string, number>;
    } catch {
      // not a log line
    }
  }
  return {};
}

/**
 * The device's write rate as the bench's peer: `bytes` of zeros written to `out` with O_DIRECT and
 * an fsync at the end (the save section's dd row and the vm section's device floor run the same).
 */
export function ddWriteArgv(out: string, bytes: number): string[] {
  const bs = 4 * 2 ** 20;
  return [
    'dd',
    'if=/dev/zero',
    `of=${out}`,
    'bs=4M',
    `count=${Math.ceil(bytes / bs)}`,
    'oflag=direct',
    'conv=fsync',
    'status=none',
  ];
}
