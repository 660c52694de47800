/**
 * Moving a snapshot file to and from S3 in the chunked layout of docs/s3.md, with N concurrent
 * channels (async requests; the work is network-bound, so they share the main thread).
 *
 * push: find the chunks that hold data (one SEEK_DATA walk, then a zero check), hash them, upload
 * the ones the bucket does not hold yet (content-addressed names make `--update`, resuming an
 * interrupted save and re-uploading after a dropped connection the same operation), then write
 * the manifest: the single PUT that commits. Chunks that this run uploaded are deleted again if it
 * fails; chunks no manifest refers to any more are deleted after a commit.
 * pull: read the manifest, fetch chunks in parallel (a dropped body resumes with a ranged GET),
 * check each chunk's length and SHA-256, and write only its non-zero pages, so holes stay holes.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { writeAtomically } from '../commit';
import { integrityError, interruptedError, ioError, snapshotError } from '../errors';
import { decodeFixedHeader, decodeHeader, kHeaderBytes } from '../format';
import { native } from '../native';
import { kMaxAttempts, makeClient, s3Error, type S3Options } from './client';
import {
  chunkCount,
  chunkKey,
  chunkLength,
  chunkPrefix,
  decodeManifest,
  encodeManifest,
  kDefaultChunkBytes,
  kMaxManifestBytes,
  partBytes,
  type ChunkRef,
  type Manifest,
  type PatchPart,
} from './manifest';
import { formatS3Url, type S3Url } from './url';
import { packChunk, packedRuns, type PackedRun } from './chunk';
import { chunkGetter, type ChunkGetter } from './get';
import { acquireS3Lock, type S3Lock } from './lock';

const kZeroPage = 4096;

export interface TransferOptions extends S3Options {
  /** Concurrent requests (default 4). */
  channels?: number;
}

export interface PushOptions extends TransferOptions {
  chunkBytes?: number;
  /** The key must already hold a fixedram snapshot (save --update). */
  requireExisting?: boolean;
}

export interface PushResult {
  url: string;
  size: number;
  chunkBytes: number;
  chunks: number;
  chunksPresent: number;
  chunksUploaded: number;
  chunksReused: number;
  bytesUploaded: number;
  /** Objects no manifest refers to any more, deleted after the commit. */
  chunksDeleted: number;
  /**
   * 'chunks': every chunk with data is in the bucket under its own hash (a first save, a changed
   * layout, or a compaction of the patches); 'patch': only the changed pages and the metadata were
   * uploaded, as one more patch layer over the chunks.
   */
  mode: 'chunks' | 'patch';
  /** Pages whose bytes changed (patch mode). */
  pagesChanged: number;
  patchLayers: number;
  channels: number;
  seconds: number;
}

export interface PullResult {
  url: string;
  size: number;
  chunksFetched: number;
  bytesFetched: number;
  channels: number;
  seconds: number;
}

