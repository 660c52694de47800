/**
 * `load s3://…` straight into the targets (docs/s3.md, "load"): no local copy of the snapshot. The
 * metadata (header, block table, bitmaps, checksum tables) is fetched into memory and checked as
 * the local reader checks it; then the chunks are fetched in parallel and every present page of a
 * chosen block is checked against its XXH3 and written into its target at its place. Pages that
 * no chunk holds are zero: their checksums are checked against a zero page, and an existing target
 * is made zero there (hole punched, or zeros written where the file system cannot punch).
 *
 * Applies when every page lies inside one chunk and the targets are plain files named with
 * `-b NAME=PATH`; `directLoadApplies` says when, and the caller falls back to a local copy and the
 * local `load` otherwise (patch layers, `--dir`, devices, hugetlbfs, pages larger than a chunk).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { closeQuietly, openTarget, removeCreated, type OpenFile } from '../blocks';
import { explainInterrupt, integrityError, snapshotError, usageError } from '../errors';
import { decodeFixedHeader, decodeHeader, kHeaderBytes, type BlockLayout } from '../format';
import type { LoadedBlock, LoadOptions, LoadResult } from '../load';
import { native } from '../native';
import { checkChannels, checkUniqueNames } from '../options';
import { incompleteReason } from '../snapshot';
import { kPackPage } from './chunk';
import { makeClient, type S3Options } from './client';
import type { Manifest } from './manifest';
import { fetchChunks, type PullResult } from './transfer';
import { formatS3Url, type S3Url } from './url';

export interface DirectLoadResult extends LoadResult {
  s3: PullResult;
}

/** Whether the manifest and options allow a direct load (the targets are checked once opened). */
export function directLoadApplies(m: Manifest, opts: LoadOptions): boolean {
  return m.patches.length === 0 && opts.dir === undefined && !opts.allowDevice && (opts.blocks?.length ?? 0) > 0;
}

interface Target {
  file: OpenFile;
  block: BlockLayout;
  index: number;
  fd: number;
  path: string;
  created: boolean;
  /** One byte per page: the page's bytes were written (non-zero data). */
  written: Uint8Array;
  /** One byte per page: a fetched chunk covered the page (its checksum was checked then). */
  seen: Uint8Array;
  present: Uint8Array;
  csums: Buffer;
  presentPages: number;
}

const hex = (v: bigint): string => `0x${v.toString(16).padStart(16, '0')}`;

/**
 * Loads the snapshot at `url` into the `-b` targets, or returns undefined (nothing opened, nothing
 * written) when a direct load does not apply: the caller then loads through a local copy.
 */
