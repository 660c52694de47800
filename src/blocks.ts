/**
 * RAM block files: opening sources and targets safely (type, size, identity, beneath a directory
 * for `load --dir`), recognising hugetlbfs, the page size a block uses, the checks that a file is
 * still what was opened, and the O_DIRECT probe. Parsing `NAME=PATH` is block-args.ts, the
 * name → file name encoding block-names.ts.
 */
import * as fs from 'node:fs';
import { ExitCode, FixedramError, ioError, sysError, usageError, isSystemError } from './errors';
import type { BlockArg } from './block-args';
import { native } from './native';
import { kPrivateDirMode, kPrivateFileMode } from './outputs';
import { checkPageSize } from './options';
import { openBeneath, unlinkBeneath, type BeneathPath } from './reopen';

export { openBeneath, reopenChecked, unlinkBeneath, type BeneathPath } from './reopen';

export const kHugetlbfsMagic = 0x958458f6;
export const kTmpfsMagic = 0x01021994;
export const kDefaultPageSize = 4096;

/** Identity of an open file, to detect replacement and aliasing. */
export interface FileIdentity {
  dev: bigint;
  ino: bigint;
}

export interface OpenFile extends FileIdentity {
  path: string;
  /** The open descriptor, or -1 once released (see {@link releaseFd}). */
  fd: number;
  /** Whether a final symlink was followed when it was opened (channels reopen it the same way). */
  follow: boolean;
  size: number;
  hugetlbfs: boolean;
  /** A block device (only with allowDevice). */
  device: boolean;
  /** Huge page size on hugetlbfs, else undefined. */
  hugePageSize?: number;
  mtimeNs: bigint;
  /** Set when the file was opened beneath a directory descriptor (load --dir). */
  at?: BeneathPath;
}

/** A file named relative to a directory descriptor (load --dir): opened beneath it, no symlinks. */
export interface FileOptions {
  followSymlinks?: boolean;
  /** Accept block devices (their size comes from BLKGETSIZE64). */
  allowDevice?: boolean;
}

