/**
 * `fixedram verify`: proves a snapshot intact. The structure is checked in full before any page is
 * read; then every present page is hashed against its stored XXH3, every absent slot must read as
 * zero, and with `against` a block is compared byte for byte with a live file.
 */
import * as fs from 'node:fs';
import type { Logger } from 'pino';
import type { BlockArg } from './block-args';
import { closeQuietly, openBlockFile, type OpenFile } from './blocks';
import type { BadPage, ChannelBlock } from './channels/messages';
import { interruptedError, isSystemError, usageError } from './errors';
import { openImageShared } from './image';
import { fromNativeError, native } from './native';
import { ExtentCursor } from './tables';
import { segmentBlock, transfer } from './transfer';
import type { ProgressSink } from './progress';
import { checkBatchBytes, checkChannels, checkUniqueNames } from './options';
import type { RamImage } from './snapshot';

export interface VerifyOptions {
  snapshot: string;
  /** Live files to compare blocks with (NAME=PATH). */
  against?: BlockArg[];
  channels?: number;
  /** How many failures are listed in detail (default 100); all are counted. */
  maxReported?: number;
  followSymlinks?: boolean;
  batchBytes?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
}

export interface VerifyFailure {
  block: string;
  /**
   * Page index, or undefined for a whole-block failure (size mismatch against a live file) and for
   * non-zero padding (then `block` is the block whose region follows the padding).
   */
  page?: number;
  /** File offset of the page in the snapshot (padding: of the first non-zero byte). */
  offset?: number;
  kind: 'checksum' | 'absent-not-zero' | 'differs' | 'size' | 'padding-not-zero' | 'device-state-checksum';
  expected?: string;
  actual?: string;
  message: string;
}

export interface VerifyResult {
  command: 'verify';
  snapshot: string;
  format: RamImage['format'];
  ok: boolean;
  blocks: { name: string; length: number; pageSize: number; pages: number; presentPages: number; zeroPages: number }[];
  checksums: boolean;
  /** The stored device state (kind and size) whose checksum was checked, when the snapshot has one. */
  deviceState?: { kind: string; bytes: number; checksumOk: boolean };
  compared: string[];
  failures: VerifyFailure[];
  failureCount: number;
  bytesChecked: number;
  bytesRead: number;
  seconds: number;
  channels: number;
}

const kindText: Record<BadPage['kind'], string> = {
  checksum: 'checksum mismatch',
  'absent-not-zero': 'page absent from the bitmap holds non-zero data',
  differs: 'differs from the live file',
};

/**
 * Verifies a snapshot. Structural problems throw (exit 3); page-level failures are returned with
 * ok = false (exit 1).
 */
