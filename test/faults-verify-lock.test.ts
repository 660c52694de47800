/**
 * verify takes the shared lock load takes (issue 10 item 10): beside a running `save --update` it
 * never reports false corruption; it says "being updated in place by pid N" while the update runs,
 * and "interrupted" only for an update that is no longer running.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fixedram, fixedramChild } from './support/cli';
import { denseBlock, reap, shimPath, slowEnv, Watched } from './support/faults';
import { requireSetup } from './support/prereq';
import { tempDir } from './support/tmp';

const kPages = 4096; // 16 MiB

function setup(t: TestContext) {
  const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
  const src = path.join(dir, 'src.ram');
  denseBlock(src, 1, kPages);
  const out = path.join(dir, 'snap.fxr');
  assert.equal(fixedram(['save', '-o', out, '-b', `mem=${src}`, '--no-fsync']).status, 0);
  denseBlock(src, 1, kPages, { generation: 2 }); // every page changed: the update rewrites them all
  return { dir, src, out };
}

describe('faults: verify and save --update', () => {
  it('verify during a running update says "being updated in place by pid N" (exit 4), never a checksum failure', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src, out } = setup(t);
    const up = new Watched(
      ['save', '--update', '-o', out, '-b', `mem=${src}`, '--progress', 'json', '-j', '1', '--no-fsync'],
      slowEnv(t, so, { delayUs: 2_000_000, path: dir }),
    ); // slow enough (2 s per write) that the inspect and verify below run while it runs
    reap(t, up);
    assert.ok(await up.midway(), `the update never got midway: ${up.stderr}`);
    // inspect reads the metadata without the lock, and says the same (exit 0: it is a state)
    const i = fixedram(['inspect', out, '--json']);
    assert.equal(i.status, 0, i.stderr);
    const ij = JSON.parse(i.stdout) as {
      state: string;
      stateMessage?: string;
      updateRunning?: boolean;
      updaterPid?: number;
    };
    assert.deepEqual([ij.state, ij.updateRunning, ij.updaterPid], ['updating', true, up.child.pid], i.stdout);
    assert.match(ij.stateMessage ?? '', new RegExp(`^being updated in place by pid ${up.child.pid} right now`));
    const v = fixedram(['verify', out]);
    assert.equal(v.status, 4, `${v.stdout}${v.stderr}`);
    assert.match(v.stderr, new RegExp(`is being updated in place by pid ${up.child.pid} `));
    assert.doesNotMatch(v.stderr, /interrupted/);
    const e = await up.exited;
    assert.equal(e.status, 0, e.stderr);
    const after = fixedram(['verify', out, '--against', `mem=${src}`]);
    assert.equal(after.status, 0, `${after.stdout}${after.stderr}`);
  });

  it('verify of an update that was killed says "interrupted" (exit 3), not "being updated"', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { dir, src, out } = setup(t);
    const up = new Watched(
      ['save', '--update', '-o', out, '-b', `mem=${src}`, '--progress', 'json', '-j', '1', '--no-fsync'],
      slowEnv(t, so, { delayUs: 100_000, path: dir }),
    );
    reap(t, up);
    assert.ok(await up.midway(), up.stderr);
    up.kill('SIGKILL');
    await up.exited;
    const v = fixedram(['verify', out]);
    assert.equal(v.status, 3, `${v.stdout}${v.stderr}`);
    assert.match(v.stderr, /interrupted in-place update/);
    assert.doesNotMatch(v.stderr, /being updated in place by/);
    const i = fixedram(['inspect', out, '--json']);
    const ij = JSON.parse(i.stdout) as { state: string; stateMessage: string; updateRunning?: boolean };
    assert.equal(ij.state, 'updating');
    assert.equal(ij.updateRunning, undefined);
    assert.match(ij.stateMessage, /interrupted/);
  });

  it('verify racing save --update, 12 rounds: verify exits 0 or 4 (locked), never 1; the update 0 or 4; the end state verifies', async (t) => {
    const { src, out } = setup(t);
    const seen: Record<string, number> = {};
    for (let k = 0; k < 12; k++) {
      denseBlock(src, 1, kPages, { generation: 3 + k });
      const run = (args: string[]) =>
        new Promise<{ status: number | null; stderr: string; stdout: string }>((resolve) => {
          const c = fixedramChild(args);
          let stdout = '';
          let stderr = '';
          c.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
          c.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
          c.on('close', (status) => resolve({ status, stdout, stderr }));
        });
      const [u, v] = await Promise.all([
        run(['save', '--update', '-o', out, '-b', `mem=${src}`, '--no-fsync', '-j', '1']),
        new Promise<void>((r) => setTimeout(r, k * 7)).then(() => run(['verify', out, '-j', '1'])),
      ]);
      seen[`update ${u.status} / verify ${v.status}`] = (seen[`update ${u.status} / verify ${v.status}`] ?? 0) + 1;
      assert.ok(v.status === 0 || v.status === 4, `round ${k}: verify exit ${v.status}: ${v.stdout}${v.stderr}`);
      if (v.status === 4) assert.match(v.stderr, /being updated in place by pid \d+/);
      assert.ok(u.status === 0 || u.status === 4, `round ${k}: update exit ${u.status}: ${u.stderr}`);
      if (u.status === 4) assert.match(u.stderr, /in use by another process/);
      const after = fixedram(['verify', out]);
      assert.equal(after.status, 0, `round ${k}: ${after.stdout}${after.stderr}`);
    }
    t.diagnostic(JSON.stringify(seen));
  });
});
