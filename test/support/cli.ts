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

/**
 * How long one CLI run in a test may take before it counts as hung: far above any run here (the
 * slowest take seconds), so it only ends a hang, as a failure that names the command, instead of
 * a test run that never finishes. FIXEDRAM_TEST_CHILD_TIMEOUT_MS overrides it.
 */
export const kChildTimeoutMs = Number(process.env.FIXEDRAM_TEST_CHILD_TIMEOUT_MS ?? 180_000);

export function fixedram(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {},
): CliResult {
  const timeout = opts.timeoutMs ?? kChildTimeoutMs;
  const r = spawnSync(process.execPath, [kBin, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...opts.env },
    input: opts.input ?? '',
    maxBuffer: 64 << 20,
    timeout,
    killSignal: 'SIGKILL',
  });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT') {
    throw new Error(
      `hung: \`fixedram ${args.join(' ')}\` did not end within ${timeout / 1000} s (killed); stderr:\n${r.stderr}`,
    );
  }
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Starts fixedram in the background; returns the child (for signal tests). */
export function fixedramChild(args: string[], opts: SpawnOptions = {}) {
  return spawn(process.execPath, [kBin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}
