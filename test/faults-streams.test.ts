/**
 * Failing standard streams (issue 10 item 9): a stderr closed during a save with --progress json
 * neither kills the save nor leaves its temp file or lock; a stdout that fails after the work
 * (`> /dev/full`) gives one line on stderr and exit 4, the work itself done.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { verify } from '../src/index';
import { kBin } from './support/cli';
import { denseBlock, leftovers, readShimReport, shimEnv, shimPath } from './support/faults';
import { requirePrereq, requireSetup } from './support/prereq';
import { tempDir } from './support/tmp';

describe('faults: failing standard streams', () => {
  it('stderr closed by its reader during save --progress json: the save completes, nothing is left behind', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    denseBlock(src, 1, 4096);
    const out = path.join(dir, 's.fxr');
    const report = path.join(dir, '..', `${path.basename(dir)}.shim`);
    t.after(() => fs.rmSync(report, { force: true }));
    // slowed (every page transfer 30 ms) so that many progress events come after stderr is closed
    const child = spawn(
      process.execPath,
      [kBin, 'save', '-o', out, '-b', `a=${src}`, '--progress', 'json', '-j', '1', '--no-fsync'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...shimEnv(so, { delayUs: 30_000, path: dir, report }) },
      },
    );
    let stdout = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    // read the first line of stderr, then close our end, like `2> >(head -n1 >/dev/null)`
    await new Promise<void>((resolve) => child.stderr!.once('data', () => resolve()));
    child.stderr!.destroy();
    const status = await new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    assert.equal(status, 0, `the save died with its stderr: ${stdout}`);
    assert.match(stdout, /^saved 1 block/);
    assert.deepEqual(leftovers(dir), [], 'a temp or lock file was left behind');
    assert.equal((await verify({ snapshot: out, against: [{ name: 'a', path: src }] })).ok, true);
    assert.ok(
      readShimReport(report).calls >= 4,
      `the slow-down was not injected: ${JSON.stringify(readShimReport(report))}`,
    );
  });

  it('stdout on /dev/full after the work: one line on stderr, exit 4, the snapshot written', async (t) => {
    if (!requirePrereq(t, fs.existsSync('/dev/full'), 'no /dev/full')) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    denseBlock(src, 1, 16);
    const out = path.join(dir, 's.fxr');
    const full = fs.openSync('/dev/full', 'w');
    t.after(() => fs.closeSync(full));
    const child = spawn(process.execPath, [kBin, 'save', '-o', out, '-b', `a=${src}`, '--no-fsync'], {
      stdio: ['ignore', full, 'pipe'],
    });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const status = await new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    assert.equal(status, 4, stderr);
    assert.equal(stderr.trim().split('\n').length, 1, `more than one line: ${stderr}`);
    assert.match(stderr, /ENOSPC/);
    assert.equal((await verify({ snapshot: out })).ok, true);
    assert.deepEqual(leftovers(dir), []);
  });
});
