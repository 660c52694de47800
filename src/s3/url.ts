/** `s3://BUCKET/KEY` addresses: where a snapshot path may name an object-storage snapshot. */
import { usageError } from '../errors';

export interface S3Url {
  bucket: string;
  key: string;
}

export const isS3Url = (s: string): boolean => s.startsWith('s3://');

/** Parses `s3://BUCKET/KEY` (KEY non-empty, not ending in '/'); anything else is a usage error. */
export function parseS3Url(s: string): S3Url {
  const m = /^s3:\/\/([^/]+)\/(.+)$/s.exec(s);
  if (!m || m[2]!.endsWith('/')) throw usageError(`expected s3://BUCKET/KEY (got '${s}')`);
  const bucket = m[1]!;
  const key = m[2]!;
  // S3 bucket naming rules (the strict DNS form RGW and AWS use today)
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw usageError(`invalid bucket name '${bucket}' in '${s}'`);
  if (Buffer.byteLength(key) > 900 || key.includes('\0')) throw usageError(`invalid object key in '${s}'`);
  return { bucket, key };
}

export const formatS3Url = (u: S3Url): string => `s3://${u.bucket}/${u.key}`;
