/**
 * The real storage engines that .ci/run starts (.ci/ceph-up, .ci/gluster-up): a Ceph RADOS Gateway
 * on loopback and a GlusterFS volume mounted twice. Probed synchronously at load time so suites can
 * use prereqSuite (under CI a missing engine fails the tests; elsewhere they skip with the reason).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  ListObjectsV2Command,
  S3Client,
} from '@aws-sdk/client-s3';

export const kS3Endpoint = process.env.FIXEDRAM_S3_ENDPOINT ?? 'http://127.0.0.1:7480';
/** The credentials .ci/ceph-up gives its S3 user. */
export const kS3Env: NodeJS.ProcessEnv = {
  AWS_ACCESS_KEY_ID: 'FXACCESSKEY',
  AWS_SECRET_ACCESS_KEY: 'FXSECRETKEY',
  AWS_REGION: 'us-east-1',
  AWS_ENDPOINT_URL: kS3Endpoint,
  AWS_EC2_METADATA_DISABLED: 'true',
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  AWS_CONFIG_FILE: '/nonexistent/fixedram-test',
  AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/fixedram-test',
};

/** '' when the RGW answers an authenticated S3 request, else why not (a sync probe in a child). */
function probeS3(): string {
  const script = `
    const { S3Client, ListBucketsCommand } = require('@aws-sdk/client-s3');
    new S3Client({ forcePathStyle: true, maxAttempts: 1 }).send(new ListBucketsCommand({}))
      .then(() => process.exit(0), (e) => { console.error(e.name + ': ' + e.message); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['-e', script], {
    env: { ...process.env, ...kS3Env },
    encoding: 'utf8',
    timeout: 20_000,
    cwd: path.resolve(__dirname, '..', '..', '..'),
  });
  return r.status === 0
    ? ''
    : `no S3 endpoint at ${kS3Endpoint} (start it with .ci/ceph-up): ${(r.stderr || r.error?.message || '').trim().split('\n')[0]}`;
}
export const s3Missing = probeS3();

export function s3Client(): S3Client {
  return new S3Client({
    forcePathStyle: true,
    endpoint: kS3Endpoint,
    region: 'us-east-1',
    maxAttempts: 3,
    credentials: { accessKeyId: 'FXACCESSKEY', secretAccessKey: 'FXSECRETKEY' },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

let bucketSeq = 0;
/** A fresh bucket, emptied and removed when the test ends. */
export async function tempBucket(t: { after: (fn: () => Promise<void>) => void }, client: S3Client): Promise<string> {
  const name = `fxt-${process.pid}-${Date.now().toString(36)}-${bucketSeq++}`;
  await client.send(new CreateBucketCommand({ Bucket: name }));
  t.after(async () => {
    const keys = await listKeys(client, name);
    if (keys.length)
      await client.send(new DeleteObjectsCommand({ Bucket: name, Delete: { Objects: keys.map((Key) => ({ Key })) } }));
    await client.send(new DeleteBucketCommand({ Bucket: name }));
  });
  return name;
}

export async function listKeys(client: S3Client, bucket: string, prefix = ''): Promise<string[]> {
  const r = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
  return (r.Contents ?? []).map((o) => o.Key!).sort();
}

/**
 * A TCP relay on 127.0.0.1 in front of the real RGW, to cut connections: the fault injector for
 * "the endpoint went away mid-save" and "a connection dropped mid-body". `cutAfter(n)` makes the
 * relay reset every connection once n response bytes have gone through it (and stop accepting
 * when `down` is set); `drops` counts the connections it cut.
 */
export interface Relay {
  endpoint: string;
  /** Reset connections after this many bytes in total from the server (Infinity: never). */
  cutAfterBytes: number;
  /** Only cut this many connections, then relay normally again. */
  maxDrops: number;
  /** When true, cuts go on forever and new connections are refused (the endpoint is down). */
  down: boolean;
  drops: number;
  bytesUp: number;
  bytesDown: number;
  /** Stop reading from clients once this many bytes went up (Infinity: never): the writer stalls mid-request. */
  holdAfterBytes: number;
  /** Client connections stalled by holdAfterBytes. */
  held: number;
  /** Resumes the stalled connections and holds no more. */
  release(): void;
  close(): Promise<void>;
}

export async function startRelay(): Promise<Relay> {
  const target = new URL(kS3Endpoint);
  const sockets = new Set<net.Socket>();
  const stalled = new Set<net.Socket>();
  const relay: Relay = {
    endpoint: '',
    cutAfterBytes: Infinity,
    maxDrops: Infinity,
    down: false,
    drops: 0,
    bytesUp: 0,
    bytesDown: 0,
    holdAfterBytes: Infinity,
    held: 0,
    release: () => {
      relay.holdAfterBytes = Infinity;
      for (const s of stalled) s.resume();
      stalled.clear();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((res) => server.close(() => res()));
    },
  };
  const cut = (a: net.Socket, b: net.Socket): void => {
    relay.drops++;
    a.resetAndDestroy();
    b.resetAndDestroy();
  };
  const server = net.createServer((client) => {
    sockets.add(client);
    if (relay.down) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(upstream);
    client.on('close', () => {
      sockets.delete(client);
      upstream.destroy();
    });
    upstream.on('close', () => {
      sockets.delete(upstream);
      client.destroy();
    });
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    const cutting = (): boolean =>
      relay.down || (relay.drops < relay.maxDrops && relay.bytesUp + relay.bytesDown >= relay.cutAfterBytes);
    client.on('data', (d: Buffer) => {
      relay.bytesUp += d.length;
      if (cutting()) cut(client, upstream);
      else upstream.write(d);
      if (relay.bytesUp >= relay.holdAfterBytes && !stalled.has(client)) {
        client.pause();
        stalled.add(client);
        relay.held++;
      }
    });
    upstream.on('data', (d: Buffer) => {
      relay.bytesDown += d.length;
      if (cutting()) cut(client, upstream);
      else client.write(d);
    });
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  relay.endpoint = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return relay;
}

// ---- shared file systems: GlusterFS (.ci/gluster-up) and CephFS (.ci/ceph-up), each mounted twice ----
export const kGlusterDir = process.env.FIXEDRAM_GLUSTER_DIR ?? '/var/tmp/fixedram-gluster';
export const glusterMounts = { a: path.join(kGlusterDir, 'mntA'), b: path.join(kGlusterDir, 'mntB') };
export const kCephDir = process.env.FIXEDRAM_CEPH_DIR ?? '/var/tmp/fixedram-ceph';
/** The CephFS file system of .ci/ceph-up, mounted by two ceph-fuse clients (two "hosts"). */
export const cephfsMounts = { a: path.join(kCephDir, 'mntA'), b: path.join(kCephDir, 'mntB') };

/** '' when both mounts are there with a file system type starting with `fsType`, else why not. */
function probeMounts(mounts: { a: string; b: string }, fsType: string, what: string, script: string): string {
  let table: string;
  try {
    table = fs.readFileSync('/proc/mounts', 'utf8');
  } catch {
    return 'skip: /proc/mounts unreadable';
  }
  for (const m of Object.values(mounts)) {
    const line = table.split('\n').find((l) => l.split(' ')[1] === m);
    if (!line || !line.split(' ')[2]!.startsWith(fsType)) return `no ${what} mount at ${m} (start it with ${script})`;
  }
  return '';
}
export const glusterMissing = probeMounts(glusterMounts, 'fuse.glusterfs', 'GlusterFS', '.ci/gluster-up');
export const cephfsMissing = probeMounts(cephfsMounts, 'fuse.ceph-fuse', 'CephFS (ceph-fuse)', '.ci/ceph-up');
