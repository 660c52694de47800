/**
 * Fault catalogue, short I/O (#5): with an LD_PRELOAD shim (test/support/short_io.c, built here with
 * cc) pwritev/preadv return short counts, 1-byte counts, EINTR and EAGAIN, and Node's own
 * pread/pwrite return short counts and EINTR; save, load and verify must still produce files
 * byte-identical to an undisturbed run.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fixedram } from './support/cli';
import { readShimReport, shimEnv, shimPath } from './support/faults';
import { firstDifferentPage, fillFile, makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';
import { requireSetup } from './support/prereq';

function setup(t: Parameters<typeof tempDir>[0]) {
  const dir = tempDir(t);
  const a = path.join(dir, 'a.ram');
  const b = path.join(dir, 'b.ram');
  makeBlock(a, 1, 1100); // holes, zeros, stamped and random pages; > 1 batch
  makeBlock(b, 2, 77);
  const clean = path.join(dir, 'clean.fxr');
  const r = fixedram(['save', '-o', clean, '-b', `a=${a}`, '-b', `b=${b}`, '--no-fsync']);
  assert.equal(r.status, 0, r.stderr);
  return { dir, a, b, clean };
}

/** save, verify and load (into fresh and 0xAA targets) under the shim; everything byte-identical. */
function roundTrip(t: TestContext, shim: { funcs: string; mode: string }) {
  const so = shimPath();
  if (!requireSetup(t, so)) return;
  const { dir, a, b, clean } = setup(t);
  const report = path.join(dir, 'shim.txt');
  const env = shimEnv(so, { ...shim, report, path: dir });
  const out = path.join(dir, 'shim.fxr');
  for (const j of ['3']) {
    const s = fixedram(['save', '-o', out, '-b', `a=${a}`, '-b', `b=${b}`, '-j', j], { env });
    assert.equal(s.status, 0, s.stderr);
    assert.ok(
      fs.readFileSync(out).equals(fs.readFileSync(clean)),
      `-j ${j}: the snapshot differs from an undisturbed save`,
    );
  }
  const v = fixedram(['verify', out, '--against', `a=${a}`, '-j', '2'], { env });
  assert.equal(v.status, 0, v.stderr + v.stdout);
  const fresh = path.join(dir, 'fresh');
  const l = fixedram(['load', out, '--dir', fresh, '-j', '2'], { env });
  assert.equal(l.status, 0, l.stderr);
  assert.equal(firstDifferentPage(a, path.join(fresh, 'a')), -1);
  assert.equal(firstDifferentPage(b, path.join(fresh, 'b')), -1);
  const dirty = path.join(dir, 'dirty.ram');
  fillFile(dirty, fs.statSync(a).size, 0xaa);
  const l2 = fixedram(['load', out, '-b', `a=${dirty}`, '-j', '2'], { env });
  assert.equal(l2.status, 0, l2.stderr);
  assert.equal(firstDifferentPage(a, dirty), -1);
  const rep = readShimReport(report);
  t.diagnostic(`shim: ${JSON.stringify(rep)}`);
  return rep;
}

describe('faults: short I/O', () => {
  it('#5 short pwritev/preadv counts (half, 1 byte), EINTR and EAGAIN: save/verify/load byte-identical', (t) => {
    const rep = roundTrip(t, { funcs: 'pwritev,preadv', mode: 'short,eintr,onebyte,full,eagain,short' });
    if (!rep) return;
    assert.ok(
      rep.short > 10 && rep.eintr > 3 && rep.eagain > 3,
      `the shim injected too little: ${JSON.stringify(rep)}`,
    );
  });

  it('#5 every pwritev/preadv fails once with EINTR before it succeeds: byte-identical', (t) => {
    const rep = roundTrip(t, { funcs: 'pwritev,preadv', mode: 'eintr,full' });
    if (!rep) return;
    assert.ok(rep.eintr > 10, JSON.stringify(rep));
  });

  it("#5 short counts from Node's own pread/pwrite on fixedram's files (header, tables, lock): byte-identical", (t) => {
    // (no EINTR here: libuv does not retry EINTR of a read, and pread on a local file never gives it)
    const rep = roundTrip(t, { funcs: 'pread,pwrite,pwritev,preadv', mode: 'short,full,onebyte' });
    if (!rep) return;
    assert.ok(rep.short > 20, JSON.stringify(rep));
  });

  it('#5 long runs of data pages (6000 pages) written 1 byte or half a request at a time: byte-identical', (t) => {
    // One batch of 4 MiB holds 1024 pages; the run writer merges adjacent pages into one iovec, so the
    // IOV_MAX split is reached only through WriteZeros (1 MiB iovecs); this checks long runs anyway.
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 6000, { kind: () => 'stamp' });
    const clean = path.join(dir, 'clean.fxr');
    assert.equal(fixedram(['save', '-o', clean, '-b', `a=${a}`, '--no-fsync']).status, 0);
    const out = path.join(dir, 'shim.fxr');
    const report = path.join(dir, 'shim.txt');
    const s = fixedram(['save', '-o', out, '-b', `a=${a}`, '-j', '2'], {
      env: shimEnv(so, { funcs: 'pwritev', mode: 'onebyte,short', report, path: dir }),
    });
    assert.equal(s.status, 0, s.stderr);
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(clean)));
    // the premise: the short writes were really injected
    assert.ok(readShimReport(report).short > 100, JSON.stringify(readShimReport(report)));
  });
});
