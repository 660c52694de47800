/**
 * The one loader of the C++ addon and its typed contract. Every function is synchronous and meant
 * to run on a channel (worker) thread; arguments are validated by the callers in TypeScript.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ExitCode, FixedramError, sysError, type ErrorContext, type SystemError } from './errors';

/** Flags of {@link Native.savePages}; keep in step with native/pages.h. */
export const kSaveSeekData = 1 << 0;
export const kSaveMask = 1 << 1;
export const kSaveUpdate = 1 << 2;
export const kSaveRewrite = 1 << 3;
export const kSaveWriteback = 1 << 4;
/** With kSaveUpdate: read sources with preadv, never through a mapping. */
export const kUpdateNoMap = 1 << 8;
/** Flags of {@link Native.loadPages}. */
export const kLoadVerify = 1 << 0;
export const kLoadZeroAbsent = 1 << 1;
export const kLoadMmapTarget = 1 << 2;
/** Read a batch's present pages ahead in one POSIX_FADV_WILLNEED before reading them (buffered reads). */
export const kLoadWillNeed = 1 << 3;
/** Flags of {@link Native.verifyPages}. */
export const kVerifyChecksums = 1 << 0;
/** Absent slots must read as zero (fixedram images; QEMU may leave stale data behind a clear bit). */
export const kVerifyAbsentZero = 1 << 1;
/** Use the mask argument of verifyPages for where the snapshot holds data. */
export const kVerifyDataMask = 1 << 2;
/** Pages larger than this are moved, hashed and compared in pieces of this size (native kPieceBytes). */
export const kPieceBytes = 4 << 20;
/** Kinds of bad pages reported by {@link Native.verifyPages}. */
export const kBadChecksum = 1;
export const kAbsentNotZero = 2;
export const kDiffersFromLive = 3;

/** A batch of pages [firstPage, firstPage + pageCount) of one block and its tables (every page mover). */
export interface PageBatchOptions {
  pageSize: number;
  firstPage: number;
  pageCount: number;
  /** Room for the batch's pages (one piece for a page moved in pieces). */
  scratch: Uint8Array;
  /** The block's checksum table and present bytes (indexed by page of the block). */
  csums: Uint8Array;
  present: Uint8Array;
  flags: number;
}

/** savePages and updatePages: page i of the source at srcBase + i × pageSize goes to dstBase + i × pageSize. */
export interface SavePagesOptions extends PageBatchOptions {
  srcFd: number;
  srcBase: number;
  dstFd: number;
  dstBase: number;
  /** One byte per page of the block (with kSaveMask; may be empty otherwise). */
  mask: Uint8Array;
}

/** loadPages: page i of the snapshot at snapBase + i × pageSize goes to dstBase + i × pageSize. */
export interface LoadPagesOptions extends PageBatchOptions {
  snapFd: number;
  snapBase: number;
  dstFd: number;
  dstBase: number;
}

/** verifyPages: the snapshot's pages, and a live file to compare them with (againstFd -1: none). */
export interface VerifyPagesOptions extends PageBatchOptions {
  snapFd: number;
  snapBase: number;
  againstFd: number;
  againstBase: number;
  scratch2: Uint8Array;
  /** Receives (page, kind, actual hash) triples. */
  bad: BigUint64Array;
  /** With kVerifyDataMask: one byte per page, 1 where the slot holds data. */
  mask: Uint8Array;
}

