/**
 * Save → load round trips on stamped blocks with real worker threads, checked byte for byte, and
 * the parallel writer against the single-threaded reference writer.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { load, save, verify, inspect } from '../src/index';
import { fillFile, firstDifferentPage, makeBlock } from './support/stamp';
import { allocated, openFds, tempDir } from './support/tmp';
import { referenceSave } from './support/reference-writer';
import { requirePrereq, requireStrace } from './support/prereq';

// Odd page counts, so blocks do not divide into batches (the tests use small batches).
const kShapes: [string, number][] = [
  ['empty', 0],
  ['one', 1],
  ['odd', 1031],
  ['many', 4099],
];

function makeBlocks(dir: string): { name: string; path: string }[] {
  return kShapes.map(([name, pages], id) => {
    const p = path.join(dir, `${name}.ram`);
    makeBlock(p, id + 1, pages);
    return { name, path: p };
  });
}

describe('save and load', () => {
  for (const channels of [1, 2, 4, 8]) {
    it(`round-trips stamped blocks with ${channels} channel(s), into fresh and dirty targets`, async (t) => {
      const dir = tempDir(t);
      const blocks = makeBlocks(dir);
      const out = path.join(dir, 'snap.fxr');
      const r = await save({ output: out, blocks, channels, batchBytes: 64 * 4096, fsync: channels === 1 });
      assert.equal(r.blocks.length, 4);
      assert.ok(fs.existsSync(out));
      assert.deepEqual(
        fs.readdirSync(dir).filter((f) => f.endsWith('.tmp') || f.endsWith('.lock')),
        [],
      );

      // holes are holes: allocated bytes of the file ~ present pages (+ metadata)
      const presentBytes = r.presentPages * 4096;
      const alloc = allocated(out);
      assert.ok(
        alloc >= presentBytes && alloc <= presentBytes + 256 * 1024,
        `allocated ${alloc}, present ${presentBytes}`,
      );

      // fresh targets
      const fresh = path.join(dir, 'fresh');
      fs.mkdirSync(fresh);
      const targets = blocks.map((b) => ({ name: b.name, path: path.join(fresh, b.name) }));
      await load({ snapshot: out, blocks: targets, channels, batchBytes: 64 * 4096 });
      blocks.forEach((b, i) => assert.equal(firstDifferentPage(b.path, targets[i]!.path), -1, b.name));

      // dirty targets: pre-filled with 0xAA, the absent pages must come back as zeros
      const dirty = path.join(dir, 'dirty');
      fs.mkdirSync(dirty);
      const dirtyTargets = blocks.map((b) => {
        const p = path.join(dirty, b.name);
        fillFile(p, fs.statSync(b.path).size, 0xaa);
        return { name: b.name, path: p };
      });
      const lr = await load({ snapshot: out, blocks: dirtyTargets, channels, batchBytes: 64 * 4096 });
      assert.ok(lr.blocks.every((b) => !b.created));
      blocks.forEach((b, i) => assert.equal(firstDifferentPage(b.path, dirtyTargets[i]!.path), -1, b.name));
    });
  }

  it('load reads ahead: while a channel reads its batch, the next unclaimed batch is asked for at its own slot (POSIX_FADV_WILLNEED, strace)', async (t) => {
    if (!requireStrace(t)) return;
    const dir = tempDir(t);
    // two blocks of 16-page batches; the first and last page of every batch is a hole, so a
    // channel's read-ahead of its own batch (first to last present page) differs from the
    // look-ahead of a whole batch
    const edge = (i: number): 'hole' | 'stamp' => (i % 16 === 0 || i % 16 === 15 ? 'hole' : 'stamp');
    const blocks = [
      { name: 'a', path: path.join(dir, 'a'), pages: 64 },
      { name: 'b', path: path.join(dir, 'b'), pages: 96 },
    ];
    blocks.forEach((b, i) => makeBlock(b.path, i + 1, b.pages, { kind: edge }));
    const out = path.join(dir, 'snap.fxr');
    await save({ output: out, blocks, channels: 1, fsync: false });
    const layout = inspect(out).blocks;
    const batchBytes = 16 * 4096;
    const log = path.join(dir, 'strace.log');
    const script = `require(${JSON.stringify(path.resolve(__dirname, '..', 'src', 'index.js'))}).load({
      snapshot: ${JSON.stringify(out)}, dir: ${JSON.stringify(path.join(dir, 'back'))}, channels: 2, batchBytes: ${batchBytes},
    }).catch((e) => { console.error(e); process.exit(4); });`;
    const r = spawnSync('strace', ['-f', '-qq', '-o', log, '-e', 'trace=fadvise64', process.execPath, '-e', script], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(r.status, 0, r.stderr);
    for (const b of blocks) assert.equal(firstDifferentPage(b.path, path.join(dir, 'back', b.name)), -1, b.name);
    // every batch: [its slot, its length]; the whole batches asked for ahead must be exactly such
    const batches = new Set<string>();
    layout.forEach((l, i) => {
      for (let first = 0; first < blocks[i]!.pages; first += 16)
        batches.add(`${l.pagesOffset + first * 4096} ${batchBytes}`);
    });
    const ahead = new Set<string>();
    for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
      const m = /fadvise64\(\d+, (\d+), (\d+), POSIX_FADV_WILLNEED\)/.exec(line);
      if (!m) continue;
      const key = `${m[1]} ${m[2]}`;
      // a channel's own batch: 14 present pages from the batch's second page
      if (Number(m[2]) === 14 * 4096) continue;
      assert.ok(batches.has(key), `read ahead at ${key}, which is no batch's slot`);
      ahead.add(key);
    }
    // the premise: 10 batches, each after the first claimed is asked for ahead unless a channel
    // claimed it first; at least half are
    assert.equal(batches.size, 10);
    assert.ok(ahead.size >= 5, `only ${ahead.size} of 10 batches were read ahead`);
  });

  it('writes a file byte-identical to the single-threaded reference writer', async (t) => {
    const dir = tempDir(t);
    const blocks = makeBlocks(dir);
    const out = path.join(dir, 'parallel.fxr');
    const ref = path.join(dir, 'reference.fxr');
    await save({ output: out, blocks, channels: 4, batchBytes: 32 * 4096, fsync: false });
    referenceSave(ref, blocks);
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(ref)), 'files differ');
    // and the same allocation, within one file-system block per region boundary
    assert.ok(Math.abs(allocated(out) - allocated(ref)) <= 64 * 1024, `${allocated(out)} vs ${allocated(ref)}`);
  });

  it('reports statistics that match the file: bitmap popcount = present pages = allocated page bytes', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'm.ram');
    const kinds = makeBlock(src, 7, 3000);
    const out = path.join(dir, 's.fxr');
    const r = await save({ output: out, blocks: [{ name: 'm', path: src }], channels: 2 });
    const data = kinds.filter((k) => k === 'stamp' || k === 'random').length;
    assert.equal(r.presentPages, data);
    assert.equal(r.zeroPages, 3000 - data);
    const info = inspect(out);
    assert.equal(info.blocks[0]!.presentPages, data);
    const v = await verify({ snapshot: out, against: [{ name: 'm', path: src }], channels: 2 });
    assert.equal(v.ok, true);
    assert.equal(v.blocks[0]!.presentPages, data);
  });

  it('saves a sparse tmpfs source without allocating its holes', async (t) => {
    if (!requirePrereq(t, fs.existsSync('/dev/shm'), 'no /dev/shm')) return;
    const dir = tempDir(t, '/dev/shm');
    const src = path.join(dir, 'sparse.ram');
    const fd = fs.openSync(src, 'w');
    fs.ftruncateSync(fd, 64 << 20);
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 10 << 20);
    fs.closeSync(fd);
    const before = allocated(src);
    const r = await save({ output: path.join(dir, 's.fxr'), blocks: [{ name: 'sparse', path: src }], channels: 2 });
    assert.equal(r.presentPages, 1);
    assert.equal(allocated(src), before, 'the save faulted in holes of the source');
    assert.ok(r.bytesRead <= 4 << 20, `read ${r.bytesRead} bytes of a 64 MiB file with one data page`);
  });

  it('replaces an existing snapshot atomically and leaves no temp or lock file', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 100, { generation: 1 });
    const out = path.join(dir, 'snap.fxr');
    await save({ output: out, blocks: [{ name: 'a', path: src }], channels: 2 });
    const ino = fs.statSync(out).ino;
    makeBlock(src, 1, 100, { generation: 2 });
    await save({ output: out, blocks: [{ name: 'a', path: src }], channels: 2 });
    assert.notEqual(fs.statSync(out).ino, ino, 'a new file was renamed into place');
    assert.deepEqual(fs.readdirSync(dir).sort(), ['a.ram', 'snap.fxr']);
    const back = path.join(dir, 'back.ram');
    await load({ snapshot: out, blocks: [{ name: 'a', path: back }] });
    assert.equal(firstDifferentPage(src, back), -1);
  });

  it('does not leak file descriptors across many runs, failing or not', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 10);
    const out = path.join(dir, 's.fxr');
    await save({ output: out, blocks: [{ name: 'a', path: src }], channels: 2 });
    const before = openFds();
    for (let i = 0; i < 20; i++) {
      await assert.rejects(save({ output: out, blocks: [{ name: 'a', path: path.join(dir, 'missing') }] }), {
        code: 'ENOENT',
      });
      await assert.rejects(load({ snapshot: out, blocks: [{ name: 'nope', path: path.join(dir, 'x') }] }), {
        code: 'ERR_USAGE',
      });
      await save({ output: out, blocks: [{ name: 'a', path: src }], channels: 2, fsync: false });
    }
    assert.equal(openFds(), before);
  });
});