export async function verify(opts: VerifyOptions): Promise<VerifyResult> {
  const started = process.hrtime.bigint();
  const channels = checkChannels(opts.channels);
  const maxReported = opts.maxReported ?? 100;
  if (!Number.isSafeInteger(maxReported) || maxReported < 0)
    throw usageError('maxReported must be a non-negative integer');
  const batchBytes = checkBatchBytes(opts.batchBytes);
  const against = opts.against ?? [];
  checkUniqueNames(against);

  // under the shared lock load takes too: an in-place update cannot rewrite pages under a verify
  const image = openImageShared(opts.snapshot);
  const live: (OpenFile | undefined)[] = [];
  try {
    if (image.incomplete) throw image.incomplete;
    image.blocks.forEach((_, i) => image.checkTables(i));
    const failures: VerifyFailure[] = [];
    let failureCount = 0;
    // the device state: structure first (exit 3 when malformed), then its checksum (a failure, exit 1)
    const ds = image.readDeviceState?.();
    if (ds && !ds.checksumOk) {
      failureCount++;
      failures.push({
        block: '',
        kind: 'device-state-checksum',
        offset: (image.details as { deviceStateOffset?: number } | undefined)?.deviceStateOffset ?? 0,
        expected: `0x${ds.checksum.toString(16).padStart(16, '0')}`,
        message: `the device-state record (${ds.kind}, ${ds.recordBytes} bytes) fails its checksum`,
      });
    }
    const byName = new Map(image.blocks.map((b, i) => [b.name, i]));
    for (const a of against) {
      const i = byName.get(a.name);
      if (i === undefined) {
        throw usageError(
          `block '${a.name}' is not in '${opts.snapshot}' (it has: ${image.blocks.map((b) => `'${b.name}'`).join(', ')})`,
          { block: a.name },
        );
      }
      const f = openBlockFile(a.path, fs.constants.O_RDONLY, {
        block: a.name,
        followSymlinks: opts.followSymlinks ?? false,
      });
      const b = image.blocks[i]!;
      if (f.size !== b.length) {
        closeQuietly(f.fd);
        failureCount++;
        failures.push({
          block: b.name,
          kind: 'size',
          message: `block '${b.name}': live file '${a.path}' is ${f.size} bytes, the block is ${b.length} bytes`,
        });
        continue;
      }
      live[i] = f;
    }

    // Window by window: the tables of the window, where the snapshot holds data (one SEEK_DATA/
    // SEEK_HOLE walk per block, never per batch), and batches only where a page is present or its
    // slot holds data: holes and absent pages cost nothing.
    const fixedram = image.format === 'fixedram';
    const cursors = image.blocks.map((b) =>
      fixedram ? new ExtentCursor(image.fd, image.path, b.pagesOffset, b.pagesOffset + b.length) : undefined,
    );
    const presentCounts = image.blocks.map(() => 0);
    const liveCursors = image.blocks.map((b, i) =>
      live[i] ? new ExtentCursor(live[i]!.fd, live[i]!.path, 0, b.length) : undefined,
    );
    let liveBuf = new Uint8Array(0);
    const liveScratch = (n: number): Uint8Array => {
      if (liveBuf.length < n) liveBuf = new Uint8Array(n);
      liveBuf.fill(0, 0, n);
      return liveBuf.subarray(0, n);
    };
    const stats = await transfer({
      kind: 'verify',
      command: 'verify',
      channels,
      snapshot: image,
      batchBytes,
      badCapacity: maxReported,
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
      blocks: image.blocks,
      prepare: (seg) => {
        const b = image.blocks[seg.block]!;
        const t = seg.tables;
        presentCounts[seg.block]! += image.readTableWindow(seg.block, seg.first, seg.count, t);
        cursors[seg.block]?.mark(b.pagesOffset + seg.first * b.pageSize, b.pageSize, seg.count, t.mask);
        // a live file is compared only where it holds data or the snapshot has a page: elsewhere both are zero
        const liveData = liveCursors[seg.block] ? liveScratch(seg.count) : undefined;
        if (liveData) liveCursors[seg.block]!.mark(seg.first * b.pageSize, b.pageSize, seg.count, liveData);
        let any = false;
        for (let i = 0; i < seg.count; i++) {
          if (t.present[i] || t.mask[i] || liveData?.[i]) {
            t.active[i] = 1;
            any = true;
          }
        }
        return any;
      },
      channelBlock: (seg): ChannelBlock => {
        const b = image.blocks[seg.block]!;
        const f = live[seg.block];
        return segmentBlock(b, seg, {
          ...(f ? { live: { fd: f.fd, path: f.path } } : {}),
          mask: fixedram,
          intent: { checksums: fixedram },
        });
      },
    });
    const padding = await checkPadding(image, maxReported, opts.signal);
    failureCount += stats.badCount + padding.count;
    for (const bad of stats.bad) {
      const b = image.blocks[bad.block]!;
      const offset = b.pagesOffset + bad.page * b.pageSize;
      failures.push({
        block: b.name,
        page: bad.page,
        offset,
        kind: bad.kind,
        ...(bad.expected !== undefined ? { expected: bad.expected } : {}),
        actual: bad.actual,
        message:
          `block '${b.name}' page ${bad.page} (offset 0x${offset.toString(16)}): ${kindText[bad.kind]}` +
          (bad.kind === 'checksum' ? ` (expected ${bad.expected}, got ${bad.actual})` : ''),
      });
    }
    failures.push(...padding.failures.slice(0, Math.max(0, maxReported - failures.length)));
    return {
      command: 'verify',
      snapshot: image.path,
      format: image.format,
      ok: failureCount === 0,
      blocks: image.blocks.map((b, i) => ({
        name: b.name,
        length: b.length,
        pageSize: b.pageSize,
        pages: b.pages,
        presentPages: presentCounts[i]!,
        zeroPages: b.pages - presentCounts[i]!,
      })),
      checksums: image.hasChecksums,
      ...(ds ? { deviceState: { kind: ds.kind, bytes: ds.recordBytes, checksumOk: ds.checksumOk } } : {}),
      compared: image.blocks.filter((_, i) => live[i]).map((b) => b.name),
      failures: failures.slice(0, maxReported),
      failureCount,
      bytesChecked: stats.bytesTotal,
      bytesRead: stats.bytesRead,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
      channels: stats.channels,
    };
  } finally {
    for (const f of live) closeQuietly(f?.fd);
    image.close();
  }
}