function describeType(st: fs.BigIntStats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

/**
 * Opens a file for a block without following a final symlink (unless asked), refusing anything but
 * regular files. O_NONBLOCK keeps a FIFO from blocking the open; it changes nothing for files.
 */
export function openBlockFile(
  file: string,
  flags: number,
  opts: FileOptions & { block: string; create?: boolean; mode?: number; at?: BeneathPath; mkdirMode?: number },
): OpenFile {
  const c = fs.constants;
  let f = flags | c.O_NONBLOCK | (opts.followSymlinks || opts.at ? 0 : c.O_NOFOLLOW);
  if (opts.create) f |= c.O_CREAT | c.O_EXCL;
  let fd: number;
  try {
    fd = opts.at
      ? openBeneath(opts.at, f, opts.mode ?? 0o600, file, opts.mkdirMode ?? -1)
      : fs.openSync(file, f, opts.mode ?? 0o600);
  } catch (err) {
    if (isSystemError(err) && err.code === 'EISDIR') {
      throw new FixedramError(
        'ERR_NOT_REGULAR',
        ExitCode.usage,
        `'${file}' (block '${opts.block}') is a directory, not a regular file`,
        { path: file, block: opts.block },
      );
    }
    if (isSystemError(err) && (err.code === 'ENXIO' || err.code === 'EOPNOTSUPP')) {
      // a socket (or a device without a driver): one rule for every kind that is not a file
      let st: fs.BigIntStats | undefined;
      try {
        st = opts.followSymlinks ? fs.statSync(file, { bigint: true }) : fs.lstatSync(file, { bigint: true });
      } catch {
        st = undefined;
      }
      if (st && !st.isFile() && !st.isBlockDevice()) {
        throw new FixedramError(
          'ERR_NOT_REGULAR',
          ExitCode.usage,
          `'${file}' (block '${opts.block}') is ${describeType(st)}, not a regular file`,
          { path: file, block: opts.block },
        );
      }
    }
    if (isSystemError(err) && err.code === 'ELOOP' && opts.at) {
      throw new FixedramError(
        'ERR_SYMLINK',
        ExitCode.usage,
        `'${file}' (block '${opts.block}') is or lies behind a symbolic link inside the --dir directory; refused`,
        { path: file, block: opts.block },
      );
    }
    if (isSystemError(err) && err.code === 'ELOOP' && !opts.followSymlinks) {
      throw new FixedramError(
        'ERR_SYMLINK',
        ExitCode.usage,
        `'${file}' (block '${opts.block}') is a symbolic link; use option followSymlinks to accept it`,
        { path: file, block: opts.block },
      );
    }
    if (isSystemError(err)) Object.assign(err, { block: opts.block });
    throw err;
  }
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    const device = st.isBlockDevice() && opts.allowDevice === true;
    if (!st.isFile() && !device) {
      const hint = st.isBlockDevice() ? ' (use option allowDevice to accept a block device)' : '';
      throw new FixedramError(
        'ERR_NOT_REGULAR',
        ExitCode.usage,
        `'${file}' (block '${opts.block}') is ${describeType(st)}, not a regular file${hint}`,
        { path: file, block: opts.block },
      );
    }
    const [fsType, bsize] = native().fstatfs(fd);
    const hugetlbfs = !device && fsType === kHugetlbfsMagic;
    const size = device ? native().blockDeviceSize(fd) : Number(st.size);
    return {
      path: file,
      fd,
      follow: opts.followSymlinks === true,
      size,
      dev: st.dev,
      ino: st.ino,
      mtimeNs: st.mtimeNs,
      hugetlbfs,
      device,
      ...(opts.at ? { at: opts.at } : {}),
      ...(hugetlbfs ? { hugePageSize: bsize } : {}),
    };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/** Closes quietly (for cleanup paths). */
export function closeQuietly(fd: number | undefined): void {
  if (fd === undefined || fd < 0) return;
  try {
    fs.closeSync(fd);
  } catch {
    /* already closed */
  }
}

/** The page size a block uses: --page-size if given, else the huge page size on hugetlbfs, else 4096. */
export function pageSizeFor(file: OpenFile, requested: number | undefined): number {
  checkPageSize(requested);
  if (requested !== undefined) {
    if (file.hugePageSize !== undefined && requested % file.hugePageSize !== 0) {
      throw usageError(
        `option pageSize ${requested} is smaller than the huge page size ${file.hugePageSize} of '${file.path}'`,
      );
    }
    return requested;
  }
  return file.hugePageSize ?? kDefaultPageSize;
}

/**
 * Closes the descriptor of a checked block file. Why: a snapshot may have thousands of blocks, and
 * the main thread must not hold a descriptor per block; channels reopen each file by path and
 * compare its device and inode with the ones recorded here.
 */
export function releaseFd(file: OpenFile): void {
  closeQuietly(file.fd);
  file.fd = -1;
}

/** One byte per page in shared memory (page masks and bitmaps handed to channels). */
export function sharedPageBytes(pages: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(Math.max(pages, 1))).subarray(0, pages);
}

/** Checks that the path still names what was opened: same device, inode and (not for devices) size. */
export function checkUnchanged(file: OpenFile, block: string): void {
  let now: fs.BigIntStats | undefined;
  try {
    now = file.follow ? fs.statSync(file.path, { bigint: true }) : fs.lstatSync(file.path, { bigint: true });
  } catch {
    now = undefined;
  }
  if (!now || now.ino !== file.ino || now.dev !== file.dev) {
    throw ioError(
      'ERR_SOURCE_CHANGED',
      `source of block '${block}' was replaced or removed during the operation ('${file.path}')`,
      { path: file.path, block },
    );
  }
  if (!file.device && Number(now.size) !== file.size) {
    throw ioError(
      'ERR_SOURCE_CHANGED',
      `source of block '${block}' changed size during the operation ('${file.path}': ${file.size} -> ${now.size} bytes)`,
      { path: file.path, block },
    );
  }
}

/** Identity of a path if it exists (following symlinks), else undefined. */
export function identityOf(file: string): FileIdentity | undefined {
  try {
    const st = fs.statSync(file, { bigint: true });
    return { dev: st.dev, ino: st.ino };
  } catch (err) {
    if (isSystemError(err) && (err.code === 'ENOENT' || err.code === 'ENOTDIR')) return undefined;
    throw err;
  }
}

export const sameFile = (a: FileIdentity, b: FileIdentity): boolean => a.dev === b.dev && a.ino === b.ino;

/**
 * Whether a file can be opened with O_DIRECT. Returns false (and the caller falls back to buffered
 * I/O with a warning) when the file system refuses it with EINVAL.
 */
export function probeDirectIo(file: string, flags: number): boolean {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, flags | fs.constants.O_DIRECT);
    return true;
  } catch (err) {
    if (isSystemError(err) && err.code === 'EINVAL') return false;
    throw isSystemError(err) ? Object.assign(err, { path: file }) : err;
  } finally {
    closeQuietly(fd);
  }
}

