/**
 * Fault catalogue, concurrency: a source resized or replaced during a save (#9), a source written
 * while it is saved (#10), two runs on one output (#11), and an output that is a source or a target
 * (#14). Saves are slowed with the LD_PRELOAD shim's delay so the race is always won by the test;
 * timing comes from progress events, not sleeps.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { verify } from '../src/index';
import { fixedram } from './support/cli';
import { assertNoStack, denseBlock, leftovers, reap, sha1, shimPath, slowEnv, Watched } from './support/faults';
import { makeBlock, stampPage } from './support/stamp';
import { tempDir } from './support/tmp';
import { requireSetup } from './support/prereq';

const kPages = 4096; // 16 MiB: 4 batches

function setup(t: TestContext) {
  const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
  const src = path.join(dir, 'src.ram');
  denseBlock(src, 1, kPages);
  const out = path.join(dir, 'snap.fxr');
  return { dir, src, out };
}

/** A slow save of src into out (every transfer of a file in dir sleeps `delayUs`). */
function slowSave(t: TestContext, so: string, dir: string, args: string[], delayUs = 150_000): Watched {
  const w = new Watched([...args, '--progress', 'json', '-j', '1'], slowEnv(t, so, { delayUs, path: dir }));
  reap(t, w);
  return w;
}