/**
 * Checks that the padding of a snapshot (bytes outside every region) reads as zero: only the data
 * extents of the padding are read (SEEK_DATA/SEEK_HOLE), so a hole costs nothing whatever its
 * length. Counts every non-zero 4 KiB chunk and lists the first `cap` (offset: the first non-zero
 * byte of the chunk).
 */
async function checkPadding(
  image: RamImage,
  cap: number,
  signal?: AbortSignal,
): Promise<{ count: number; failures: VerifyFailure[] }> {
  const failures: VerifyFailure[] = [];
  let count = 0;
  const chunk = 4096;
  const buf = Buffer.alloc(1 << 20);
  const addon = native();
  let steps = 0;
  for (const p of image.padding ?? []) {
    let pos = p.start;
    while (pos < p.end) {
      let ext: number[] | null;
      try {
        ext = addon.dataExtents(image.fd, pos, p.end, 64);
      } catch (err) {
        throw fromNativeError(err, { path: image.path });
      }
      if (ext === null) ext = [pos, p.end];
      if (ext.length === 0) break;
      for (let k = 0; k < ext.length; k += 2) {
        // eslint-disable-next-line no-useless-assignment -- n is set in the body before at += n reads it
        for (let at = ext[k]!, n = 0; at < ext[k + 1]!; at += n) {
          if (++steps % 64 === 0) {
            await new Promise((resolve) => setImmediate(resolve));
            if (signal?.aborted) throw interruptedError('interrupted');
          }
          // pieces end on 4 KiB boundaries of the file, so a chunk is never split
          n = Math.min(buf.length - (at % chunk), ext[k + 1]! - at);
          readFully(image, buf.subarray(0, n), at);
          // one failure per non-zero 4 KiB chunk of the file
          for (let c = 0; c < n;) {
            const chunkEnd = Math.min(n, (Math.floor((at + c) / chunk) + 1) * chunk - at);
            const nz = buf.subarray(c, chunkEnd).findIndex((v) => v !== 0);
            if (nz >= 0) {
              count++;
              const offset = at + c + nz;
              if (failures.length < cap) {
                failures.push({
                  block: p.block,
                  offset,
                  kind: 'padding-not-zero',
                  message:
                    `padding at 0x${p.start.toString(16)}-0x${p.end.toString(16)} (${p.where}) ` +
                    `holds non-zero data at offset 0x${offset.toString(16)}`,
                });
              }
            }
            c = chunkEnd;
          }
        }
        pos = ext[k + 1]!;
      }
    }
  }
  return { count, failures };
}

function readFully(image: RamImage, into: Buffer, position: number): void {
  let done = 0;
  while (done < into.length) {
    let n: number;
    try {
      n = fs.readSync(image.fd, into, done, into.length - done, position + done);
    } catch (err) {
      if (isSystemError(err) && (err.code === 'EINTR' || err.code === 'EAGAIN')) continue;
      throw isSystemError(err) ? Object.assign(err, { path: image.path }) : err;
    }
    if (n === 0) into.fill(0, done);
    if (n === 0) return;
    done += n;
  }
}
