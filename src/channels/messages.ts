/**
 * The channel protocol: what the main thread hands to each channel (worker thread) and every
 * message a channel sends back. Everything here is structured-clone safe; errors travel as records.
 */
import type { ErrorRecord } from '../errors';

export type ChannelKind = 'save' | 'load' | 'verify';

/** Control words in the shared Int32Array. */
export const kCtlNextBatch = 0;
export const kCtlCancel = 1;
export const kCtlWords = 2;

/**
 * What the channels are to do with a block's pages, besides what the job's kind says (save: copy
 * the live file's pages into the snapshot; load: the snapshot's into the live file; verify: check
 * the snapshot). Only the channel turns it into the page mover's flags.
 */
export interface Intent {
  /** save: start write-back of what a batch wrote (sync_file_range), waiting for a busy device. */
  writeback?: boolean;
  /** save: write only the pages whose XXH3 differs from the stored one, punch pages now zero (--update). */
  update?: boolean;
  /** update: trust no stored table; write every page with data, punch every other (a repair). */
  rewrite?: boolean;
  /** load: check every page against its stored XXH3 before it is written. */
  verify?: boolean;
  /** load: make absent pages zero in the live file (an existing target may hold old data there). */
  zeroAbsent?: boolean;
  /** load: read each batch's present pages ahead in one request before reading them (buffered reads). */
  readAhead?: boolean;
  /** verify: hash present pages against their stored XXH3; absent slots must read as zero. */
  checksums?: boolean;
}

/**
 * How a channel reaches the live file: through the main thread's open descriptor (reopened as
 * /proc/self/fd/<fd>, so each channel holds its own descriptor on exactly the inode the main
 * thread checked), or by its path, refusing a file whose device and inode differ from these
 * (following a final symlink only when `follow`). With `beneath` (load --dir) the path is opened
 * as `rel` below the directory descriptor `dirFd` held by the main thread, with no symlink
 * followed and no way out of it, never by walking the path again.
 */
export type LiveFile =
  | { fd: number; path: string }
  | { path: string; dev: bigint; ino: bigint; follow: boolean; beneath?: { dirFd: number; rel: string } };

/** A block (or a window's segment of one) as a channel sees it. */
export interface ChannelBlock {
  name: string;
  pageSize: number;
  pages: number;
  /** File offset of page 0 in the snapshot (the block's pagesOffset). */
  snapBase: number;
  /**
   * The live file: the source of a save, the target of a load, the file compared against by
   * verify (none: verify checks the snapshot alone).
   */
  live?: LiveFile;
  /** File offset of page 0 in the live file. */
  liveBase: number;
  /** Write the live file through a shared mapping (hugetlbfs). */
  liveMmap?: boolean;
  present: Uint8Array;
  csums: Uint8Array;
  /**
   * One byte per page: where the file read from (the source of a save, the snapshot of a verify)
   * holds data, computed by the main thread; pages outside it are taken as zero without reading.
   */
  mask?: Uint8Array;
  /**
   * With mask, while the walk that fills it still runs (save --update): element k is how many pages
   * of part k (pages [k * maskPartPages, (k + 1) * maskPartPages)) are final, kept current by the
   * walk (markDataAsync's ready); a channel waits until its batch's pages are.
   */
  maskReady?: Int32Array;
  maskPartPages?: number;
  intent: Intent;
}

export interface ChannelJob {
  kind: ChannelKind;
  snapshotFd: number;
  snapshotPath: string;
  blocks: ChannelBlock[];
  /** Float64Array of (block, first page, page count) triples. */
  batches: SharedArrayBuffer;
  batchCount: number;
  /** Int32Array: [next batch, cancel]. */
  control: SharedArrayBuffer;
  scratchBytes: number;
  /** verify: how many bad pages a channel reports in detail. */
  badCapacity: number;
  /**
   * Open the snapshot with O_DIRECT (page data is 1 MiB-aligned and written in whole pages from a
   * 4096-aligned buffer). A channel whose direct transfer fails with EINVAL falls back to buffered
   * I/O for the rest of the run and says so with a warning.
   */
  directIo: boolean;
}

export interface ChannelStats {
  batches: number;
  bytesRead: number;
  bytesWritten: number;
  presentPages: number;
  writtenPages: number;
  punchedPages: number;
  unchangedPages: number;
  zeroedPages: number;
  /** update: nanoseconds in each phase of the page mover, summed over the channel's batches. */
  readNs: number;
  hashNs: number;
  writeNs: number;
  punchNs: number;
  /** update: CPU time of the channel's thread in the page mover. */
  cpuNs: number;
  badCount: number;
  bad: BadPage[];
}

/** A page that failed verification. */
export interface BadPage {
  block: number;
  page: number;
  kind: 'checksum' | 'absent-not-zero' | 'differs';
  expected?: string;
  actual: string;
}

export interface ProgressMessage {
  type: 'progress';
  /** Logical bytes of block data covered by the finished batch. */
  bytes: number;
}
export interface DoneMessage {
  type: 'done';
  stats: ChannelStats;
}
export interface FailedMessage {
  type: 'failed';
  error: ErrorRecord;
}
export interface WarningMessage {
  type: 'warning';
  message: string;
}
export type ChannelMessage = ProgressMessage | DoneMessage | FailedMessage | WarningMessage;

export function emptyStats(): ChannelStats {
  return {
    batches: 0,
    bytesRead: 0,
    bytesWritten: 0,
    presentPages: 0,
    writtenPages: 0,
    punchedPages: 0,
    unchangedPages: 0,
    zeroedPages: 0,
    readNs: 0,
    hashNs: 0,
    writeNs: 0,
    punchNs: 0,
    cpuNs: 0,
    badCount: 0,
    bad: [],
  };
}
