/**
 * Files fixedram creates: the rules every writer (save, convert, export, load targets) shares.
 *
 * - An output path must name a regular file or nothing. A directory, FIFO, character or block
 *   device, socket or symbolic link at the output is refused (exit 2) BEFORE any work, and a
 *   missing or non-directory parent is an error naming the parent (ENOENT / ENOTDIR, exit 4).
 * - Every file and directory we create is private: files 0600, directories 0700, whatever the
 *   umask (RAM is secret). A file we create is opened with mode 0600 from the start (never
 *   chmod'ed down later), so it is never readable by others, not even for a moment.
 * - A re-save over an existing snapshot keeps that snapshot's mode and owner (as an in-place
 *   update does): the new file takes them just before it is renamed over the old one.
 */
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import * as path from 'node:path';
import { ExitCode, FixedramError, isSystemError, sysError } from './errors';

/** Mode of every file we create. */
export const kPrivateFileMode = 0o600;
/** Mode of every directory we create. */
export const kPrivateDirMode = 0o700;

/** 'a directory', 'a FIFO', … for messages about what a path is. */
export function describeKind(st: fs.Stats | fs.BigIntStats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

/** What an output path holds now, for {@link adoptExisting}. */
export interface ExistingOutput {
  mode: number;
  uid: number;
  gid: number;
}

/**
 * Checks that `output` can be replaced by a new regular file: it is absent or a regular file (not
 * followed if it is a symlink), and its parent is a directory. Call it before any work.
 * @returns the mode and owner of an existing regular file (to keep on re-save), or undefined.
 * @throws ERR_NOT_REGULAR (exit 2) for anything else at the path; ENOENT/ENOTDIR naming the parent.
 */
export function checkOutputPath(output: string, what = 'output'): ExistingOutput | undefined {
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(output);
  } catch (err) {
    if (!isSystemError(err) || (err.code !== 'ENOENT' && err.code !== 'ENOTDIR')) {
      throw isSystemError(err) ? Object.assign(err, { path: output }) : err;
    }
  }
  if (st && !st.isFile()) {
    throw new FixedramError(
      'ERR_NOT_REGULAR',
      ExitCode.usage,
      `${what} '${output}' is ${describeKind(st)}, not a regular file; refusing to replace it`,
      { path: output },
    );
  }
  const dir = path.dirname(output);
  let ds: fs.Stats;
  try {
    ds = fs.statSync(dir);
  } catch (err) {
    throw isSystemError(err) ? Object.assign(err, { path: dir }) : err;
  }
  if (!ds.isDirectory()) throw sysError(osConstants.errno.ENOTDIR, 'stat', { path: dir });
  return st ? { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid } : undefined;
}

/**
 * Creates a new private file (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 at creation; then fchmod 0600 so
 * a restrictive umask cannot leave it unreadable to us). Returns the descriptor.
 */
export function createPrivateFile(file: string, flags = fs.constants.O_RDWR): number {
  const c = fs.constants;
  let fd: number;
  try {
    fd = fs.openSync(file, flags | c.O_CREAT | c.O_EXCL | c.O_NOFOLLOW, kPrivateFileMode);
  } catch (err) {
    throw isSystemError(err) ? Object.assign(err, { path: file }) : err;
  }
  try {
    fs.fchmodSync(fd, kPrivateFileMode);
  } catch {
    /* a file system without modes (vfat): nothing more private to do */
  }
  return fd;
}

/**
 * Gives a new file (still under its temp name) the mode and owner of the file it will replace.
 * Changing the owner needs privileges a non-root user lacks for other owners: then the new file
 * stays ours (and private), like `cp -p`.
 */
export function adoptExisting(fd: number, existing: ExistingOutput | undefined): void {
  if (!existing) return;
  try {
    fs.fchownSync(fd, existing.uid, existing.gid);
  } catch (err) {
    if (!isSystemError(err) || (err.code !== 'EPERM' && err.code !== 'EINVAL')) throw err;
  }
  try {
    fs.fchmodSync(fd, existing.mode);
  } catch (err) {
    if (!isSystemError(err) || err.code !== 'EPERM') throw err;
  }
}

/** Re-checks right before a rename that the output is still absent or a regular file. */
export function recheckOutputPath(output: string, what = 'output'): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(output);
  } catch {
    return;
  }
  if (!st.isFile()) {
    throw new FixedramError(
      'ERR_NOT_REGULAR',
      ExitCode.usage,
      `${what} '${output}' is ${describeKind(st)}, not a regular file; refusing to replace it`,
      { path: output },
    );
  }
}

/**
 * Makes `dir` and its missing parents, each 0700 whatever the umask; an existing directory is left
 * as it is. Errors tell the truth: a path that exists but is not a directory is ENOTDIR (not
 * EEXIST), and a read-only file system is EROFS (not ENOENT).
 */
export function makePrivateDir(dir: string): void {
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    if (!isSystemError(err) || err.code !== 'ENOENT')
      throw isSystemError(err) ? Object.assign(err, { path: dir }) : err;
  }
  if (st) {
    if (!st.isDirectory()) throw sysError(osConstants.errno.ENOTDIR, 'mkdir', { path: dir });
    return;
  }
  const parent = path.dirname(dir);
  if (parent !== dir) makePrivateDir(parent);
  try {
    fs.mkdirSync(dir, kPrivateDirMode);
  } catch (err) {
    if (isSystemError(err) && err.code === 'EEXIST' && fs.statSync(dir).isDirectory()) return; // made by another process
    throw isSystemError(err) ? Object.assign(err, { path: dir }) : err;
  }
  try {
    fs.chmodSync(dir, kPrivateDirMode);
  } catch {
    /* a file system without modes */
  }
}
