/**
 * The QEMU peer (issue 4): a paused q35 guest whose RAM is a memory-backend-file, saved with
 * mapped-ram + multifd to a file and loaded by a second QEMU started with -incoming defer
 * (reference/qemu-mapped-ram.md §12). Every QEMU runs -daemonize with a pidfile in the bench's own
 * work directory; the only process ever signalled is the PID from such a pidfile, and only while
 * its command line still names that directory.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { procCpu, procIo, procPeakRss, run, sleepSync, type Usage } from './measure';

export const qemuBinary = process.env.QEMU ?? 'qemu-system-x86_64';

/** QEMU's version as [major, minor, micro], or undefined when it is not installed. */
export function qemuVersion(): [number, number, number] | undefined {
  try {
    const r = run([qemuBinary, '--version'], { allowFail: true });
    const m = /version (\d+)\.(\d+)\.(\d+)/.exec(r.stdout);
    return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
  } catch {
    return undefined;
  }
}

type Json = Record<string, unknown>;

/**
 * The accelerator as QEMU itself reports it (QMP `query-kvm`), never guessed from /dev/kvm: a
 * /dev/kvm that exists may still be unusable, and `accel=kvm:tcg` falls back silently.
 */
export function acceleratorOf(kvm: unknown): string {
  // present: KVM support is built into this QEMU binary; enabled: this VM runs on it
  const k = (kvm ?? {}) as { enabled?: boolean; present?: boolean };
  if (k.enabled) return 'KVM';
  return k.present ? 'TCG (query-kvm: KVM built in, not enabled)' : 'TCG (query-kvm: no KVM in this QEMU)';
}

let reportedAccel: string | undefined;

/** Remembers what the last QEMU started by the bench said (see acceleratorOf). */
export function noteAccelerator(accel: string): void {
  reportedAccel = accel;
}

/** What the QEMUs of this run said of their accelerator; undefined when no QEMU was asked. */
export function reportedAccelerator(): string | undefined {
  return reportedAccel;
}