/** Runs `work(i)` for i in [0, n) on `channels` concurrent lanes; the first failure stops the rest. */
async function lanes(
  n: number,
  channels: number,
  signal: AbortSignal,
  work: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: unknown;
  const lane = async (): Promise<void> => {
    while (failure === undefined && next < n) {
      if (signal.aborted) throw interruptedError('interrupted');
      const i = next++;
      try {
        await work(i);
      } catch (err) {
        failure ??= err;
        throw err;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.max(1, Math.min(channels, n)) }, lane));
  // eslint-disable-next-line @typescript-eslint/only-throw-error -- rethrows what a lane threw
  if (failure !== undefined) throw failure;
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** A child AbortController that follows `parent`, so one failed lane can stop the others. */
function linked(parent?: AbortSignal): AbortController {
  const c = new AbortController();
  if (parent) {
    if (parent.aborted) c.abort();
    else parent.addEventListener('abort', () => c.abort(), { once: true });
  }
  return c;
}

async function readBody(body: unknown, max: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let total = 0;
  for await (const part of body as AsyncIterable<Uint8Array>) {
    total += part.length;
    if (total > max)
      throw snapshotError('ERR_SNAPSHOT_INVALID', `${what} is larger than expected (more than ${max} bytes)`);
    parts.push(Buffer.from(part.buffer, part.byteOffset, part.length));
  }
  return Buffer.concat(parts, total);
}

/** Every object under `prefix`: key → size. */
async function listPrefix(
  client: S3Client,
  url: S3Url,
  prefix: string,
  signal: AbortSignal,
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let token: string | undefined;
  do {
    const r = await client
      .send(
        new ListObjectsV2Command({
          Bucket: url.bucket,
          Prefix: prefix,
          ...(token ? { ContinuationToken: token } : {}),
        }),
        { abortSignal: signal },
      )
      .catch((err: unknown) => {
        throw s3Error(err, url, 'list', signal);
      });
    for (const o of r.Contents ?? []) if (o.Key !== undefined) out.set(o.Key, o.Size ?? -1);
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
  } while (token);
  return out;
}

/** Deletes `keys` (best effort when `quiet`), 1000 per request. Returns how many were deleted. */
async function deleteKeys(client: S3Client, url: S3Url, keys: readonly string[], quiet: boolean): Promise<number> {
  let deleted = 0;
  for (let i = 0; i < keys.length; i += 1000) {
    const batch = keys.slice(i, i + 1000);
    try {
      const r = await client.send(
        new DeleteObjectsCommand({
          Bucket: url.bucket,
          Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true },
        }),
      );
      deleted += batch.length - (r.Errors?.length ?? 0);
    } catch (err) {
      if (!quiet) throw s3Error(err, url, 'delete', undefined);
    }
  }
  return deleted;
}

/**
 * The manifest at `url`, or undefined when there is no object there. A key without a manifest but
 * with chunks is an interrupted save (exit 3); an object that is not a manifest is exit 3 too.
 */
export async function readManifest(
  client: S3Client,
  url: S3Url,
  signal: AbortSignal,
  missingOk: boolean,
): Promise<Manifest | undefined> {
  const where = formatS3Url(url);
  let bytes: Buffer;
  try {
    const r = await client.send(new GetObjectCommand({ Bucket: url.bucket, Key: url.key }), { abortSignal: signal });
    if ((r.ContentLength ?? 0) > kMaxManifestBytes) {
      throw snapshotError(
        'ERR_SNAPSHOT_INVALID',
        `${where} is not a fixedram snapshot on S3: ${r.ContentLength} bytes is too large for a manifest`,
      );
    }
    bytes = await readBody(r.Body, kMaxManifestBytes, `the manifest of ${where}`);
  } catch (err) {
    const e = s3Error(err, url, 'read', signal);
    if ((e as { code?: string }).code !== 'ERR_S3_NO_SUCH_KEY') throw e;
    const r = await client
      .send(new ListObjectsV2Command({ Bucket: url.bucket, Prefix: chunkPrefix(url.key), MaxKeys: 1 }), {
        abortSignal: signal,
      })
      .catch((e2: unknown) => {
        throw s3Error(e2, url, 'list', signal);
      });
    if ((r.KeyCount ?? r.Contents?.length ?? 0) > 0) {
      if (missingOk) return undefined;
      throw snapshotError(
        'ERR_SNAPSHOT_INCOMPLETE',
        `${where} is incomplete: chunks but no manifest (a save that did not finish; save again)`,
      );
    }
    if (missingOk) return undefined;
    throw e;
  }
  return decodeManifest(bytes, where);
}

/**
 * SHA-256 (lowercase hex) of `data`, computed on the thread pool (WebCrypto) so that hashing the
 * chunks of several channels runs beside the network I/O of the main thread.
 */
async function sha256Hex(data: Buffer): Promise<string> {
  return Buffer.from(await crypto.webcrypto.subtle.digest('SHA-256', data)).toString('hex');
}

