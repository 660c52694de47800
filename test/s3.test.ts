/**
 * Snapshots on object storage, against a real Ceph RADOS Gateway on loopback (.ci/ceph-up). Faults
 * are injected with a TCP relay in front of the RGW (connections cut mid-body, the endpoint gone)
 * and by killing the CLI; every injection is asserted to have happened.
 */
import * as assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe } from 'node:test';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { lockOutput } from '../src/lock';
import { acquireS3Lock } from '../src/s3/lock';
import { parseS3Url } from '../src/s3/url';
import { kBin } from './support/cli';
import { prereqSuite } from './support/prereq';
import { defaultKind, makeBlock, stampPage } from './support/stamp';
import { fixturesAvailable, kFixtures, unpackFixture } from './support/qemu';
import { kS3Env, listKeys, s3Client, s3Missing, startRelay, tempBucket } from './support/storage';
import { allocated, tempDir } from './support/tmp';

const { it, after } = prereqSuite(s3Missing === '', s3Missing);
const client = s3Client();
after(() => client.destroy());

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The real CLI in a child, asynchronously (the relay runs in this process's event loop). */
function cli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  onSpawn?: (c: ReturnType<typeof spawn>) => void,
): Promise<Run> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [kBin, ...args], {
      env: { ...process.env, ...kS3Env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    c.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    c.on('close', (status, signal) => resolve({ status, signal, stdout, stderr }));
    onSpawn?.(c);
  });
}

const kPages = 6000;
/** Stamped pages with a 12 MiB hole in the middle: two whole 4 MiB chunks of the snapshot hold no data. */
const kind = (i: number, n: number) => (i >= 1024 && i < 4096 ? 'hole' : defaultKind(i, n));

function block(dir: string, name = 'mem', id = 1): string {
  const p = path.join(dir, name);
  makeBlock(p, id, kPages, { kind });
  return p;
}

/** Rewrites page `page` of `file` with a new stamp generation. */
function touchPage(file: string, page: number, generation: number): void {
  const b = Buffer.alloc(4096);
  stampPage(b, 1, page, generation);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, b, 0, 4096, page * 4096);
  fs.closeSync(fd);
}

function oneLine(r: Run): string {
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  assert.match(lines[0]!, /^fixedram: error: /);
  return lines[0]!;
}

const chunkKeys = (keys: string[], key: string): string[] =>
  keys.filter((k) => k.startsWith(`${key}.fixedram-chunks/`));

