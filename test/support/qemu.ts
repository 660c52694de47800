/**
 * Helpers for the QEMU tests: the shared fixtures (decompressed with `xz -dc` into a test's temp
 * dir), the documented pattern of membackend-32m.ram, byte patches, a libvirt wrapper builder, and a
 * real QEMU driven over QMP on a unix socket. Every QEMU started here is daemonized with a pidfile
 * in the test's temp dir and is only ever signalled by that pid, after checking its command line.
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

/** The shared fixtures: FIXEDRAM_QEMU_FIXTURES, else ../shared/qemu-fixtures beside the repository. */
export const kFixtures =
  process.env.FIXEDRAM_QEMU_FIXTURES ?? path.resolve(__dirname, '..', '..', '..', '..', 'shared', 'qemu-fixtures');

export const fixturesAvailable = (): boolean => fs.existsSync(path.join(kFixtures, 'membackend-32m.json'));

export interface ManifestBlock {
  name: string;
  used_length: number;
  page_size: number;
  bitmap_offset: number;
  bitmap_bytes: number;
  pages_offset: number;
  pages_present: number;
  sha256: string;
  xxh3_64: string | null;
}

export interface Manifest {
  file: string;
  unpacked: string;
  file_size: number;
  machine: string;
  capabilities: string[];
  ram_total: number;
  ram_end_offset: number;
  ram_section_end: number;
  blocks: ManifestBlock[];
  ram_file?: { unpacked: string; size: number; sha256: string; pages: number; zero_pages: number };
  truncated_variants?: { file: string; unpacked: string; unpacked_size: number; unpacked_sha256: string }[];
}

export function readManifest(name: 'membackend-32m' | 'q35-default-64m'): Manifest {
  return JSON.parse(fs.readFileSync(path.join(kFixtures, `${name}.json`), 'utf8')) as Manifest;
}

