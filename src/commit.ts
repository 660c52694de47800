/**
 * The commit protocol of every command that writes a whole new file (save, convert, export): the
 * output name always holds the previous complete file or the new complete one, never a part.
 *
 *  1. the output must be a regular file or nothing (outputs.ts); take its lock (lock.ts); remove
 *     provably stale temp files of earlier killed saves (cleanup.ts), where asked;
 *  2. create a private temp file beside the output (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 from the
 *     open), register it for removal on an abrupt exit, size it (sparse) and let the caller write
 *     its first bytes (a provisional header);
 *  3. the caller fills it;
 *  4. fdatasync; where the format has one, write the COMPLETE mark and fdatasync again;
 *  5. give it the mode and owner of the file it replaces (re-checking that the output is still a
 *     regular file or nothing); close; rename over the output; fsync the directory.
 * Every failure or interrupt before the rename removes the temp file and releases the lock.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { registerTemp, removeStaleTemps, tempNameFor, unregisterTemp } from './cleanup';
import { isSystemError } from './errors';
import { lockOutput } from './lock';
import { adoptExisting, checkOutputPath, createPrivateFile } from './outputs';

/** fsync of a directory: what makes a rename in it durable. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes all of `buf` at `position`. */
export function writeAt(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, position + done);
}

/** The temp file being filled: write through `fd`; `path` is its name (for messages and reopening). */
export interface TempFile {
  fd: number;
  path: string;
}

export interface AtomicWriteOptions {
  /** The size the temp file starts with (sparse). */
  size: number;
  /** fdatasync the file before (and after) the COMPLETE mark and fsync the directory after the rename. */
  fsync: boolean;
  /** Writes the first bytes right after creation (a provisional header that marks the file as ours and incomplete). */
  provisional?: (fd: number) => void;
  /** Writes the COMPLETE mark once the rest is on disk; it is synced again before the rename. */
  complete?: (fd: number) => void;
  /** Remove temp files that killed saves of this output left behind (cleanup.ts decides which). */
  removeStaleTemps?: boolean;
  logger?: Logger;
  /** Told as each step of the commit is done (a caller's timing). */
  onPhase?: (phase: CommitPhase) => void;
}

/** The steps of the commit: data synced, COMPLETE mark synced, renamed, directory synced. */
export type CommitPhase = 'synced' | 'completed' | 'renamed' | 'dir synced';

/**
 * Writes a new file at `output` by the protocol at the top of this file: `fill` fills the temp file
 * (its result is returned), then it is synced, marked complete and renamed into place.
 * @throws ERR_NOT_REGULAR (exit 2) for an output that is not a regular file, ERR_LOCKED, system
 *   errors naming the temp file or the output, and whatever `fill` throws (the output is unchanged then).
 */
export async function writeAtomically<R>(
  output: string,
  opts: AtomicWriteOptions,
  fill: (file: TempFile) => Promise<R>,
): Promise<R> {
  checkOutputPath(output);
  const lock = lockOutput(output);
  let tmp: string | undefined;
  let fd: number | undefined;
  try {
    if (opts.removeStaleTemps) removeStaleTemps(output, opts.logger);
    const name = tempNameFor(output, process.pid, crypto.randomBytes(4).toString('hex'));
    try {
      // private from the moment it exists (mode 0600 at creation); it takes the mode and owner of
      // the file it replaces only just before the rename
      fd = createPrivateFile(name);
      tmp = name;
      registerTemp(tmp);
      fs.ftruncateSync(fd, opts.size);
      opts.provisional?.(fd);
    } catch (err) {
      throw isSystemError(err) ? Object.assign(err, { path: name }) : err;
    }
    const result = await fill({ fd, path: tmp });

    if (opts.fsync) fs.fdatasyncSync(fd);
    opts.logger?.debug('data synced');
    opts.onPhase?.('synced');
    if (opts.complete) {
      opts.complete(fd);
      if (opts.fsync) fs.fdatasyncSync(fd);
      opts.onPhase?.('completed');
    }
    adoptExisting(fd, checkOutputPath(output));
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, output);
    unregisterTemp(tmp);
    tmp = undefined;
    opts.onPhase?.('renamed');
    if (opts.fsync) fsyncDir(path.dirname(output));
    opts.onPhase?.('dir synced');
    return result;
  } finally {
    if (fd !== undefined) {
      try {
        fs.closeSync(fd);
      } catch {
        /* closing is all that is left to do */
      }
    }
    if (tmp !== undefined) {
      try {
        fs.unlinkSync(tmp);
      } catch {
        /* removed already */
      }
      unregisterTemp(tmp);
    }
    lock.release();
  }
}
