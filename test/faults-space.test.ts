/**
 * Fault catalogue, space: a full file system (#4: ENOSPC on a small tmpfs mounted by the test,
 * EFBIG under `prlimit --fsize`) fails the save with exit 4 naming the errno, removes the temp
 * file and keeps an older snapshot under the same name; sparse tmpfs sources keep their holes (#16).
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { save, verify } from '../src/index';
import { fixedram, kBin } from './support/cli';
import { assertNoStack, denseBlock, leftovers, mountTmpfs, sha1 } from './support/faults';
import { makeBlock } from './support/stamp';
import { allocated, tempDir } from './support/tmp';
import { requirePrereq, requireSetup } from './support/prereq';

describe('faults: space', () => {
  it('#4 ENOSPC mid-save: exit 4, no temp file, old snapshot intact', (t) => {
    const mnt = mountTmpfs(t, '8m');
    if (!requireSetup(t, mnt)) return;
    const dir = tempDir(t);
    const small = path.join(dir, 'small.ram');
    const big = path.join(dir, 'big.ram');
    denseBlock(small, 1, 256); // 1 MiB: the old snapshot fits
    denseBlock(big, 2, 4096); // 16 MiB of data pages: the new one cannot
    const out = path.join(mnt, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', out, '-b', `mem=${small}`]).status, 0);
    const oldHash = sha1(out);

    const r = fixedram(['save', '-o', out, '-b', `mem=${big}`, '-j', '2', '--json']);
    assert.equal(r.status, 4, r.stderr);
    assert.match(r.stderr, /ENOSPC: no space left on device/);
    assertNoStack(r.stderr);
    assert.equal(JSON.parse(r.stdout).error.code, 'ENOSPC');
    assert.deepEqual(leftovers(mnt), []);
    assert.deepEqual(fs.readdirSync(mnt), ['snap.fxr']);
    assert.equal(sha1(out), oldHash);
    // the space is given back: the same small save still works
    assert.equal(fixedram(['save', '-o', path.join(mnt, 'again.fxr'), '-b', `mem=${small}`]).status, 0);
  });

  it('#4 ENOSPC while writing the metadata (after every page fit): exit 4, no temp file', (t) => {
    // 7 MiB of pages fit in 8 MiB; the 1 MiB-aligned layout, bitmap and a 4 MiB checksum table of a
    // 2 GiB block do not: the failure comes late, from the main thread's metadata writes. (Runs of the
    // table that are all zero stay holes, so a page every 512 pages makes every 4 KiB of it data.)
    const mnt = mountTmpfs(t, '8m');
    if (!requireSetup(t, mnt)) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'sparse.ram');
    const fd = fs.openSync(src, 'w');
    fs.ftruncateSync(fd, 2 ** 31);
    fs.writeSync(fd, Buffer.alloc(3 << 20, 0x5a), 0, 3 << 20, 0);
    for (let page = 1024; page < 2 ** 31 / 4096; page += 512)
      fs.writeSync(fd, Buffer.alloc(4096, 0x5b), 0, 4096, page * 4096);
    fs.closeSync(fd);
    const out = path.join(mnt, 'snap.fxr');
    const r = fixedram(['save', '-o', out, '-b', `mem=${src}`, '-j', '2']);
    assert.equal(r.status, 4, r.stderr);
    assert.match(r.stderr, /ENOSPC/);
    assertNoStack(r.stderr);
    assert.deepEqual(fs.readdirSync(mnt), []);
  });

  it('#4 EFBIG under prlimit --fsize: exit 4, no temp file, old snapshot intact', (t) => {
    const dir = tempDir(t);
    const small = path.join(dir, 'small.ram');
    const big = path.join(dir, 'big.ram');
    denseBlock(small, 1, 16);
    denseBlock(big, 2, 1024); // 4 MiB
    const out = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', out, '-b', `mem=${small}`]).status, 0);
    const oldHash = sha1(out);
    const limit = 3 << 20; // the old snapshot (1 MiB + 64 KiB) fits, the new one (5 MiB) does not
    const r = spawnSync(
      'prlimit',
      [`--fsize=${limit}`, process.execPath, kBin, 'save', '-o', out, '-b', `mem=${big}`],
      {
        encoding: 'utf8',
      },
    );
    if (!requirePrereq(t, !r.error, `prlimit is not available: ${r.error?.message}`)) return;
    assert.equal(r.status, 4, r.stderr);
    assert.match(r.stderr, /EFBIG: file too large/);
    assertNoStack(r.stderr);
    assert.deepEqual(leftovers(dir), []);
    assert.equal(sha1(out), oldHash);
  });

  it('#16 tmpfs source with holes: st_blocks of the source unchanged by save; holes stay holes in the snapshot', async (t) => {
    const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
    const src = path.join(dir, 'sparse.ram');
    // 64 MiB, of which only pages 0-9 and every 1000th page hold data
    makeBlock(src, 1, 16384, { kind: (i) => (i < 10 || i % 1000 === 0 ? 'stamp' : 'hole') });
    const before = allocated(src);
    assert.ok(before < 1 << 20, `the source is not sparse (${before} bytes allocated)`);
    const out = path.join(dir, 'snap.fxr');
    const r = await save({ output: out, blocks: [{ name: 'a', path: src }], channels: 2 });
    assert.equal(allocated(src), before, 'reading the source allocated its holes');
    assert.equal(r.presentPages, 10 + 16);
    assert.ok(r.bytesRead <= 64 * 4 * 4096 * 2, `read ${r.bytesRead} bytes of a mostly-hole source`);
    assert.ok(allocated(out) <= (1 << 20) + 26 * 4096 + 256 * 1024, `snapshot allocates ${allocated(out)} bytes`);
    assert.equal((await verify({ snapshot: out, against: [{ name: 'a', path: src }] })).ok, true);
    assert.equal(allocated(src), before, 'verify --against allocated the source holes');
  });
});
