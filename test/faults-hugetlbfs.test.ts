/**
 * Fault catalogue, hugetlbfs (#15): files on hugetlbfs take pwrite → EINVAL and give no hole
 * information, so load goes through a mapping and save reads every page. Uses the mount made by
 * .ci/hugetlbfs-setup (FIXEDRAM_HUGETLBFS or /mnt/fixedram-huge), and skips when it is missing.
 * Keeps to a few 2 MiB pages: other tests may share the reserved pool.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { inspect, verify } from '../src/index';
import { fixedram } from './support/cli';
import { freeHugePages, hugetlbfsDir, leftovers } from './support/faults';
import { fillFile, firstDifferentPage, makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';
import { requirePrereq, requireSetup } from './support/prereq';

const kHuge = 2 << 20;

function huge(t: TestContext, pages: number): string | undefined {
  const dir = hugetlbfsDir(t);
  if (!requireSetup(t, dir)) return undefined;
  if (!requirePrereq(t, freeHugePages() >= pages, `needs ${pages} free 2 MiB huge pages, ${freeHugePages()} free`))
    return undefined;
  return dir;
}

describe('faults: hugetlbfs', () => {
  it('#15 the file system is what the code expects: pwrite fails with EINVAL, SEEK_DATA gives no holes', (t) => {
    const hdir = huge(t, 1);
    if (!hdir) return;
    const f = path.join(hdir, 'probe');
    const fd = fs.openSync(f, 'w+');
    try {
      fs.ftruncateSync(fd, kHuge);
      assert.throws(() => fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0), { code: 'EINVAL' });
      assert.throws(() => fs.ftruncateSync(fd, kHuge + 4096), { code: 'EINVAL' });
    } finally {
      fs.closeSync(fd);
    }
  });

  it('#15 load into a hugetlbfs target (4 KiB-page snapshot, 2 MiB-multiple block) through a mapping: byte-identical', (t) => {
    const hdir = huge(t, 2);
    if (!hdir) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 1024); // 4 MiB, holes/zeros/stamped/random 4 KiB pages
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${src}`]).status, 0);
    const target = path.join(hdir, 'a');
    const l = fixedram(['load', snap, '-b', `a=${target}`, '-j', '2']);
    assert.equal(l.status, 0, l.stderr);
    assert.equal(firstDifferentPage(src, target), -1);
  });

  it('#17/#15 load into a non-empty hugetlbfs target: absent 4 KiB pages inside a huge page become zero', (t) => {
    const hdir = huge(t, 2);
    if (!hdir) return;
    const dir = tempDir(t);
    // make the target all 0xAA by loading a snapshot of a 0xAA block into it
    const aa = path.join(dir, 'aa.ram');
    fillFile(aa, 2 * kHuge, 0xaa);
    const snapAa = path.join(dir, 'aa.fxr');
    assert.equal(fixedram(['save', '-o', snapAa, '-b', `a=${aa}`]).status, 0);
    const target = path.join(hdir, 'a');
    assert.equal(fixedram(['load', snapAa, '-b', `a=${target}`]).status, 0);
    assert.equal(firstDifferentPage(aa, target), -1);
    // now load a block with holes and zero pages at 4 KiB granularity over it
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 1024);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${src}`]).status, 0);
    const l = fixedram(['load', snap, '-b', `a=${target}`, '-j', '2']);
    assert.equal(l.status, 0, l.stderr);
    const p = firstDifferentPage(src, target);
    assert.equal(p, -1, `page ${p} of the hugetlbfs target kept stale data`);
  });

  it('#15 save from a hugetlbfs source: 2 MiB pages by default, zero huge pages found without hole information', async (t) => {
    const hdir = huge(t, 3);
    if (!hdir) return;
    const dir = tempDir(t);
    // a 6 MiB block whose middle huge page is all zero
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 1536, { kind: (i) => (i >= 512 && i < 1024 ? 'hole' : 'stamp') });
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${src}`]).status, 0);
    const hsrc = path.join(hdir, 'a');
    assert.equal(fixedram(['load', snap, '-b', `a=${hsrc}`]).status, 0);

    const out = path.join(dir, 'from-huge.fxr');
    const s = fixedram(['save', '-o', out, '-b', `a=${hsrc}`, '-j', '2', '--json']);
    assert.equal(s.status, 0, s.stderr);
    const b = inspect(out).blocks[0]!;
    assert.equal(b.pageSize, kHuge);
    assert.equal(b.presentPages, 2);
    assert.equal(b.zeroPages, 1);
    assert.equal((await verify({ snapshot: out, against: [{ name: 'a', path: src }] })).ok, true);
    // and back into a fresh hugetlbfs file
    const again = path.join(hdir, 'b');
    assert.equal(fixedram(['load', out, '-b', `a=${again}`]).status, 0);
    assert.equal(firstDifferentPage(src, again), -1);
    // a 4 KiB page size cannot describe a hugetlbfs source
    const bad = fixedram(['save', '-o', path.join(dir, 'bad.fxr'), '-b', `a=${hsrc}`, '--page-size', '4096']);
    assert.equal(bad.status, 2, bad.stderr);
    assert.match(bad.stderr, /smaller than the huge page size 2097152/);
  });

  it('#15 a block whose length is not a multiple of the huge page size cannot go to hugetlbfs: clear error, nothing left', (t) => {
    const hdir = huge(t, 1);
    if (!hdir) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 256); // 1 MiB
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${src}`]).status, 0);
    const target = path.join(hdir, 'a');
    const l = fixedram(['load', snap, '-b', `a=${target}`]);
    assert.notEqual(l.status, 0);
    assert.match(l.stderr, /huge page size|EINVAL/);
    assert.ok(!fs.existsSync(target), 'a failed load left a created (empty) target on hugetlbfs');
    // a snapshot cannot be written onto hugetlbfs (pwrite is refused): exit 4, no temp file
    const s = fixedram(['save', '-o', path.join(hdir, 'snap.fxr'), '-b', `a=${src}`]);
    assert.equal(s.status, 4, s.stderr);
    assert.deepEqual(leftovers(hdir), []);
  });
});