export async function loadS3Direct(
  url: S3Url,
  m: Manifest,
  opts: LoadOptions & S3Options,
): Promise<DirectLoadResult | undefined> {
  const started = process.hrtime.bigint();
  if (!directLoadApplies(m, opts)) return undefined;
  const channels = checkChannels(opts.channels);
  const requests = opts.channels ?? 4;
  const wantVerify = opts.verify ?? true;
  checkUniqueNames(opts.blocks!);
  const where = formatS3Url(url);
  const client = makeClient(opts);
  const ctl = new AbortController();
  if (opts.signal) {
    if (opts.signal.aborted) ctl.abort();
    else opts.signal.addEventListener('abort', () => ctl.abort(), { once: true });
  }
  const signal = ctl.signal;
  const hash64 = native().hash64;
  const targets: Target[] = [];
  let dataStarted = false;
  let bytesFetched = 0;
  let bytesWritten = 0;
  try {
    // the metadata, in memory: chunk 0 holds the header; the tables may need more chunks
    const readMeta = async (end: number): Promise<Buffer> => {
      const meta = Buffer.alloc(Math.min(end, m.size));
      bytesFetched += await fetchChunks(
        client,
        url,
        m,
        requests,
        signal,
        opts.signal,
        (i) => i * m.chunkBytes < meta.length,
        (i, c) => {
          c.copy(meta, i * m.chunkBytes, 0, Math.min(c.length, meta.length - i * m.chunkBytes));
        },
      );
      return meta;
    };
    const bad = (err: unknown): Error => {
      if (err instanceof Error && 'exitCode' in err) return Object.assign(err, { message: `${where}: ${err.message}` });
      return err as Error;
    };
    let header;
    let meta;
    try {
      const first = await readMeta(kHeaderBytes);
      const { tableBytes } = decodeFixedHeader(first, m.size);
      const table = kHeaderBytes + tableBytes > first.length ? await readMeta(kHeaderBytes + tableBytes) : first;
      header = decodeHeader(table, m.size, hash64);
      meta = header.metadataEnd > table.length ? await readMeta(header.metadataEnd) : table;
    } catch (err) {
      throw bad(err);
    }
    const reason = incompleteReason(header);
    if (reason) throw bad(reason);
    // every page inside one chunk (so a page's bytes arrive together), else the local path
    if (header.blocks.some((b) => b.pageSize > m.chunkBytes || b.pagesOffset % b.pageSize !== 0)) return undefined;
    const byName = new Map(header.blocks.map((b, i) => [b.name, i]));
    const chosen = opts.blocks!.map((a) => {
      const index = byName.get(a.name);
      if (index === undefined) {
        throw usageError(
          `block '${a.name}' is not in '${where}' (it has: ${header.blocks.map((b) => `'${b.name}'`).join(', ')})`,
          { block: a.name },
        );
      }
      return { index, path: path.resolve(a.path) };
    });
    // the tables of every chosen block, checked against their checksum in the block table
    const tables = chosen.map((c) => {
      const b = header.blocks[c.index]!;
      const bitmap = meta.subarray(b.bitmapOffset, b.bitmapOffset + b.bitmapBytes);
      const csums = meta.subarray(b.checksumsOffset, b.checksumsOffset + b.checksumsBytes);
      if (hash64(Buffer.concat([bitmap, csums])) !== header.metadataChecksums[c.index]) {
        throw snapshotError(
          'ERR_SNAPSHOT_INVALID',
          `${where}: corrupt metadata: the bitmap or checksum table of block '${b.name}' ` + 'fails its checksum',
          { block: b.name },
        );
      }
      const present = new Uint8Array(b.pages);
      let count = 0;
      for (let p = 0; p < b.pages; p++) {
        if (bitmap[p >> 3]! & (1 << (p & 7))) {
          present[p] = 1;
          count++;
        }
      }
      if (count !== header.presentPages[c.index]) {
        throw snapshotError(
          'ERR_SNAPSHOT_INVALID',
          `${where}: corrupt metadata: block '${b.name}' bitmap has ${count} pages set, ` +
            `the block table says ${header.presentPages[c.index]}`,
          { block: b.name },
        );
      }
      return { present, csums, count };
    });
    // targets: all opened and checked before any data moves; plain files only, else the local path
    for (const [k, c] of chosen.entries()) {
      const b = header.blocks[c.index]!;
      const t = openTarget(c.path, b.name, b.length, {
        followSymlinks: opts.followSymlinks ?? false,
        allowDevice: false,
      });
      const target: Target = {
        file: t.file,
        block: b,
        index: c.index,
        fd: t.file.fd,
        path: t.file.path,
        created: t.created,
        written: new Uint8Array(b.pages),
        seen: new Uint8Array(b.pages),
        present: tables[k]!.present,
        csums: tables[k]!.csums,
        presentPages: tables[k]!.count,
      };
      targets.push(target);
      if (t.file.hugetlbfs || t.file.device) return undefined;
      const twin = targets.slice(0, -1).find((o) => {
        const a = fs.fstatSync(o.fd);
        const z = fs.fstatSync(target.fd);
        return a.dev === z.dev && a.ino === z.ino;
      });
      if (twin) {
        throw usageError(
          `targets of blocks '${twin.block.name}' and '${b.name}' are the same file ('${twin.path}' and '${c.path}')`,
          { path: c.path, block: b.name },
        );
      }
    }
    dataStarted = true;
    const total = targets.reduce((s, t) => s + t.block.length, 0);
    let done = 0;
    opts.onProgress?.({ command: 'load', bytesDone: 0, bytesTotal: total });
    const chunkHits = (i: number): boolean =>
      targets.some((t) => {
        const lo = i * m.chunkBytes;
        return lo < t.block.pagesOffset + t.block.length && lo + m.chunkBytes > t.block.pagesOffset;
      });
    const zero = Buffer.alloc(Math.max(...targets.map((t) => t.block.pageSize)));
    /** Checks and writes the pages of `t` in [from, to) (file offsets, whole pages), held by `data` from file offset `base`. */
    const place = (t: Target, data: Buffer, base: number, from: number, to: number): void => {
      const b = t.block;
      const p0 = (from - b.pagesOffset) / b.pageSize;
      const p1 = (to - b.pagesOffset) / b.pageSize;
      let runStart = -1;
      const flush = (end: number): void => {
        if (runStart < 0) return;
        const off = b.pagesOffset + runStart * b.pageSize - base;
        const len = (end - runStart) * b.pageSize;
        let w = 0;
        while (w < len) w += fs.writeSync(t.fd, data, off + w, len - w, runStart * b.pageSize + w);
        bytesWritten += len;
        runStart = -1;
      };
      for (let p = p0; p < p1; p++) {
        t.seen[p] = 1;
        if (!t.present[p]) {
          flush(p);
          continue;
        }
        const page = data.subarray(b.pagesOffset + p * b.pageSize - base, b.pagesOffset + (p + 1) * b.pageSize - base);
        if (wantVerify) {
          const expected = t.csums.readBigUInt64LE(8 * p);
          const actual = hash64(page);
          if (actual !== expected) {
            throw integrityError(
              `${where}: block '${b.name}' page ${p}: checksum mismatch (expected ${hex(expected)}, got ` +
                `${hex(actual)}); the targets are incomplete`,
              { block: b.name, page: p },
            );
          }
        }
        if (page.equals(zero.subarray(0, b.pageSize))) {
          flush(p);
          continue;
        }
        t.written[p] = 1;
        if (runStart < 0) runStart = p;
      }
      flush(p1);
    };
    // 4 KiB pages: a packed object's runs are used as they are (the pages of the chunk that no run
    // holds are zero, and are checked as such at the end); larger pages: the chunk unpacked first
    const raw = m.packed && targets.every((t) => t.block.pageSize === kPackPage);
    bytesFetched += await fetchChunks(
      client,
      url,
      m,
      requests,
      signal,
      opts.signal,
      chunkHits,
      (i, data, runs) => {
        const lo = i * m.chunkBytes;
        const spans = runs
          ? runs.map((r) => [lo + r.chunkOffset, r.length, r.objectOffset] as const)
          : [[lo, data.length, 0] as const];
        for (const t of targets) {
          const b = t.block;
          for (const [at, len, objectOffset] of spans) {
            const from = Math.max(at, b.pagesOffset);
            const to = Math.min(at + len, b.pagesOffset + b.length);
            if (from < to) place(t, data, at - objectOffset, from, to);
          }
          const from = Math.max(lo, b.pagesOffset);
          const to = Math.min(lo + m.chunkBytes, b.pagesOffset + b.length);
          if (from < to) done += to - from;
        }
        opts.onProgress?.({ command: 'load', bytesDone: done, bytesTotal: total });
      },
      !wantVerify,
      raw,
    ); // verified: every page used is checked against its XXH3, which the SHA-256 would only repeat
    for (const t of targets) {
      const b = t.block;
      // present pages that no chunk held are zero pages: their checksums must say so
      if (wantVerify) {
        const zeroSum = hash64(zero.subarray(0, b.pageSize));
        for (let p = 0; p < b.pages; p++) {
          if (t.present[p] && !t.seen[p] && t.csums.readBigUInt64LE(8 * p) !== zeroSum) {
            throw integrityError(
              `${where}: block '${b.name}' page ${p}: checksum mismatch (expected ` +
                `${hex(t.csums.readBigUInt64LE(8 * p))}, got ${hex(zeroSum)}); the targets are incomplete`,
              { block: b.name, page: p },
            );
          }
        }
      }
      if (t.created) continue; // all holes already
      // an existing target: every page not written is made zero
      for (let p = 0; p < b.pages;) {
        if (t.written[p]) {
          p++;
          continue;
        }
        let e = p;
        while (e < b.pages && !t.written[e]) e++;
        const off = p * b.pageSize;
        const len = (e - p) * b.pageSize;
        if (!native().punchHole(t.fd, off, len)) {
          for (let w = 0; w < len;) w += fs.writeSync(t.fd, zero, 0, Math.min(zero.length, len - w), off + w);
        }
        p = e;
      }
    }
    opts.onProgress?.({ command: 'load', bytesDone: total, bytesTotal: total });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const blocks: LoadedBlock[] = targets.map((t) => ({
      name: t.block.name,
      path: t.path,
      length: t.block.length,
      pageSize: t.block.pageSize,
      presentPages: t.presentPages,
      zeroPages: t.block.pages - t.presentPages,
      created: t.created,
    }));
    return {
      command: 'load',
      snapshot: opts.snapshot,
      format: 'fixedram',
      blocks,
      bytesRead: bytesFetched,
      bytesWritten,
      verified: wantVerify,
      channels,
      seconds,
      s3: { url: where, size: m.size, chunksFetched: m.chunks.length, bytesFetched, channels: requests, seconds },
    };
  } catch (err) {
    ctl.abort();
    if (!dataStarted) throw err;
    throw explainInterrupt(err, `the targets are incomplete (${targets.map((t) => `'${t.path}'`).join(', ')})`);
  } finally {
    for (const t of targets) closeQuietly(t.fd);
    // nothing was written (an error, or the local path takes over): remove the targets this run created
    if (!dataStarted) for (const t of targets) if (t.created) removeCreated(t.file);
    client.destroy();
  }
}
