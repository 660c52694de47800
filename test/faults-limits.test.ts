/**
 * Resource limits (issue 10 item 11): a worker thread or a descriptor that cannot be created gives
 * one line saying which (exit 4), no stack trace, no "rebuild the addon" advice, and the usual
 * cleanup (no temp file, no lock).
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { kBin } from './support/cli';
import { assertNoStack, denseBlock, isRoot, leftovers } from './support/faults';
import { requirePrereq } from './support/prereq';
import { tempDir } from './support/tmp';

function checkFailure(label: string, r: { status: number | null; stderr: string }, want: RegExp): void {
  assert.equal(r.status, 4, `${label}: ${r.stderr}`);
  assert.equal(r.stderr.trim().split('\n').length, 1, `${label}: not one line: ${r.stderr}`);
  assert.match(r.stderr, want, label);
  assert.doesNotMatch(r.stderr, /rebuild/i, label);
  assertNoStack(r.stderr);
}

describe('faults: resource limits', () => {
  it('ulimit -n too small for the channels: "could not start worker thread …: no file descriptor is left", exit 4, nothing left', (t) => {
    const prl = spawnSync('prlimit', ['--version']);
    if (!requirePrereq(t, !prl.error, `prlimit: ${prl.error?.message}`)) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    denseBlock(src, 1, 8192); // 32 MiB: several batches, so -j 4 starts four threads
    const out = path.join(dir, 's.fxr');
    let hit = 0;
    for (let n = 22; n <= 40; n += 2) {
      const r = spawnSync(
        'prlimit',
        [`--nofile=${n}`, process.execPath, kBin, 'save', '-o', out, '-b', `a=${src}`, '-j', '4', '--no-fsync'],
        { encoding: 'utf8' },
      );
      assert.deepEqual(leftovers(dir), [], `nofile=${n}: a temp or lock file was left: ${r.stderr}`);
      if (r.status === 0) continue;
      checkFailure(`nofile=${n}`, r, /EMFILE|no file descriptor is left/);
      if (/could not start worker thread \d+: no file descriptor is left/.test(r.stderr)) hit++;
    }
    assert.ok(hit > 0, 'no descriptor limit made a worker thread fail: the case was not exercised');
  });

  it('ulimit -u too small for the channels (as nobody): "could not start worker thread …: the thread limit is reached", exit 4, nothing left', (t) => {
    if (!requirePrereq(t, isRoot(), 'needs root to run as another user (RLIMIT_NPROC does not bind root)')) return;
    const have = spawnSync('setpriv', ['--version']);
    if (!requirePrereq(t, !have.error, `setpriv: ${have.error?.message}`)) return;
    const dir = tempDir(t);
    fs.chmodSync(dir, 0o777);
    const src = path.join(dir, 'a.ram');
    denseBlock(src, 1, 8192);
    fs.chmodSync(src, 0o644);
    const out = path.join(dir, 's.fxr');
    let hit = 0;
    for (const n of [8, 12]) {
      const r = spawnSync(
        'setpriv',
        [
          '--reuid=65534',
          '--regid=65534',
          '--clear-groups',
          'prlimit',
          `--nproc=${n}`,
          process.execPath,
          kBin,
          'save',
          '-o',
          out,
          '-b',
          `a=${src}`,
          '-j',
          '8',
          '--no-fsync',
        ],
        { encoding: 'utf8' },
      );
      assert.deepEqual(leftovers(dir), [], `nproc=${n}: a temp or lock file was left: ${r.stderr}`);
      if (r.status === 0) continue;
      checkFailure(`nproc=${n}`, r, /thread limit is reached/);
      hit++;
    }
    assert.ok(hit > 0, 'no thread limit made a worker thread fail: the case was not exercised');
  });
});
