/**
 * One writer per output: an flock'ed lock file `.<name>.lock` beside the output, held for the
 * whole run and removed at the end.
 *
 * Why re-check after locking: a previous holder unlinks the lock file before it unlocks, so a
 * process that opened the old file may lock an inode no longer reachable by name. After taking the
 * lock we compare the inode under the name with ours and start over when they differ.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ioError, isSystemError } from './errors';
import { registerTemp, unregisterTemp } from './cleanup';
import { native } from './native';
import { kPrivateFileMode } from './outputs';

export interface OutputLock {
  path: string;
  release(): void;
}

export function lockPathFor(output: string): string {
  return path.join(path.dirname(output), `.${path.basename(output)}.lock`);
}

/** Takes the lock of `output` or throws ERR_LOCKED naming the pid that holds it. */
export function lockOutput(output: string): OutputLock {
  const lockPath = lockPathFor(output);
  for (let attempt = 0; attempt < 10; attempt++) {
    let fd: number;
    try {
      fd = fs.openSync(
        lockPath,
        fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW,
        kPrivateFileMode,
      );
    } catch (err) {
      throw isSystemError(err) ? Object.assign(err, { path: lockPath }) : err;
    }
    if (!native().flock(fd, true)) {
      let holder = '';
      try {
        holder = fs.readFileSync(fd, 'utf8').trim();
      } catch {
        /* unreadable: report without a pid */
      }
      fs.closeSync(fd);
      throw ioError(
        'ERR_LOCKED',
        `'${output}' is locked by ${/^\d+$/.test(holder) ? `pid ${holder}` : 'another process'} (another fixedram is using it)`,
        { path: output },
      );
    }
    const mine = fs.fstatSync(fd);
    let current: fs.Stats | undefined;
    try {
      current = fs.statSync(lockPath);
    } catch {
      current = undefined;
    }
    if (!current || current.ino !== mine.ino || current.dev !== mine.dev) {
      fs.closeSync(fd);
      continue;
    }
    try {
      // the pid is for the message of a refused second writer; a file system that cannot write
      // small files (hugetlbfs) still gets the lock, just without the pid
      fs.ftruncateSync(fd, 0);
      fs.writeSync(fd, `${process.pid}\n`, 0);
    } catch {
      /* lock without a pid */
    }
    registerTemp(lockPath);
    let released = false;
    return {
      path: lockPath,
      release(): void {
        if (released) return;
        released = true;
        unregisterTemp(lockPath);
        try {
          fs.unlinkSync(lockPath);
        } catch {
          /* already gone */
        }
        fs.closeSync(fd);
      },
    };
  }
  throw ioError('ERR_LOCKED', `could not take the lock of '${output}'`, { path: output });
}
