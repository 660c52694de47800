/**
 * `fixedram load`: writes blocks of a snapshot (or a QEMU mapped-ram file) into target files.
 *
 * The whole image is validated (structure, completion, every selected block's bitmap and checksum
 * table) and every target is opened and checked before the first byte is written. Pages absent
 * from the bitmap end up zero in the target even if it held data before.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import {
  closeQuietly,
  openTarget,
  releaseFd,
  removeCreated,
  reopenChecked,
  sameFile,
  type BeneathPath,
  type OpenFile,
} from './blocks';
import type { BlockArg } from './block-args';
import { encodeBlockName } from './block-names';
import type { ChannelBlock } from './channels/messages';
import { isSystemError, usageError } from './errors';
import { openImageShared } from './image';
import { makePrivateDir } from './outputs';
import type { ProgressSink } from './progress';
import { checkBatchBytes, checkChannels, checkUniqueNames } from './options';
import type { RamImage } from './snapshot';
import { ExtentCursor } from './tables';
import { segmentBlock, transfer } from './transfer';

export interface LoadOptions {
  snapshot: string;
  /** Blocks to load and where (NAME=PATH). */
  blocks?: BlockArg[];
  /** Load every block into DIR/<encoded name>. */
  dir?: string;
  channels?: number;
  /** Check page checksums while loading (default true). */
  verify?: boolean;
  followSymlinks?: boolean;
  /** Accept block devices as targets (they must exist and have the block's size). */
  allowDevice?: boolean;
  /** Read the snapshot with O_DIRECT (falls back to buffered I/O with a warning where refused). */
  directIo?: boolean;
  batchBytes?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
}

export interface LoadedBlock {
  name: string;
  path: string;
  length: number;
  pageSize: number;
  presentPages: number;
  zeroPages: number;
  created: boolean;
}

export interface LoadResult {
  command: 'load';
  snapshot: string;
  format: RamImage['format'];
  blocks: LoadedBlock[];
  bytesRead: number;
  bytesWritten: number;
  verified: boolean;
  channels: number;
  seconds: number;
}

interface Target {
  index: number;
  file: OpenFile;
  created: boolean;
  presentPages: number;
}

/**
 * Loads blocks of a snapshot into targets.
 * @throws ERR_USAGE, ERR_SNAPSHOT_* (exit 3), ERR_INTEGRITY (a page fails its checksum; the targets are
 *   then incomplete), system errors, ERR_INTERRUPTED.
 */
