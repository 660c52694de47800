/**
 * The S3 client (AWS SDK v3) and the mapping of its failures onto fixedram's errors.
 * Endpoint, region and credentials come from the standard AWS chain (environment, shared
 * config/credentials files, AWS_ENDPOINT_URL[_S3]); `endpoint` (--s3-endpoint) overrides the
 * endpoint. Path-style addressing, so any S3-compatible store (Ceph RGW, MinIO) works.
 * The SDK retries 5xx, throttling and dropped connections with exponential backoff and jitter.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { ExitCode, FixedramError, interruptedError, ioError } from '../errors';
import { formatS3Url, type S3Url } from './url';

export interface S3Options {
  /** An endpoint URL such as http://127.0.0.1:7480 (default: the AWS chain). */
  endpoint?: string;
  signal?: AbortSignal;
}

/** Attempts per request (the SDK's standard retry strategy: backoff with jitter, 5xx/throttling/network). */
export const kMaxAttempts = 5;

export function makeClient(opts: S3Options): S3Client {
  // this pinned SDK supports Node 20 (package.json pins it); its notice about future versions
  // would be a multi-line stderr message on every run, which breaks the one-line-error contract
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const region = process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
  return new S3Client({
    forcePathStyle: true,
    maxAttempts: kMaxAttempts,
    ...(opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}),
    // S3-compatible stores need no AWS region; fall back to the SDK's chain, then us-east-1
    region:
      region ??
      (async () => {
        try {
          return await new S3Client({}).config.region();
        } catch {
          return 'us-east-1';
        }
      }),
    // CRC checksums on every request are an AWS extension that older S3-compatible stores refuse;
    // integrity is the signed SHA-256 payload hash on upload and SHA-256 per chunk on download (docs/s3.md)
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

interface SdkError extends Error {
  Code?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number };
  $fault?: string;
}

/**
 * One fixedram error (one line, exit 4 unless it is an interruption) for a failed S3 request on `url`.
 */
export function s3Error(err: unknown, url: S3Url, what: string, signal?: AbortSignal): Error {
  if (err instanceof FixedramError) return err;
  if (signal?.aborted) return interruptedError('interrupted');
  const e = (err ?? {}) as SdkError;
  const name = e.name ?? '';
  const status = e.$metadata?.httpStatusCode;
  const where = formatS3Url(url);
  const sys = e.code ?? (e.cause as { code?: string } | undefined)?.code;
  if (name === 'AbortError') return interruptedError('interrupted');
  if (name === 'NoSuchBucket')
    return ioError('ERR_S3_NO_SUCH_BUCKET', `${what} ${where}: bucket '${url.bucket}' does not exist`);
  if (name === 'NoSuchKey' || name === 'NotFound')
    return ioError('ERR_S3_NO_SUCH_KEY', `${what} ${where}: no such object`);
  if (name === 'CredentialsProviderError' || /Could not load credentials/i.test(e.message)) {
    return ioError(
      'ERR_S3_NO_CREDENTIALS',
      `${what} ${where}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)`,
    );
  }
  if (['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'Forbidden'].includes(name) || status === 403) {
    return ioError('ERR_S3_ACCESS_DENIED', `${what} ${where}: access denied (${name || status})`);
  }
  if (sys && /^E[A-Z]+$/.test(sys)) {
    return ioError(
      'ERR_S3_UNREACHABLE',
      `${what} ${where}: ${sys}: endpoint unreachable after ${kMaxAttempts} attempts`,
    );
  }
  if (/Region is missing/i.test(e.message)) return ioError('ERR_S3_CONFIG', `${what} ${where}: no region configured`);
  const detail = status !== undefined ? `HTTP ${status}${name ? ` ${name}` : ''}` : name || 'error';
  return ioError('ERR_S3', `${what} ${where}: ${detail}: ${(e.message || '').split('\n')[0]}`);
}

export const isExit = (err: unknown, code: ExitCode): boolean => err instanceof FixedramError && err.exitCode === code;