/** A Node-shaped error for a path, for checks made in TypeScript (e.g. ENOTDIR). */
export function pathError(errno: number, syscall: string, file: string, block?: string): Error {
  return sysError(errno, syscall, { path: file, ...(block !== undefined ? { block } : {}) });
}

/**
 * Opens every source read-only, checks type, size and page size, and closes it again (channels
 * reopen sources by path and check their identity; see releaseFd).
 */
export function openSources(
  blocks: readonly BlockArg[],
  opts: { pageSize?: number; followSymlinks?: boolean; allowDevice?: boolean },
): OpenFile[] {
  const opened: OpenFile[] = [];
  try {
    for (const b of blocks) {
      const f = openBlockFile(b.path, fs.constants.O_RDONLY, {
        block: b.name,
        followSymlinks: opts.followSymlinks ?? false,
        allowDevice: opts.allowDevice ?? false,
      });
      opened.push(f);
      const ps = pageSizeFor(f, opts.pageSize);
      if (f.size % ps !== 0) {
        throw usageError(`block '${b.name}': '${b.path}' is ${f.size} bytes, not a multiple of the page size ${ps}`, {
          block: b.name,
          path: b.path,
        });
      }
      releaseFd(f);
    }
    return opened;
  } catch (err) {
    for (const f of opened) closeQuietly(f.fd);
    throw err;
  }
}

/** Refuses an output that is one of the given files (same device and inode; hard links too). */
export function refuseAliasing(output: string, files: readonly { name: string; file: OpenFile }[]): void {
  const id = identityOf(output);
  if (!id) return;
  for (const { name, file } of files) {
    if (sameFile(id, file)) {
      throw usageError(`output '${output}' is the same file as block '${name}' ('${file.path}')`, {
        path: output,
        block: name,
      });
    }
  }
}

/** Refuses a hugetlbfs target whose length is not a whole number of huge pages. */
function checkHugeMultiple(f: OpenFile, block: string, length: number): void {
  if (f.hugePageSize !== undefined && length % f.hugePageSize !== 0) {
    throw ioError(
      'ERR_PAGE_SIZE',
      `block '${block}' (${length} bytes) cannot be loaded into hugetlbfs file '${f.path}': ` +
        `its length is not a multiple of the huge page size ${f.hugePageSize}`,
      { path: f.path, block },
    );
  }
}

/** Removes a target this run created (beneath the --dir descriptor when it has one). */
export function removeCreated(f: OpenFile): void {
  try {
    if (f.at) unlinkBeneath(f.at);
    else fs.unlinkSync(f.path);
  } catch {
    /* gone already */
  }
}

/**
 * Opens (or creates) a target of exactly `length` bytes. With `at` (load --dir) the target is
 * opened beneath the directory descriptor, never through a symlink, and its missing intermediate
 * directories are made 0700; a created target is 0600.
 */
export function openTarget(
  file: string,
  block: string,
  length: number,
  opts: { followSymlinks: boolean; allowDevice: boolean },
  at?: BeneathPath,
): { file: OpenFile; created: boolean } {
  let existing: OpenFile | undefined;
  try {
    existing = openBlockFile(file, fs.constants.O_RDWR, { block, ...opts, ...(at ? { at } : {}) });
  } catch (err) {
    if (!isSystemError(err) || err.code !== 'ENOENT')
      throw isSystemError(err) ? Object.assign(err, { path: file, block }) : err;
  }
  if (existing) {
    const f = existing;
    if (f.size === length) {
      try {
        checkHugeMultiple(f, block, length);
      } catch (err) {
        closeQuietly(f.fd);
        throw err;
      }
    }
    if (f.size !== length) {
      closeQuietly(f.fd);
      throw usageError(
        `target '${file}' of block '${block}' is ${f.size} bytes, the block is ${length} bytes; ` +
          'remove it or give a target of the right size',
        { path: file, block },
      );
    }
    return { file: f, created: false };
  }
  const f = openBlockFile(file, fs.constants.O_RDWR, {
    block,
    ...opts,
    create: true,
    mode: kPrivateFileMode,
    ...(at ? { at, mkdirMode: kPrivateDirMode } : {}),
  });
  try {
    fs.fchmodSync(f.fd, kPrivateFileMode); // private whatever the umask
    checkHugeMultiple(f, block, length);
    fs.ftruncateSync(f.fd, length);
  } catch (err) {
    closeQuietly(f.fd);
    removeCreated(f);
    throw isSystemError(err) ? Object.assign(err, { path: file, block }) : err;
  }
  return { file: { ...f, size: length }, created: true };
}