/** Decompresses fixture `name` (without .xz) into dir with `xz -dc`; returns the path. */
export function unpackFixture(name: string, dir: string): string {
  const out = path.join(dir, name);
  const fd = fs.openSync(out, 'w');
  try {
    const r = spawnSync('xz', ['-dc', path.join(kFixtures, `${name}.xz`)], { stdio: ['ignore', fd, 'pipe'] });
    if (r.error) throw r.error;
    if (r.status !== 0) throw new Error(`xz -dc ${name}.xz failed (${r.status}): ${r.stderr.toString()}`);
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

export const sha256 = (b: Uint8Array): string => crypto.createHash('sha256').update(b).digest('hex');
export const sha256File = (file: string): string => sha256(fs.readFileSync(file));

/** Overwrites bytes of a file in place. */
export function patch(file: string, offset: number, bytes: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

export const be32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
export const be64 = (v: bigint | number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};

/** Copies the first `length` bytes of src into dst (a truncated variant). */
export function truncatedCopy(src: string, dst: string, length: number): string {
  fs.copyFileSync(src, dst);
  fs.truncateSync(dst, length);
  return dst;
}

/** Offset of a manifest block's 28-byte mapped-ram header and of its name length byte. */
export function blockOffsets(b: ManifestBlock): { header: number; entry: number; length: number } {
  const header = b.bitmap_offset - 28;
  return { header, length: header - 8, entry: header - 8 - Buffer.byteLength(b.name) - 1 };
}

/**
 * The pattern of membackend-32m.ram (qemu-fixtures/README.md): 8192 pages; page i is zero when
 * i % 3 == 2 or i lies in [640,704) [1000,1100) [4096,4608) [8150,8192); otherwise u64le(i),
 * "FXR:mem0", then 4080 bytes of a splitmix64 pool at (i * 4093) % (262144 - 4080).
 */
export function memBackendPattern(): Buffer {
  const kPage = 4096;
  const kPages = 8192;
  const kPool = 262144;
  const mask = (1n << 64n) - 1n;
  const pool = Buffer.alloc(kPool);
  let state = 0x666978656472616dn;
  for (let k = 0; k < kPool / 8; k++) {
    state = (state + 0x9e3779b97f4a7c15n) & mask;
    let z = state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & mask;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & mask;
    pool.writeBigUInt64LE(z ^ (z >> 31n), 8 * k);
  }
  const isZero = (i: number): boolean =>
    i % 3 === 2 || (i >= 640 && i < 704) || (i >= 1000 && i < 1100) || (i >= 4096 && i < 4608) || i >= 8150;
  const out = Buffer.alloc(kPages * kPage);
  for (let i = 0; i < kPages; i++) {
    if (isZero(i)) continue;
    const o = i * kPage;
    out.writeBigUInt64LE(BigInt(i), o);
    out.write('FXR:mem0', o + 8, 'latin1');
    const p = (i * 4093) % (kPool - 4080);
    pool.copy(out, o + 16, p, p + 4080);
  }
  return out;
}

/** Zero-page indexes of the membackend pattern (its 3209 clear bits). */
export function isPatternZero(i: number): boolean {
  return i % 3 === 2 || (i >= 640 && i < 704) || (i >= 1000 && i < 1100) || (i >= 4096 && i < 4608) || i >= 8150;
}

export interface LibvirtOptions {
  magic?: 'LibvirtQemudSave' | 'LibvirtQemudPart';
  version?: number;
  format?: number;
  wasRunning?: boolean;
  /** Bytes between the 92-byte header and the QEMU stream. */
  dataLen?: number;
  domainName?: string;
}

/** The 92-byte libvirt save-image header followed by XML, a cookie and zero padding (dataLen bytes). */
export function libvirtHeader(opts: LibvirtOptions = {}): Buffer {
  const dataLen = opts.dataLen ?? 65536 + 4000;
  const h = Buffer.alloc(92 + dataLen);
  h.write(opts.magic ?? 'LibvirtQemudSave', 0, 'latin1');
  h.writeUInt32LE(opts.version ?? 2, 16);
  h.writeUInt32LE(dataLen, 20);
  h.writeUInt32LE(opts.wasRunning ? 1 : 0, 24);
  h.writeUInt32LE(opts.format ?? 6, 28);
  const xml = `<domain type='kvm'>\n  <name>${opts.domainName ?? 'fxr-test'}</name>\n</domain>\n\0`;
  const cookie = '<qemu-migration/>\n\0';
  h.write(xml, 92, 'utf8');
  h.writeUInt32LE(Buffer.byteLength(xml), 32);
  h.write(cookie, 92 + Buffer.byteLength(xml), 'utf8');
  return h;
}

/**
 * Builds a libvirt save image from a plain QEMU mapped-ram file, as QEMU writes one with
 * `file:PATH,offset=N`: the stream moves to N = 92 + dataLen, the first block's bitmap_offset moves
 * with it, and everything from the first block's pages_offset on keeps its absolute offset (every
 * later block header is at an absolute offset that does not depend on where the stream starts).
 */
export function wrapInLibvirt(src: string, dst: string, first: ManifestBlock, opts: LibvirtOptions = {}): number {
  const header = libvirtHeader(opts);
  const shift = header.length;
  const headEnd = first.bitmap_offset + first.bitmap_bytes;
  if (shift + headEnd > first.pages_offset) throw new RangeError('the libvirt header is too large for this stream');
  const head = Buffer.from(fs.readFileSync(src).subarray(0, headEnd));
  head.writeBigUInt64BE(BigInt(first.bitmap_offset + shift), first.bitmap_offset - 28 + 12);
  fs.copyFileSync(src, dst);
  const region = Buffer.alloc(first.pages_offset);
  header.copy(region, 0);
  head.copy(region, shift);
  patch(dst, 0, region);
  return shift;
}

// ---- live QEMU ----

export const kQemu = process.env.QEMU ?? 'qemu-system-x86_64';

/** [major, minor] of the installed QEMU, or undefined when it cannot be run. */
export function qemuVersion(): [number, number] | undefined {
  const r = spawnSync(kQemu, ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return undefined;
  const m = /version (\d+)\.(\d+)/.exec(r.stdout);
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

/** Why live QEMU tests cannot run here, or undefined when they can. */
export function qemuMissing(): string | undefined {
  const v = qemuVersion();
  if (!v) return `${kQemu} is not installed: the live QEMU tests need qemu-system-x86_64 >= 9 (CI has it)`;
  if (v[0] < 9) return `${kQemu} is version ${v.join('.')}: the live QEMU tests need >= 9 (mapped-ram)`;
  return undefined;
}

interface QmpReply {
  return?: unknown;
  error?: { class: string; desc: string };
  event?: string;
}

/** A minimal QMP client: one JSON object per line; events are kept, not awaited. */
export class Qmp {
  private buf = '';
  private waiting: ((r: QmpReply) => void)[] = [];
  private closed = false;
  readonly events: QmpReply[] = [];

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.buf += chunk;
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as QmpReply & { QMP?: unknown };
        if (msg.QMP !== undefined) continue; // greeting
        if (msg.event !== undefined) this.events.push(msg);
        else this.waiting.shift()?.(msg);
      }
    });
    sock.on('close', () => {
      this.closed = true;
      for (const w of this.waiting.splice(0)) w({ error: { class: 'Closed', desc: 'QMP connection closed' } });
    });
    sock.on('error', () => undefined);
  }

  static async connect(socketPath: string): Promise<Qmp> {
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath, () => resolve(s));
      s.once('error', reject);
    });
    const q = new Qmp(sock);
    await q.execute('qmp_capabilities');
    return q;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP ${command}: connection closed`));
    return new Promise<T>((resolve, reject) => {
      this.waiting.push((r) =>
        r.error ? reject(new Error(`QMP ${command}: ${r.error.desc}`)) : resolve(r.return as T),
      );
      this.sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })}\n`);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

