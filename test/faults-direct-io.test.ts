/**
 * Fault catalogue, direct I/O (#19): --direct-io is opt-in; where it works the result is
 * byte-identical to buffered I/O; where the file system refuses O_DIRECT at open, or accepts the
 * open and then refuses the transfer with EINVAL (simulated with the LD_PRELOAD shim), fixedram
 * falls back to buffered I/O with a warning and still writes the same bytes.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fixedram } from './support/cli';
import { readShimReport, shimEnv, shimPath } from './support/faults';
import { fillFile, firstDifferentPage, makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';
import { requirePrereq, requireSetup } from './support/prereq';

function setup(t: TestContext, base?: string) {
  const dir = tempDir(t, base);
  const a = path.join(dir, 'a.ram');
  const b = path.join(dir, 'b.ram');
  makeBlock(a, 1, 1500);
  makeBlock(b, 2, 33);
  const clean = path.join(dir, 'clean.fxr');
  assert.equal(fixedram(['save', '-o', clean, '-b', `a=${a}`, '-b', `b=${b}`, '--no-fsync']).status, 0);
  return { dir, a, b, clean };
}

function roundTrip(t: TestContext, env: NodeJS.ProcessEnv, base?: string): { save: string; load: string } {
  const { dir, a, b, clean } = setup(t, base);
  const out = path.join(dir, 'direct.fxr');
  const s = fixedram(['save', '-o', out, '-b', `a=${a}`, '-b', `b=${b}`, '--direct-io', '-j', '2'], { env });
  assert.equal(s.status, 0, s.stderr);
  assert.ok(
    fs.readFileSync(out).equals(fs.readFileSync(clean)),
    'the --direct-io snapshot differs from a buffered one',
  );
  const target = path.join(dir, 'target.ram');
  fillFile(target, fs.statSync(a).size, 0xaa);
  const l = fixedram(['load', out, '-b', `a=${target}`, '--direct-io', '-j', '2'], { env });
  assert.equal(l.status, 0, l.stderr);
  assert.equal(firstDifferentPage(a, target), -1);
  assert.equal(fixedram(['verify', out]).status, 0);
  return { save: s.stderr, load: l.stderr };
}

describe('faults: direct I/O', () => {
  it('#19 --direct-io on a file system that supports it (the temp dir): byte-identical, no warning, O_DIRECT really used', (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const report = path.join(tempDir(t), 'shim.txt');
    // the shim only counts here (funcs none): how many opens with O_DIRECT succeeded
    const r = roundTrip(t, shimEnv(so, { funcs: 'none', report }));
    assert.doesNotMatch(r.save + r.load, /buffered/);
    assert.ok(readShimReport(report).dopen >= 4, `O_DIRECT was not used: ${JSON.stringify(readShimReport(report))}`);
  });

  it('#19 --direct-io on tmpfs (/dev/shm): byte-identical (direct, or buffered with a fallback warning)', (t) => {
    if (!requirePrereq(t, fs.existsSync('/dev/shm'), 'no /dev/shm')) return;
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const report = path.join(tempDir(t), 'shim.txt');
    const r = roundTrip(t, shimEnv(so, { funcs: 'none', report }), '/dev/shm');
    // whichever happened is said: O_DIRECT opens were counted, or the fallback warned
    assert.ok(
      readShimReport(report).dopen > 0 || /buffered/.test(r.save + r.load),
      JSON.stringify(readShimReport(report)),
    );
  });

  it('#19 O_DIRECT refused at open (EINVAL): buffered fallback with a warning, byte-identical', (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const report = path.join(tempDir(t), 'shim.txt');
    const r = roundTrip(t, shimEnv(so, { direct: 'refuse-open', report, funcs: 'none' }));
    assert.match(r.save, /refuses O_DIRECT; using buffered I\/O/);
    assert.match(r.load, /refuses O_DIRECT; using buffered I\/O/);
    assert.ok(readShimReport(report).direct >= 2, JSON.stringify(readShimReport(report)));
  });

  it('#19 O_DIRECT accepted at open but the transfer fails with EINVAL: per-channel fallback with a warning, byte-identical', (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const report = path.join(tempDir(t), 'shim.txt');
    const r = roundTrip(t, shimEnv(so, { direct: 'einval-io', report }));
    assert.match(r.save, /direct I\/O failed with EINVAL .*; continuing with buffered I\/O/);
    assert.match(r.load, /direct I\/O failed with EINVAL .*; continuing with buffered I\/O/);
    assert.ok(readShimReport(report).direct >= 2, JSON.stringify(readShimReport(report)));
  });

  it('#19 --direct-io with a 64 KiB page size and odd block sizes: byte-identical', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 37, { pageSize: 65536 });
    const clean = path.join(dir, 'clean.fxr');
    assert.equal(fixedram(['save', '-o', clean, '-b', `a=${a}`, '--page-size', '65536']).status, 0);
    const out = path.join(dir, 'direct.fxr');
    const s = fixedram(['save', '-o', out, '-b', `a=${a}`, '--page-size', '65536', '--direct-io']);
    assert.equal(s.status, 0, s.stderr);
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(clean)));
  });
});
