/**
 * The I/O trace of a run (test/support/io_trace.c, preloaded): parsing, the commit-protocol checks
 * of the durability tests, and replays of what a crash could have left on disk.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

let built: string | undefined;

/** Builds the trace shim once per process; returns its path or a string starting with 'skip:'. */
export function traceShimPath(): string {
  if (built) return built;
  const src = path.resolve(__dirname, '..', '..', '..', 'test', 'support', 'io_trace.c');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-trace-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const so = path.join(dir, 'io_trace.so');
  const r = spawnSync('cc', ['-shared', '-fPIC', '-O2', '-Wall', '-o', so, src, '-ldl'], { encoding: 'utf8' });
  built = r.status === 0 ? so : `skip: cannot build the trace shim with cc (${r.error?.message ?? r.stderr.trim()})`;
  return built;
}

export type TraceEvent =
  | { kind: 'W'; path: string; off: number; len: number; flags?: number; blob?: number }
  | { kind: 'P' | 'R'; path: string; off: number; len: number }
  | { kind: 'D' | 'S'; path: string }
  | { kind: 'N'; path: string; to: string };

export function parseTrace(file: string): TraceEvent[] {
  const out: TraceEvent[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line) continue;
    const [kind, ...rest] = line.split(' ');
    if (kind === 'W') {
      const [p, off, len, flags, blob] = rest;
      out.push({
        kind,
        path: p!,
        off: Number(off),
        len: Number(len),
        ...(flags !== '-' ? { flags: Number(flags) } : {}),
        ...(blob ? { blob: Number(blob.slice(1)) } : {}),
      });
    } else if (kind === 'P' || kind === 'R')
      out.push({ kind, path: rest[0]!, off: Number(rest[1]), len: Number(rest[2]) });
    else if (kind === 'D' || kind === 'S') out.push({ kind, path: rest[0]! });
    else if (kind === 'N') out.push({ kind, path: rest[0]!, to: rest[1]! });
  }
  return out;
}

const kComplete = 1;
const kUpdating = 2;

function fail(what: string, events: TraceEvent[]): never {
  throw new Error(`commit protocol broken: ${what}\n${events.map((e, i) => `${i}: ${JSON.stringify(e)}`).join('\n')}`);
}

/**
 * A new snapshot (save, convert): pages → tables → header without COMPLETE → fdatasync → header
 * with COMPLETE → fdatasync → rename over `output` → fsync of its directory. `pages` is the range
 * holding page data; other writes past the header are metadata (tables, a device-state record).
 * Returns the temp path.
 */
export function checkNewSnapshotProtocol(
  events: TraceEvent[],
  output: string,
  pages: { start: number; end: number },
): string {
  const renames = events.flatMap((e, i) => (e.kind === 'N' && e.to === output ? [i] : []));
  if (renames.length !== 1) fail(`expected one rename onto ${output}, saw ${renames.length}`, events);
  const iN = renames[0]!;
  const tmp = events[iN]!.path;
  const on = (i: number): TraceEvent => events[i]!;
  const idx = (pred: (e: TraceEvent) => boolean): number[] => events.flatMap((e, i) => (pred(e) ? [i] : []));
  const writes = idx((e) => e.kind === 'W' && e.path === tmp);
  const syncs = idx((e) => e.kind === 'D' && e.path === tmp);
  const complete = writes.filter((i) => {
    const e = on(i);
    return e.kind === 'W' && e.off === 0 && e.flags !== undefined && (e.flags & kComplete) !== 0;
  });
  if (complete.length !== 1) fail(`expected one header write with COMPLETE, saw ${complete.length}`, events);
  const iC = complete[0]!;
  const headers = writes.filter((i) => {
    const e = on(i);
    return e.kind === 'W' && e.off === 0 && e.flags !== undefined && (e.flags & kComplete) === 0;
  });
  const iH = headers.filter((i) => i < iC).at(-1);
  if (iH === undefined) fail('no header write without COMPLETE before the COMPLETE one', events);
  const inPages = (e: TraceEvent): boolean => e.kind === 'W' && e.off >= pages.start && e.off < pages.end;
  const pageWrites = writes.filter((i) => inPages(on(i)));
  const tables = writes.filter((i) => {
    const e = on(i);
    return e.kind === 'W' && e.off > 0 && !inPages(e);
  });
  if (pageWrites.length === 0 || tables.length === 0) fail('no page or no table writes recorded', events);
  if (Math.max(...pageWrites) > Math.min(...tables)) fail('a page was written after the tables', events);
  if (Math.max(...tables) > iH) fail('a table was written after the final header', events);
  if (!syncs.some((i) => i > iH && i < iC)) fail('no fdatasync between the header and its COMPLETE flag', events);
  if (!syncs.some((i) => i > iC && i < iN)) fail('no fdatasync between the COMPLETE flag and the rename', events);
  if (writes.some((i) => i > iC)) fail('a write after the COMPLETE flag', events);
  if (!idx((e) => e.kind === 'S' && e.path === path.dirname(output)).some((i) => i > iN))
    fail('no fsync of the directory after the rename', events);
  return tmp;
}

/**
 * An in-place update of `snap`: header with UPDATING → fdatasync → pages, punches, tables →
 * fdatasync → header with COMPLETE → fdatasync; nothing written after it.
 */
export function checkUpdateProtocol(events: TraceEvent[], snap: string): void {
  const changes = events.flatMap((e, i) => ((e.kind === 'W' || e.kind === 'P') && e.path === snap ? [i] : []));
  const syncs = events.flatMap((e, i) => (e.kind === 'D' && e.path === snap ? [i] : []));
  if (changes.length < 3) fail('fewer than three changes to the snapshot', events);
  const first = events[changes[0]!]!;
  if (!(
    first.kind === 'W' &&
    first.off === 0 &&
    first.flags !== undefined &&
    first.flags & kUpdating &&
    !(first.flags & kComplete)
  )) {
    fail('the first change is not the header marked UPDATING', events);
  }
  const last = events[changes.at(-1)!]!;
  if (!(
    last.kind === 'W' &&
    last.off === 0 &&
    last.flags !== undefined &&
    last.flags & kComplete &&
    !(last.flags & kUpdating)
  )) {
    fail('the last change is not the header marked COMPLETE', events);
  }
  if (!syncs.some((i) => i > changes[0]! && i < changes[1]!))
    fail('no fdatasync between UPDATING and the first page', events);
  if (!syncs.some((i) => i > changes.at(-2)! && i < changes.at(-1)!))
    fail('no fdatasync between the last page or table and COMPLETE', events);
  if (!syncs.some((i) => i > changes.at(-1)!)) fail('no fdatasync after COMPLETE', events);
}

/** Applies the recorded writes and punches of `file` among events[from, to) to `buf`. */
export function applyWrites(
  buf: Buffer,
  events: TraceEvent[],
  file: string,
  data: Buffer,
  pick: (i: number) => boolean = () => true,
): void {
  events.forEach((e, i) => {
    if (!pick(i) || e.path !== file) return;
    if (e.kind === 'W') {
      if (e.blob === undefined) throw new Error('the trace has no data (set FXR_TRACE_DATA)');
      data.copy(buf, e.off, e.blob, e.blob + e.len);
    } else if (e.kind === 'P') buf.fill(0, e.off, e.off + e.len);
  });
}
