/**
 * Fault catalogue, atomicity: nothing half-written is ever taken for a snapshot. A truncated or
 * bit-flipped file is refused before any target is touched (#1, #2), and a save killed with
 * SIGKILL at any point leaves the previous complete snapshot or the new complete one (#7).
 * The long version of #7 (100 kills) is scripts/kill-loop.sh.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { exitCodeOf, inspect, load, verify } from '../src/index';
import { fixedram } from './support/cli';
import { denseBlock, leftovers, reap, sha1, shimPath, slowEnv, Watched } from './support/faults';
import { fillFile, makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';
import { requireSetup } from './support/prereq';
import { staleTempProblem } from '../src/cleanup';

describe('faults: atomicity', () => {
  it('#1 truncated snapshot (header, bitmap, checksum table, page region, last byte): exit 3 before any target is touched', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 300);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${src}`, '--no-fsync']).status, 0);
    const info = inspect(snap);
    const b = info.blocks[0]!;
    const size = fs.statSync(snap).size;
    const cuts: [string, number][] = [
      ['inside the header', 40],
      ['inside the block table', 64 + 100],
      ['inside the bitmap', b.bitmapOffset + 4],
      ['inside the checksum table', b.bitmapOffset + 48 + 100],
      ['inside the page region', b.pagesOffset + 10 * 4096 + 7],
      ['the last byte', size - 1],
    ];
    const target = path.join(dir, 'target.ram');
    fillFile(target, 300 * 4096, 0xaa);
    const before = sha1(target);
    for (const [where, len] of cuts) {
      const cut = path.join(dir, 'cut.fxr');
      fs.copyFileSync(snap, cut);
      fs.truncateSync(cut, len);
      // the first cut through the real CLI (exit status and message), the others in process
      if (where === cuts[0]![0] || where === 'the last byte') {
        const v = fixedram(['verify', cut]);
        assert.equal(v.status, 3, `verify, cut ${where}: ${v.stderr}`);
        assert.match(v.stderr, /truncat|too short|end of file/i, where);
      }
      const verr = await verify({ snapshot: cut, channels: 1 }).then(
        () => undefined,
        (err: unknown) => err,
      );
      assert.equal(exitCodeOf(verr), 3, `verify, cut ${where}: ${String(verr)}`);
      if (len >= 64) {
        assert.match(
          (verr as Error).message,
          new RegExp(`\\b${len}\\b|0x${len.toString(16)}\\b`),
          `${where}: the message names the file size: ${(verr as Error).message}`,
        );
      }
      const lerr = await load({ snapshot: cut, blocks: [{ name: 'a', path: target }], channels: 1 }).then(
        () => undefined,
        (err: unknown) => err,
      );
      assert.equal(exitCodeOf(lerr), 3, `load, cut ${where}: ${String(lerr)}`);
      assert.equal(sha1(target), before, `load of a file cut ${where} touched the target`);
      assert.throws(
        () => inspect(cut),
        (err: unknown) => exitCodeOf(err) === 3,
        where,
      );
    }
  });

  it('#2 a bit flipped in page data: verify exits 1 naming block and page; load refuses unless --no-verify', (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 64, { kind: () => 'stamp' });
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `mem0=${src}`, '--no-fsync']).status, 0);
    const b = inspect(snap).blocks[0]!;
    const fd = fs.openSync(snap, 'r+');
    const off = b.pagesOffset + 17 * 4096 + 1234;
    const byte = Buffer.alloc(1);
    fs.readSync(fd, byte, 0, 1, off);
    byte[0]! ^= 0x10;
    fs.writeSync(fd, byte, 0, 1, off);
    fs.closeSync(fd);

    const v = fixedram(['verify', snap, '--json']);
    assert.equal(v.status, 1, v.stderr);
    const r = JSON.parse(v.stdout);
    assert.equal(r.ok, false);
    assert.equal(r.failureCount, 1);
    assert.equal(r.failures[0].block, 'mem0');
    assert.equal(r.failures[0].page, 17);
    assert.equal(r.failures[0].kind, 'checksum');

    const target = path.join(dir, 't.ram');
    const l = fixedram(['load', snap, '-b', `mem0=${target}`, '-j', '1']);
    assert.equal(l.status, 1, l.stderr);
    assert.match(l.stderr, /block 'mem0' page 17: checksum mismatch/);
    const nv = fixedram(['load', snap, '-b', `mem0=${path.join(dir, 't2.ram')}`, '--no-verify']);
    assert.equal(nv.status, 0, nv.stderr);
  });

  it('#7 SIGKILL during save at 20 random points: the output is the old complete snapshot or the new one, and verifies', async (t) => {
    const so = shimPath();
    const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
    // 16 MiB of data pages = 4 batches of 4 MiB; the shim (when it builds) slows every pwritev/preadv
    // by 50 ms, so the page phase of a one-channel save lasts about 400 ms, with progress every 100 ms.
    const pages = 4096;
    const old = path.join(dir, 'old.ram');
    const cur = path.join(dir, 'new.ram');
    denseBlock(old, 1, pages, { generation: 1 });
    denseBlock(cur, 1, pages, { generation: 2 });
    const out = path.join(dir, 'snap.fxr');
    const ref = path.join(dir, 'ref.fxr');
    assert.equal(fixedram(['save', '-o', out, '-b', `mem=${old}`, '--no-fsync']).status, 0);
    assert.equal(fixedram(['save', '-o', ref, '-b', `mem=${cur}`, '--no-fsync']).status, 0);
    const oldHash = sha1(out);
    const newHash = sha1(ref);
    fs.unlinkSync(ref);
    assert.notEqual(oldHash, newHash);

    if (!requireSetup(t, so)) return;
    const env = slowEnv(t, so, { delayUs: 50_000, path: dir });
    const seen = { old: 0, new: 0 };
    for (let k = 0; k < 20; k++) {
      // a random point: a progress fraction in [0, 1.2) plus up to 60 ms after the event; a fraction
      // ≥ 1 waits for the last page and then up to 250 ms (the commit: metadata, fsync, rename)
      const fraction = Math.random() * 1.2;
      const extra = Math.floor(Math.random() * (fraction >= 1 ? 250 : 60));
      const w = new Watched(['save', '-o', out, '-b', `mem=${cur}`, '--progress', 'json', '-j', '1'], env);
      reap(t, w);
      await w.waitFor((e) => e.bytesDone >= Math.min(fraction, 1) * e.bytesTotal);
      if (extra) await new Promise((r) => setTimeout(r, extra));
      w.kill('SIGKILL');
      const e = await w.exited;
      const label = `kill ${k} at ${(fraction * 100).toFixed(0)}% + ${extra} ms (${e.signal ?? `exit ${e.status}`})`;
      const h = sha1(out);
      assert.ok(h === oldHash || h === newHash, `${label}: '${out}' is neither the old nor the new snapshot`);
      const v = await verify({ snapshot: out, channels: 2 });
      assert.equal(v.ok, true, label);
      if (h === oldHash) seen.old++;
      else {
        seen.new++;
        // start the next round from the old snapshot again
        assert.equal(fixedram(['save', '-o', out, '-b', `mem=${old}`, '--no-fsync']).status, 0);
      }
      // a killed run cannot clean up; its leftovers must not stop the next save (stale lock)
      for (const f of leftovers(dir)) fs.rmSync(path.join(dir, f), { force: true });
    }
    t.diagnostic(`20 kills: ${seen.old} left the old snapshot, ${seen.new} the new one`);
    assert.ok(seen.old > 0, 'no kill landed before the rename: the test did not exercise a partial save');
  });

  it('#7 a save after a killed save: the stale lock file and temp file do not block it', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    denseBlock(src, 1, 4096);
    const out = path.join(dir, 'snap.fxr');
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const env = slowEnv(t, so, { delayUs: 50_000 });
    const w = new Watched(['save', '-o', out, '-b', `a=${src}`, '--progress', 'json', '-j', '1'], env);
    reap(t, w);
    await w.midway();
    w.kill('SIGKILL');
    await w.exited;
    assert.ok(!fs.existsSync(out), 'the killed save left a file under the final name');
    const stale = leftovers(dir);
    // the premise: the killed save really left its temp file and its lock file behind
    assert.equal(stale.filter((f) => f.endsWith('.tmp')).length, 1, `no stale temp file: ${stale.join(', ')}`);
    assert.deepEqual(
      stale.filter((f) => f.endsWith('.lock')),
      ['.snap.fxr.lock'],
      `no stale lock file: ${stale.join(', ')}`,
    );
    // … and the temp file is provably ours and incomplete (magic, no COMPLETE, dead pid)
    assert.equal(
      staleTempProblem(
        out,
        stale.find((f) => f.endsWith('.tmp'))!,
      ),
      undefined,
    );
    const r = fixedram(['save', '-o', out, '-b', `a=${src}`, '--no-fsync']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal((await verify({ snapshot: out, against: [{ name: 'a', path: src }] })).ok, true);
    assert.deepEqual(leftovers(dir), [], 'the next save did not clean up the stale temp and lock files');
  });
});
