/**
 * One writer per key on S3 (docs/s3.md, "Lock"): a writer creates the lock object
 * `KEY.fixedram-lock` with a conditional PUT (`If-None-Match: *`), which the store refuses (412)
 * when the object exists, so two writers cannot both hold it. The holder renews it every minute and
 * deletes it at the end. A lock left behind is taken over when its writer is provably gone: the
 * same host and its pid no longer runs, or no renewal for `kLockStaleMs`. Taking over is itself
 * guarded by a conditional PUT: of the takeover object `KEY.fixedram-lock.takeover.<ETag of the
 * stale lock>`, so of several writers that find the same stale lock only one removes it (a delete
 * is not conditional on every store); the others are refused.
 */
import * as os from 'node:os';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ioError } from '../errors';
import { s3Error } from './client';
import { formatS3Url, type S3Url } from './url';

export const lockKey = (key: string): string => `${key}.fixedram-lock`;
/** The object whose conditional creation elects the one writer that takes over a stale lock of ETag `etag`. */
export const takeoverKey = (key: string, etag: string): string =>
  `${lockKey(key)}.takeover.${etag.replace(/[^0-9A-Za-z]/g, '')}`;
/** A lock not renewed for this long is stale (its writer renews every kLockRenewMs). */
export const kLockStaleMs = 10 * 60_000;
const kLockRenewMs = 60_000;

interface LockBody {
  pid: number;
  host: string;
  started: string;
}

export interface S3Lock {
  release(): Promise<void>;
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
};

async function holder(
  client: S3Client,
  bucket: string,
  key: string,
  signal: AbortSignal,
): Promise<{ body?: LockBody; age: number; etag: string } | undefined> {
  try {
    const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: signal });
    const text = (await r.Body?.transformToString()) ?? '';
    let body: LockBody | undefined;
    try {
      const o = JSON.parse(text.slice(0, 4096)) as Partial<LockBody>;
      if (typeof o.pid === 'number' && typeof o.host === 'string' && typeof o.started === 'string')
        body = o as LockBody;
    } catch {
      body = undefined; // not ours to read: judged by age only
    }
    return {
      ...(body ? { body } : {}),
      age: Date.now() - (r.LastModified?.getTime() ?? Date.now()),
      etag: r.ETag ?? '',
    };
  } catch (err) {
    if ((err as { name?: string }).name === 'NoSuchKey') return undefined; // released meanwhile
    throw err;
  }
}

/** Takes the writer's lock of `url` or throws ERR_LOCKED (exit 4) naming its holder. */
export async function acquireS3Lock(client: S3Client, url: S3Url, signal: AbortSignal): Promise<S3Lock> {
  const key = lockKey(url.key);
  const body = JSON.stringify({ pid: process.pid, host: os.hostname(), started: new Date().toISOString() });
  const putAt = (k: string, conditional: boolean): Promise<unknown> =>
    client.send(
      new PutObjectCommand({
        Bucket: url.bucket,
        Key: k,
        Body: body,
        ContentType: 'application/json',
        ...(conditional ? { IfNoneMatch: '*' } : {}),
      }),
      { abortSignal: signal },
    );
  const put = (conditional: boolean): Promise<unknown> => putAt(key, conditional);
  /** Creates `k` if it does not exist: true, or false when it exists (412). */
  const create = async (k: string): Promise<boolean> => {
    try {
      await putAt(k, true);
      return true;
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      if (e.name !== 'PreconditionFailed' && e.$metadata?.httpStatusCode !== 412)
        throw s3Error(err, url, 'lock', signal);
      return false;
    }
  };
  const current = (): ReturnType<typeof holder> =>
    holder(client, url.bucket, key, signal).catch((err: unknown) => {
      throw s3Error(err, url, 'lock', signal);
    });
  const remove = (k: string): Promise<unknown> =>
    client
      .send(new DeleteObjectCommand({ Bucket: url.bucket, Key: k }), { abortSignal: signal })
      .catch(() => undefined);
  const refuse = (h: { body?: LockBody } | undefined, how = ''): never => {
    const who = h?.body ? `pid ${h.body.pid} on ${h.body.host} since ${h.body.started}` : 'another writer';
    throw ioError(
      'ERR_LOCKED',
      `${formatS3Url(url)} is being written by ${who}${how} (lock object ${lockKey(url.key)}; ` +
        `taken over once that writer is gone or after ${kLockStaleMs / 60_000} minutes without renewal)`,
    );
  };
  for (let attempt = 0; ; attempt++) {
    if (await create(key)) break;
    const h = await current();
    if (h === undefined) {
      // released meanwhile: try again (a racing writer may win; then we refuse)
      if (attempt > 0) refuse(h);
      continue;
    }
    const gone = (h.body?.host === os.hostname() && !alive(h.body.pid)) || h.age > kLockStaleMs;
    if (!gone || attempt > 0) refuse(h);
    // the writer is gone. Of all writers that found this stale lock, the one that creates its
    // takeover object removes it; the others are refused (a plain delete could remove the lock
    // the winner has just created)
    const marker = takeoverKey(url.key, h.etag);
    if (!(await create(marker))) {
      // a takeover object left by a writer that died while taking over is itself stale after a while
      const m = await holder(client, url.bucket, marker, signal).catch(() => undefined);
      if (m && m.age > kLockStaleMs) await remove(marker);
      refuse(h, ' (another writer is taking its stale lock over)');
    }
    try {
      // still the stale lock (no other writer can have replaced it while we hold the takeover object
      // unless it already took over and removed that object): remove it, then create ours
      const again = await current();
      if (again !== undefined && again.etag === h.etag) await remove(key);
      if (!(await create(key))) refuse(await current());
    } finally {
      await remove(marker);
    }
    break;
  }
  let renewing: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => {
    renewing = put(false).catch(() => undefined);
  }, kLockRenewMs);
  timer.unref();
  return {
    release: async () => {
      clearInterval(timer);
      await renewing; // a renewal landing after the delete would leave the lock behind
      await client.send(new DeleteObjectCommand({ Bucket: url.bucket, Key: key })).catch(() => undefined);
    },
  };
}