describe('faults: concurrency', () => {
  const changes: [string, (src: string, dir: string) => void, RegExp][] = [
    ['shrunk', (src) => fs.truncateSync(src, 4096), /changed size|unexpected end of file/],
    ['grown', (src) => fs.truncateSync(src, (kPages + 256) * 4096), /changed size/],
    [
      'replaced (other inode)',
      (src, dir) => {
        const tmp = path.join(dir, 'other.ram');
        denseBlock(tmp, 9, kPages);
        fs.renameSync(tmp, src);
      },
      /was replaced or removed/,
    ],
    ['removed', (src) => fs.unlinkSync(src), /was replaced or removed/],
  ];
  for (const [what, change, message] of changes) {
    it(`#9 source ${what} during save: exit 4 with a clear message, no SIGBUS, no temp file, old snapshot intact`, async (t) => {
      const so = shimPath();
      if (!requireSetup(t, so)) return;
      const { dir, src, out } = setup(t);
      const old = path.join(dir, 'old.ram');
      makeBlock(old, 3, 64);
      assert.equal(fixedram(['save', '-o', out, '-b', `mem=${old}`, '--no-fsync']).status, 0);
      const oldHash = sha1(out);
      const w = slowSave(t, so, dir, ['save', '-o', out, '-b', `mem=${src}`]);
      // midway: the channels already read from the source (the slow-down is in force), not before
      assert.ok(await w.midway(), w.stderr);
      change(src, dir);
      const e = await w.exited;
      assert.equal(e.signal, null, `killed by ${e.signal}`);
      assert.equal(e.status, 4, e.stderr);
      assert.match(e.stderr, message);
      assert.match(e.stderr, /block 'mem'/);
      assertNoStack(e.stderr);
      assert.deepEqual(leftovers(dir), []);
      assert.equal(sha1(out), oldHash);
    });
  }

  it('#10 source written while it is saved: the snapshot is self-consistent (verify 0) and --against shows the drift (1)', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src, out } = setup(t);
    const w = slowSave(t, so, dir, ['save', '-o', out, '-b', `mem=${src}`]);
    // after the first batch is written, rewrite every page in place (generation 2), as a running VM would
    assert.ok(await w.midway(), w.stderr);
    const fd = fs.openSync(src, 'r+');
    const page = Buffer.alloc(4096);
    for (let i = 0; i < kPages; i++) {
      stampPage(page, 1, i, 2);
      fs.writeSync(fd, page, 0, 4096, i * 4096);
    }
    fs.closeSync(fd);
    const e = await w.exited;
    assert.equal(e.status, 0, e.stderr);
    const v = await verify({ snapshot: out });
    assert.equal(v.ok, true, 'a page of the snapshot fails its own checksum (torn page)');
    const against = await verify({ snapshot: out, against: [{ name: 'mem', path: src }], maxReported: 1 });
    assert.equal(against.ok, false, 'the first batch was saved before the writer ran: it must differ');
    // "quiesce first" must be documented
    const readme = fs.readFileSync(path.resolve(__dirname, '..', '..', 'README.md'), 'utf8');
    assert.match(
      readme,
      /quiesce|paus(e|ed)|stop(ped)? (the|all) writers|not (be )?modified while/i,
      'README does not tell users to stop writers (quiesce) before a save',
    );
  });

  it('#11 two saves to the same output: the second is refused with "locked by pid N"; the first completes', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src, out } = setup(t);
    const w = slowSave(t, so, dir, ['save', '-o', out, '-b', `mem=${src}`], 300_000); // slow enough that the second save starts while it runs, on a busy machine too
    assert.ok(await w.waitFor(() => true), w.stderr);
    const second = fixedram(['save', '-o', out, '-b', `mem=${src}`, '--json']);
    assert.equal(second.status, 4, second.stderr);
    assert.match(second.stderr, new RegExp(`is locked by pid ${w.child.pid}\\b`));
    assert.equal(JSON.parse(second.stdout).error.code, 'ERR_LOCKED');
    const e = await w.exited;
    assert.equal(e.status, 0, e.stderr);
    assert.deepEqual(leftovers(dir), []);
    assert.equal((await verify({ snapshot: out, against: [{ name: 'mem', path: src }] })).ok, true);
  });

  it('#11 a save replacing a snapshot that a verify is reading: both succeed, the verify sees the old file whole', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src, out } = setup(t);
    const old = path.join(dir, 'old.ram');
    denseBlock(old, 2, kPages);
    assert.equal(fixedram(['save', '-o', out, '-b', `mem=${old}`, '--no-fsync']).status, 0);
    const v = slowSave(t, so, dir, ['verify', out, '--against', `mem=${old}`], 100_000);
    assert.ok(await v.midway(), v.stderr);
    const s = fixedram(['save', '-o', out, '-b', `mem=${src}`, '--no-fsync']);
    assert.equal(s.status, 0, s.stderr);
    const e = await v.exited;
    assert.equal(e.status, 0, `the verify of the old snapshot failed: ${e.stdout}${e.stderr}`);
    assert.equal((await verify({ snapshot: out, against: [{ name: 'mem', path: src }] })).ok, true);
  });

  it('#11 save --update while a load reads the snapshot is refused (and a load during an update is refused)', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src, out } = setup(t);
    assert.equal(fixedram(['save', '-o', out, '-b', `mem=${src}`, '--no-fsync']).status, 0);
    const before = sha1(out);
    // slow enough (4 batches × 400 ms) that the update's start-up on a busy machine lands inside it
    const l = slowSave(t, so, dir, ['load', out, '-b', `mem=${path.join(dir, 'target.ram')}`], 400_000);
    assert.ok(await l.waitFor(() => true), l.stderr);
    const u = fixedram(['save', '--update', '-o', out, '-b', `mem=${src}`]);
    assert.equal(u.status, 4, u.stderr);
    assert.match(u.stderr, /in use by another process/);
    assert.equal((await l.exited).status, 0);
    assert.equal(sha1(out), before);

    // every page changed, so the update writes (and the shim slows) every batch: an update reads
    // its sources through a mapping, which the shim cannot slow; slow enough (400 ms per write)
    // that the load below starts while it runs, on a busy machine too
    denseBlock(src, 1, kPages, { generation: 2 });
    // 400 ms per transfer: the load below (a new node process) must start while the update runs,
    // also on a loaded machine
    const up = slowSave(t, so, dir, ['save', '--update', '-o', out, '-b', `mem=${src}`], 400_000);
    assert.ok(await up.waitFor(() => true), up.stderr);
    const l2 = fixedram(['load', out, '-b', `mem=${path.join(dir, 'target2.ram')}`]);
    assert.notEqual(
      l2.status,
      0,
      `a load ran while the snapshot was being updated in place: ${l2.stdout} ${up.stderr}`,
    );
    assert.match(l2.stderr, /being updated|interrupted in-place update|locked/);
    assert.equal((await up.exited).status, 0);
  });

  it('#14 output equal to a source (same path, hard link, symlink): refused (exit 2), source untouched', (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 40);
    const before = sha1(src);
    const hard = path.join(dir, 'hard.fxr');
    fs.linkSync(src, hard);
    const soft = path.join(dir, 'soft.fxr');
    fs.symlinkSync(src, soft);
    for (const out of [src, hard, soft, path.join(dir, '.', 'a.ram')]) {
      for (const update of [[], ['--update']]) {
        const r = fixedram(['save', ...update, '-o', out, '-b', `a=${src}`]);
        assert.equal(r.status, 2, `${out} ${update.join(' ')}: ${r.stderr}`);
        // a symlink at the output is refused before the aliasing check (never replaced, never followed)
        assert.match(
          r.stderr,
          out === soft ? /is a symbolic link, not a regular file/ : /is the same file as block 'a'/,
        );
      }
    }
    assert.equal(sha1(src), before);
    assert.deepEqual(leftovers(dir), []);
  });

  it('#14 a load target that is the snapshot itself (hard link): refused, snapshot untouched', (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 40);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${src}`]).status, 0);
    const before = sha1(snap);
    const link = path.join(dir, 'link.ram');
    fs.linkSync(snap, link);
    const r = fixedram(['load', snap, '-b', `a=${link}`]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(sha1(snap), before);
  });
});
