/**
 * export is atomic like save: SIGINT while pages move exits 130, removes the temp file and the
 * lock and leaves the previous output as it was; the output is private (0600). The run is slowed
 * with the LD_PRELOAD shim's delay so that the signal lands while pages are moving.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { convert } from '../src/convert';
import { fixedram } from './support/cli';
import { assertNoStack, leftovers, reap, sha1, shimEnv, shimPath, Watched } from './support/faults';
import { requirePrereq, requireSetup } from './support/prereq';
import { fixturesAvailable, kFixtures, unpackFixture } from './support/qemu';
import { tempDir } from './support/tmp';

describe('export: interrupts and modes', () => {
  it('SIGINT during an export: exit 130, no temp file or lock left, the previous output unchanged', async (t) => {
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t);
    const mig = unpackFixture('membackend-32m.mig', dir);
    const snap = path.join(dir, 'vm.fxr');
    await convert({ input: mig, output: snap, channels: 2, fsync: false });
    fs.rmSync(mig);
    const out = path.join(dir, 'vm.mig');
    const first = fixedram(['export', snap, '-o', out, '--no-fsync']);
    assert.equal(first.status, 0, first.stderr);
    assert.equal(fs.statSync(out).mode & 0o777, 0o600);
    const before = sha1(out);
    const w = new Watched(['export', snap, '-o', out, '--progress', 'json', '-j', '2'], shimEnv(so, { delayUs: 100_000 }));
    reap(t, w);
    assert.ok(await w.midway(), `no progress before the end:\n${w.stderr}`);
    w.kill('SIGINT');
    const e = await w.exited;
    assert.equal(e.status, 130, e.stderr);
    assert.match(e.stderr, /interrupted: nothing was exported; '.*vm\.mig' is unchanged/);
    assertNoStack(e.stderr);
    assert.deepEqual(leftovers(dir), []);
    assert.equal(sha1(out), before);
  });
});
