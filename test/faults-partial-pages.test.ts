/**
 * Partly filled large pages (issue 10 item 15): a page of which only 4 KiB holds data is present,
 * whichever end of a data extent falls inside it. The data-extent walk must round an extent's start
 * down and its end UP to whole pages; rounding the end down would count a page holding 4 KiB at
 * its start as absent (silent data loss), rounding the start up would do the same to a page holding
 * 4 KiB at its end. Tested at every page size a partial page can exist at on tmpfs (its holes are
 * 4 KiB grained): 8 KiB, 64 KiB, 2 MiB and 1 GiB, for save, update, load and verify, and for a
 * hugetlbfs source whose 2 MiB pages hold 4 KiB each.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { load, save, update, verify } from '../src/index';
import { craftSnapshot } from './support/craft';
import { fixedram } from './support/cli';
import { freeHugePages, hugetlbfsDir } from './support/faults';
import { stampPage } from './support/stamp';
import { tempDir } from './support/tmp';

const KiB = 1024;
const MiB = 1 << 20;

function stamp(block: number, page: number, generation = 1): Buffer {
  const b = Buffer.alloc(4096);
  stampPage(b, block, page, generation);
  return b;
}

/** Where in its page the 4 KiB of data lie: at the start (the extent ends inside the page), at the end, in the middle. */
const kPlaces = { start: (_ps: number) => 0, end: (ps: number) => ps - 4096, middle: (ps: number) => ps / 2 } as const;

/** A 5-page block on tmpfs: page 0 a hole, pages 1–3 hold 4 KiB at their start, end and middle, page 4 a hole. */
function partialBlock(file: string, ps: number, generation = 1): Map<number, number> {
  const at = new Map<number, number>([
    [1, kPlaces.start(ps)],
    [2, kPlaces.end(ps)],
    [3, kPlaces.middle(ps)],
  ]);
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, 5 * ps);
  for (const [page, off] of at) fs.writeSync(fd, stamp(7, page, generation), 0, 4096, page * ps + off);
  fs.closeSync(fd);
  return at;
}

function readAt(file: string, offset: number): Buffer {
  const b = Buffer.alloc(4096);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, b, 0, 4096, offset);
  fs.closeSync(fd);
  return b;
}

function shm(t: TestContext): string {
  if (!fs.existsSync('/dev/shm')) assert.fail('/dev/shm is missing');
  return tempDir(t, '/dev/shm');
}

describe('faults: partly filled large pages', () => {
  for (const ps of [8 * KiB, 64 * KiB, 2 * MiB, 1024 * MiB]) {
    it(`${ps / KiB} KiB pages holding 4 KiB at their start, end or middle: present after save, update, load, verify`, async (t) => {
      const dir = shm(t);
      const src = path.join(dir, 'src.ram');
      const at = partialBlock(src, ps);
      const snap = path.join(dir, 'snap.fxr');
      const s = await save({ output: snap, blocks: [{ name: 'm', path: src }], pageSize: ps, channels: 2 });
      assert.equal(s.presentPages, 3, 'a partly filled page was taken as absent');
      assert.equal((await verify({ snapshot: snap, against: [{ name: 'm', path: src }], channels: 2 })).ok, true);
      const out = path.join(dir, 'out.ram');
      await load({ snapshot: snap, blocks: [{ name: 'm', path: out }], channels: 2 });
      for (const [page, off] of at)
        assert.ok(readAt(out, page * ps + off).equals(stamp(7, page)), `page ${page} lost its data`);
      // update: new data at the same places (one page's data moves to its other end) is found and written
      const w = fs.openSync(src, 'r+');
      fs.writeSync(w, Buffer.alloc(4096), 0, 4096, 1 * ps + kPlaces.start(ps));
      fs.writeSync(w, stamp(7, 1, 2), 0, 4096, 1 * ps + kPlaces.end(ps));
      fs.writeSync(w, stamp(7, 4, 2), 0, 4096, 4 * ps + kPlaces.start(ps));
      fs.closeSync(w);
      const u = await update({ output: snap, blocks: [{ name: 'm', path: src }], channels: 2 });
      assert.equal(u.presentPages, 4);
      assert.equal(u.pagesWritten, 2);
      assert.equal((await verify({ snapshot: snap, against: [{ name: 'm', path: src }], channels: 2 })).ok, true);
      // into the existing target: the changed pages arrive, the stale 4 KiB of page 1 is zeroed
      await load({ snapshot: snap, blocks: [{ name: 'm', path: out }], channels: 2 });
      assert.ok(readAt(out, 1 * ps + kPlaces.end(ps)).equals(stamp(7, 1, 2)));
      assert.ok(readAt(out, 1 * ps).equals(Buffer.alloc(4096)), 'stale data left at the start of page 1');
      assert.ok(readAt(out, 4 * ps).equals(stamp(7, 4, 2)));
    });

    it(`${ps / KiB} KiB pages: an absent page whose slot holds 4 KiB at its end or start is found by verify`, async (t) => {
      const dir = shm(t);
      for (const place of ['start', 'end'] as const) {
        const file = path.join(dir, `absent-${place}.fxr`);
        const layout = craftSnapshot(file, [
          { name: 'm', pageSize: ps, length: 3 * ps, present: new Map([[0, stamp(1, 0)]]) },
        ]);
        // stale data in the slot of absent page 1, 4 KiB at one end: only a rounded-out extent walk reads it
        const fd = fs.openSync(file, 'r+');
        fs.writeSync(fd, stamp(9, 1), 0, 4096, layout.blocks[0]!.pagesOffset + ps + kPlaces[place](ps));
        fs.closeSync(fd);
        const r = await verify({ snapshot: file, channels: 2 });
        assert.equal(r.ok, false, `stale data at the ${place} of an absent ${ps}-byte slot was not found`);
        assert.deepEqual(
          r.failures.map((f) => [f.kind, f.page]),
          [['absent-not-zero', 1]],
        );
      }
    });
  }

  it('hugetlbfs source (2 MiB pages, each holding 4 KiB at its start, end or middle): save finds every page', async (t) => {
    const hdir = hugetlbfsDir(t);
    if (hdir.startsWith('skip:')) return t.skip(hdir);
    if (freeHugePages() < 5) return t.skip(`needs 5 free 2 MiB huge pages, ${freeHugePages()} free`);
    const dir = shm(t);
    const ps = 2 * MiB;
    const src = path.join(dir, 'src.ram');
    const at = partialBlock(src, ps);
    const snap = path.join(dir, 'a.fxr');
    assert.equal((await save({ output: snap, blocks: [{ name: 'm', path: src }], pageSize: ps })).presentPages, 3);
    // written into hugetlbfs through a mapping, then saved from there with the huge page size
    const huge = path.join(hdir, `partial-${process.pid}`);
    t.after(() => fs.rmSync(huge, { force: true }));
    const l = fixedram(['load', snap, '-b', `m=${huge}`]);
    assert.equal(l.status, 0, l.stderr);
    const again = path.join(dir, 'b.fxr');
    const s = fixedram(['save', '-o', again, '-b', `m=${huge}`, '--json']);
    assert.equal(s.status, 0, s.stderr);
    assert.equal((JSON.parse(s.stdout) as { presentPages: number }).presentPages, 3);
    const out = path.join(dir, 'out.ram');
    await load({ snapshot: again, blocks: [{ name: 'm', path: out }] });
    for (const [page, off] of at)
      assert.ok(readAt(out, page * ps + off).equals(stamp(7, page)), `page ${page} lost its data`);
  });
});
