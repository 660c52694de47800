/**
 * The commands on `s3://BUCKET/KEY` snapshots. They reuse the local machinery around a private
 * temp file (docs/s3.md, "Cost"): `save` writes the snapshot locally, then uploads its present
 * chunks; `load`, `verify` and `inspect` download the chunks they need, then run the local
 * command on the file. `push` and `pull` move a snapshot file between disk and bucket.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { registerTemp, unregisterTemp } from '../cleanup';
import type { ConvertOptions, ConvertResult } from '../convert';
import { decodeFixedHeader, decodeHeader, kHeaderBytes } from '../format';
import { inspect, type InspectResult } from '../inspect';
import type { LoadOptions, LoadResult } from '../load';
import { native } from '../native';
import type { SaveOptions, SaveResult } from '../save';
import type { VerifyOptions, VerifyResult } from '../verify';
import { makeClient, type S3Options } from './client';
import { fetchManifest, pull, push, readManifest, type PullResult, type PushResult } from './transfer';
import { loadS3Direct } from './load';
import { parseS3Url, type S3Url } from './url';
import { snapshotError, usageError } from '../errors';

export interface S3CommandOptions {
  /** --s3-endpoint */
  s3Endpoint?: string;
  /** Chunk size of a new snapshot (default 4 MiB). */
  chunkBytes?: number;
}

/** A private directory for the local copy, removed (with everything in it) by `done`. */
async function withTempDir<T>(work: (dir: string) => Promise<T>): Promise<T> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-s3-'));
  fs.chmodSync(dir, 0o700);
  // a second SIGINT exits at once: the local copy (the big file) is removed by the signal path too
  const local = path.join(dir, 'snapshot');
  registerTemp(local);
  try {
    return await work(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    unregisterTemp(local);
  }
}

const s3Opts = (
  o: S3CommandOptions & { signal?: AbortSignal; channels?: number },
): S3Options & { channels?: number } => ({
  ...(o.s3Endpoint !== undefined ? { endpoint: o.s3Endpoint } : {}),
  ...(o.signal ? { signal: o.signal } : {}),
  ...(o.channels !== undefined ? { channels: o.channels } : {}),
});

export interface S3SaveResult extends SaveResult {
  s3: PushResult;
}

/** `save -o s3://…` (and `--update`): a local snapshot in a temp file, then its present chunks uploaded. */
export async function saveS3(opts: SaveOptions & S3CommandOptions & { update?: boolean }): Promise<S3SaveResult> {
  const url = parseS3Url(opts.output);
  const so = s3Opts(opts);
  if (opts.update) await fetchManifest(url, so); // fail before the local save: the key must hold a snapshot
  const { save } = await import('../save');
  return writeThenPush(opts, url, { ...so, requireExisting: opts.update ?? false }, (local) =>
    save({ ...opts, output: local, fsync: false }),
  );
}

/** Writes a snapshot into a private temp file with `write`, then uploads its present chunks to `url`. */
async function writeThenPush<R extends { seconds: number }>(
  opts: { output: string; chunkBytes?: number },
  url: S3Url,
  pushOpts: Parameters<typeof push>[2],
  write: (local: string) => Promise<R>,
): Promise<R & { output: string; s3: PushResult }> {
  return withTempDir(async (dir) => {
    const local = path.join(dir, 'snapshot');
    const r = await write(local);
    const s3 = await push(local, url, {
      ...pushOpts,
      ...(opts.chunkBytes !== undefined ? { chunkBytes: opts.chunkBytes } : {}),
    });
    return { ...r, output: opts.output, seconds: r.seconds + s3.seconds, s3 };
  });
}

export interface S3ConvertResult extends ConvertResult {
  s3: PushResult;
}

/** `convert QEMUFILE -o s3://…`: the snapshot written to a temp file, then its present chunks uploaded. */
export async function convertS3(opts: ConvertOptions & S3CommandOptions): Promise<S3ConvertResult> {
  const url = parseS3Url(opts.output);
  const { convert } = await import('../convert');
  return writeThenPush(opts, url, s3Opts(opts), (local) => convert({ ...opts, output: local, fsync: false }));
}

export interface S3LoadResult extends LoadResult {
  s3: PullResult;
}

/**
 * `load s3://…`: straight into the targets when it applies (src/s3/load.ts), else through a local
 * copy and the local load.
 */