export interface QemuVm {
  pid: number;
  qmp: Qmp;
  /** QMP quit, then SIGTERM/SIGKILL to our pid if it is still there. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Runs `qemu-system-x86_64 ARGS` daemonized with its QMP socket <tag>.qmp and pidfile <tag>.pid in
 * dir (its output appended to <tag>.log); resolves once QMP answers (a QEMU whose QMP never does is
 * killed). Bounded: the start by 60 s, the connection by Qmp.connect's own bound.
 */
export async function daemonizeQemu(dir: string, tag: string, args: string[]): Promise<{ pid: number; qmp: Qmp }> {
  const sock = path.join(dir, `${tag}.qmp`);
  const pidfile = path.join(dir, `${tag}.pid`);
  const r = spawnSync(kQemu, [...args, '-qmp', `unix:${sock},server=on,wait=off`, '-daemonize', '-pidfile', pidfile], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 60_000,
  });
  fs.appendFileSync(path.join(dir, `${tag}.log`), `${r.stdout ?? ''}${r.stderr ?? ''}`);
  if (r.error || r.status !== 0) {
    throw new Error(`QEMU ${tag} did not start (status ${r.status}): ${r.error?.message ?? ''}${r.stderr}`);
  }
  const pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
  try {
    return { pid, qmp: await Qmp.connect(sock) };
  } catch (err) {
    killOurs(pid, dir);
    throw err;
  }
}

/**
 * Stops a QEMU of daemonizeQemu: QMP quit (waiting at most quitMs for its answer), then up to
 * waitMs for the process to go, then SIGKILL if it is still ours.
 */
export async function quitQemu(pid: number, dir: string, qmp: Qmp, quitMs: number, waitMs: number): Promise<void> {
  if (alive(pid)) {
    try {
      await Promise.race([qmp.execute('quit'), sleep(quitMs)]);
    } catch {
      /* already gone */
    }
  }
  qmp.close();
  for (let i = 0; i < waitMs / 50 && alive(pid); i++) await sleep(50);
  if (alive(pid)) killOurs(pid, dir);
}

/**
 * Starts `qemu-system-x86_64 -machine q35,accel=kvm:tcg -display none -S ARGS` daemonized, with its
 * QMP socket and pidfile in dir; resolves once QMP answers.
 */
export async function startQemu(dir: string, tag: string, args: string[]): Promise<QemuVm> {
  const { pid, qmp } = await daemonizeQemu(dir, tag, [
    '-machine',
    'q35,accel=kvm:tcg',
    '-display',
    'none',
    '-S',
    ...args,
  ]);
  let stopped = false;
  return {
    pid,
    qmp,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await quitQemu(pid, dir, qmp, 5000, 5000);
    },
  };
}

/** Signals pid only while its command line still names our directory (it is our QEMU). */
export function killOurs(pid: number, dir: string): void {
  let cmdline: string;
  try {
    cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1');
  } catch {
    return;
  }
  if (!cmdline.includes(dir)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

export interface MigrationStatus {
  status: string;
  'error-desc'?: string;
}

/** Saves the (paused) VM to a mapped-ram file with `channels` multifd channels (0: no multifd). */
export async function saveMappedRam(qmp: Qmp, uri: string, channels: number): Promise<MigrationStatus> {
  const caps = [
    { capability: 'mapped-ram', state: true },
    { capability: 'multifd', state: channels > 0 },
  ];
  await qmp.execute('migrate-set-capabilities', { capabilities: caps });
  await qmp.execute('migrate-set-parameters', {
    'max-bandwidth': 0,
    ...(channels > 0 ? { 'multifd-channels': channels } : {}),
  });
  await qmp.execute('migrate', { uri });
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const st = await qmp.execute<MigrationStatus>('query-migrate');
    if (st.status === 'completed' || st.status === 'failed' || st.status === 'cancelled') return st;
    await sleep(20);
  }
  throw new Error('the migration did not finish within 120 s');
}

/** Block names and used lengths from HMP `info ramblock`. */
export async function infoRamblock(qmp: Qmp): Promise<{ name: string; used: number }[]> {
  const text = await qmp.execute<string>('human-monitor-command', { 'command-line': 'info ramblock' });
  const rows: { name: string; used: number }[] = [];
  for (const line of text.split(/\r?\n/)) {
    // "  mem0    4 KiB  0x<offset> 0x<used> 0x<total> 0x<hva>  rw"
    const m = /^\s*(\S+)\s+\d+ [KMG]iB\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x[0-9a-f]+/i.exec(line);
    if (m) rows.push({ name: m[1]!, used: parseInt(m[2]!, 16) });
  }
  return rows;
}
