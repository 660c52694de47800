/**
 * Fault catalogue, signals: SIGINT/SIGTERM during a save (#6) cancel the channels between batches,
 * remove the temp file and exit 130; a second SIGINT exits at once; an interrupted load (#8) exits
 * 130 and says the targets are incomplete. The runs are slowed with the LD_PRELOAD shim's delay so
 * that a signal always lands while pages are moving (timing comes from progress events).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { verify } from '../src/index';
import { fixedram } from './support/cli';
import { assertNoStack, denseBlock, leftovers, reap, sha1, shimPath, slowEnv, Watched } from './support/faults';
import { tempDir } from './support/tmp';
import { requireSetup } from './support/prereq';

function setup(t: Parameters<typeof tempDir>[0]) {
  const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
  const old = path.join(dir, 'old.ram');
  const src = path.join(dir, 'src.ram');
  denseBlock(old, 1, 2048, { generation: 1 });
  denseBlock(src, 1, 4096, { generation: 2 }); // 4 batches of 4 MiB
  const out = path.join(dir, 'snap.fxr');
  assert.equal(fixedram(['save', '-o', out, '-b', `mem=${old}`, '--no-fsync']).status, 0);
  return { dir, src, out, oldHash: sha1(out), srcHash: sha1(src) };
}

describe('faults: signals', () => {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    it(`#6 ${sig} during a save: exit 130, temp file and lock removed, old snapshot intact, source unchanged`, async (t) => {
      const so = shimPath();
      if (!requireSetup(t, so)) return;
      const { dir, src, out, oldHash, srcHash } = setup(t);
      const w = new Watched(
        ['save', '-o', out, '-b', `mem=${src}`, '--progress', 'json', '-j', '2'],
        slowEnv(t, so, { delayUs: 100_000 }),
      );
      reap(t, w);
      assert.ok(await w.midway(), `no progress before the end:\n${w.stderr}`);
      w.kill(sig);
      const e = await w.exited;
      assert.equal(e.status, 130, e.stderr);
      assert.match(e.stderr, new RegExp(`${sig}: stopping`));
      assert.match(e.stderr, /interrupted: no snapshot was written; '.*snap\.fxr' is unchanged/);
      assertNoStack(e.stderr);
      assert.deepEqual(leftovers(dir), []);
      assert.equal(sha1(out), oldHash);
      assert.equal(sha1(src), srcHash);
      assert.equal((await verify({ snapshot: out })).ok, true);
    });
  }

  it('#6 a second SIGINT exits at once (status 130) and still removes the temp file and the lock', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src, out, oldHash } = setup(t);
    // every transfer sleeps 3 s: the first SIGINT cannot finish the run quickly (channels only look at
    // the cancel flag between batches), so a quick exit proves the second one acted
    const w = new Watched(
      ['save', '-o', out, '-b', `mem=${src}`, '--progress', 'json', '-j', '1'],
      slowEnv(t, so, { delayUs: 3_000_000 }),
    );
    reap(t, w);
    // midway: one batch is done (waiting a fixed time after the first event was not enough on a
    // loaded machine: the channel had not started, and the first SIGINT alone ended the run).
    // Then 1 s more: the channel posts a batch's progress before it claims the next one, and on a
    // loaded machine a SIGINT sent right at the event could still find it between batches (then the
    // first SIGINT alone ends the run, 1 run in 4 here). The next batch's first call sleeps 3 s, so
    // 1 s in, the channel is inside it.
    await new Promise((r) => setTimeout(r, 1000));
    w.kill('SIGINT');
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    w.kill('SIGINT');
    const e = await w.exited;
    // 130, or death by the re-raised SIGINT (what a shell also shows as 130); never an abort
    assert.ok(e.status === 130 || e.signal === 'SIGINT', `status ${e.status}, signal ${e.signal}:\n${e.stderr}`);
    assert.doesNotMatch(e.stderr, /terminate called|Napi::Error/);
    assert.ok(Date.now() - t0 < 1500, `the second SIGINT took ${Date.now() - t0} ms to end the run`);
    assert.match(e.stderr, /SIGINT again, exiting at once/);
    assert.deepEqual(leftovers(dir), []);
    assert.equal(sha1(out), oldHash);
  });

  it('#8 SIGINT during a load: exit 130, "the targets are incomplete" naming them, never exit 0', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src } = setup(t);
    const snap = path.join(dir, 'new.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `mem=${src}`, '--no-fsync']).status, 0);
    const target = path.join(dir, 'target.ram');
    const w = new Watched(
      ['load', snap, '-b', `mem=${target}`, '--progress', 'json', '-j', '2'],
      slowEnv(t, so, { delayUs: 100_000 }),
    );
    reap(t, w);
    assert.ok(await w.midway(), `no progress before the end:\n${w.stderr}`);
    w.kill('SIGINT');
    const e = await w.exited;
    assert.equal(e.status, 130, e.stderr);
    assert.match(
      e.stderr,
      new RegExp(`interrupted: the targets are incomplete \\('${target.replace(/[.]/g, '\\.')}'\\)`),
    );
    assertNoStack(e.stderr);
    // the snapshot is untouched and still verifies
    assert.equal((await verify({ snapshot: snap })).ok, true);
  });

  it('#8 SIGTERM during a load with --json: one JSON error object with exit code 130', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src } = setup(t);
    const snap = path.join(dir, 'new.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `mem=${src}`, '--no-fsync']).status, 0);
    const w = new Watched(
      ['load', snap, '--dir', path.join(dir, 'out'), '--progress', 'json', '--json', '-j', '1'],
      slowEnv(t, so, { delayUs: 100_000 }),
    );
    reap(t, w);
    assert.ok(await w.midway());
    w.kill('SIGTERM');
    const e = await w.exited;
    assert.equal(e.status, 130);
    const lines = e.stdout.trim().split('\n');
    assert.equal(lines.length, 1, e.stdout);
    const o = JSON.parse(lines[0]!);
    assert.equal(o.ok, false);
    assert.equal(o.exitCode, 130);
    assert.equal(o.error.code, 'ERR_INTERRUPTED');
  });
});