export interface Native {
  /** The flag and kind values of native/pages.h, by the names used here. */
  constants: Record<string, number>;
  hostPageSize(): number;
  /** fstatfs(fd) → [f_type, f_bsize]. */
  fstatfs(fd: number): [number, number];
  /** XXH3-64 (seed 0). */
  hash64: (bytes: Uint8Array) => bigint; // a plain function: callers pass it on unbound
  /**
   * The vector unit XXH3 runs on: the widest of AVX-512, AVX2 and SSE2 the CPU has, chosen once
   * per process (FIXEDRAM_XXH3=sse2|avx2 caps it). Every unit computes the same digests.
   */
  hashUnit(): 'avx512' | 'avx2' | 'sse2';
  /** Packs one byte per page (non-zero = present) into zeroed bitmap bytes (bit i = page i); → the set bits. */
  packBits(present: Uint8Array, pages: number, out: Uint8Array): number;
  /**
   * Unpacks bitmap bytes [0, bytes) into pages [0, 8 * bytes) of `into` (1 or 0 each; the pages of
   * a zero byte are not touched, so a zeroed `into` of a huge sparse block stays unallocated); → the set bits.
   */
  unpackBits(bitmap: Uint8Array, bytes: number, into: Uint8Array): number;
  /** The first page < pages that is absent in bitmap and whose 8-byte checksum entry is not 0, or -1. */
  absentNonZero(bitmap: Uint8Array, csums: Uint8Array, pages: number): number;
  /** → [presentPages, bytesRead, bytesWritten, writtenPages, punchedPages, unchangedPages] */
  savePages(o: SavePagesOptions): [number, number, number, number, number, number];
  /**
   * The --update mover (flags must hold kSaveUpdate): the options of savePages; reads and hashes
   * in cache-sized runs, writes only changed pages, never starts write-back itself.
   * → [presentPages, bytesRead, bytesWritten, writtenPages, punchedPages, unchangedPages,
   *    readNs, hashNs, writeNs, punchNs, cpuNs] (wall time spent in each phase; the thread's CPU time)
   */
  updatePages(
    o: SavePagesOptions,
  ): [number, number, number, number, number, number, number, number, number, number, number];
  /** → [bytesRead, bytesWritten, zeroedPages, badPage (-1: none), badActual] */
  loadPages(o: LoadPagesOptions): [number, number, number, number, bigint];
  /** → [bytesRead, badCount]; bad receives (page, kind, actual hash) triples. */
  verifyPages(o: VerifyPagesOptions): [number, number];
  /**
   * Marks in `mask` (one byte per page) the pages [firstPage, firstPage + pageCount) of a block at
   * `base` that overlap data extents, in one SEEK_DATA/SEEK_HOLE walk. False: no hole information
   * (every page marked).
   */
  markData(fd: number, base: number, pageSize: number, firstPage: number, pageCount: number, mask: Uint8Array): boolean;
  /**
   * markData on a libuv pool thread. The mask must not be used until the promise settles, except,
   * with `ready` (an Int32Array over shared memory), its first `Atomics.load(ready, 0)` pages from
   * firstPage on: the walk keeps that count current as it goes (pageCount once done).
   */
  markDataAsync(
    fd: number,
    base: number,
    pageSize: number,
    firstPage: number,
    pageCount: number,
    mask: Uint8Array,
    ready?: Int32Array,
  ): Promise<boolean>;
  /**
   * XXH3-64 streamed over byte ranges of a file ([offset, length, offset, length, ...]) as if they
   * were one buffer; holes are hashed as zeros without being read. → [hash, bits set in the first range]
   */
  hashRanges(fd: number, ranges: number[]): [bigint, number];
  /** At most `max` data extents of [lo, hi) as [start, end, ...]; null: no hole information. */
  dataExtents(fd: number, lo: number, hi: number, max: number): number[] | null;
  punchHole(fd: number, offset: number, length: number): boolean;
  /** POSIX_FADV_WILLNEED over [offset, offset + length): the kernel starts reading it (advice only). */
  willNeed(fd: number, offset: number, length: number): void;
  /** Non-blocking flock: true when taken, false when held elsewhere. */
  flock(fd: number, exclusive: boolean): boolean;
  syncRange(fd: number, offset: number, length: number): void;
  /** syncRange on a libuv pool thread; fd must stay open until the promise settles. */
  syncRangeAsync(fd: number, offset: number, length: number): Promise<void>;
  /** An ArrayBuffer whose memory is 4096-byte aligned (for O_DIRECT). */
  alignedBuffer(bytes: number): ArrayBuffer;
  /** Size in bytes of a block device (ioctl BLKGETSIZE64). */
  blockDeviceSize(fd: number): number;
  /**
   * Opens `rel` below the directory `dirFd` without following any symlink or leaving it (openat2
   * RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or openat with O_NOFOLLOW one component at a time);
   * mkdirMode >= 0 makes missing intermediate directories with exactly that mode. → fd
   */
  openBeneath(dirFd: number, rel: string, flags: number, mode: number, mkdirMode: number): number;
  /** Unlinks `rel` below `dirFd`, reaching its directory as openBeneath does. */
  unlinkBeneath(dirFd: number, rel: string): void;
}