/** Bytes of chunk `c`'s object: the packed object, or the chunk itself (version 1). */
const objectBytes = (m: Manifest, c: ChunkRef): number => (m.packed ? c.bytes! : chunkLength(m, c.index));

/** Above this, an update re-uploads changed chunks and drops the patch layers (compaction). */
export const kMaxPatchFraction = 0.5;
export const kCompactAfterLayers = 32;

interface PatchPlan {
  parts: PatchPart[];
  pagesChanged: number;
  bytes: number;
}

function readExactFd(fd: number, len: number, pos: number): Buffer {
  const b = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const n = fs.readSync(fd, b, got, len - got, pos + got);
    if (n === 0) throw ioError('ERR_SOURCE_CHANGED', 'the local snapshot shrank while it was read');
    got += n;
  }
  return b;
}

/**
 * Plans a page-level update of `old` to the local snapshot `fd`: fetches the old metadata (header,
 * block table, bitmaps, XXH3 tables), compares every page's bit and XXH3 with the new ones, and
 * returns the runs to upload: the new metadata and the changed pages. Undefined when a page-level
 * update does not apply (another layout, old metadata that fails its checksum, too many or too large
 * patches): then changed chunks are uploaded instead.
 */
async function planPatch(
  client: S3Client,
  url: S3Url,
  old: Manifest,
  fd: number,
  size: number,
  channels: number,
  signal: AbortSignal,
  userSignal?: AbortSignal,
): Promise<PatchPlan | undefined> {
  if (old.size !== size || old.patches.length >= kCompactAfterLayers) return undefined;
  const hash64 = (b: Uint8Array): bigint => native().hash64(b);
  let fresh;
  try {
    const { tableBytes } = decodeFixedHeader(readExactFd(fd, kHeaderBytes, 0), size);
    fresh = decodeHeader(readExactFd(fd, kHeaderBytes + tableBytes, 0), size, hash64);
  } catch {
    return undefined; // not a fixedram snapshot: chunks only
  }
  const end = fresh.metadataEnd;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-s3-'));
  let oldMeta: Buffer;
  try {
    fs.chmodSync(dir, 0o700);
    const fh = await fs.promises.open(path.join(dir, 'meta'), 'wx+', 0o600);
    try {
      await fh.truncate(size);
      await materialize(client, url, old, fh, channels, signal, userSignal, end);
      oldMeta = Buffer.alloc(end);
      await fh.read(oldMeta, 0, end, 0);
    } finally {
      await fh.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  let prev;
  try {
    prev = decodeHeader(oldMeta, size, hash64);
  } catch {
    return undefined;
  }
  const same =
    prev.metadataEnd === end &&
    prev.blocks.length === fresh.blocks.length &&
    prev.blocks.every((b, i) => {
      const n = fresh.blocks[i]!;
      return (
        b.name === n.name &&
        b.length === n.length &&
        b.pageSize === n.pageSize &&
        b.bitmapOffset === n.bitmapOffset &&
        b.checksumsOffset === n.checksumsOffset &&
        b.pagesOffset === n.pagesOffset
      );
    });
  if (!same) return undefined;
  const newMeta = readExactFd(fd, end, 0);
  const runs: [number, number][] = [[0, end]];
  let pagesChanged = 0;
  for (const [i, b] of prev.blocks.entries()) {
    const tables = (m: Buffer): Buffer =>
      Buffer.concat([
        m.subarray(b.bitmapOffset, b.bitmapOffset + b.bitmapBytes),
        m.subarray(b.checksumsOffset, b.checksumsOffset + b.checksumsBytes),
      ]);
    if (hash64(tables(oldMeta)) !== prev.metadataChecksums[i]) return undefined; // untrusted old tables: chunks
    for (let p = 0; p < b.pages; p++) {
      const bit = b.bitmapOffset + (p >> 3);
      const mask = 1 << (p & 7);
      const c = b.checksumsOffset + 8 * p;
      if (
        (oldMeta[bit]! & mask) === (newMeta[bit]! & mask) &&
        oldMeta.readBigUInt64LE(c) === newMeta.readBigUInt64LE(c)
      )
        continue;
      pagesChanged++;
      const off = b.pagesOffset + p * b.pageSize;
      const last = runs[runs.length - 1]!;
      if (last[0] + last[1] === off) last[1] += b.pageSize;
      else runs.push([off, b.pageSize]);
    }
  }
  if (pagesChanged === 0 && oldMeta.equals(newMeta)) return { parts: [], pagesChanged: 0, bytes: 0 };
  const bytes = runs.reduce((t, [, len]) => t + len, 0);
  const stored = old.chunks.length * old.chunkBytes;
  const patched = old.patches.reduce((t, layer) => t + layer.reduce((u, part) => u + partBytes(part), 0), 0);
  if (patched + bytes > kMaxPatchFraction * stored) return undefined;
  // parts of at most one chunk each (bounded memory per channel), runs split where needed
  const parts: PatchPart[] = [];
  let cur: [number, number][] = [];
  let room = old.chunkBytes;
  for (let [off, len] of runs) {
    while (len > 0) {
      const take = Math.min(len, room);
      cur.push([off, take]);
      off += take;
      len -= take;
      room -= take;
      if (room === 0) {
        parts.push({ sha256: '', runs: cur });
        cur = [];
        room = old.chunkBytes;
      }
    }
  }
  if (cur.length) parts.push({ sha256: '', runs: cur });
  return { parts, pagesChanged, bytes };
}

/** After a commit: deletes the objects under the chunk prefix that manifest `m` does not name. */
async function collect(
  client: S3Client,
  url: S3Url,
  m: Manifest,
  held: Map<string, number>,
  uploaded: string[],
): Promise<number> {
  const live = new Set(
    [...m.chunks.map((c) => c.sha256), ...m.patches.flat().map((p) => p.sha256)].map((h) => chunkKey(url.key, h)),
  );
  const stale = [...held.keys(), ...uploaded].filter((k) => !live.has(k));
  return deleteKeys(client, url, [...new Set(stale)], true);
}

/** Uploads the snapshot file `file` to `url` (see the file comment). */
export async function push(file: string, url: S3Url, opts: PushOptions = {}): Promise<PushResult> {
  const t0 = process.hrtime.bigint();
  const channels = opts.channels ?? 4;
  const client = makeClient(opts);
  const ctl = linked(opts.signal);
  const signal = ctl.signal;
  const where = formatS3Url(url);
  let fd = -1;
  const uploaded: string[] = [];
  let committed = false;
  let held = new Map<string, number>();
  let bytesUploaded = 0;
  let reused = 0;
  let lock: S3Lock | undefined;
  /** Stores `data` under its SHA-256 unless the bucket holds it already; returns the hash. */
  const store = async (data: Buffer, what: string): Promise<string> => {
    const sha256 = await sha256Hex(data);
    const key = chunkKey(url.key, sha256);
    if (held.get(key) === data.length || uploaded.includes(key)) {
      reused++;
      return sha256;
    }
    uploaded.push(key); // before the PUT: a failed or interrupted PUT may still have landed
    const put = new PutObjectCommand({ Bucket: url.bucket, Key: key, Body: data, ContentLength: data.length });
    // the signed payload hash (SigV4 x-amz-content-sha256) is the object's name: the store checks
    // the body against it and refuses an altered one, and the SDK does not hash the body again
    put.middlewareStack.add(
      (next) => async (args) => {
        (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = sha256;
        return next(args);
      },
      { step: 'build', name: 'fixedramPayloadHash' },
    );
    await client.send(put, { abortSignal: signal }).catch((err: unknown) => {
      throw s3Error(err, url, `upload ${what} of`, opts.signal);
    });
    bytesUploaded += data.length;
    return sha256;
  };
  /** The commit: one PUT of the manifest, atomic for readers; then what it no longer names is deleted. */
  const commit = async (
    m: Manifest,
    objects: number,
    rest: Pick<PushResult, 'mode' | 'pagesChanged' | 'patchLayers'>,
    write = true,
  ): Promise<PushResult> => {
    if (write) {
      await client
        .send(
          new PutObjectCommand({
            Bucket: url.bucket,
            Key: url.key,
            Body: encodeManifest(m),
            ContentType: 'application/json',
          }),
          { abortSignal: signal },
        )
        .catch((err: unknown) => {
          throw s3Error(err, url, 'commit', opts.signal);
        });
    }
    committed = true;
    const chunksDeleted = await collect(client, url, m, held, uploaded);
    return {
      url: where,
      size: m.size,
      chunkBytes: m.chunkBytes,
      chunks: chunkCount(m),
      chunksPresent: m.chunks.length,
      chunksUploaded: objects - reused,
      chunksReused: reused,
      bytesUploaded,
      chunksDeleted,
      channels,
      ...rest,
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  };
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw ioError('ERR_NOT_REGULAR', `'${file}' is not a regular file`, { path: file });
    // one writer per key: refused here while another holds the key (docs/s3.md, "Lock")
    lock = await acquireS3Lock(client, url, signal);
    const old = await readManifest(client, url, signal, !opts.requireExisting);
    // chunks stay the same size across updates, so unchanged chunks keep their names
    const chunkBytes = old?.chunkBytes ?? opts.chunkBytes ?? kDefaultChunkBytes;
    // what the bucket already holds: the old manifest's objects and those of interrupted saves
    held = await listPrefix(client, url, chunkPrefix(url.key), signal);
    const plan = old ? await planPatch(client, url, old, fd, st.size, channels, signal, opts.signal) : undefined;
    const buffers = Array.from({ length: channels }, () => Buffer.allocUnsafe(chunkBytes));
    if (old && plan) {
      await lanes(plan.parts.length, channels, signal, async (i) => {
        const part = plan.parts[i]!;
        const buf = buffers.pop()!;
        try {
          let o = 0;
          for (const [off, len] of part.runs) {
            readExactFd(fd, len, off).copy(buf, o);
            o += len;
          }
          part.sha256 = await store(buf.subarray(0, o), `patch part ${i}`);
        } finally {
          buffers.push(buf);
        }
      });
      const m: Manifest = { ...old, patches: plan.parts.length ? [...old.patches, plan.parts] : old.patches };
      return await commit(
        m,
        plan.parts.length,
        { mode: 'patch', pagesChanged: plan.pagesChanged, patchLayers: m.patches.length },
        plan.parts.length > 0,
      );
    }
    const m: Manifest = { packed: true, size: st.size, chunkBytes, chunks: [], patches: [] };
    const n = chunkCount(m);
    const mask = new Uint8Array(n).fill(1);
    const full = Math.floor(st.size / chunkBytes);
    if (full > 0) native().markData(fd, 0, chunkBytes, 0, full, mask);
    const refs: (ChunkRef | undefined)[] = new Array<ChunkRef | undefined>(n);
    const fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const st2 = await fh.stat();
      if (st2.ino !== st.ino || st2.dev !== st.dev)
        throw ioError('ERR_SOURCE_CHANGED', `'${file}' was replaced`, { path: file });
      await lanes(n, channels, signal, async (i) => {
        if (!mask[i]) return;
        const buf = buffers.pop()!;
        try {
          const len = chunkLength(m, i);
          const chunk = buf.subarray(0, len);
          let got = 0;
          while (got < len) {
            const { bytesRead } = await fh.read(chunk, got, len - got, i * chunkBytes + got);
            if (bytesRead === 0)
              throw ioError('ERR_SOURCE_CHANGED', `'${file}' shrank while it was uploaded`, { path: file });
            got += bytesRead;
          }
          const object = packChunk(chunk);
          if (!object) return;
          refs[i] = { index: i, sha256: await store(object, `chunk ${i}`), bytes: object.length };
        } finally {
          buffers.push(buf);
        }
      });
    } finally {
      await fh.close();
    }
    m.chunks = refs.filter((r): r is ChunkRef => r !== undefined);
    return await commit(m, m.chunks.length, { mode: 'chunks', pagesChanged: 0, patchLayers: 0 });
  } catch (err) {
    ctl.abort();
    if (!committed && uploaded.length > 0) await deleteKeys(client, url, uploaded, true);
    throw err;
  } finally {
    if (fd >= 0) fs.closeSync(fd);
    await lock?.release();
    client.destroy();
  }
}

/**
 * Fetches object `key` (exactly `len` bytes, SHA-256 `sha256`) into `buf`, resuming a dropped body
 * with a ranged GET for the rest. `what` names it in messages ("chunk 3").
 */
async function fetchObject(
  get: ChunkGetter,
  url: S3Url,
  key: string,
  len: number,
  sha256: string,
  what: string,
  buf: Buffer,
  signal: AbortSignal,
  userSignal?: AbortSignal,
  checkSha = true,
): Promise<Buffer> {
  const where = formatS3Url(url);
  let got = 0;
  for (let attempt = 1; ; attempt++) {
    try {
      const body = await get.open(key, got, len - 1, signal);
      for await (const part of body as AsyncIterable<Buffer>) {
        if (got + part.length > len) {
          throw snapshotError('ERR_SNAPSHOT_INVALID', `${where}: ${what} is longer than ${len} bytes`);
        }
        buf.set(part, got);
        got += part.length;
      }
      if (got < len) {
        throw snapshotError('ERR_SNAPSHOT_TRUNCATED', `${where}: ${what} is truncated (${got} of ${len} bytes)`);
      }
      break;
    } catch (err) {
      const name = (err as { name?: string }).name;
      if (name === 'NoSuchKey') {
        throw snapshotError(
          'ERR_SNAPSHOT_INCOMPLETE',
          `${where}: ${what} is missing (replaced or deleted while being read?)`,
        );
      }
      if (name === 'InvalidRange') {
        throw snapshotError('ERR_SNAPSHOT_TRUNCATED', `${where}: ${what} is truncated (${got} of ${len} bytes)`);
      }
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      const transient =
        !signal.aborted &&
        (status !== undefined
          ? status >= 500 || status === 429 || name === 'SlowDown'
          : (err as { code?: string }).code !== undefined &&
            /^E[A-Z]+$|^ERR_STREAM/.test((err as { code: string }).code));
      // a server error or throttling: again, with backoff; a body cut off mid-way or a dropped
      // connection: ask for the rest
      if (transient && attempt < kMaxAttempts) {
        await new Promise((res) => setTimeout(res, 100 * 2 ** attempt));
        continue;
      }
      throw s3Error(err, url, `download ${what} of`, userSignal);
    }
  }
  const data = buf.subarray(0, len);
  if (checkSha && (await sha256Hex(data)) !== sha256) {
    throw integrityError(`${where}: ${what} does not match its SHA-256`);
  }
  return data;
}

/** Writes `data` at `offset`: non-zero pages are written, zero pages made zero (punched, or zeros written). */
function writeRun(fh: { fd: number }, data: Buffer, offset: number, zero: Buffer): void {
  let o = 0;
  while (o < data.length) {
    const end = Math.min(data.length, o + kZeroPage);
    const isZeroPage = data.subarray(o, end).equals(zero.subarray(0, end - o));
    let e = end;
    while (e < data.length) {
      const next = Math.min(data.length, e + kZeroPage);
      if (data.subarray(e, next).equals(zero.subarray(0, next - e)) !== isZeroPage) break;
      e = next;
    }
    if (!isZeroPage || !native().punchHole(fh.fd, offset + o, e - o)) {
      let w = o;
      while (w < e) w += fs.writeSync(fh.fd, data, w, e - w, offset + w);
    }
    o = e;
  }
}

export interface Materialized {
  objects: number;
  bytes: number;
}

/**
 * Writes the snapshot described by `m` into the file `fh` (already sized, zero): the chunks, then
 * each patch layer in order. With `below`, only what starts below that offset.
 */
async function materialize(
  client: S3Client,
  url: S3Url,
  m: Manifest,
  fh: { fd: number },
  channels: number,
  signal: AbortSignal,
  userSignal: AbortSignal | undefined,
  below?: number,
): Promise<Materialized> {
  const zero = Buffer.alloc(Math.max(kZeroPage, 1 << 16));
  let objects = 0;
  let bytes = await fetchChunks(
    client,
    url,
    m,
    channels,
    signal,
    userSignal,
    (index) => below === undefined || index * m.chunkBytes < below,
    (index, data, runs) => {
      objects++;
      const base = index * m.chunkBytes;
      if (!runs) {
        writeSparse(fh, data, base, zero);
        return;
      }
      // only the present pages are in the object: the rest stay holes
      for (const r of runs) {
        let o = 0;
        while (o < r.length) o += fs.writeSync(fh.fd, data, r.objectOffset + o, r.length - o, base + r.chunkOffset + o);
      }
    },
    true,
    true,
  );
  if (m.patches.length === 0) return { objects, bytes };
  // then each patch layer in order
  // a packed object may be one page map longer than its chunk
  const free = Array.from({ length: channels }, () => Buffer.allocUnsafe(m.chunkBytes + (m.chunkBytes >> 15)));
  const get = await chunkGetter(client, url, channels).catch((err: unknown) => {
    throw s3Error(err, url, 'download', userSignal);
  });
  try {
    for (const [layer, all] of m.patches.entries()) {
      const parts = all.filter((p) => below === undefined || p.runs.some(([off]) => off < below));
      await lanes(parts.length, channels, signal, async (i) => {
        const p = parts[i]!;
        const buf = free.pop()!;
        try {
          const data = await fetchObject(
            get,
            url,
            chunkKey(url.key, p.sha256),
            partBytes(p),
            p.sha256,
            `patch ${layer + 1} part ${i}`,
            buf,
            signal,
            userSignal,
          );
          bytes += data.length;
          objects++;
          let o = 0;
          for (const [off, len] of p.runs) {
            writeRun(fh, data.subarray(o, o + len), off, zero);
            o += len;
          }
        } finally {
          free.push(buf);
        }
      });
    }
  } finally {
    get.destroy();
  }
  return { objects, bytes };
}

/**
 * Writes the non-zero pages of `chunk` at `offset` (holes stay holes). Writes go straight through pwrite on the main thread: they land in the page cache in microseconds,
 * while an async write per run (thousands per chunk on scattered data) waits on the thread pool.
 */
function writeSparse(fh: { fd: number }, chunk: Buffer, offset: number, zero: Buffer): number {
  let written = 0;
  let start = -1;
  const flush = (end: number): void => {
    if (start < 0) return;
    let o = start;
    while (o < end) {
      const bytesWritten = fs.writeSync(fh.fd, chunk, o, end - o, offset + o);
      o += bytesWritten;
    }
    written += end - start;
    start = -1;
  };
  for (let o = 0; o < chunk.length; o += kZeroPage) {
    const end = Math.min(chunk.length, o + kZeroPage);
    const isZeroPage = chunk.subarray(o, end).equals(zero.subarray(0, end - o));
    if (isZeroPage) flush(o);
    else if (start < 0) start = o;
  }
  flush(chunk.length);
  return written;
}

/**
 * Fetches the chunks of `m` that `select` picks (in parallel, `channels` at a time) and hands each
 * one to `use` as the chunk's dense bytes (a packed object unpacked: absent pages zero). `use` runs
 * on the main thread and must be done with the buffer when it returns. Version 1 and 2 chunks;
 * patch layers are not applied (callers check `m.patches`). Without `checkSha`, the objects' SHA-256
 * is not checked: only for callers that check every byte they use against another checksum. With
 * `raw`, a packed object is handed over as it is, with its runs of present pages (not unpacked).
 */
export async function fetchChunks(
  client: S3Client,
  url: S3Url,
  m: Manifest,
  channels: number,
  signal: AbortSignal,
  userSignal: AbortSignal | undefined,
  select: (index: number) => boolean,
  use: (index: number, chunk: Buffer, runs?: PackedRun[]) => void,
  checkSha = true,
  raw = false,
): Promise<number> {
  const objects = Array.from({ length: channels }, () => Buffer.allocUnsafe(m.chunkBytes + (m.chunkBytes >> 15)));
  // the dense chunk a packed object is unpacked into (not with `raw`: the runs go out as they are)
  const dense = Array.from({ length: channels }, () => Buffer.alloc(m.packed && !raw ? m.chunkBytes : 0));
  const chunks = m.chunks.filter((c) => select(c.index));
  let bytes = 0;
  const get = await chunkGetter(client, url, channels).catch((err: unknown) => {
    throw s3Error(err, url, 'download', userSignal);
  });
  try {
    await lanes(chunks.length, channels, signal, async (i) => {
      const c = chunks[i]!;
      const buf = objects.pop()!;
      const out = dense.pop()!;
      try {
        const what = `chunk ${c.index}`;
        const data = await fetchObject(
          get,
          url,
          chunkKey(url.key, c.sha256),
          objectBytes(m, c),
          c.sha256,
          what,
          buf,
          signal,
          userSignal,
          checkSha,
        );
        bytes += data.length;
        if (!m.packed) {
          use(c.index, data);
          return;
        }
        const len = chunkLength(m, c.index);
        const runs = packedRuns(data, len, `${formatS3Url(url)}: ${what}`);
        if (raw) {
          use(c.index, data, runs);
          return;
        }
        const view = out.subarray(0, len);
        view.fill(0);
        for (const r of runs) data.copy(view, r.chunkOffset, r.objectOffset, r.objectOffset + r.length);
        use(c.index, view);
      } finally {
        objects.push(buf);
        dense.push(out);
      }
    });
  } finally {
    get.destroy();
  }
  return bytes;
}

export interface PullOptions extends TransferOptions {
  /** Only chunks that start below this offset (the rest stay holes). */
  below?: number;
  /** Write into this already-open file (sized by pull) instead of an atomic temp + rename. */
  into?: fs.promises.FileHandle;
  /** fdatasync the file and fsync its directory (default true; not with `into`). */
  fsync?: boolean;
  manifest?: Manifest;
}

/**
 * Downloads the snapshot at `url` into `file` by the commit protocol of every new file (commit.ts):
 * a private temp file beside it, synced and renamed into place under the output's lock; the
 * output must be a regular file or nothing, up to the rename.
 */
export async function pull(url: S3Url, file: string, opts: PullOptions = {}): Promise<PullResult> {
  const t0 = process.hrtime.bigint();
  const channels = opts.channels ?? 4;
  const client = makeClient(opts);
  const ctl = linked(opts.signal);
  const signal = ctl.signal;
  try {
    const m = opts.manifest ?? (await readManifest(client, url, signal, false))!;
    let got: Materialized;
    if (opts.into) {
      await opts.into.truncate(m.size);
      got = await materialize(client, url, m, opts.into, channels, signal, opts.signal, opts.below);
    } else {
      got = await writeAtomically(file, { size: m.size, fsync: opts.fsync !== false }, (temp) =>
        materialize(client, url, m, temp, channels, signal, opts.signal, opts.below),
      );
    }
    return {
      url: formatS3Url(url),
      size: m.size,
      chunksFetched: got.objects,
      bytesFetched: got.bytes,
      channels,
      seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    };
  } catch (err) {
    ctl.abort();
    throw err;
  } finally {
    client.destroy();
  }
}

/** The manifest at `url` (exit 3 when it is not one, exit 4 when there is nothing). */
export async function fetchManifest(url: S3Url, opts: S3Options): Promise<Manifest> {
  const client = makeClient(opts);
  try {
    return (await readManifest(client, url, opts.signal ?? new AbortController().signal, false))!;
  } finally {
    client.destroy();
  }
}
