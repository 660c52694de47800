/**
 * Small truths (issue 10 item 13): errors say what really happened and name their file.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { fixedram } from './support/cli';
import { mountTmpfs } from './support/faults';
import { requireSetup } from './support/prereq';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

describe('faults: small truths', () => {
  it('every read error names its file: verify /proc/self/mem (EIO) says which file', () => {
    const r = fixedram(['verify', '/proc/self/mem']);
    assert.equal(r.status, 4, r.stderr);
    assert.match(r.stderr, /^fixedram: error: EIO: .*'\/proc\/self\/mem'\n$/);
  });

  it('load --dir naming a file says ENOTDIR (not EEXIST), exit 4', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 4);
    const snap = path.join(dir, 's.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${a}`, '--no-fsync']).status, 0);
    const file = path.join(dir, 'plain');
    fs.writeFileSync(file, 'x');
    for (const d of [file, path.join(file, 'below')]) {
      const r = fixedram(['load', snap, '--dir', d]);
      assert.equal(r.status, 4, r.stderr);
      assert.match(r.stderr, /ENOTDIR/);
      assert.doesNotMatch(r.stderr, /EEXIST/);
    }
    assert.equal(fs.readFileSync(file, 'utf8'), 'x');
  });

  it('load --dir on a read-only mount says EROFS (not ENOENT), for a new and for an existing DIR', (t) => {
    const mnt = mountTmpfs(t, '4m');
    if (!requireSetup(t, mnt)) return;
    fs.mkdirSync(path.join(mnt, 'exists'));
    assert.equal(spawnSync('mount', ['-o', 'remount,ro', mnt]).status, 0, 'remount ro failed');
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 4);
    const snap = path.join(dir, 's.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${a}`, '--no-fsync']).status, 0);
    for (const d of [path.join(mnt, 'new', 'deeper'), path.join(mnt, 'exists')]) {
      const r = fixedram(['load', snap, '--dir', d]);
      assert.equal(r.status, 4, r.stderr);
      assert.match(r.stderr, /EROFS/, d);
    }
  });

  it('--page-size 2G says the maximum is 1 GiB (exit 2)', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 4);
    const r = fixedram(['save', '-o', path.join(dir, 's.fxr'), '-b', `a=${a}`, '--page-size', '2G']);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /at most|to 1 GiB/);
  });

  it('-j is capped at 64: -j 65 is a usage error naming the bound, -j 64 works', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 4);
    const r = fixedram(['save', '-o', path.join(dir, 's.fxr'), '-b', `a=${a}`, '-j', '65', '--no-fsync']);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /to 64 \(got 65\)/);
    const ok = fixedram(['save', '-o', path.join(dir, 's.fxr'), '-b', `a=${a}`, '-j', '64', '--no-fsync']);
    assert.equal(ok.status, 0, ok.stderr);
  });
});
