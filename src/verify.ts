/**
 * `fixedram verify`: proves a snapshot intact. The structure is checked in full before any page is
 * read; then every present page is hashed against its stored XXH3, every absent slot must read as
 * zero, and with `against` a block is compared byte for byte with a live file.
 */
import * as fs from 'node:fs';
import type { Logger } from 'pino';
import { checkUniqueNames, closeQuietly, openBlockFile, sharedPageBytes, type BlockArg, type OpenFile } from './blocks';
import { runChannels } from './channels/pool';
import type { BadPage, ChannelBlock } from './channels/messages';
import { interruptedError, usageError } from './errors';
import { openImage } from './image';
import type { Padding } from './format';
import { fromNativeError, kVerifyAbsentZero, kVerifyChecksums, kVerifyDataMask, native } from './native';
import { kDefaultBatchBytes, planBatches } from './plan';
import type { ProgressSink } from './progress';
import { checkChannels } from './save';
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
  'checksum': 'checksum mismatch',
  'absent-not-zero': 'page absent from the bitmap holds non-zero data',
  'differs': 'differs from the live file',
};

/**
 * Verifies a snapshot. Structural problems throw (exit 3); page-level failures are returned with
 * ok = false (exit 1).
 */
export async function verify(opts: VerifyOptions): Promise<VerifyResult> {
  const started = process.hrtime.bigint();
  const channels = checkChannels(opts.channels);
  const maxReported = opts.maxReported ?? 100;
  if (!Number.isSafeInteger(maxReported) || maxReported < 0) throw usageError('maxReported must be a non-negative integer');
  const against = opts.against ?? [];
  checkUniqueNames(against);

  const image = openImage(opts.snapshot);
  const live: (OpenFile | undefined)[] = [];
  try {
    if (image.incomplete) throw image.incomplete;
    const tables = image.blocks.map((_, i) => image.readTables(i));
    const failures: VerifyFailure[] = [];
    let failureCount = 0;
    // the device state: structure first (exit 3 when malformed), then its checksum (a failure, exit 1)
    const ds = image.readDeviceState?.();
    if (ds && !ds.checksumOk) {
      failureCount++;
      failures.push({
        block: '', kind: 'device-state-checksum', offset: (image.details as { deviceStateOffset?: number } | undefined)?.deviceStateOffset ?? 0,
        expected: `0x${ds.checksum.toString(16).padStart(16, '0')}`,
        message: `the device-state record (${ds.kind}, ${ds.recordBytes} bytes) fails its checksum`,
      });
    }
    const byName = new Map(image.blocks.map((b, i) => [b.name, i]));
    for (const a of against) {
      const i = byName.get(a.name);
      if (i === undefined) {
        throw usageError(`block '${a.name}' is not in '${opts.snapshot}' (it has: ${image.blocks.map((b) => `'${b.name}'`).join(', ')})`,
          { block: a.name });
      }
      const f = openBlockFile(a.path, fs.constants.O_RDONLY, { block: a.name, followSymlinks: opts.followSymlinks ?? false });
      const b = image.blocks[i]!;
      if (f.size !== b.length) {
        closeQuietly(f.fd);
        failureCount++;
        failures.push({
          block: b.name, kind: 'size',
          message: `block '${b.name}': live file '${a.path}' is ${f.size} bytes, the block is ${b.length} bytes`,
        });
        continue;
      }
      live[i] = f;
    }

    // where the snapshot holds data: one SEEK_DATA/SEEK_HOLE walk per block, not one per batch
    const fixedram = image.format === 'fixedram';
    const blocks: ChannelBlock[] = image.blocks.map((b, i) => {
      const mask = fixedram ? sharedPageBytes(b.pages) : undefined;
      if (mask && b.pages > 0) native().markData(image.fd, b.pagesOffset, b.pageSize, 0, b.pages, mask);
      return {
        name: b.name, pageSize: b.pageSize, pages: b.pages, snapBase: b.pagesOffset,
        ...(live[i] ? { liveFd: live[i]!.fd, livePath: live[i]!.path } : {}),
        liveBase: 0, present: tables[i]!.present, csums: tables[i]!.csums, ...(mask ? { mask } : {}),
        flags: fixedram ? kVerifyChecksums | kVerifyAbsentZero | kVerifyDataMask : 0,
      };
    });
    const plan = planBatches(blocks, opts.batchBytes ?? kDefaultBatchBytes);
    const total = blocks.reduce((s, b) => s + b.pages * b.pageSize, 0);
    opts.onProgress?.({ command: 'verify', bytesDone: 0, bytesTotal: total });
    const stats = await runChannels({
      kind: 'verify', channels, snapshotFd: image.fd, snapshotPath: image.path, blocks, plan,
      badCapacity: maxReported,
      ...(opts.signal ? { signal: opts.signal } : {}),
      onProgress: (done) => opts.onProgress?.({ command: 'verify', bytesDone: done, bytesTotal: total }),
    });
    const padding = await checkPadding(image, opts.signal);
    failureCount += stats.badCount + padding.length;
    for (const bad of stats.bad) {
      const b = image.blocks[bad.block]!;
      const offset = b.pagesOffset + bad.page * b.pageSize;
      failures.push({
        block: b.name, page: bad.page, offset, kind: bad.kind,
        ...(bad.expected !== undefined ? { expected: bad.expected } : {}), actual: bad.actual,
        message: `block '${b.name}' page ${bad.page} (offset 0x${offset.toString(16)}): ${kindText[bad.kind]}` +
          (bad.kind === 'checksum' ? ` (expected ${bad.expected}, got ${bad.actual})` : ''),
      });
    }
    failures.push(...padding.slice(0, Math.max(0, maxReported - failures.length)));
    return {
      command: 'verify',
      snapshot: image.path,
      format: image.format,
      ok: failureCount === 0,
      blocks: image.blocks.map((b, i) => ({
        name: b.name, length: b.length, pageSize: b.pageSize, pages: b.pages,
        presentPages: tables[i]!.presentCount, zeroPages: b.pages - tables[i]!.presentCount,
      })),
      checksums: image.hasChecksums,
      ...(ds ? { deviceState: { kind: ds.kind, bytes: ds.recordBytes, checksumOk: ds.checksumOk } } : {}),
      compared: image.blocks.filter((_, i) => live[i]).map((b) => b.name),
      failures: failures.slice(0, maxReported),
      failureCount,
      bytesChecked: total,
      bytesRead: stats.bytesRead,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
      channels: Math.min(channels, Math.max(plan.count, 1)),
    };
  } finally {
    for (const f of live) closeQuietly(f?.fd);
    image.close();
  }
}

