/** Runs the real bin/fixedram.js in a child process. */
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';
import * as path from 'node:path';

export const kBin = path.resolve(__dirname, '..', '..', '..', 'bin', 'fixedram.js');

export interface CliResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function fixedram(args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string } = {}): CliResult {
  const r = spawnSync(process.execPath, [kBin, ...args], {
    encoding: 'utf8', env: { ...process.env, ...opts.env }, input: opts.input ?? '', maxBuffer: 64 << 20,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Starts fixedram in the background; returns the child (for signal tests). */
export function fixedramChild(args: string[], opts: SpawnOptions = {}) {
  return spawn(process.execPath, [kBin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}
