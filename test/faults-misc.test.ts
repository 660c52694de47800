/**
 * Fault catalogue, the rest: hostile header values (#3), loads into non-empty targets (#17) and
 * targets of the wrong size (#18), a 64 KiB page size on a 4 KiB host (#20), an interrupted
 * in-place update (#21), a closed stdout (#22), huge counts and 0-length blocks (#23), and the
 * file descriptors of 200 failing runs through the library API.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { exitCodeOf, inspect, load, save, verify } from '../src/index';
import { runCli } from '../src/cli';
import { kEntryBytes, kHeaderBytes } from '../src/format';
import { native } from '../src/native';
import { fixedram, kBin } from './support/cli';
import { assertNoStack, denseBlock, reap, sha1, readShimReport, shimEnv, shimPath, Watched } from './support/faults';
import { fillFile, firstDifferentPage, makeBlock } from './support/stamp';
import { openFds, tempDir } from './support/tmp';
import { requirePrereq, requireSetup } from './support/prereq';

function reseal(buf: Buffer): void {
  const n = Math.min(buf.readUInt32LE(16), 65536);
  const end = Math.min(kHeaderBytes + n * kEntryBytes, buf.length);
  const head = Buffer.from(buf.subarray(0, end));
  head.fill(0, 56, 64);
  buf.writeBigUInt64LE(native().hash64(head), 56);
}

describe('faults: misc', () => {
  it('#3 hostile header values (magic, version, flags, page size 0 / not a power of two, counts ≥ 2^53, overlaps): exit 3, target untouched', async (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 40);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${a}`, '--no-fsync']).status, 0);
    const good = fs.readFileSync(snap);
    const e = kHeaderBytes;
    const edits: [string, (b: Buffer) => void][] = [
      ['magic', (b) => b.write('FIXEDRAX', 0, 'latin1')],
      ['version 2', (b) => b.writeUInt32LE(2, 8)],
      ['unknown flag', (b) => b.writeUInt32LE(0x81, 12)],
      ['block count 2^32-1', (b) => b.writeUInt32LE(0xffffffff, 16)],
      ['page size 0', (b) => b.writeUInt32LE(0, e + 4)],
      ['page size 5000', (b) => b.writeUInt32LE(5000, e + 4)],
      ['length not a multiple', (b) => b.writeBigUInt64LE(40n * 4096n + 1n, e + 8)],
      ['length 2^53', (b) => b.writeBigUInt64LE(2n ** 53n, e + 8)],
      ['length 2^64-1', (b) => b.writeBigUInt64LE(2n ** 64n - 1n, e + 8)],
      ['pages offset misaligned', (b) => b.writeBigUInt64LE(b.readBigUInt64LE(e + 32) + 4096n, e + 32)],
      ['pages offset over the metadata', (b) => b.writeBigUInt64LE(0n, e + 32)],
      ['pages offset past EOF', (b) => b.writeBigUInt64LE(2n ** 40n, e + 32)],
      ['bitmap offset in the header', (b) => b.writeBigUInt64LE(8n, e + 16)],
      ['present pages > pages', (b) => b.writeBigUInt64LE(41n, e + 40)],
      ['file size field', (b) => b.writeBigUInt64LE(BigInt(good.length) + 4096n, 40)],
    ];
    const target = path.join(dir, 'target.ram');
    fillFile(target, 40 * 4096, 0xaa);
    const before = sha1(target);
    {
      for (const [what, edit] of edits) {
        const buf = Buffer.from(good);
        edit(buf);
        reseal(buf);
        const bad = path.join(dir, 'bad.fxr');
        fs.writeFileSync(bad, buf);
        const verr = await verify({ snapshot: bad, channels: 1 }).then(
          () => undefined,
          (x: unknown) => x,
        );
        assert.equal(exitCodeOf(verr), 3, `${what}: verify gave ${String(verr)}`);
        assert.ok((verr as { name?: string }).name === 'FixedramError', `${what}: ${(verr as Error)?.stack}`);
        const lerr = await load({ snapshot: bad, blocks: [{ name: 'a', path: target }], channels: 1 }).then(
          () => undefined,
          (x: unknown) => x,
        );
        assert.equal(exitCodeOf(lerr), 3, `${what}: load gave ${String(lerr)}`);
        assert.equal(sha1(target), before, `${what}: the target was touched`);
      }
    }
  });

  it('#17 load into an existing non-empty target (0xAA), also where hole punching is unsupported: absent pages become zero', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 1300);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `mem0=${a}`, '--no-fsync']).status, 0);
    const target = path.join(dir, 't.ram');
    fillFile(target, 1300 * 4096, 0xaa);
    const l = fixedram(['load', snap, '-b', `mem0=${target}`, '-j', '2']);
    assert.equal(l.status, 0, l.stderr);
    assert.equal(firstDifferentPage(a, target), -1);
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    fillFile(target, 1300 * 4096, 0xaa);
    const report = path.join(dir, 'shim.txt');
    const l2 = fixedram(['load', snap, '-b', `mem0=${target}`, '-j', '2'], {
      env: shimEnv(so, { fallocate: 'eopnotsupp', funcs: 'none', path: dir, report }),
    });
    assert.equal(l2.status, 0, l2.stderr);
    assert.ok(
      readShimReport(report).fallocate > 0,
      `hole punching was never refused: ${JSON.stringify(readShimReport(report))}`,
    );
    assert.equal(firstDifferentPage(a, target), -1, 'explicit zero writes (no hole punching) left stale data');
  });

  it('#18 target size ≠ block length (smaller or larger, also with --dir): refused (exit 2), target unchanged', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 20);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${a}`]).status, 0);
    for (const size of [19 * 4096, 21 * 4096, 0, 20 * 4096 + 1]) {
      const target = path.join(dir, `t${size}.ram`);
      fillFile(target, size, 0x11);
      const before = sha1(target);
      const r = fixedram(['load', snap, '-b', `a=${target}`]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`is ${size} bytes, the block is ${20 * 4096} bytes`));
      assert.equal(sha1(target), before);
    }
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    fillFile(path.join(out, 'a'), 4096, 0x22);
    const r = fixedram(['load', snap, '--dir', out]);
    assert.equal(r.status, 2, r.stderr);
    assert.ok(fs.readFileSync(path.join(out, 'a')).equals(Buffer.alloc(4096, 0x22)));
  });

  it('#20 page size ≠ host page size: a synthetic 64 KiB-page snapshot saves, verifies and loads on a 4 KiB host', async (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 45, { pageSize: 65536 });
    const snap = path.join(dir, 'snap.fxr');
    const s = fixedram(['save', '-o', snap, '-b', `pc.ram=${a}`, '--page-size', '65536', '-j', '2']);
    assert.equal(s.status, 0, s.stderr);
    const b = inspect(snap).blocks[0]!;
    assert.equal(b.pageSize, 65536);
    assert.equal(b.pages, 45);
    assert.equal((await verify({ snapshot: snap, against: [{ name: 'pc.ram', path: a }] })).ok, true);
    const target = path.join(dir, 't.ram');
    fillFile(target, 45 * 65536, 0xaa);
    assert.equal(fixedram(['load', snap, '-b', `pc.ram=${target}`, '-j', '3']).status, 0);
    assert.equal(firstDifferentPage(a, target, 65536), -1);
    // a length that is not a multiple of 64 KiB is refused
    const odd = path.join(dir, 'odd.ram');
    makeBlock(odd, 2, 17);
    const r = fixedram(['save', '-o', path.join(dir, 'x.fxr'), '-b', `o=${odd}`, '--page-size', '65536']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /not a multiple of the page size 65536/);
  });

  it('#21 interrupted in-place update (SIGKILL mid save --update): detected (exit 3), re-running repairs it', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
    const src = path.join(dir, 'a.ram');
    denseBlock(src, 1, 4096, { generation: 1 });
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${src}`]).status, 0);
    denseBlock(src, 1, 4096, { generation: 2 }); // every page changed
    const w = new Watched(
      ['save', '--update', '-o', snap, '-b', `a=${src}`, '--progress', 'json', '-j', '1'],
      shimEnv(so, { delayUs: 100_000, path: dir }),
    );
    reap(t, w);
    assert.ok(await w.midway(), w.stderr);
    w.kill('SIGKILL');
    await w.exited;
    assert.equal(inspect(snap).state, 'updating');
    const v = fixedram(['verify', snap]);
    assert.equal(v.status, 3, v.stderr);
    assert.match(v.stderr, /interrupted in-place update; re-run `fixedram save --update`/);
    const l = fixedram(['load', snap, '-b', `a=${path.join(dir, 't.ram')}`]);
    assert.equal(l.status, 3);
    assert.ok(!fs.existsSync(path.join(dir, 't.ram')), 'load created a target from an interrupted update');
    const full = fixedram(['save', '--update', '-o', snap, '-b', `a=${src}`, '--json']);
    assert.equal(full.status, 0, full.stderr);
    assert.equal(JSON.parse(full.stdout).repaired, true);
    assert.equal((await verify({ snapshot: snap, against: [{ name: 'a', path: src }] })).ok, true);
  });

  it('#21 SIGINT during save --update: exit 130, the file says it is being updated, re-running repairs it', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
    const src = path.join(dir, 'a.ram');
    denseBlock(src, 1, 4096, { generation: 1 });
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${src}`]).status, 0);
    denseBlock(src, 1, 4096, { generation: 3 });
    const w = new Watched(
      ['save', '--update', '-o', snap, '-b', `a=${src}`, '--progress', 'json', '-j', '1'],
      shimEnv(so, { delayUs: 100_000, path: dir }),
    );
    reap(t, w);
    assert.ok(await w.midway(), w.stderr);
    w.kill('SIGINT');
    const e = await w.exited;
    assert.equal(e.status, 130, e.stderr);
    assert.match(e.stderr, /left marked as being updated; re-run `fixedram save --update` to repair it/);
    assert.equal(fixedram(['verify', snap]).status, 3);
    assert.equal(fixedram(['save', '--update', '-o', snap, '-b', `a=${src}`]).status, 0);
    assert.equal((await verify({ snapshot: snap, against: [{ name: 'a', path: src }] })).ok, true);
  });

  it("#22 EPIPE: stdout closed early (--json | head -c1, | true): no stack trace, the command's own status", (t) => {
    const dir = tempDir(t);
    // many blocks make inspect's JSON far bigger than a pipe buffer (64 KiB)
    const blocks: string[] = [];
    for (let i = 0; i < 400; i++) {
      const p = path.join(dir, `b${i}.ram`);
      if (i === 0) makeBlock(p, 1, 2);
      else fs.linkSync(path.join(dir, 'b0.ram'), p);
      blocks.push('-b', `block-with-a-long-name-${'n'.repeat(150)}-${i}=${p}`);
    }
    const snap = path.join(dir, 'snap.fxr');
    const s = fixedram(['save', '-o', snap, ...blocks, '--no-fsync']);
    assert.equal(s.status, 0, s.stderr);
    const node = JSON.stringify(process.execPath);
    const bin = JSON.stringify(kBin);
    for (const [pipeline, want] of [
      [`${node} ${bin} inspect ${snap} --json | head -c1`, 0],
      [`${node} ${bin} inspect ${snap} | head -c1`, 0],
      [`${node} ${bin} verify ${snap} --json | true`, 0],
      [`${node} ${bin} inspect ${path.join(dir, 'b0.ram')} --json | true`, 3],
    ] as [string, number][]) {
      const r = spawnSync('bash', ['-c', `${pipeline}; echo "status=\${PIPESTATUS[0]}" >&2`], { encoding: 'utf8' });
      assertNoStack(r.stderr);
      assert.doesNotMatch(r.stderr, /EPIPE|Unhandled|Error:/, pipeline);
      const status = Number(/status=(\d+)/.exec(r.stderr)?.[1]);
      assert.equal(status, want, `${pipeline}: ${r.stderr}`);
    }
    const readme = fs.readFileSync(path.resolve(__dirname, '..', '..', 'README.md'), 'utf8');
    assert.match(
      readme,
      /EPIPE|closed (stdout|pipe)|head -c/i,
      'README does not document the exit status when stdout is closed early',
    );
  });

  it('#23 huge counts: 2000 blocks under a 1024-descriptor limit, 0-length blocks, a block past 4 GiB offsets', async (t) => {
    const dir = tempDir(t);
    // 0-length blocks are legal: save, verify, load (creates an empty target)
    const empty = path.join(dir, 'empty.ram');
    fs.writeFileSync(empty, '');
    const one = path.join(dir, 'one.ram');
    makeBlock(one, 1, 1, { kind: () => 'stamp' });
    const s0 = path.join(dir, 's0.fxr');
    assert.equal(fixedram(['save', '-o', s0, '-b', `e=${empty}`, '-b', `o=${one}`]).status, 0);
    assert.equal(fixedram(['verify', s0]).status, 0);
    const out0 = path.join(dir, 'out0');
    assert.equal(fixedram(['load', s0, '--dir', out0]).status, 0);
    assert.equal(fs.statSync(path.join(out0, 'e')).size, 0);

    // 64-bit offsets: a 5 GiB all-hole block, then a data block placed beyond 2^32
    const bigHole = path.join(dir, 'hole.ram');
    fs.writeFileSync(bigHole, '');
    fs.truncateSync(bigHole, 5 * 2 ** 30);
    const s1 = path.join(dir, 's1.fxr');
    assert.equal(fixedram(['save', '-o', s1, '-b', `hole=${bigHole}`, '-b', `o=${one}`, '--no-fsync']).status, 0);
    const ob = inspect(s1).blocks[1]!;
    assert.ok(ob.pagesOffset > 2 ** 32);
    assert.equal((await verify({ snapshot: s1, against: [{ name: 'o', path: one }] })).ok, true);
    const t1 = path.join(dir, 't1.ram');
    assert.equal(fixedram(['load', s1, '-b', `o=${t1}`]).status, 0);
    assert.equal(firstDifferentPage(one, t1), -1);

    // thousands of blocks with a bounded descriptor budget
    const many: string[] = [];
    for (let i = 0; i < 2000; i++) {
      const p = path.join(dir, `m${i}.ram`);
      fs.linkSync(one, p);
      many.push('-b', `m${i}=${p}`);
    }
    const s2 = path.join(dir, 's2.fxr');
    const args = [`--nofile=1024:1024`, process.execPath, kBin, 'save', '-o', s2, ...many, '--no-fsync', '-j', '2'];
    const r = spawnSync('prlimit', args, { encoding: 'utf8', maxBuffer: 16 << 20 });
    if (!requirePrereq(t, !r.error, `prlimit: ${r.error?.message}`)) return;
    assertNoStack(r.stderr);
    assert.equal(r.status, 0, `2000 blocks with 1024 descriptors: ${r.stderr.slice(0, 500)}`);
    assert.equal(inspect(s2).blocks.length, 2000);
    const out2 = path.join(dir, 'out2');
    const l = spawnSync(
      'prlimit',
      ['--nofile=1024:1024', process.execPath, kBin, 'load', s2, '--dir', out2, '-j', '2'],
      { encoding: 'utf8' },
    );
    assert.equal(l.status, 0, l.stderr.slice(0, 500));
  });

  it('every exit path closes its descriptors: 200 failing runs through the library API do not grow the fd count', async (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 40);
    const snap = path.join(dir, 'snap.fxr');
    await save({ output: snap, blocks: [{ name: 'a', path: a }], channels: 1, fsync: false });
    const flipped = path.join(dir, 'flipped.fxr');
    const buf = fs.readFileSync(snap);
    const pagesOffset = inspect(snap).blocks[0]!.pagesOffset;
    buf[pagesOffset + 100]! ^= 1;
    fs.writeFileSync(flipped, buf);
    const truncated = path.join(dir, 'truncated.fxr');
    fs.writeFileSync(truncated, buf.subarray(0, buf.length - 1));
    const wrong = path.join(dir, 'wrong.ram');
    fillFile(wrong, 4096, 1);
    const sub = path.join(dir, 'sub');
    fs.mkdirSync(sub);
    const sink = { write: () => true } as unknown as NodeJS.WriteStream;
    const failures: (() => Promise<unknown>)[] = [
      () =>
        save({
          output: path.join(dir, 'x.fxr'),
          blocks: [{ name: 'a', path: path.join(dir, 'missing') }],
          channels: 1,
        }),
      () => save({ output: path.join(dir, 'x.fxr'), blocks: [{ name: 'a', path: sub }], channels: 1 }),
      () => save({ output: a, blocks: [{ name: 'a', path: a }], channels: 1 }),
      () => save({ output: path.join(dir, 'nodir', 'x.fxr'), blocks: [{ name: 'a', path: a }], channels: 1 }),
      () => load({ snapshot: truncated, blocks: [{ name: 'a', path: path.join(dir, 'ta') }], channels: 1 }),
      () => load({ snapshot: snap, blocks: [{ name: 'a', path: wrong }], channels: 1 }),
      () =>
        load({
          snapshot: flipped,
          blocks: [{ name: 'a', path: path.join(dir, 'tf') }],
          channels: 2,
          batchBytes: 4096 * 4,
        }),
      () => verify({ snapshot: truncated, channels: 1 }),
      () => verify({ snapshot: snap, against: [{ name: 'a', path: wrong }], channels: 2 }),
      () =>
        runCli(['inspect', a, '--json'], { stdout: sink, stderr: sink, setExitCode: () => undefined }).then(() => {
          throw new Error('x');
        }),
    ];
    // warm up: load the addon, the worker code and every module once
    for (const f of failures) await f().catch(() => undefined);
    fs.rmSync(path.join(dir, 'tf'), { force: true });
    const before = openFds();
    let failed = 0;
    for (let i = 0; i < 200; i++) {
      const r = await failures[i % failures.length]!().then(
        () => 'ok',
        () => 'failed',
      );
      if (r === 'failed') failed++;
      fs.rmSync(path.join(dir, 'tf'), { force: true });
    }
    assert.ok(failed >= 180, `only ${failed} of 200 runs failed`);
    assert.equal(openFds(), before, 'file descriptors leaked');
  });
});