const kPaddingChunkPages = 256;

/**
 * Checks that the padding of a snapshot (bytes outside every region) reads as zero, and returns one
 * failure per non-zero 4 KiB chunk (offset: its first non-zero byte). Runs on this thread: the
 * unaligned ends are read here, the aligned middle goes through the addon in 1 MiB steps, which
 * reads only the data extents (SEEK_DATA), so holes cost nothing.
 */
async function checkPadding(image: RamImage, signal?: AbortSignal): Promise<VerifyFailure[]> {
  const out: VerifyFailure[] = [];
  const ps = 4096;
  const buf = Buffer.alloc(ps);
  // reads [start, end) (at most one chunk) and reports its first non-zero byte, if any
  const scan = (p: Padding, start: number, end: number): void => {
    const n = fs.readSync(image.fd, buf, 0, end - start, start);
    const at = buf.subarray(0, n).findIndex((v) => v !== 0);
    if (at < 0) return;
    const offset = start + at;
    out.push({
      block: p.block, offset, kind: 'padding-not-zero',
      message: `padding at 0x${p.start.toString(16)}-0x${p.end.toString(16)} (${p.where}) ` +
        `holds non-zero data at offset 0x${offset.toString(16)}`,
    });
  };
  const addon = native();
  const scratch = Buffer.alloc(kPaddingChunkPages * ps);
  const present = new Uint8Array(kPaddingChunkPages);
  const csums = new Uint8Array(kPaddingChunkPages * 8);
  const bad = new BigUint64Array(kPaddingChunkPages * 3);
  for (const p of image.padding ?? []) {
    const a = Math.min(Math.ceil(p.start / ps) * ps, p.end);
    const z = Math.max(Math.floor(p.end / ps) * ps, a);
    if (p.start < a) scan(p, p.start, a);
    for (let pos = a, steps = 0; pos < z; pos += kPaddingChunkPages * ps, steps++) {
      if (steps % 64 === 63) {
        await new Promise((resolve) => setImmediate(resolve));
        if (signal?.aborted) throw interruptedError('interrupted');
      }
      const count = Math.min(kPaddingChunkPages, (z - pos) / ps);
      let r: [number, number];
      try {
        r = addon.verifyPages(image.fd, pos, ps, 0, count, scratch, csums, present, -1, 0, scratch, bad, kVerifyAbsentZero);
      } catch (err) {
        throw fromNativeError(err, { path: image.path });
      }
      for (let k = 0; k < Math.min(r[1], kPaddingChunkPages); k++) {
        const page = pos + Number(bad[3 * k]!) * ps;
        scan(p, page, page + ps);
      }
    }
    if (z < p.end) scan(p, Math.max(z, p.start), p.end);
  }
  return out;
}