export async function load(opts: LoadOptions): Promise<LoadResult> {
  const started = process.hrtime.bigint();
  const channels = checkChannels(opts.channels);
  const wantVerify = opts.verify ?? true;
  const requestedBatchBytes = checkBatchBytes(opts.batchBytes);
  if (!opts.blocks?.length && opts.dir === undefined)
    throw usageError('give the targets: option blocks (NAME=PATH ...) or option dir');
  if (opts.blocks?.length && opts.dir !== undefined)
    throw usageError('option blocks and option dir cannot be used together');
  if (opts.blocks) checkUniqueNames(opts.blocks);

  // validate the image before touching anything
  const image = openImageShared(opts.snapshot);
  const targets: Target[] = [];
  let dataStarted = false;
  let dirFd: number | undefined;
  try {
    // (under a shared lock, taken by openImageShared: an in-place update cannot run under a load)
    if (image.incomplete) throw image.incomplete;
    const byName = new Map(image.blocks.map((b, i) => [b.name, i]));
    const chosen: { index: number; path: string; at?: BeneathPath }[] = [];
    if (opts.blocks?.length) {
      for (const a of opts.blocks) {
        const index = byName.get(a.name);
        if (index === undefined) {
          throw usageError(
            `block '${a.name}' is not in '${opts.snapshot}' (it has: ${image.blocks.map((b) => `'${b.name}'`).join(', ')})`,
            { block: a.name },
          );
        }
        chosen.push({ index, path: path.resolve(a.path) });
      }
    } else {
      image.blocks.forEach((_, index) => chosen.push({ index, path: '' }));
    }
    for (const c of chosen) image.checkTables(c.index);
    if (opts.dir !== undefined) {
      // only now that every table is known good
      const dir = path.resolve(opts.dir);
      makePrivateDir(dir);
      try {
        dirFd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
      } catch (err) {
        throw isSystemError(err) ? Object.assign(err, { path: dir }) : err;
      }
      // every target is opened relative to this one descriptor, never by walking its path again
      for (const c of chosen) {
        const rel = encodeBlockName(image.blocks[c.index]!.name);
        c.path = path.join(dir, rel);
        c.at = { dirFd, rel };
      }
    }
    const snapId = fs.fstatSync(image.fd, { bigint: true });

    // targets: all opened and checked before any data moves
    chosen.forEach((c) => {
      const b = image.blocks[c.index]!;
      const t = openTarget(
        c.path,
        b.name,
        b.length,
        {
          followSymlinks: opts.followSymlinks ?? false,
          allowDevice: opts.allowDevice ?? false,
        },
        c.at,
      );
      targets.push({ index: c.index, file: t.file, created: t.created, presentPages: 0 });
      releaseFd(t.file);
      if (sameFile(t.file, snapId))
        throw usageError(`target '${c.path}' is the snapshot itself`, { path: c.path, block: b.name });
      // two targets that are one file (same path, a hard link, a followed symlink): refuse
      const twin = targets.slice(0, -1).find((o) => sameFile(o.file, t.file));
      if (twin) {
        const other = image.blocks[twin.index]!.name;
        throw usageError(
          `targets of blocks '${other}' and '${b.name}' are the same file ('${twin.file.path}' and '${c.path}')`,
          { path: c.path, block: b.name },
        );
      }
    });
    dataStarted = true;

    // load
    const verify = wantVerify && image.hasChecksums;
    const byBlock = new Map(targets.map((t) => [t.index, t]));
    // hugetlbfs targets are written through mappings, so their batches must be whole huge pages
    const batchBytes = Math.max(requestedBatchBytes, ...targets.map((t) => t.file.hugePageSize ?? 0));
    // a created target is all holes: only present pages need a channel; an existing target may hold
    // old data, and only where it holds data (SEEK_DATA) must absent pages be made zero
    const cursors = new Map(
      targets
        .filter((t) => !t.created)
        .map((t) => [
          t.index,
          new ExtentCursor(
            () => reopenChecked(t.file.path, fs.constants.O_RDONLY, t.file, image.blocks[t.index]!.name),
            t.file.path,
            0,
            image.blocks[t.index]!.length,
          ),
        ]),
    );
    const stats = await transfer({
      kind: 'load',
      command: 'load',
      channels,
      snapshot: image,
      directIo: opts.directIo ?? false,
      batchBytes,
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
      interrupted: `the targets are incomplete (${targets.map((t) => `'${t.file.path}'`).join(', ')})`,
      blocks: image.blocks,
      select: (i) => byBlock.has(i),
      prepare: (seg) => {
        const b = image.blocks[seg.block]!;
        const t = seg.tables;
        byBlock.get(seg.block)!.presentPages += image.readTableWindow(seg.block, seg.first, seg.count, t);
        cursors.get(seg.block)?.mark(seg.first * b.pageSize, b.pageSize, seg.count, t.mask);
        let any = false;
        for (let i = 0; i < seg.count; i++) {
          if (t.present[i] || t.mask[i]) {
            t.active[i] = 1;
            any = true;
          }
        }
        return any;
      },
      channelBlock: (seg): ChannelBlock => {
        const b = image.blocks[seg.block]!;
        const t = byBlock.get(seg.block)!;
        return segmentBlock(b, seg, {
          live: {
            path: t.file.path,
            dev: t.file.dev,
            ino: t.file.ino,
            follow: t.file.follow,
            ...(t.file.at ? { beneath: { dirFd: t.file.at.dirFd, rel: t.file.at.rel } } : {}),
          },
          liveMmap: t.file.hugetlbfs,
          intent: { verify, zeroAbsent: !t.created, readAhead: !(opts.directIo ?? false) },
        });
      },
    }).finally(() => {
      for (const c of cursors.values()) c.close();
    });
    return {
      command: 'load',
      snapshot: image.path,
      format: image.format,
      blocks: targets.map((t) => {
        const b = image.blocks[t.index]!;
        return {
          name: b.name,
          path: t.file.path,
          length: b.length,
          pageSize: b.pageSize,
          presentPages: t.presentPages,
          zeroPages: b.pages - t.presentPages,
          created: t.created,
        };
      }),
      bytesRead: stats.bytesRead,
      bytesWritten: stats.bytesWritten,
      verified: verify,
      channels: stats.channels,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } catch (err) {
    // nothing was written yet: remove the targets this run created
    if (!dataStarted) for (const t of targets) if (t.created) removeCreated(t.file);
    throw err;
  } finally {
    for (const t of targets) closeQuietly(t.file.fd);
    closeQuietly(dirFd);
    image.close();
  }
}
