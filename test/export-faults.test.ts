/**
 * export is atomic like save: SIGINT while pages move exits 130, removes the temp file and the
 * lock and leaves the previous output as it was; the output is private (0600), a re-export keeps
 * the mode and owner of the output it replaces, and an output that is not a regular file is
 * refused before any work. The run is slowed
 * with the LD_PRELOAD shim's delay so that the signal lands while pages are moving.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { convert } from '../src/convert';
import { fixedram } from './support/cli';
import { assertNoStack, leftovers, reap, sha1, shimEnv, shimPath, Watched } from './support/faults';
import { requirePrereq, requireSetup } from './support/prereq';
import { fixturesAvailable, kFixtures, unpackFixture } from './support/qemu';
import { tempDir } from './support/tmp';

/** A snapshot with device state: the 32 MiB QEMU fixture converted (dir/vm.fxr). */
async function snapshotOfFixture(dir: string): Promise<string> {
  const mig = unpackFixture('membackend-32m.mig', dir);
  const snap = path.join(dir, 'vm.fxr');
  await convert({ input: mig, output: snap, channels: 2, fsync: false });
  fs.rmSync(mig);
  return snap;
}

describe('export: interrupts and modes', () => {
  it('SIGINT during an export: exit 130, no temp file or lock left, the previous output unchanged', async (t) => {
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t);
    const snap = await snapshotOfFixture(dir);
    const out = path.join(dir, 'vm.mig');
    const first = fixedram(['export', snap, '-o', out, '--no-fsync']);
    assert.equal(first.status, 0, first.stderr);
    assert.equal(fs.statSync(out).mode & 0o777, 0o600);
    const before = sha1(out);
    const w = new Watched(
      ['export', snap, '-o', out, '--progress', 'json', '-j', '2'],
      shimEnv(so, { delayUs: 10_000 }),
    );
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

  it('an output that is a directory, FIFO or symlink is refused before any work: exit 2 ERR_NOT_REGULAR, untouched, nothing left', (t) => {
    const dir = tempDir(t);
    const kinds: { label: string; make: (p: string) => void }[] = [
      { label: 'a directory', make: (p) => fs.mkdirSync(p) },
      { label: 'a FIFO', make: (p) => assert.equal(spawnSync('mkfifo', [p]).status, 0, 'mkfifo failed') },
      { label: 'a symbolic link', make: (p) => fs.symlinkSync(path.join(dir, 'elsewhere.mig'), p) },
    ];
    // "before any work": the snapshot does not even exist, yet the answer is about the output
    const missing = path.join(dir, 'no-such.fxr');
    for (const k of kinds) {
      const out = path.join(dir, `out-${k.label.replace(/ /g, '-')}`);
      k.make(out);
      const before = fs.lstatSync(out);
      const r = fixedram(['export', missing, '-o', out, '--no-fsync', '--json']);
      assert.equal(r.status, 2, `${k.label}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`is ${k.label}, not a regular file; refusing to replace it`), k.label);
      assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'ERR_NOT_REGULAR', k.label);
      const after = fs.lstatSync(out);
      assert.equal(`${after.ino}:${after.mode}`, `${before.ino}:${before.mode}`, `${k.label}: replaced`);
    }
    assert.deepEqual(
      fs.readdirSync(dir).sort(),
      kinds.map((k) => `out-${k.label.replace(/ /g, '-')}`).sort(),
      'leftovers',
    );
    assert.equal(fs.existsSync(path.join(dir, 'elsewhere.mig')), false, 'the symlink was followed');
  });

  it('a re-export keeps the mode (and, as root, the owner) of the output it replaces, like save', async (t) => {
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const dir = tempDir(t);
    const snap = await snapshotOfFixture(dir);
    const out = path.join(dir, 'vm.mig');
    fs.writeFileSync(out, 'an older export');
    fs.chmodSync(out, 0o640);
    const root = process.geteuid?.() === 0;
    if (root) fs.chownSync(out, 4321, 4322);
    const inoBefore = fs.statSync(out).ino;
    const r = fixedram(['export', snap, '-o', out, '--no-fsync']);
    assert.equal(r.status, 0, r.stderr);
    const st = fs.statSync(out);
    assert.notEqual(st.ino, inoBefore, 'the premise: the output was replaced by a new file');
    assert.ok(st.size > 1 << 20, 'the new export is there');
    assert.equal(st.mode & 0o7777, 0o640);
    if (root) assert.deepEqual([st.uid, st.gid], [4321, 4322]);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['vm.fxr', 'vm.mig']);
  });
});