async function headExists(bucket: string, key: string): Promise<boolean> {
  try {
    await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return true;
  } catch (err) {
    if (
      (err as { name?: string }).name === 'NotFound' ||
      (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404
    )
      return false;
    throw err;
  }
}

describe('s3: a real Ceph RGW', () => {
  it('the RGW answers authenticated S3 requests (CreateBucket, PutObject, GetObject)', async (t) => {
    const bucket = await tempBucket(t, client);
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'probe', Body: 'hello' }));
    const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'probe' }));
    assert.equal(await r.Body!.transformToString(), 'hello');
  });

  it('save -o s3:// then load, verify, inspect, pull: byte-exact, chunks without data are not stored', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const url = `s3://${bucket}/vm/ram.fxr`;
    const s = await cli(['save', '-o', url, '-b', `mem=${src}`, '-j', '3', '--json']);
    assert.equal(s.status, 0, s.stderr);
    const res = JSON.parse(s.stdout) as {
      s3: { chunks: number; chunksPresent: number; chunksUploaded: number; bytesUploaded: number };
    };
    assert.ok(res.s3.chunksPresent <= res.s3.chunks - 2, `two chunks hold no data: ${JSON.stringify(res.s3)}`);
    assert.equal(res.s3.chunksUploaded, res.s3.chunksPresent);
    const keys = await listKeys(client, bucket);
    assert.ok(keys.includes('vm/ram.fxr'));
    assert.equal(
      chunkKeys(keys, 'vm/ram.fxr').length,
      res.s3.chunksPresent,
      'one object per present chunk, nothing else',
    );

    const out = path.join(dir, 'out');
    const l = await cli(['load', url, '-b', `mem=${out}`, '-j', '2']);
    assert.equal(l.status, 0, l.stderr);
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(src)), 'loaded block equals the source');
    const v = await cli(['verify', url]);
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stdout, /^OK: s3:\/\//);
    const i = await cli(['inspect', url, '--json']);
    assert.equal(i.status, 0, i.stderr);
    const info = JSON.parse(i.stdout) as {
      snapshot: string;
      state: string;
      blocks: { name: string; length: number }[];
    };
    assert.equal(info.snapshot, url);
    assert.equal(info.state, 'complete');
    assert.deepEqual(
      info.blocks.map((b) => [b.name, b.length]),
      [['mem', kPages * 4096]],
    );

    // the bytes on S3 are a fixedram v1 snapshot: pulled, they equal a local save of the same block
    const local = path.join(dir, 'local.fxr');
    assert.equal((await cli(['save', '-o', local, '-b', `mem=${src}`])).status, 0);
    const pulled = path.join(dir, 'pulled.fxr');
    const p = await cli(['pull', url, pulled]);
    assert.equal(p.status, 0, p.stderr);
    assert.ok(
      fs.readFileSync(pulled).equals(fs.readFileSync(local)),
      'pulled snapshot is byte-identical to a local save',
    );
  });

  it('packed chunks: the objects hold only the non-zero pages (plus one page map each); the store refuses a body that does not match its signed hash', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const local = path.join(dir, 'local.fxr');
    assert.equal((await cli(['save', '-o', local, '-b', `mem=${src}`])).status, 0);
    const r = await cli(['push', local, `s3://${bucket}/p`, '--json']);
    assert.equal(r.status, 0, r.stderr);
    // the non-zero 4 KiB pages of the snapshot file: what a packed layout stores
    const bytes = fs.readFileSync(local);
    const zero = Buffer.alloc(4096);
    const chunkBytes = 4 << 20;
    let dataBytes = 0;
    let zeroPages = 0;
    let maps = 0;
    for (let c = 0; c < bytes.length; c += chunkBytes) {
      const end = Math.min(bytes.length, c + chunkBytes);
      let any = false;
      for (let o = c; o < end; o += 4096) {
        const len = Math.min(4096, end - o);
        if (bytes.subarray(o, o + len).equals(zero.subarray(0, len))) zeroPages++;
        else {
          dataBytes += len;
          any = true;
        }
      }
      if (any) maps += Math.ceil(Math.ceil((end - c) / 4096) / 8);
    }
    const res = JSON.parse(r.stdout) as { bytesUploaded: number; chunksPresent: number };
    assert.ok(zeroPages > 100, `the premise: zero pages inside chunks that hold data (${zeroPages})`);
    assert.equal(res.bytesUploaded, dataBytes + maps, 'uploaded: the data pages and one page map per chunk');
    const m = JSON.parse(
      await (await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'p' }))).Body!.transformToString(),
    ) as { version: number; chunks: [number, string, number][] };
    assert.equal(m.version, 2);
    let stored = 0;
    for (const [, sha, len] of m.chunks) {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: `p.fixedram-chunks/${sha}` }));
      assert.equal(head.ContentLength, len, "the manifest names each object's length");
      stored += len;
    }
    assert.equal(stored, res.bytesUploaded);
    // upload integrity: a body that does not match the signed payload hash is refused by the RGW
    const put = new PutObjectCommand({ Bucket: bucket, Key: 'probe', Body: Buffer.from('hello'), ContentLength: 5 });
    put.middlewareStack.add(
      (next) => async (args) => {
        (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = '0'.repeat(64);
        return next(args);
      },
      { step: 'build', name: 'wrongHash' },
    );
    await assert.rejects(client.send(put), (e: Error) => e.name === 'XAmzContentSHA256Mismatch');
    assert.equal(await headExists(bucket, 'probe'), false);
  });

  it('manifest versions: a version 1 snapshot (dense chunk objects) is still read; an unknown version is refused (exit 3)', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const local = path.join(dir, 'local.fxr');
    assert.equal((await cli(['save', '-o', local, '-b', `mem=${src}`])).status, 0);
    // a version 1 layout, written by hand as the earlier writer did: dense 4 MiB chunks with data
    const bytes = fs.readFileSync(local);
    const chunkBytes = 4 << 20;
    const chunks: [number, string][] = [];
    for (let i = 0; i * chunkBytes < bytes.length; i++) {
      const c = bytes.subarray(i * chunkBytes, Math.min(bytes.length, (i + 1) * chunkBytes));
      if (c.every((b) => b === 0)) continue;
      const sha = createHash('sha256').update(c).digest('hex');
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: `v1.fixedram-chunks/${sha}`, Body: c }));
      chunks.push([i, sha]);
    }
    assert.ok(chunks.length < Math.ceil(bytes.length / chunkBytes), 'the premise: a chunk without data has no object');
    const manifest = { format: 'fixedram-s3', version: 1, size: bytes.length, chunkBytes, chunks };
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'v1', Body: `${JSON.stringify(manifest)}\n` }));
    const url = `s3://${bucket}/v1`;
    const pulled = path.join(dir, 'pulled.fxr');
    const p = await cli(['pull', url, pulled]);
    assert.equal(p.status, 0, p.stderr);
    assert.ok(fs.readFileSync(pulled).equals(bytes), 'a version 1 snapshot pulls byte-exact');
    const out = path.join(dir, 'out');
    const l = await cli(['load', url, '-b', `mem=${out}`]);
    assert.equal(l.status, 0, l.stderr);
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(src)));
    assert.equal((await cli(['verify', url])).status, 0);
    // an --update of a version 1 snapshot keeps its chunks and reads back equal to a fresh save
    touchPage(src, 7, 2);
    const u = await cli(['save', '--update', '-o', url, '-b', `mem=${src}`, '--json']);
    assert.equal(u.status, 0, u.stderr);
    const again = path.join(dir, 'again.fxr');
    assert.equal((await cli(['save', '-o', again, '-b', `mem=${src}`])).status, 0);
    const pulled2 = path.join(dir, 'pulled2.fxr');
    assert.equal((await cli(['pull', url, pulled2])).status, 0);
    assert.ok(
      fs.readFileSync(pulled2).equals(fs.readFileSync(again)),
      'updated version 1 snapshot equals a fresh save',
    );
    // a version this reader does not know: refused before any chunk is fetched
    await client.send(
      new PutObjectCommand({ Bucket: bucket, Key: 'v9', Body: JSON.stringify({ ...manifest, version: 9 }) }),
    );
    for (const args of [
      ['verify', `s3://${bucket}/v9`],
      ['load', `s3://${bucket}/v9`, '-b', `mem=${out}`],
    ]) {
      const r = await cli(args);
      assert.equal(r.status, 3, r.stderr);
      assert.match(oneLine(r), /unsupported manifest version 9/);
    }
  });

  it('load s3:// writes straight into the targets: no local copy, stale data of an existing target made zero, a bad page fails its XXH3', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const url = `s3://${bucket}/d`;
    assert.equal((await cli(['save', '-o', url, '-b', `mem=${src}`])).status, 0);
    // no temp space at all: a load through a local copy could not run
    const noTmp = { TMPDIR: path.join(dir, 'no-such-dir') };
    const fresh = path.join(dir, 'fresh');
    const l = await cli(['load', url, '-b', `mem=${fresh}`, '-j', '3', '--json'], noTmp);
    assert.equal(l.status, 0, l.stderr);
    assert.ok(fs.readFileSync(fresh).equals(fs.readFileSync(src)), 'loaded block equals the source');
    assert.ok(allocated(fresh) < fs.statSync(fresh).size, 'a created target stays sparse');
    // an existing target full of other data: every page ends up equal to the source (zero pages too)
    const old = path.join(dir, 'old');
    fs.writeFileSync(old, Buffer.alloc(kPages * 4096, 0xa5));
    const e = await cli(['load', url, '-b', `mem=${old}`], noTmp);
    assert.equal(e.status, 0, e.stderr);
    assert.ok(fs.readFileSync(old).equals(fs.readFileSync(src)), 'stale data of an existing target is gone');
    // a packed object whose page bytes were altered (length and page map intact): its page fails its XXH3
    const m = JSON.parse(
      await (await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'd' }))).Body!.transformToString(),
    ) as { chunks: [number, string, number][] };
    const [, sha] = m.chunks.at(-1)!;
    const victim = `d.fixedram-chunks/${sha}`;
    const body = Buffer.from(
      await (await client.send(new GetObjectCommand({ Bucket: bucket, Key: victim }))).Body!.transformToByteArray(),
    );
    body[body.length - 100] ^= 0xff; // inside the last stored page
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: victim, Body: body }));
    const b = await cli(['load', url, '-b', `mem=${path.join(dir, 'bad')}`], noTmp);
    assert.equal(b.status, 1, b.stderr);
    assert.match(oneLine(b), /page \d+: checksum mismatch .*the targets are incomplete/);
    // a block name the snapshot does not have: usage error, no target created
    const u = await cli(['load', url, '-b', `nope=${path.join(dir, 'nope')}`], noTmp);
    assert.equal(u.status, 2, u.stderr);
    assert.equal(fs.existsSync(path.join(dir, 'nope')), false);
  });

  it('one writer per key: a second writer is refused while the first holds the lock (exit 4); a lock of a writer that is gone is taken over', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const relay = await startRelay();
    t.after(() => {
      relay.release();
      return relay.close();
    });
    const url = `s3://${bucket}/w`;
    const local = path.join(dir, 'local.fxr');
    assert.equal((await cli(['save', '-o', local, '-b', `mem=${src}`])).status, 0);
    // the first writer stalls mid-upload (after its lock, before its manifest)
    relay.holdAfterBytes = 1 << 20;
    let exited = false;
    const first = cli(['save', '-o', url, '-b', `mem=${src}`, '-j', '1', '--s3-endpoint', relay.endpoint]).finally(
      () => {
        exited = true;
      },
    );
    const deadline = Date.now() + 60_000;
    while (relay.held === 0 && !exited && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(relay.held > 0 && !exited, 'the first writer is stalled mid-upload');
    assert.equal(await headExists(bucket, 'w.fixedram-lock'), true, 'the first writer holds the lock');
    const second = await cli(['save', '-o', url, '-b', `mem=${src}`]);
    assert.equal(second.status, 4, second.stderr);
    assert.match(oneLine(second), /is being written by pid \d+ on /);
    const pushed = await cli(['push', local, url]);
    assert.equal(pushed.status, 4, pushed.stderr);
    assert.match(oneLine(pushed), /is being written by pid \d+ on /);
    relay.release();
    const r1 = await first;
    assert.equal(r1.status, 0, r1.stderr);
    assert.equal(await headExists(bucket, 'w.fixedram-lock'), false, 'the lock is released at the end');
    assert.equal((await cli(['verify', url])).status, 0);
    // a lock left by a writer of this host that no longer runs (killed): taken over
    const dead = spawnSync('true').pid!;
    const lockBody = (pid: number, host: string): string =>
      JSON.stringify({ pid, host, started: new Date().toISOString() });
    await client.send(
      new PutObjectCommand({ Bucket: bucket, Key: 'w.fixedram-lock', Body: lockBody(dead, os.hostname()) }),
    );
    const taken = await cli(['save', '-o', url, '-b', `mem=${src}`]);
    assert.equal(taken.status, 0, taken.stderr);
    assert.equal(await headExists(bucket, 'w.fixedram-lock'), false);
    // a fresh lock of a writer on another host: refused, the lock left alone
    await client.send(
      new PutObjectCommand({ Bucket: bucket, Key: 'w.fixedram-lock', Body: lockBody(4242, 'other-host') }),
    );
    const other = await cli(['save', '--update', '-o', url, '-b', `mem=${src}`]);
    assert.equal(other.status, 4, other.stderr);
    assert.match(oneLine(other), /being written by pid 4242 on other-host/);
    assert.equal(await headExists(bucket, 'w.fixedram-lock'), true);
  });

  it('a stale lock found by several writers at once is taken over by exactly one; the others are refused', async (t) => {
    const bucket = await tempBucket(t, client);
    const url = parseS3Url(`s3://${bucket}/race`);
    const dead = spawnSync('true').pid!;
    for (let round = 0; round < 6; round++) {
      // the lock of a writer of this host that no longer runs (a new body, so a new ETag, each round)
      const body = JSON.stringify({ pid: dead, host: os.hostname(), started: `round ${round}` });
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'race.fixedram-lock', Body: body }));
      const writers = [s3Client(), s3Client(), s3Client()];
      try {
        const results = await Promise.allSettled(
          writers.map((c) => acquireS3Lock(c, url, new AbortController().signal)),
        );
        const won = results.filter((r) => r.status === 'fulfilled');
        assert.equal(won.length, 1, `round ${round}: ${won.length} writers hold the lock at once`);
        for (const r of results) {
          if (r.status === 'rejected') assert.match((r.reason as Error).message, /is being written by/);
        }
        await won[0]!.value.release();
      } finally {
        for (const c of writers) c.destroy();
      }
    }
    assert.deepEqual(await listKeys(client, bucket), [], 'no lock or takeover object left behind');
  });

  it('convert QEMUFILE -o s3://: the bucket holds the snapshot a local convert writes', async (t) => {
    if (!fixturesAvailable()) {
      assert.ok(!process.env.CI, `the QEMU fixtures are not at ${kFixtures}`);
      t.skip(`the QEMU fixtures are not at ${kFixtures}`);
      return;
    }
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const mig = unpackFixture('membackend-32m.mig', dir);
    const url = `s3://${bucket}/conv`;
    const c = await cli(['convert', mig, '-o', url, '--json']);
    assert.equal(c.status, 0, c.stderr);
    const res = JSON.parse(c.stdout) as { snapshot: string; s3: { chunksPresent: number; bytesUploaded: number } };
    assert.equal(res.snapshot, url);
    assert.ok(res.s3.chunksPresent > 0 && res.s3.bytesUploaded > 0);
    const local = path.join(dir, 'local.fxr');
    assert.equal((await cli(['convert', mig, '-o', local])).status, 0);
    const pulled = path.join(dir, 'pulled.fxr');
    assert.equal((await cli(['pull', url, pulled])).status, 0);
    assert.ok(fs.readFileSync(pulled).equals(fs.readFileSync(local)), 'pulled snapshot equals a local convert');
    assert.equal((await cli(['verify', url])).status, 0);
  });

  it('push then pull: byte-exact, zero pages stay holes locally, the file is private', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const local = path.join(dir, 'a.fxr');
    assert.equal((await cli(['save', '-o', local, '-b', `mem=${src}`])).status, 0);
    const url = `s3://${bucket}/a`;
    const up = await cli(['push', local, url, '-j', '4']);
    assert.equal(up.status, 0, up.stderr);
    const back = path.join(dir, 'b.fxr');
    const down = await cli(['pull', url, back, '-j', '4']);
    assert.equal(down.status, 0, down.stderr);
    assert.ok(fs.readFileSync(back).equals(fs.readFileSync(local)));
    const size = fs.statSync(back).size;
    assert.ok(allocated(back) < size - (8 << 20), `holes stay holes: ${allocated(back)} allocated of ${size}`);
    assert.ok(
      allocated(back) <= allocated(local) + (1 << 20),
      `no more allocated than the original: ${allocated(back)} vs ${allocated(local)}`,
    );
    assert.equal(fs.statSync(back).mode & 0o777, 0o600);
    // pull commits like save: over an existing file it takes that file's mode, under its lock; it
    // never replaces what is not a regular file
    fs.writeFileSync(back, 'old');
    fs.chmodSync(back, 0o640);
    const over = await cli(['pull', url, back]);
    assert.equal(over.status, 0, over.stderr);
    assert.ok(fs.readFileSync(back).equals(fs.readFileSync(local)));
    assert.equal(fs.statSync(back).mode & 0o777, 0o640, 'the mode of the file it replaced');
    const held = lockOutput(back);
    try {
      const locked = await cli(['pull', url, back]);
      assert.equal(locked.status, 4, locked.stderr);
      assert.match(locked.stderr, /in use|lock/i);
    } finally {
      held.release();
    }
    const target = path.join(dir, 'target');
    fs.writeFileSync(target, 'keep');
    const link = path.join(dir, 'link.fxr');
    fs.symlinkSync(target, link);
    const viaLink = await cli(['pull', url, link]);
    assert.equal(viaLink.status, 2, viaLink.stderr);
    assert.equal(fs.readFileSync(target, 'utf8'), 'keep');
    assert.ok(fs.lstatSync(link).isSymbolicLink());
    assert.deepEqual(
      fs.readdirSync(dir).filter((f) => f.includes('.tmp') || f.endsWith('.lock')),
      [],
      'no temp or lock file left behind',
    );
    // a second push of the same file uploads nothing
    const again = await cli(['push', local, url, '--json']);
    assert.equal(again.status, 0, again.stderr);
    assert.equal((JSON.parse(again.stdout) as { chunksUploaded: number; bytesUploaded: number }).bytesUploaded, 0);
  });

  it('save --update uploads only the changed pages and the metadata, equals a fresh save, compacts, leaves no stale object', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const url = `s3://${bucket}/u`;
    const first = await cli(['save', '-o', url, '-b', `mem=${src}`, '--json']);
    assert.equal(first.status, 0, first.stderr);
    const metadataEnd = (JSON.parse((await cli(['inspect', url, '--json'])).stdout) as { metadataEnd: number })
      .metadataEnd;
    assert.ok(metadataEnd > 0);
    type S3R = {
      s3: {
        mode: string;
        pagesChanged: number;
        bytesUploaded: number;
        patchLayers: number;
        chunksPresent: number;
        chunksDeleted: number;
      };
    };
    const matchesFresh = async (what: string): Promise<void> => {
      const local = path.join(dir, 'fresh.fxr');
      fs.rmSync(local, { force: true });
      assert.equal((await cli(['save', '-o', local, '-b', `mem=${src}`])).status, 0);
      const pulled = path.join(dir, 'p.fxr');
      fs.rmSync(pulled, { force: true });
      const p = await cli(['pull', url, pulled]);
      assert.equal(p.status, 0, p.stderr);
      assert.ok(
        fs.readFileSync(pulled).equals(fs.readFileSync(local)),
        `${what}: the snapshot on S3 equals a fresh save`,
      );
      const v = await cli(['verify', url, '--against', `mem=${src}`]);
      assert.equal(v.status, 0, v.stdout + v.stderr);
    };
    // one page changed: exactly that page and the metadata go up
    touchPage(src, 5000, 7);
    const u1 = await cli(['save', '--update', '-o', url, '-b', `mem=${src}`, '--json']);
    assert.equal(u1.status, 0, u1.stderr);
    const r1 = (JSON.parse(u1.stdout) as S3R).s3;
    assert.equal(r1.mode, 'patch');
    assert.equal(r1.pagesChanged, 1);
    assert.equal(r1.bytesUploaded, metadataEnd + 4096, 'the metadata and one page');
    assert.equal(r1.patchLayers, 1);
    await matchesFresh('one page changed');
    // a data page that became zero, another changed: the zero page is zero after the patch
    const zfd = fs.openSync(src, 'r+');
    fs.writeSync(zfd, Buffer.alloc(4096), 0, 4096, 10 * 4096);
    fs.closeSync(zfd);
    touchPage(src, 11, 8);
    const u2 = await cli(['save', '--update', '-o', url, '-b', `mem=${src}`, '--json']);
    assert.equal(u2.status, 0, u2.stderr);
    const r2 = (JSON.parse(u2.stdout) as S3R).s3;
    assert.deepEqual([r2.mode, r2.pagesChanged, r2.patchLayers], ['patch', 2, 2]);
    await matchesFresh('a page became zero');
    // every data page changed (more than half the stored bytes): changed chunks are uploaded
    // instead and the patch layers are dropped
    makeBlock(src, 1, kPages, { kind: (i, n) => (kind(i, n) === 'hole' ? 'hole' : 'random') });
    const u3 = await cli(['save', '--update', '-o', url, '-b', `mem=${src}`, '--json']);
    assert.equal(u3.status, 0, u3.stderr);
    const r3 = (JSON.parse(u3.stdout) as S3R).s3;
    assert.deepEqual([r3.mode, r3.patchLayers], ['chunks', 0]);
    assert.ok(r3.chunksDeleted >= 2, 'superseded chunks and patches were deleted');
    assert.equal(chunkKeys(await listKeys(client, bucket), 'u').length, r3.chunksPresent, 'no stale object left');
    await matchesFresh('compacted');
    // --update needs a snapshot there
    const none = await cli(['save', '--update', '-o', `s3://${bucket}/nothing`, '-b', `mem=${src}`]);
    assert.equal(none.status, 4, none.stderr);
    assert.match(oneLine(none), /no such object/);
  });

  it('bad input: one-line errors, exit 4 for I/O and 3 for not-a-snapshot or incomplete, nothing left behind', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const url = `s3://${bucket}/x`;
    const cases: [string, string[], NodeJS.ProcessEnv, number, RegExp][] = [
      [
        'missing bucket',
        ['save', '-o', 's3://fixedram-no-such-bucket/x', '-b', `mem=${src}`],
        {},
        4,
        /bucket 'fixedram-no-such-bucket' does not exist/,
      ],
      [
        'no credentials',
        ['save', '-o', url, '-b', `mem=${src}`],
        { AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' },
        4,
        /no S3 credentials/,
      ],
      [
        'access denied',
        ['save', '-o', url, '-b', `mem=${src}`],
        { AWS_SECRET_ACCESS_KEY: 'wrong' },
        4,
        /access denied/,
      ],
      [
        'endpoint down',
        ['load', url, '-b', `mem=${path.join(dir, 'o')}`, '--s3-endpoint', 'http://127.0.0.1:9'],
        {},
        4,
        /ECONNREFUSED: endpoint unreachable/,
      ],
      ['no such key', ['verify', url], {}, 4, /no such object/],
      ['bad url', ['verify', 's3://bucket-only'], {}, 2, /expected s3:\/\/BUCKET\/KEY/],
    ];
    for (const [what, args, env, code, re] of cases) {
      const r = await cli(args, env);
      assert.equal(r.status, code, `${what}: ${r.stderr}`);
      assert.match(oneLine(r), re, what);
    }
    assert.deepEqual(await listKeys(client, bucket), [], 'the failed saves left nothing in the bucket');

    // an object that is not a snapshot
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'notes.txt', Body: 'hello' }));
    for (const cmd of [['verify'], ['inspect'], ['pull'], ['load']]) {
      const extra =
        cmd[0] === 'pull' ? [path.join(dir, 'n')] : cmd[0] === 'load' ? ['-b', `mem=${path.join(dir, 'n')}`] : [];
      const r = await cli([...cmd, `s3://${bucket}/notes.txt`, ...extra]);
      assert.equal(r.status, 3, `${cmd[0]}: ${r.stderr}`);
      assert.match(oneLine(r), /is not a fixedram snapshot on S3/);
    }
    assert.ok(!fs.existsSync(path.join(dir, 'n')), 'a refused pull or load creates nothing');
    // a half-uploaded snapshot: chunks, no manifest
    await client.send(
      new PutObjectCommand({ Bucket: bucket, Key: `half.fixedram-chunks/${'0'.repeat(64)}`, Body: 'x' }),
    );
    const h = await cli(['verify', `s3://${bucket}/half`]);
    assert.equal(h.status, 3, h.stderr);
    assert.match(oneLine(h), /incomplete: chunks but no manifest/);
  });

  it('the endpoint goes down mid-save: exit 4, nothing under the final key; the next save removes the orphans', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const relay = await startRelay();
    t.after(() => relay.close());
    const key = 'down';
    let exited = false;
    const pending = cli([
      'save',
      '-o',
      `s3://${bucket}/${key}`,
      '-b',
      `mem=${src}`,
      '-j',
      '1',
      '--s3-endpoint',
      relay.endpoint,
    ]).finally(() => {
      exited = true;
    });
    // let about two packed chunks through (several MiB of the data), then the endpoint disappears
    const deadline = Date.now() + 60_000;
    while (relay.bytesUp < 5 << 20 && !exited && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(
      !exited && relay.bytesUp >= 5 << 20,
      `the save was still uploading after 5 MiB (sent ${relay.bytesUp} bytes, exited: ${exited})`,
    );
    relay.down = true;
    const r = await pending;
    assert.ok(relay.drops > 0, 'the relay cut connections');
    assert.equal(r.status, 4, r.stderr);
    assert.match(oneLine(r), /endpoint unreachable|ECONNRESET|socket hang up/);
    assert.equal(await headExists(bucket, key), false, 'nothing under the final key');
    const orphans = chunkKeys(await listKeys(client, bucket), key);
    assert.ok(
      orphans.length >= 1,
      'chunks uploaded before the endpoint went down are still there (it could not delete them)',
    );
    const v = await cli(['verify', `s3://${bucket}/${key}`]);
    assert.equal(v.status, 3, v.stderr);
    assert.match(oneLine(v), /incomplete/);
    // saving again (endpoint back) reuses what is there and leaves only what the manifest names
    const again = await cli(['save', '-o', `s3://${bucket}/${key}`, '-b', `mem=${src}`, '--json']);
    assert.equal(again.status, 0, again.stderr);
    const res = JSON.parse(again.stdout) as { s3: { chunksPresent: number; chunksReused: number } };
    assert.ok(res.s3.chunksReused >= 1, 'resumed: chunks already uploaded were not sent again');
    assert.equal(chunkKeys(await listKeys(client, bucket), key).length, res.s3.chunksPresent);
  });

  it('a connection dropped mid-upload and mid-download is retried and resumed: the transfer completes', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const relay = await startRelay();
    t.after(() => relay.close());
    relay.cutAfterBytes = 6 << 20;
    relay.maxDrops = 1;
    const url = `s3://${bucket}/drop`;
    const s = await cli(['save', '-o', url, '-b', `mem=${src}`, '-j', '2', '--s3-endpoint', relay.endpoint]);
    assert.equal(relay.drops, 1, 'one connection was cut during the upload');
    assert.equal(s.status, 0, s.stderr);
    // download: cut one response body in the middle of a chunk
    relay.drops = 0;
    relay.cutAfterBytes = relay.bytesUp + relay.bytesDown + (6 << 20);
    const out = path.join(dir, 'out');
    const l = await cli(['load', url, '-b', `mem=${out}`, '-j', '1', '--s3-endpoint', relay.endpoint]);
    assert.equal(relay.drops, 1, 'one connection was cut during the download');
    assert.equal(l.status, 0, l.stderr);
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(src)));
  });

  it('a killed save leaves no visible snapshot; an interrupted --update leaves the previous one; re-running completes', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const relay = await startRelay();
    t.after(() => relay.close());
    const url = `s3://${bucket}/k`;
    const killAt = async (args: string[], bytes: number): Promise<Run> => {
      const start = relay.bytesUp;
      let child: ReturnType<typeof spawn> | undefined;
      let exited = false;
      const p = cli(args, {}, (c) => {
        child = c;
      });
      void p.then(() => {
        exited = true;
      });
      const deadline = Date.now() + 60_000;
      while (relay.bytesUp - start < bytes && !exited && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 5));
      child!.kill('SIGKILL');
      assert.ok(
        relay.bytesUp - start >= bytes,
        `the command had sent ${relay.bytesUp - start} of ${bytes} bytes before the kill`,
      );
      return p;
    };
    const k = await killAt(
      ['save', '-o', url, '-b', `mem=${src}`, '-j', '1', '--s3-endpoint', relay.endpoint],
      5 << 20,
    );
    assert.equal(k.signal, 'SIGKILL');
    assert.equal(await headExists(bucket, 'k'), false, 'no snapshot visible after the kill');
    assert.equal((await cli(['save', '-o', url, '-b', `mem=${src}`])).status, 0);
    const v1 = path.join(dir, 'v1.fxr');
    assert.equal((await cli(['pull', url, v1])).status, 0);

    for (let p = 0; p < 1000; p += 3) touchPage(src, p, 9); // about 1.3 MiB of changed pages: one patch part
    const ku = await killAt(
      ['save', '--update', '-o', url, '-b', `mem=${src}`, '-j', '1', '--s3-endpoint', relay.endpoint],
      300 << 10,
    );
    assert.equal(ku.signal, 'SIGKILL');
    const mid = path.join(dir, 'mid.fxr');
    assert.equal((await cli(['pull', url, mid])).status, 0);
    assert.ok(fs.readFileSync(mid).equals(fs.readFileSync(v1)), 'readers still see the previous snapshot, whole');
    const u = await cli(['save', '--update', '-o', url, '-b', `mem=${src}`]);
    assert.equal(u.status, 0, u.stderr);
    const fresh = path.join(dir, 'fresh.fxr');
    assert.equal((await cli(['save', '-o', fresh, '-b', `mem=${src}`])).status, 0);
    const done = path.join(dir, 'done.fxr');
    assert.equal((await cli(['pull', url, done])).status, 0);
    assert.ok(fs.readFileSync(done).equals(fs.readFileSync(fresh)), 're-run update equals a fresh save');
    const ok = await cli(['verify', url]);
    assert.equal(ok.status, 0, ok.stderr);
  });

  it('a truncated or altered chunk object: load and verify refuse it (exit 3 / 1), also through a resumed ranged read', async (t) => {
    const dir = tempDir(t);
    const bucket = await tempBucket(t, client);
    const src = block(dir);
    const url = `s3://${bucket}/t`;
    assert.equal((await cli(['save', '-o', url, '-b', `mem=${src}`])).status, 0);
    // the chunk with the highest index: with -j 1 the chunks before it (many MiB) are read first,
    // so the relay below cuts a connection before the load reaches the damaged chunk
    const manifest = JSON.parse(
      await (await client.send(new GetObjectCommand({ Bucket: bucket, Key: 't' }))).Body!.transformToString(),
    ) as { chunks: [number, string][] };
    assert.ok(
      manifest.chunks.length >= 4 && manifest.chunks.at(-1)![0] >= 4,
      'several chunks come before the damaged one',
    );
    const victim = `t.fixedram-chunks/${manifest.chunks.at(-1)![1]}`;
    assert.ok(chunkKeys(await listKeys(client, bucket), 't').includes(victim));
    const body = Buffer.from(
      await (await client.send(new GetObjectCommand({ Bucket: bucket, Key: victim }))).Body!.transformToByteArray(),
    );
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: victim, Body: body.subarray(0, body.length >> 1) }));
    const v = await cli(['verify', url]);
    assert.equal(v.status, 3, v.stderr);
    assert.match(oneLine(v), /is truncated/);
    // the first GET of the (now short) object is cut mid-body; the ranged GET for the rest finds it short
    const relay = await startRelay();
    t.after(() => relay.close());
    relay.maxDrops = 1;
    relay.cutAfterBytes = 0;
    let l: Run | undefined;
    for (const cut of [1 << 20, 3 << 20, 6 << 20]) {
      relay.drops = 0;
      relay.cutAfterBytes = relay.bytesUp + relay.bytesDown + cut;
      l = await cli(['load', url, '-b', `mem=${path.join(dir, 'o')}`, '-j', '1', '--s3-endpoint', relay.endpoint]);
      assert.equal(relay.drops, 1, 'a connection was cut');
      assert.equal(l.status, 3, l.stderr);
    }
    assert.match(oneLine(l!), /is truncated/);
    // same length, altered bytes: the chunk's SHA-256 catches it (integrity, exit 1)
    body[100] ^= 0xff;
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: victim, Body: body }));
    const a = await cli(['verify', url]);
    assert.equal(a.status, 1, a.stderr);
    assert.match(oneLine(a), /does not match its SHA-256/);
  });
});