/** What the addon throws for a failed syscall: a positive errno (0: unexpected end of file). */
interface RawNativeError extends Error {
  errno: number;
  syscall: string;
  offset: number;
}

let loaded: Native | undefined;

/**
 * Loads the addon (once per thread) with node-gyp-build: a build from source (native/build/Release,
 * then Debug) if there is one, else the prebuilt binary shipped in the package
 * (native/prebuilds/linux-x64/node.glibc.node).
 */
export function native(): Native {
  if (loaded) return loaded;
  // A build chosen by the environment (the sanitizer build of .ci/sanitizers), in place of the others.
  const forced = process.env.FIXEDRAM_ADDON;
  if (forced) return (loaded = require(path.resolve(forced)) as Native);
  const dir = path.resolve(__dirname, '..', '..', 'native');
  try {
    loaded = (require('node-gyp-build') as (dir: string) => Native)(dir);
    return loaded;
  } catch (err) {
    let first = (err as Error).message.split('\n')[0] ?? '';
    const resource = /EMFILE|ENFILE|ENOMEM|Too many open files|Cannot allocate memory|failed to map segment/i;
    if (!resource.test(first)) {
      // node-gyp-build says "No native build was found" also when it could not read the build
      // directory for want of a descriptor: open it here to tell the two apart
      try {
        fs.closeSync(fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY));
      } catch (probe) {
        if (resource.test((probe as Error).message)) first = (probe as Error).message;
      }
    }
    // A resource limit (descriptors, memory) is not a missing build: say so instead of "rebuild"
    if (resource.test(first)) {
      throw new FixedramError(
        'ERR_RESOURCE',
        ExitCode.system,
        `could not load the native addon: ${first} (a resource limit such as \`ulimit -n\` or \`ulimit -v\`)`,
      );
    }
    throw new Error(
      `fixedram: could not load the native addon from ${dir}: ${(err as Error).message.split('\n')[0]}\n` +
        'No prebuilt binary fits this platform: build it with `npm rebuild fixedram` (needs g++, make and python3).',
      { cause: err },
    );
  }
}

/** True when err came from the addon's syscall wrappers. */
export function isRawNativeError(err: unknown): err is RawNativeError {
  return (
    err instanceof Error &&
    typeof (err as RawNativeError).errno === 'number' &&
    typeof (err as RawNativeError).syscall === 'string' &&
    (err as { code?: unknown }).code === undefined
  );
}

/**
 * Turns an addon error into a Node-shaped one with the path and block it concerns. errno 0 (a read
 * that hit end of file) becomes a short-read error with code 'ERR_SHORT_READ'.
 */
export function fromNativeError(err: unknown, context: ErrorContext): unknown {
  if (!isRawNativeError(err)) return err;
  if (err.errno === 0) {
    const e = new Error(
      `unexpected end of file at offset 0x${err.offset.toString(16)}, ${err.syscall}` +
        (context.path !== undefined ? ` '${context.path}'` : ''),
    ) as SystemError;
    e.code = 'ERR_SHORT_READ';
    e.errno = 0;
    e.syscall = err.syscall;
    Object.assign(e, context, { offset: err.offset });
    return e;
  }
  return sysError(err.errno, err.syscall, { ...context, offset: err.offset });
}