/** A QMP connection: commands with ids, events collected. */
class Qmp {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<
    string,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; cmd: string }
  >();
  private readonly listeners: ((ev: Json) => void)[] = [];
  private closed = false;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (line) this.onMessage(JSON.parse(line) as Json);
      }
    });
    const fail = (): void => {
      this.closed = true;
      for (const [, p] of this.pending) p.reject(new Error(`QEMU closed the QMP connection during ${p.cmd}`));
      this.pending.clear();
      for (const l of this.listeners) l({ event: 'QMP_CLOSED' });
    };
    sock.on('close', fail);
    sock.on('error', () => undefined);
  }

  static async connect(socketPath: string): Promise<Qmp> {
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(socketPath);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const q = new Qmp(sock);
        await q.greeting();
        await q.cmd('qmp_capabilities');
        return q;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private greetingWaiter: (() => void) | undefined;
  private greeted = false;
  private greeting(): Promise<void> {
    if (this.greeted) return Promise.resolve();
    return new Promise((resolve) => {
      this.greetingWaiter = resolve;
    });
  }

  private onMessage(msg: Json): void {
    if ('QMP' in msg) {
      this.greeted = true;
      this.greetingWaiter?.();
      return;
    }
    if ('event' in msg) {
      for (const l of this.listeners) l(msg);
      return;
    }
    const id = String(msg.id);
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if ('error' in msg)
      p.reject(new Error(`${p.cmd}: ${(msg.error as { desc?: string }).desc ?? JSON.stringify(msg.error)}`));
    else p.resolve(msg.return);
  }

  cmd(execute: string, args?: Json): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error(`QMP connection closed (before ${execute})`));
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, cmd: execute });
      this.sock.write(`${JSON.stringify({ execute, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  /**
   * Resolves when the migration is completed (MIGRATION event, or a query-migrate answer while
   * polling as a fallback); rejects when it failed or QEMU went away.
   */
  waitMigration(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let done = false;
      const finish = (err?: Error): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        clearInterval(poll);
        const i = this.listeners.indexOf(listener);
        if (i >= 0) this.listeners.splice(i, 1);
        if (err) reject(err);
        else resolve();
      };
      const onStatus = (status: string, desc?: string): void => {
        if (status === 'completed') finish();
        else if (status === 'failed' || status === 'cancelled')
          finish(new Error(`migration ${status}${desc ? `: ${desc}` : ''}`));
      };
      const listener = (ev: Json): void => {
        if (ev.event === 'QMP_CLOSED') finish(new Error('QEMU exited during the migration (see its log)'));
        if (ev.event === 'MIGRATION') onStatus(String((ev.data as { status?: string }).status));
      };
      this.listeners.push(listener);
      const timer = setTimeout(
        () => finish(new Error(`migration did not finish within ${timeoutMs / 1000} s`)),
        timeoutMs,
      );
      let inFlight = false;
      const poll = setInterval(() => {
        if (inFlight || done) return;
        inFlight = true;
        this.cmd('query-migrate').then(
          (r) => {
            inFlight = false;
            const st = r as { status?: string; 'error-desc'?: string };
            if (st.status) onStatus(st.status, st['error-desc']);
          },
          () => {
            inFlight = false;
          },
        );
      }, 250);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** A QEMU this bench started. */
interface Instance {
  tag: string;
  pidfile: string;
  pid: number;
  qmp: Qmp;
}

/** Pidfiles of QEMUs still running (for exit-time cleanup). */
const live = new Set<string>();

export class QemuPeer {
  constructor(
    private readonly work: string,
    private readonly ramBytes: number,
  ) {}

  private memArgs(backing: string): string[] {
    const mib = `${this.ramBytes / 2 ** 20}M`;
    return [
      '-m',
      mib,
      '-object',
      `memory-backend-file,id=mem0,size=${mib},mem-path=${backing},share=on`,
      '-numa',
      'node,memdev=mem0',
    ];
  }

  private async start(tag: string, extra: string[]): Promise<Instance> {
    const pidfile = path.join(this.work, `${tag}.pid`);
    const sock = path.join(this.work, `${tag}.qmp`);
    const log = path.join(this.work, `${tag}.log`);
    fs.rmSync(pidfile, { force: true });
    fs.rmSync(sock, { force: true });
    const args = [
      '-machine',
      `q35,accel=${process.env.ACCEL ?? 'kvm:tcg'}`,
      '-display',
      'none',
      '-S',
      ...extra,
      '-qmp',
      `unix:${sock},server=on,wait=off`,
      '-daemonize',
      '-pidfile',
      pidfile,
    ];
    const logFd = fs.openSync(log, 'a');
    try {
      const code = await new Promise<number>((resolve, reject) => {
        const child = spawn(qemuBinary, args, { stdio: ['ignore', logFd, logFd] });
        child.on('error', reject);
        child.on('close', (c) => resolve(c ?? 128));
      });
      if (code !== 0) {
        throw new Error(
          `QEMU did not start (exit ${code}): ${fs.readFileSync(log, 'utf8').trim().split('\n').slice(-3).join(' | ')}`,
        );
      }
    } finally {
      fs.closeSync(logFd);
    }
    const pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
    live.add(pidfile);
    try {
      const qmp = await Qmp.connect(sock);
      noteAccelerator(acceleratorOf(await qmp.cmd('query-kvm')));
      return { tag, pidfile, pid, qmp };
    } catch (err) {
      stopByPidfile(pidfile, this.work);
      throw err;
    }
  }

  private async stop(q: Instance): Promise<void> {
    try {
      await Promise.race([q.qmp.cmd('quit'), new Promise((r) => setTimeout(r, 5000))]);
    } catch {
      /* it may already be gone */
    }
    q.qmp.close();
    stopByPidfile(q.pidfile, this.work);
  }

  private async setUp(q: Instance, channels: number, save: boolean): Promise<void> {
    await q.qmp.cmd('migrate-set-capabilities', {
      capabilities: [
        { capability: 'mapped-ram', state: true },
        { capability: 'multifd', state: true },
        { capability: 'events', state: true },
      ],
    });
    await q.qmp.cmd('migrate-set-parameters', {
      'multifd-channels': channels,
      ...(save ? { 'max-bandwidth': 0 } : {}),
    });
  }

  /**
   * Saves the guest whose RAM is `backing` to `out` with `channels` multifd channels, then fsyncs
   * the file. Timed from `migrate` to the end of the fsync; CPU and I/O are QEMU's own.
   */
  async save(backing: string, out: string, channels: number): Promise<Usage> {
    const q = await this.start('src', this.memArgs(backing));
    try {
      await this.setUp(q, channels, true);
      const cpu0 = procCpu(q.pid);
      const wb0 = procIo(q.pid, 'write_bytes');
      const wc0 = procIo(q.pid, 'wchar');
      const t0 = performance.now();
      const done = q.qmp.waitMigration(600_000);
      await q.qmp.cmd('migrate', { uri: `file:${out}` });
      await done;
      const fd = fs.openSync(out, 'r');
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      const wall = (performance.now() - t0) / 1000;
      const cpu = procCpu(q.pid) - cpu0;
      return {
        wall,
        user: cpu,
        sys: 0,
        maxRss: procPeakRss(q.pid),
        diskWrite: procIo(q.pid, 'write_bytes') - wb0,
        diskRead: 0,
        written: procIo(q.pid, 'wchar') - wc0,
      };
    } finally {
      await this.stop(q);
    }
  }

  /**
   * Loads `file` into a fresh backend file `backing` with `channels` multifd channels. Timed from
   * `migrate-incoming` to the completed event.
   */
  async load(file: string, backing: string, channels: number, beforeStart: () => void): Promise<Usage> {
    fs.rmSync(backing, { force: true });
    const q = await this.start('dst', [...this.memArgs(backing), '-incoming', 'defer']);
    try {
      await this.setUp(q, channels, false);
      beforeStart();
      const cpu0 = procCpu(q.pid);
      const t0 = performance.now();
      const done = q.qmp.waitMigration(600_000);
      await q.qmp.cmd('migrate-incoming', { uri: `file:${file}` });
      await done;
      const wall = (performance.now() - t0) / 1000;
      const cpu = procCpu(q.pid) - cpu0;
      return { wall, user: cpu, sys: 0, maxRss: procPeakRss(q.pid), diskWrite: 0, diskRead: 0 };
    } finally {
      await this.stop(q);
    }
  }
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Ends the QEMU of one of our pidfiles (SIGTERM, then SIGKILL), if it still names our work dir. */
export function stopByPidfile(pidfile: string, work: string, graceMs = 5000): void {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
  } catch {
    live.delete(pidfile);
    return;
  }
  const ours = (): boolean => {
    try {
      return alive(pid) && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`${work}/`);
    } catch {
      return false;
    }
  };
  for (let i = 0; i < graceMs / 100 && ours(); i++) sleepSync(100); // a QMP quit in progress
  for (const sig of ['SIGTERM', 'SIGKILL'] as const) {
    if (!ours()) break;
    try {
      process.kill(pid, sig);
    } catch {
      /* gone */
    }
    for (let i = 0; i < 50 && ours(); i++) sleepSync(100);
  }
  fs.rmSync(pidfile, { force: true });
  live.delete(pidfile);
}

/** Exit-time cleanup: every QEMU still running from one of our pidfiles. */
export function stopAllQemu(work: string): void {
  for (const pidfile of [...live]) stopByPidfile(pidfile, work, 0);
}
