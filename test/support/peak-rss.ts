/** Runs the real CLI in a child and measures its peak RSS (the kernel's high-water mark, all threads). */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { kBin, type CliResult } from './cli';

export interface MeasuredRun extends CliResult {
  /** Peak RSS in MiB (NaN when the child died before it could report). */
  peakMiB: number;
  seconds: number;
}

const kPreload = path.join(__dirname, 'peak-rss-preload.js');

export function fixedramPeak(args: string[], opts: { timeoutMs?: number } = {}): MeasuredRun {
  const report = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-rss-')), 'peak');
  const started = process.hrtime.bigint();
  const r = spawnSync(process.execPath, ['--require', kPreload, kBin, ...args], {
    encoding: 'utf8',
    env: { ...process.env, FIXEDRAM_PEAK_RSS_FILE: report },
    input: '',
    maxBuffer: 64 << 20,
    timeout: opts.timeoutMs ?? 300_000,
    killSignal: 'SIGKILL',
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  let peakMiB = NaN;
  try {
    peakMiB = Number(fs.readFileSync(report, 'utf8')) / 1024;
  } catch {
    /* the child died without reporting */
  }
  fs.rmSync(path.dirname(report), { recursive: true, force: true });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, peakMiB, seconds };
}

/** The RSS bound the README promises for any input file and any -j. */
export const kRssBoundMiB = 256;
