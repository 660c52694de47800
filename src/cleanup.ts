/**
 * Files a run must remove if the process exits abruptly (a second SIGINT exits at once): temp
 * files of saves in progress. Normal paths remove their own files in `finally` blocks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { kFlagComplete, kMagic } from './format';

const temps = new Set<string>();

export function registerTemp(file: string): void {
  temps.add(file);
}

export function unregisterTemp(file: string): void {
  temps.delete(file);
}

/** Removes every registered temp file, synchronously (safe to call from a signal handler). */
export function removeTempsSync(): void {
  for (const f of temps) {
    try {
      fs.unlinkSync(f);
    } catch {
      /* already gone */
    }
  }
  temps.clear();
}

/** The temp file name of a save of `output` by `pid`: `.<name>.<pid>.<8 hex>.tmp` beside it. */
export function tempNameFor(output: string, pid: number, hex: string): string {
  return path.join(path.dirname(output), `.${path.basename(output)}.${pid}.${hex}.tmp`);
}

/** Whether a process with this pid exists (EPERM: it exists, owned by someone else). */
function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Why a file beside `output` is NOT a stale temp file of ours that may be removed, or undefined
 * when it is. Only a file that is provably ours and incomplete goes:
 *  1. its name is exactly `.<output name>.<pid>.<8 lower-case hex>.tmp` (what {@link tempNameFor} makes);
 *  2. it is a regular file (lstat: never a symlink, directory or device), owned by our effective uid;
 *  3. opened without following links it is the same inode, and starts with our magic and a header
 *     whose flags lack COMPLETE (every save writes such a provisional header first);
 *  4. the pid in its name is not running (kill(pid, 0) says ESRCH). A pid that was reused by another
 *     process keeps the file: the rule errs on the side of leaving a file behind, never of removing
 *     one that might be live.
 * The caller holds the output's lock, so no save of this output is running meanwhile anyway.
 */
export function staleTempProblem(output: string, name: string): string | undefined {
  const prefix = `.${path.basename(output)}.`;
  if (!name.startsWith(prefix)) return 'another name';
  const m = /^(\d{1,10})\.[0-9a-f]{8}\.tmp$/.exec(name.slice(prefix.length));
  if (!m) return 'another name';
  const pid = Number(m[1]);
  const file = path.join(path.dirname(output), name);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch {
    return 'gone';
  }
  if (!st.isFile()) return 'not a regular file';
  if (process.geteuid && st.uid !== process.geteuid()) return 'owned by another user';
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch {
    return 'cannot be opened';
  }
  try {
    const f = fs.fstatSync(fd);
    if (f.ino !== st.ino || f.dev !== st.dev || !f.isFile()) return 'changed while checked';
    const head = Buffer.alloc(16);
    if (fs.readSync(fd, head, 0, 16, 0) < 16 || !head.subarray(0, 8).equals(kMagic)) return 'not a fixedram snapshot';
    if (head.readUInt32LE(12) & kFlagComplete) return 'complete';
  } catch {
    return 'unreadable';
  } finally {
    fs.closeSync(fd);
  }
  if (pid === process.pid || pidAlive(pid)) return 'its process is running';
  return undefined;
}

/**
 * Removes temp files that earlier saves of `output` left behind when they were killed (SIGKILL,
 * power loss), by the rule of {@link staleTempProblem}. Called under the output's lock.
 */
export function removeStaleTemps(output: string, logger?: Logger): void {
  let names: string[];
  try {
    names = fs.readdirSync(path.dirname(output));
  } catch {
    return;
  }
  for (const name of names) {
    const problem = staleTempProblem(output, name);
    if (problem === 'another name') continue;
    if (problem) {
      logger?.debug({ file: name, reason: problem }, 'left a temp-like file alone');
      continue;
    }
    try {
      fs.unlinkSync(path.join(path.dirname(output), name));
      logger?.info({ file: name }, 'removed the temp file of an interrupted save');
    } catch {
      /* gone already */
    }
  }
}