export async function loadS3(opts: LoadOptions & S3CommandOptions): Promise<S3LoadResult> {
  const url = parseS3Url(opts.snapshot);
  const so = s3Opts(opts);
  const manifest = await fetchManifest(url, so);
  const direct = await loadS3Direct(url, manifest, { ...opts, ...so });
  if (direct) return direct;
  return withTempDir(async (dir) => {
    const local = path.join(dir, 'snapshot');
    const s3 = await pull(url, local, { ...so, manifest, fsync: false });
    const { load } = await import('../load');
    const r = await load({ ...opts, snapshot: local });
    return { ...r, snapshot: opts.snapshot, seconds: r.seconds + s3.seconds, s3 };
  });
}

export interface S3VerifyResult extends VerifyResult {
  s3: PullResult;
}

export async function verifyS3(opts: VerifyOptions & S3CommandOptions): Promise<S3VerifyResult> {
  const url = parseS3Url(opts.snapshot);
  return withTempDir(async (dir) => {
    const local = path.join(dir, 'snapshot');
    // every chunk's SHA-256 is checked on the way in; verify then checks every page's XXH3
    const s3 = await pull(url, local, { ...s3Opts(opts), fsync: false });
    const { verify } = await import('../verify');
    const r = await verify({ ...opts, snapshot: local });
    const failures = r.failures.map((f) => ({ ...f, message: f.message.split(local).join(opts.snapshot) }));
    return { ...r, failures, snapshot: opts.snapshot, seconds: r.seconds + s3.seconds, s3 };
  });
}

/** `inspect s3://…`: downloads only the chunks that hold the header, block table, bitmaps and checksums. */
export async function inspectS3(
  file: string,
  opts: S3CommandOptions & { signal?: AbortSignal } = {},
): Promise<InspectResult> {
  const url = parseS3Url(file);
  const so = s3Opts(opts);
  const client = makeClient(so);
  let m;
  try {
    m = (await readManifest(client, url, opts.signal ?? new AbortController().signal, false))!;
  } finally {
    client.destroy();
  }
  const manifest = m;
  return withTempDir(async (dir) => {
    const local = path.join(dir, 'snapshot');
    const fh = await fs.promises.open(local, 'wx+', 0o600);
    try {
      const readAt = async (n: number): Promise<Buffer> => {
        const b = Buffer.alloc(Math.min(n, manifest.size));
        await fh.read(b, 0, b.length, 0);
        return b;
      };
      const fetch = (below: number): Promise<PullResult> => pull(url, local, { ...so, into: fh, manifest, below });
      await fetch(Math.min(manifest.chunkBytes, manifest.size));
      let end = kHeaderBytes;
      try {
        const { tableBytes } = decodeFixedHeader(await readAt(kHeaderBytes), manifest.size);
        end = kHeaderBytes + tableBytes;
        if (end > manifest.chunkBytes) await fetch(end);
        end = decodeHeader(await readAt(end), manifest.size, (b) => native().hash64(b)).metadataEnd;
      } catch (err) {
        // not a snapshot inside: the local reader says why, from the bytes fetched so far
        if (!(err instanceof Error) || !('exitCode' in err)) throw err;
      }
      if (end > manifest.chunkBytes) await fetch(end);
    } finally {
      await fh.close();
    }
    const r = inspect(local);
    return { ...r, path: file };
  });
}

export async function pushCommand(
  file: string,
  target: string,
  opts: S3CommandOptions & { signal?: AbortSignal; channels?: number },
): Promise<PushResult & { command: 'push'; file: string }> {
  const url = parseS3Url(target);
  // only complete fixedram snapshots go up: the bucket holds nothing a reader would refuse
  const r = inspect(file);
  if (r.format !== 'fixedram')
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `'${file}' is a ${r.format} file; push takes fixedram snapshots (convert it first)`,
    );
  if (r.state !== 'complete')
    throw snapshotError('ERR_SNAPSHOT_INCOMPLETE', `'${file}' is ${r.state}: ${r.stateMessage ?? ''}`.trim());
  const s3 = await push(file, url, {
    ...s3Opts(opts),
    ...(opts.chunkBytes !== undefined ? { chunkBytes: opts.chunkBytes } : {}),
  });
  return { command: 'push', file, ...s3 };
}

export async function pullCommand(
  source: string,
  file: string,
  opts: S3CommandOptions & { signal?: AbortSignal; channels?: number; fsync?: boolean },
): Promise<PullResult & { command: 'pull'; file: string }> {
  const url = parseS3Url(source);
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(file);
  } catch {
    st = undefined; // a new file
  }
  if (st && !st.isFile())
    throw usageError(`'${file}' exists and is not a regular file; pull replaces only regular files`, { path: file });
  const r = await pull(url, file, { ...s3Opts(opts), fsync: opts.fsync ?? true });
  return { command: 'pull', file, ...r };
}
