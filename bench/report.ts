/** Results, tables and targets of the benchmark. */
import { median, type Usage } from './measure';

export const GiB = 2 ** 30;
export const MiB = 2 ** 20;

/** Every run of one measured case. */
export interface Measured {
  key: string;
  label: string;
  /** RAM bytes the case moves (for GB/s and CPU s/GiB). */
  ramBytes: number;
  runs: Usage[];
  /** Extra per-run numbers parsed from the command (bytesWritten, hashSeconds, ...). */
  extra: Record<string, number>[];
  error?: string;
}

export interface Summary {
  wall: number;
  cpu: number;
  maxRss: number;
  diskWrite: number;
  /** Median bytes passed to write system calls, when known. */
  written?: number;
  min: number;
  max: number;
}

export function summarize(m: Measured): Summary | undefined {
  if (m.runs.length === 0) return undefined;
  const walls = m.runs.map((r) => r.wall);
  return {
    wall: median(walls),
    cpu: median(m.runs.map((r) => r.user + r.sys)),
    maxRss: Math.max(...m.runs.map((r) => r.maxRss)),
    diskWrite: median(m.runs.map((r) => r.diskWrite)),
    ...(m.runs.every((r) => r.written !== undefined) ? { written: median(m.runs.map((r) => r.written!)) } : {}),
    min: Math.min(...walls),
    max: Math.max(...walls),
  };
}

export function extraMedian(m: Measured | undefined, name: string): number | undefined {
  if (!m) return undefined;
  const xs = m.extra.map((e) => e[name]).filter((x): x is number => typeof x === 'number');
  return xs.length ? median(xs) : undefined;
}

export interface Row {
  /** A measured case, or a derived row (label and time only). */
  m?: Measured;
  label?: string;
  derivedSeconds?: number;
  derivedRam?: number;
  /** Key of the row's peer for the ratio column; undefined: no ratio. */
  peer?: string;
  note?: string;
}

const f = (x: number | undefined, digits: number): string =>
  x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits);

/** Renders one section table. */
export function table(
  title: string,
  rows: Row[],
  lookup: (key: string) => Measured | undefined,
  peerName: string,
): string {
  const head = [
    'what',
    'median s',
    'min–max s',
    'RAM GB/s',
    'CPU s/GiB',
    'peak RSS MiB',
    'written MiB',
    'disk write MiB',
    `time ÷ ${peerName}`,
  ];
  const body: string[][] = [];
  const notes: string[] = [];
  for (const r of rows) {
    const label = r.m?.label ?? r.label ?? '?';
    if (r.m?.error && r.m.runs.length === 0) {
      body.push([label, 'ERROR', '', '', '', '', '', '', '']);
      notes.push(`${label}: ${r.m.error}`);
      continue;
    }
    const s = r.m ? summarize(r.m) : undefined;
    const wall = s?.wall ?? r.derivedSeconds;
    const ram = r.m?.ramBytes ?? r.derivedRam;
    const peer = r.peer ? lookup(r.peer) : undefined;
    const ps = peer ? summarize(peer) : undefined;
    body.push([
      label + (r.note ? ` (${r.note})` : ''),
      f(wall, 3),
      s ? `${f(s.min, 2)}–${f(s.max, 2)}` : '',
      ram && wall ? f(ram / wall / 1e9, 2) : '-',
      s && ram ? f(s.cpu / (ram / GiB), 2) : '-',
      s ? f(s.maxRss / MiB, 0) : '-',
      s?.written !== undefined ? f(s.written / MiB, 0) : '-',
      s ? f(s.diskWrite / MiB, 0) : '-',
      ps && wall ? `${f(wall / ps.wall, 2)}×` : '',
    ]);
    if (r.m?.error) notes.push(`${label}: ${r.m.error}`);
  }
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]): string =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  const out = [
    `\n## ${title}\n`,
    line(head),
    `|${widths.map((w, i) => (i === 0 ? ':' : '') + '-'.repeat(w + 1) + (i === 0 ? '' : ':')).join('|')}|`,
  ];
  for (const row of body) out.push(line(row));
  for (const n of notes) out.push(`  error: ${n}`);
  return `${out.join('\n')}\n`;
}

/** A plain table with given headers (right-aligned except the first column). */
export function plainTable(title: string, head: string[], leftColumns: number, body: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => (row[i] ?? '').length)));
  const left = (i: number): boolean => i < leftColumns;
  const line = (cells: string[]): string =>
    `| ${head.map((_, i) => (left(i) ? (cells[i] ?? '').padEnd(widths[i]!) : (cells[i] ?? '').padStart(widths[i]!))).join(' | ')} |`;
  const out = [
    `\n## ${title}\n`,
    line(head),
    `|${widths.map((w, i) => (left(i) ? ':' : '') + '-'.repeat(w + 1) + (left(i) ? '' : ':')).join('|')}|`,
  ];
  for (const row of body) out.push(line(row));
  return `${out.join('\n')}\n`;
}

export interface Target {
  issue: string;
  what: string;
  target: string;
  measured: string;
  verdict: 'PASS' | 'MISS' | 'n/a';
  why?: string;
}

export function fmt(x: number, digits = 2): string {
  return Number.isFinite(x) ? x.toFixed(digits) : '-';
}
