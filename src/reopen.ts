/**
 * Opening a block file again, by path or beneath a directory descriptor, as the very file that was
 * checked before (same device and inode). Split from blocks.ts because the channels need only
 * this: a channel thread loads this module and the addon, not the planning and option modules
 * (their loading is part of every worker thread's start).
 */
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { ioError, isSystemError, sysError } from './errors';
import { native } from './native';

export interface BeneathPath {
  dirFd: number;
  rel: string;
}

/**
 * Opens a checked block file again by path (never following a final symlink unless it was followed
 * the first time) and makes sure it is the same file: same device and inode.
 * @throws ERR_SOURCE_CHANGED when it was replaced or removed in between.
 */
export function reopenChecked(
  file: string,
  flags: number,
  id: { dev: bigint; ino: bigint; follow: boolean },
  block: string,
  at?: BeneathPath,
): number {
  const c = fs.constants;
  const changed = (): Error =>
    ioError('ERR_SOURCE_CHANGED', `'${file}' (block '${block}') was replaced or removed during the operation`, {
      path: file,
      block,
    });
  let fd: number;
  try {
    fd = at
      ? openBeneath(at, flags | c.O_NONBLOCK, 0, file, -1)
      : fs.openSync(file, flags | c.O_NONBLOCK | (id.follow ? 0 : c.O_NOFOLLOW));
  } catch (err) {
    if (isSystemError(err) && (err.code === 'ENOENT' || err.code === 'ELOOP')) throw changed();
    throw isSystemError(err) ? Object.assign(err, { path: file, block }) : err;
  }
  const st = fs.fstatSync(fd, { bigint: true });
  if (st.dev !== id.dev || st.ino !== id.ino) {
    fs.closeSync(fd);
    throw changed();
  }
  return fd;
}

/**
 * Opens `at.rel` below the directory descriptor `at.dirFd` (native openBeneath: openat2
 * RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or openat + O_NOFOLLOW per component): no component may be a
 * symlink and nothing outside the directory can be reached, however the tree changes meanwhile.
 * Errors are Node-shaped and name `file` (the path shown to the user).
 */
export function openBeneath(at: BeneathPath, flags: number, mode: number, file: string, mkdirMode = -1): number {
  try {
    return native().openBeneath(at.dirFd, at.rel, flags, mode, mkdirMode);
  } catch (err) {
    const e = err as { errno?: unknown; syscall?: unknown };
    if (typeof e.errno === 'number' && typeof e.syscall === 'string') {
      // a symlink anywhere on the way: openat2 says EXDEV or ELOOP, openat with O_NOFOLLOW ELOOP or ENOTDIR
      const errno = e.errno === osConstants.errno.EXDEV ? osConstants.errno.ELOOP : e.errno;
      throw sysError(errno, e.syscall, { path: file });
    }
    throw err;
  }
}

/** Removes a file opened beneath a directory descriptor without walking its path again. */
export function unlinkBeneath(at: BeneathPath): void {
  native().unlinkBeneath(at.dirFd, at.rel);
}
