/**
 * Plain signed GETs of the chunk objects of one snapshot (`KEY.fixedram-chunks/<sha256>`), the
 * bulk of every download. The endpoint, the path of the chunk prefix, the region and the
 * credentials are the S3 client's own (the SDK resolves them from the AWS chain and
 * --s3-endpoint: captured from a request it builds but never sends); each GET is signed with the
 * SDK's SigV4 signer (@smithy/signature-v4) and sent with node:http(s) over keep-alive sockets.
 *
 * Hand-written rather than the SDK's GetObject: measured on a 670 MiB load from RGW, the SDK costs
 * about 2 ms of CPU per request plus its body plumbing, 1.7x the CPU of this path, and the load
 * is CPU-bound on a busy machine (docs/s3.md, "Transfer"). Failures look like the SDK's (name =
 * the S3 error code, `$metadata.httpStatusCode`; socket errors keep their `code`), so the callers'
 * retries and `s3Error` treat both alike.
 */
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import type { IncomingMessage } from 'node:http';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { SignatureV4 } from '@smithy/signature-v4';
import { chunkPrefix } from './manifest';
import type { S3Url } from './url';

type SourceData = string | ArrayBuffer | ArrayBufferView;
const bytes = (d: SourceData): string | Uint8Array =>
  typeof d === 'string'
    ? d
    : ArrayBuffer.isView(d)
      ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength)
      : new Uint8Array(d);

/** SHA-256 and HMAC-SHA-256 over node:crypto, in the shape the signer asks for. */
class Sha256 {
  private readonly h: crypto.Hash | crypto.Hmac;
  constructor(secret?: SourceData) {
    this.h = secret === undefined ? crypto.createHash('sha256') : crypto.createHmac('sha256', bytes(secret));
  }
  update(data: SourceData): void {
    this.h.update(bytes(data));
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array(this.h.digest()));
  }
}

const kEmptySha256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
/** Error bodies are read up to this many bytes (an S3 error document is a few hundred). */
const kMaxErrorBody = 64 << 10;

export interface ChunkGetter {
  /**
   * Starts a GET of the chunk object `key` (under the snapshot's chunk prefix), from byte `from`
   * to `to` (inclusive) when `from` > 0. Resolves with the response body once the status is 2xx;
   * rejects like the SDK would (name = S3 error code, `$metadata.httpStatusCode`).
   */
  open(key: string, from: number, to: number, signal: AbortSignal): Promise<IncomingMessage>;
  destroy(): void;
}

interface Captured {
  protocol: string;
  hostname: string;
  port?: number;
  path: string;
}

class Captured_ extends Error {
  constructor(readonly request: Captured) {
    super('captured');
  }
}

/** The endpoint and path the SDK would use for `key`, from a request it builds and never sends. */
async function capture(client: S3Client, bucket: string, key: string): Promise<Captured> {
  const cmd = new GetObjectCommand({ Bucket: bucket, Key: key });
  cmd.middlewareStack.add(
    (next, _context) => (args) => {
      const r = args.request as Captured;
      // (its query holds only the SDK's x-id=GetObject marker)
      if (r.path !== undefined)
        throw new Captured_({ protocol: r.protocol, hostname: r.hostname, port: r.port, path: r.path });
      return next(args);
    },
    { step: 'finalizeRequest', priority: 'low', name: 'fixedramCaptureRequest' },
  );
  try {
    await client.send(cmd);
  } catch (err) {
    if (err instanceof Captured_) return err.request;
    throw err;
  }
  throw new Error('the S3 client sent a request that should have been captured');
}

/** A getter for the chunk objects of the snapshot at `url`, with up to `sockets` connections. */
export async function chunkGetter(client: S3Client, url: S3Url, sockets: number): Promise<ChunkGetter> {
  const prefix = chunkPrefix(url.key);
  // the SDK escapes the key; a hex name after the prefix is left as it is, so the prefix's path is
  // what precedes it
  const probe = `${prefix}0`;
  const at = await capture(client, url.bucket, probe);
  if (!at.path.endsWith('/0')) throw new Error(`unexpected request path for a chunk: ${at.path}`);
  const base = at.path.slice(0, -1);
  const signer = new SignatureV4({
    credentials: client.config.credentials,
    region: client.config.region,
    service: 's3',
    sha256: Sha256,
    uriEscapePath: false,
    applyChecksum: false,
  });
  const secure = at.protocol === 'https:';
  const agent = secure
    ? new https.Agent({ keepAlive: true, maxSockets: sockets })
    : new http.Agent({ keepAlive: true, maxSockets: sockets });
  const port = at.port ?? (secure ? 443 : 80);
  const hostHeader = at.port !== undefined ? `${at.hostname}:${at.port}` : at.hostname;
  return {
    async open(key, from, to, signal) {
      if (!key.startsWith(prefix)) throw new Error(`not a chunk key: ${key}`);
      const headers: Record<string, string> = { host: hostHeader, 'x-amz-content-sha256': kEmptySha256 };
      if (from > 0) headers.range = `bytes=${from}-${to}`;
      const signed = await signer.sign({
        method: 'GET',
        protocol: at.protocol,
        hostname: at.hostname,
        port,
        path: base + key.slice(prefix.length),
        query: {},
        headers,
      });
      const res = await new Promise<IncomingMessage>((resolve, reject) => {
        const req = (secure ? https : http).get(
          {
            agent,
            protocol: at.protocol,
            hostname: at.hostname,
            port,
            path: signed.path,
            headers: signed.headers,
            signal,
          },
          resolve,
        );
        req.on('error', reject);
      });
      const status = res.statusCode ?? 0;
      if (status >= 200 && status < 300) return res;
      throw await httpError(res, status);
    },
    destroy: () => agent.destroy(),
  };
}

/** The SDK-shaped error of a non-2xx response: its S3 error code as name. */
async function httpError(res: IncomingMessage, status: number): Promise<Error> {
  let body = '';
  try {
    for await (const part of res as AsyncIterable<Buffer>) {
      if (body.length < kMaxErrorBody) body += part.toString('utf8');
    }
  } catch {
    /* the status says enough */
  }
  const code = /<Code>([^<]{1,100})<\/Code>/.exec(body)?.[1];
  const message = /<Message>([^<]{0,500})<\/Message>/.exec(body)?.[1];
  const byStatus: Record<number, string> = { 403: 'AccessDenied', 404: 'NoSuchKey', 416: 'InvalidRange' };
  const name = code ?? byStatus[status] ?? `HTTP${status}`;
  return Object.assign(new Error(message ?? `${name} (HTTP ${status})`), {
    name,
    $metadata: { httpStatusCode: status },
  });
}
