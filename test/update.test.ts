/**
 * `save --update`: in-place incremental re-save. Checked against the sources byte for byte, with the
 * file's allocation, with SIGKILL at random points (the interrupted state must be reported and a
 * re-run must repair it), and with mismatched layouts (refused, file untouched).
 */
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { load, save, verify } from '../src/index';
import { openSnapshot } from '../src/snapshot';
import { update } from '../src/update';
import { prestartChannels } from '../src/channels/pool';
import { earlyWorkers } from '../src/cli/early';
import { spawnSync } from 'node:child_process';
import { fixedram, fixedramChild, kBin } from './support/cli';
import { firstDifferentPage, makeBlock, stampPage } from './support/stamp';
import { denseBlock, readShimReport, reap, shimEnv, shimPath, Watched } from './support/faults';
import { requireSetup, requireStrace } from './support/prereq';
import { allocated, tempDir } from './support/tmp';
import * as os from 'node:os';

const kPage = 4096;

/** Changes ~5% of the pages: some data → other data, some data → zero, some zero/hole → data. */
function mutate(file: string, blockId: number, seed: number): { changed: number; toZero: number; fromZero: number } {
  const fd = fs.openSync(file, 'r+');
  const pages = fs.fstatSync(fd).size / kPage;
  const page = Buffer.alloc(kPage);
  const zero = Buffer.alloc(kPage);
  let changed = 0;
  let toZero = 0;
  let fromZero = 0;
  try {
    for (let i = 0; i < pages; i++) {
      const h = crypto.createHash('sha256').update(`${seed}:${i}`).digest().readUInt32LE(0) % 1000;
      if (h >= 50) continue; // 5%
      fs.readSync(fd, page, 0, kPage, i * kPage);
      const wasZero = page.equals(zero);
      if (!wasZero && h < 10) {
        fs.writeSync(fd, zero, 0, kPage, i * kPage);
        toZero++;
      } else {
        stampPage(page, blockId, i, 1000 + seed);
        fs.writeSync(fd, page, 0, kPage, i * kPage);
        if (wasZero) fromZero++;
      }
      changed++;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { changed, toZero, fromZero };
}

function setup(t: Parameters<typeof tempDir>[0], pages = [3000, 1500], base?: string) {
  const dir = tempDir(t, base);
  const blocks = pages.map((n, i) => {
    const p = path.join(dir, `b${i}.ram`);
    makeBlock(p, i + 1, n);
    return { name: `b${i}`, path: p };
  });
  return { dir, blocks, out: path.join(dir, 'snap.fxr') };
}

async function assertLoadsAs(out: string, blocks: { name: string; path: string }[], dir: string): Promise<void> {
  const back = path.join(dir, `back-${crypto.randomBytes(3).toString('hex')}`);
  await load({ snapshot: out, dir: back, channels: 2 });
  for (const b of blocks) assert.equal(firstDifferentPage(b.path, path.join(back, b.name)), -1, `block ${b.name}`);
}

/** The truncation tests' start: a dense 64 MiB block in tmpfs (16 batches of 4 MiB) and its snapshot. */
const kPages = 16384;
async function savedDense(t: Parameters<typeof tempDir>[0]): Promise<{ src: string; out: string }> {
  const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
  const src = path.join(dir, 'src.ram');
  denseBlock(src, 1, kPages);
  const out = path.join(dir, 'snap.fxr');
  await save({ output: out, blocks: [{ name: 'b0', path: src }], channels: 1, fsync: false });
  return { src, out };
}

describe('save --update', () => {
  it('writes only the changed pages, punches new zero pages, and loads as the new sources', async (t) => {
    const { dir, blocks, out } = setup(t);
    const full = await save({ output: out, blocks, channels: 2, batchBytes: 64 * kPage });
    const ino = fs.statSync(out).ino;
    const m = blocks.map((b, i) => mutate(b.path, i + 1, 1));
    const changed = m.reduce((s, x) => s + x.changed, 0);
    assert.ok(
      m.every((x) => x.toZero > 0 && x.fromZero > 0),
      'the mutation covers data→zero and zero→data',
    );

    const r = await update({ output: out, blocks, channels: 2, batchBytes: 64 * kPage });
    assert.equal(fs.statSync(out).ino, ino, 'updated in place');
    assert.equal(r.pagesChecked, 4500);
    assert.equal(r.pagesWritten + r.pagesPunched, changed);
    assert.equal(
      r.pagesPunched,
      m.reduce((s, x) => s + x.toZero, 0),
    );
    assert.equal(r.pagesUnchanged, 4500 - changed);
    assert.ok(r.bytesWritten < full.bytesWritten * 0.15, `${r.bytesWritten} vs full ${full.bytesWritten}`);

    const v = await verify({ snapshot: out, against: blocks, channels: 2 });
    assert.equal(v.ok, true, JSON.stringify(v.failures.slice(0, 3)));
    await assertLoadsAs(out, blocks, dir);
    // the allocation follows the new present pages (punched pages are holes again)
    const present = r.presentPages * kPage;
    const alloc = allocated(out);
    assert.ok(alloc >= present && alloc <= present + 256 * 1024, `allocated ${alloc}, present ${present}`);

    // equal to a fresh save of the same sources
    const fresh = path.join(dir, 'fresh.fxr');
    await save({ output: fresh, blocks, channels: 2, fsync: false });
    assert.ok(
      fs.readFileSync(fresh).equals(fs.readFileSync(out)),
      'an updated snapshot is byte-identical to a fresh save',
    );
  });

  it('an update with no changes writes no pages', async (t) => {
    const { blocks, out } = setup(t, [700]);
    await save({ output: out, blocks, channels: 1 });
    const before = fs.readFileSync(out);
    const r = await update({ output: out, blocks, channels: 2 });
    assert.equal(r.pagesWritten, 0);
    assert.equal(r.pagesPunched, 0);
    assert.ok(fs.readFileSync(out).equals(before));
  });

  it('an update with no changes writes only the header, twice (counted with strace); one with changes writes pages', async (t) => {
    if (!requireStrace(t)) return;
    const { blocks, out } = setup(t, [2000, 700]);
    await save({ output: out, blocks, channels: 2 });
    const before = fs.readFileSync(out);
    const traced = (name: string): { writes: string[]; stderr: string } => {
      const log = path.join(os.tmpdir(), `fixedram-strace-${process.pid}-${name}.log`);
      t.after(() => fs.rmSync(log, { force: true }));
      const r = spawnSync(
        'strace',
        [
          '-f',
          '-qq',
          '-y',
          '-o',
          log,
          '-e',
          'trace=write,pwrite64,writev,pwritev,pwritev2,fallocate,ftruncate,copy_file_range,sendfile,splice',
          process.execPath,
          kBin,
          'save',
          '--update',
          '-o',
          out,
          ...blocks.flatMap((b) => ['-b', `${b.name}=${b.path}`]),
          '-j',
          '2',
          '--progress',
          'none',
          '--log-level',
          'debug',
        ],
        { encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      // a call another thread interrupted is split over an "<unfinished ...>" and a "resumed>" line;
      // strace pads the pid to five columns (two spaces after a pid below 10000)
      const open = new Map<string, string>();
      const calls: string[] = [];
      for (const l of fs.readFileSync(log, 'utf8').split('\n')) {
        const u = /^(\d+)\s+(.*) <unfinished \.\.\.>$/.exec(l);
        const r = /^(\d+)\s+<\.\.\. \w+ resumed>(.*)$/.exec(l);
        if (u) open.set(u[1]!, `${u[1]} ${u[2]}`);
        else if (r && open.has(r[1]!)) {
          calls.push(open.get(r[1]!)! + r[2]!);
          open.delete(r[1]!);
        } else calls.push(l);
      }
      const writes = calls.filter((l) => l.includes(`<${fs.realpathSync(out)}>`));
      return { writes, stderr: r.stderr };
    };

    const same = traced('same');
    assert.equal(same.writes.length, 2, same.writes.join('\n'));
    for (const w of same.writes)
      assert.match(w, /pwrite64\(\d+<[^>]+>, .*, \d+, 0\)\s+= \d+$/, 'a header write at offset 0');
    assert.ok(fs.readFileSync(out).equals(before), 'nothing changed');
    // the phase breakdown is in the debug log
    const line = same.stderr.split('\n').find((l) => l.includes('update: phases'));
    assert.ok(line, same.stderr);
    const phases = (JSON.parse(line) as { phases: Record<string, number> }).phases;
    for (const k of [
      'startup',
      'open',
      'tablesRead',
      'mark',
      'scan',
      'pages',
      'tablesWrite',
      'syncData',
      'commit',
      'chRead',
      'chHash',
      'chWrite',
      'chPunch',
    ]) {
      assert.equal(typeof phases[k], 'number', `phase ${k}`);
    }

    // the premise: strace sees the page and table writes of an update that has work
    blocks.forEach((b, i) => mutate(b.path, i + 1, 7));
    const changed = traced('changed');
    assert.ok(changed.writes.filter((w) => /pwritev\(/.test(w)).length > 10, changed.writes.slice(0, 5).join('\n'));
    assert.ok(changed.writes.length > 12);
    const v = await verify({ snapshot: out, against: blocks, channels: 2 });
    assert.equal(v.ok, true);
  });

  it('a corrupt checksum table is refused after the channels were started: nothing modified, the CLI exits 3 at once', async (t) => {
    const { blocks, out } = setup(t, [3000]);
    await save({ output: out, blocks, channels: 1 });
    const snap = openSnapshot(out, false);
    const at = snap.header.blocks[0]!.checksumsOffset + 8 * 5;
    fs.closeSync(snap.fd);
    const fd = fs.openSync(out, 'r+');
    fs.writeSync(fd, Buffer.from([0xff]), 0, 1, at);
    fs.closeSync(fd);
    const before = fs.readFileSync(out);
    await assert.rejects(update({ output: out, blocks, channels: 2, batchBytes: 64 * kPage }), {
      code: 'ERR_SNAPSHOT_INVALID',
    });
    assert.ok(fs.readFileSync(out).equals(before));
    const started = Date.now();
    const cli = fixedram(['save', '--update', '-o', out, '-b', `b0=${blocks[0]!.path}`, '-j', '2']);
    assert.equal(cli.status, 3, cli.stderr);
    assert.match(cli.stderr, /corrupt metadata/);
    assert.ok(Date.now() - started < 30_000, 'the prestarted channels do not keep the process alive');
    assert.ok(fs.readFileSync(out).equals(before));
  });

  it('a source truncated while the update hashes it through a mapping: an error naming the short read, no SIGBUS; a re-run repairs', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { src, out } = await savedDense(t);
    denseBlock(src, 1, kPages, { generation: 2 }); // every page changed: each batch writes one run
    // every write of the snapshot sleeps, so the truncation lands while batches remain
    const w = new Watched(
      ['save', '--update', '-o', out, '-b', `b0=${src}`, '-j', '1', '--progress', 'json', '--no-fsync'],
      shimEnv(so, { funcs: 'pwritev', delayUs: 200_000, path: out }),
    );
    reap(t, w);
    assert.ok(await w.midway(), 'the update started');
    fs.truncateSync(src, 100 * kPage);
    const e = await w.exited;
    assert.equal(e.signal, null, `killed by ${e.signal}: ${e.stderr}`);
    assert.equal(e.status, 4, e.stderr);
    // the premise: the fault came from reading the mapping (a page past the new end), not a read call
    assert.match(e.stderr, /unexpected end of file at offset 0x[0-9a-f]+, mmap read/);
    const v = fixedram(['verify', out]);
    assert.equal(v.status, 3, 'left marked as an interrupted update');
    denseBlock(src, 1, kPages, { generation: 3 });
    const r = await update({ output: out, blocks: [{ name: 'b0', path: src }], channels: 2 });
    assert.equal(r.repaired, true);
    assert.equal((await verify({ snapshot: out, against: [{ name: 'b0', path: src }], channels: 2 })).ok, true);
  });

  it("the extent walk of a source fails half-way while the channels run: the walk's error (EIO, lseek) is the update's, nothing hangs, a re-run repairs", async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
    const src = path.join(dir, 'holey.ram');
    // 64 MiB, runs of 8 data pages and 8 holes: about 2000 extents, so the walk takes a few
    // thousand SEEK_DATA/SEEK_HOLE calls and its 300th lands well inside it
    const holey = (gen: number): void => {
      makeBlock(src, 1, kPages, { generation: gen, kind: (i) => (Math.floor(i / 8) % 2 === 1 ? 'hole' : 'stamp') });
    };
    holey(1);
    const out = path.join(dir, 'snap.fxr');
    await save({ output: out, blocks: [{ name: 'b0', path: src }], channels: 1, fsync: false });
    holey(2);
    const report = path.join(dir, 'shim.report');
    const w = new Watched(
      ['save', '--update', '-o', out, '-b', `b0=${src}`, '-j', '2', '--no-fsync'],
      shimEnv(so, { lseek: 'eio:300', path: src, report }),
      { timeoutMs: 60_000 },
    );
    reap(t, w);
    const e = await w.exited;
    assert.equal(e.signal, null, `killed by ${e.signal}: ${e.stderr}`);
    assert.equal(e.status, 4, e.stderr);
    assert.match(e.stderr, /EIO/);
    assert.match(e.stderr, /lseek/);
    assert.ok(fs.existsSync(report), 'the shim ran in the update');
    // the snapshot was marked before the walk failed: readers refuse it until a run repairs it
    assert.equal(fixedram(['verify', out]).status, 3);
    const r = await update({ output: out, blocks: [{ name: 'b0', path: src }], channels: 2, fsync: false });
    assert.equal(r.repaired, true);
    assert.equal((await verify({ snapshot: out, against: [{ name: 'b0', path: src }], channels: 2 })).ok, true);
  });

  it('a source truncated and restored again and again during updates: every run ends, none hangs or dies of SIGBUS', async (t) => {
    // The flapping lands the fault anywhere in a batch: in the zero-scan and hash, or in the copy of
    // changed pages out of the mapping (the region a compiler once left unguarded: the update hung).
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const { src, out } = await savedDense(t);
    const full = kPages * kPage;
    let faults = 0;
    const outcomes: string[] = [];
    for (let run = 0; run < 10; ++run) {
      fs.truncateSync(src, full);
      denseBlock(src, 1, kPages, { generation: run + 2 }); // every page changed: every batch copies out
      // each write of the snapshot waits 20 ms, so the batches after the first meet the flapping
      const w = new Watched(
        ['save', '--update', '-o', out, '-b', `b0=${src}`, '-j', '2', '--no-fsync', '--progress', 'json'],
        shimEnv(so, { funcs: 'pwritev', delayUs: 20_000, path: out }),
        { timeoutMs: 60_000 },
      );
      reap(t, w);
      let ended = false;
      void w.exited.then(() => {
        ended = true;
      });
      await w.midway();
      // flap the source between 100 pages and its full size until the update ends
      while (!ended) {
        fs.truncateSync(src, 100 * kPage);
        await new Promise((r) => setTimeout(r, 1));
        fs.truncateSync(src, full);
        await new Promise((r) => setImmediate(r));
      }
      const e = await w.exited;
      assert.equal(e.signal, null, `run ${run}: killed by ${e.signal}: ${e.stderr}`);
      assert.ok(e.status === 0 || e.status === 4, `run ${run}: exit ${e.status}: ${e.stderr}`);
      if (e.status === 4) {
        assert.match(e.stderr, /unexpected end of file at offset 0x[0-9a-f]+/, `run ${run}`);
        if (/mmap read/.test(e.stderr)) ++faults;
      }
      outcomes.push(String(e.status));
      if (faults >= 4) break;
    }
    // the premise: the truncations did reach the mapping
    assert.ok(faults > 0, `no run met a truncated mapping: ${outcomes.join(' ')}`);
    fs.truncateSync(src, full);
    denseBlock(src, 1, kPages, { generation: 99 });
    const r = await update({ output: out, blocks: [{ name: 'b0', path: src }], channels: 2, fsync: false });
    assert.equal(
      (await verify({ snapshot: out, against: [{ name: 'b0', path: src }], channels: 2 })).ok,
      true,
      JSON.stringify(r),
    );
  });

  it('pages larger than the host page are read, not mapped, and give the same file as a fresh save', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'big.ram');
    const ps = 16384;
    denseBlock(src, 1, 600, { pageSize: ps });
    const out = path.join(dir, 'snap.fxr');
    const blocks = [{ name: 'b0', path: src }];
    await save({ output: out, blocks, channels: 2, pageSize: ps, fsync: false });
    const fd = fs.openSync(src, 'r+');
    const page = Buffer.alloc(ps);
    for (const p of [3, 77, 78, 300, 599]) {
      stampPage(page, 1, p, 9);
      fs.writeSync(fd, page, 0, ps, p * ps);
    }
    fs.writeSync(fd, Buffer.alloc(ps), 0, ps, 10 * ps);
    fs.closeSync(fd);
    const r = await update({ output: out, blocks, channels: 2, pageSize: ps, batchBytes: 64 * ps });
    assert.equal(r.pagesWritten, 5);
    assert.equal(r.pagesPunched, 1);
    const fresh = path.join(dir, 'fresh.fxr');
    await save({ output: fresh, blocks, channels: 1, pageSize: ps, fsync: false });
    assert.ok(fs.readFileSync(fresh).equals(fs.readFileSync(out)));
  });

  it('pages that became zero: punched in runs across holes; written as zeros where punching is refused; same bytes as a fresh save', async (t) => {
    const { dir, blocks, out } = setup(t, [3000]);
    await save({ output: out, blocks, channels: 2, fsync: false });
    const m = mutate(blocks[0]!.path, 1, 3);
    assert.ok(m.toZero > 0 && m.fromZero > 0);
    const copy = path.join(dir, 'copy.fxr');
    fs.copyFileSync(out, copy);
    const r = await update({ output: out, blocks, channels: 2, batchBytes: 64 * kPage });
    assert.equal(r.pagesPunched, m.toZero);
    const fresh = path.join(dir, 'fresh.fxr');
    await save({ output: fresh, blocks, channels: 2, fsync: false });
    assert.ok(fs.readFileSync(fresh).equals(fs.readFileSync(out)));
    const present = r.presentPages * kPage;
    assert.ok(allocated(out) <= present + 256 * 1024, `allocated ${allocated(out)}, present ${present}`);

    // a file system without hole punching (the shim fails fallocate with EOPNOTSUPP)
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const report = path.join(dir, 'shim.report');
    const cli = fixedram(['save', '--update', '-o', copy, '-b', `b0=${blocks[0]!.path}`, '-j', '2', '--no-fsync'], {
      env: shimEnv(so, { fallocate: 'eopnotsupp', funcs: 'none', path: copy, report }),
    });
    assert.equal(cli.status, 0, cli.stderr);
    assert.ok(readShimReport(report).fallocate > 0, 'fallocate was refused at least once');
    assert.ok(fs.readFileSync(fresh).equals(fs.readFileSync(copy)), 'zeros written instead: the same bytes');
  });

  it('refuses a mismatched layout (added, removed, resized, renamed block) without modifying the file', async (t) => {
    const { dir, blocks, out } = setup(t, [300, 200]);
    await save({ output: out, blocks, channels: 1 });
    const before = fs.readFileSync(out);
    const extra = path.join(dir, 'extra.ram');
    makeBlock(extra, 9, 10);
    const bigger = path.join(dir, 'bigger.ram');
    makeBlock(bigger, 1, 301);
    const cases: [string, { name: string; path: string }[], RegExp][] = [
      ['added', [...blocks, { name: 'extra', path: extra }], /block 'extra' is not in the snapshot/],
      ['removed', [blocks[0]!], /block 'b1' is in the snapshot but not given/],
      ['resized', [{ name: 'b0', path: bigger }, blocks[1]!], /block 'b0' is 1232896 bytes, the snapshot has 1228800/],
      [
        'renamed',
        [{ name: 'renamed', path: blocks[0]!.path }, blocks[1]!],
        /block 'b0' is in the snapshot but not given/,
      ],
    ];
    for (const [what, given, message] of cases) {
      await assert.rejects(
        update({ output: out, blocks: given, channels: 1 }),
        { code: 'ERR_SNAPSHOT_INVALID', message },
        what,
      );
      assert.ok(fs.readFileSync(out).equals(before), `${what}: the snapshot was modified`);
    }
    const cli = fixedram(['save', '--update', '-o', out, '-b', `b0=${blocks[0]!.path}`]);
    assert.equal(cli.status, 3);
    assert.match(cli.stderr, /nothing was changed/);
    const missing = fixedram(['save', '--update', '-o', path.join(dir, 'none.fxr'), '-b', `b0=${blocks[0]!.path}`]);
    assert.equal(missing.status, 3);
    assert.deepEqual(
      fs.readdirSync(dir).filter((f) => f.startsWith('none')),
      [],
    );
  });

  it('SIGKILL at random points: verify reports the interrupted update, a re-run repairs it', async (t) => {
    const base = fs.existsSync('/dev/shm') ? '/dev/shm' : undefined;
    const { dir, blocks, out } = setup(t, [16384], base); // 64 MiB
    await save({ output: out, blocks, channels: 2, fsync: false });
    let interrupted = 0;
    // at least 4 rounds, and on (at most 10) until one kill has landed mid-way
    for (let round = 0; round < 4 || (interrupted === 0 && round < 10); round++) {
      mutate(blocks[0]!.path, 1, 10 + round);
      // make every page differ so the update has work for its whole run
      const child = fixedramChild(
        ['save', '--update', '-o', out, '-b', `b0=${blocks[0]!.path}`, '-j', '2', '--progress', 'json', '--no-fsync'],
        { env: { ...process.env } },
      );
      const killAt = round === 0 ? 1 : 1 + crypto.randomInt(4);
      let events = 0;
      let buf = '';
      child.stderr!.on('data', (d: Buffer) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.startsWith('{"event":"progress"') && ++events === killAt) child.kill('SIGKILL');
        }
      });
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) =>
        child.on('exit', (c, s) => resolve([c, s])),
      );
      const v = fixedram(['verify', out, '--json']);
      if (signal === 'SIGKILL' && v.status === 0) {
        // the kill landed after the update had committed (its final header written) while the
        // process was ending: a complete snapshot, checked against the blocks below
        assert.equal(JSON.parse(v.stdout).ok, true, v.stdout);
      } else if (signal === 'SIGKILL') {
        interrupted++;
        assert.equal(v.status, 3, v.stdout);
        assert.match(
          JSON.parse(v.stdout).error.message,
          /interrupted in-place update.*re-run `fixedram save --update`/,
        );
        const l = fixedram(['load', out, '--dir', path.join(dir, 'x')]);
        assert.equal(l.status, 3);
        const repair = await update({ output: out, blocks, channels: 2, fsync: false });
        assert.equal(repair.repaired, true);
      } else {
        assert.equal(code, 0);
      }
      const ok = await verify({ snapshot: out, against: blocks, channels: 2 });
      assert.equal(ok.ok, true, `round ${round}: ${JSON.stringify(ok.failures.slice(0, 2))}`);
    }
    await assertLoadsAs(out, blocks, dir);
    assert.ok(interrupted >= 1, 'at least one update was killed mid-way');
  });
});

describe('save --update: the extent walk is used while it runs', () => {
  it('markDataAsync with ready: every page below the published count is already final, and the count ends at pageCount', async (t) => {
    // a tmpfs file of 96 Ki pages, data and holes alternating in runs of 1-3 pages: ~48 Ki extents,
    // a walk long enough to be seen half-way
    const dir = tempDir(t, fs.existsSync('/dev/shm') ? '/dev/shm' : undefined);
    const file = path.join(dir, 'holes.ram');
    const pages = 96 * 1024;
    const fd = fs.openSync(file, 'w+');
    const page = Buffer.alloc(kPage, 0x5a);
    fs.ftruncateSync(fd, pages * kPage);
    for (let p = 0, k = 0; p < pages; k++) {
      const run = 1 + (k % 3);
      if (k % 2 === 0) for (let q = p; q < Math.min(pages, p + run); q++) fs.writeSync(fd, page, 0, kPage, q * kPage);
      p += run;
    }
    const { native } = await import('../src/native');
    const expected = new Uint8Array(pages);
    native().markData(fd, 0, kPage, 0, pages, expected);
    const first = 4096; // a part that does not start at page 0, as the walks of a block's later parts
    const mask = new Uint8Array(new SharedArrayBuffer(pages));
    const ready = new Int32Array(new SharedArrayBuffer(8));
    const seen: { at: number; prefix: Uint8Array }[] = [];
    const walk = native().markDataAsync(fd, 0, kPage, first, pages - first, mask, ready.subarray(1, 2));
    let settled = false;
    void walk.finally(() => (settled = true));
    // watch from this thread while the walk runs on the pool: copy what the count says is final
    const until = Date.now() + 10_000;
    for (let last = 0; !settled && Date.now() < until;) {
      const r = Atomics.load(ready, 1);
      if (r !== last && r < pages - first) seen.push({ at: r, prefix: mask.slice(first, first + r) });
      last = r;
      if (r === pages - first) break;
      if (seen.length > 200) break;
    }
    assert.equal(await walk, true);
    fs.closeSync(fd);
    assert.equal(Atomics.load(ready, 1), pages - first, 'the count ends at pageCount');
    assert.equal(Atomics.load(ready, 0), 0, 'only the element handed over is written');
    assert.ok(seen.length >= 1, 'the walk was seen half-way (the premise of this test)');
    for (const s of seen) {
      assert.deepEqual(s.prefix, expected.subarray(first, first + s.at), `pages below ${s.at} were final`);
    }
    assert.deepEqual(mask.subarray(first), expected.subarray(first));
    assert.ok(
      mask.subarray(0, first).every((v) => v === 0),
      'nothing before firstPage is touched',
    );
  });
});

describe('save --update: channel threads started ahead', () => {
  it('the command line is read without the parser, and the guess stays low', (t) => {
    const n = Math.min(64, os.availableParallelism());
    const dir = tempDir(t);
    const sized = (name: string, bytes: number): string => {
      const p = path.join(dir, name);
      fs.writeFileSync(p, '');
      fs.truncateSync(p, bytes); // sparse: only the size counts
      return p;
    };
    const big = sized('big.ram', 64 << 20); // 16 batches of 4 MiB
    const b = ['-o', 'x.fxr', '-b', `a=${big}`];
    assert.equal(earlyWorkers(['save', '--update', ...b, '-j', '3']), 2);
    assert.equal(earlyWorkers(['save', ...b, '--update', '-j4']), 3);
    assert.equal(earlyWorkers(['save', '--update', ...b, '--channels=2']), 1);
    assert.equal(earlyWorkers(['save', '--update', ...b, '--channels', '5', '-j', '2']), 1, 'the last -j counts');
    assert.equal(earlyWorkers(['save', '--update', ...b]), Math.min(n, 16) - 1, 'default: one channel per CPU');
    assert.equal(earlyWorkers(['save', '--update', ...b, '-j', '0']), Math.min(n, 16) - 1, '0: one per CPU');
    assert.equal(earlyWorkers(['save', '--update', `--block=a=${big}`, '-j', '3']), 2);
    assert.equal(earlyWorkers(['save', '--update', `-ba=${big}`, '-j', '3']), 2);
    // no more than the blocks have batches; none for one batch, a missing file, or a windowed walk
    const two = sized('two.ram', 8 << 20);
    assert.equal(earlyWorkers(['save', '--update', '-b', `a=${two}`, '-j', '8']), 1);
    assert.equal(earlyWorkers(['save', '--update', '-b', `a=${sized('one.ram', 4 << 20)}`, '-j', '8']), 0);
    assert.equal(earlyWorkers(['save', '--update', '-b', `a=${path.join(dir, 'none')}`, '-j', '8']), 0);
    assert.equal(earlyWorkers(['save', '--update', '-b', `a=${sized('huge.ram', 9 * 2 ** 30)}`, '-j', '8']), 0);
    // not an update, or values the parser would refuse (its to report): none
    assert.equal(earlyWorkers(['save', '--update', ...b, '-j', '1']), 0);
    assert.equal(earlyWorkers(['save', ...b, '-j', '4']), 0, 'a full save');
    assert.equal(earlyWorkers(['load', 'x.fxr', '--update', '-j', '4']), 0, 'another command');
    for (const bad of ['lots', '0x3f', '1e1', ' 8', '+8', '8.0', '65', ''])
      assert.equal(earlyWorkers(['save', '--update', ...b, '-j', bad]), 0, `-j '${bad}'`);
    assert.equal(earlyWorkers(['save', '--update', ...b, '-j=8']), 0);
    assert.equal(earlyWorkers(['save', '--update', ...b, '-j']), 0);
    assert.equal(earlyWorkers(['save', '--update', ...b, '--help', '-j', '4']), 0);
    assert.equal(
      earlyWorkers(['save', '--update', '-o', 's3://b/k', '-b', `a=${big}`, '-j', '4']),
      0,
      's3 has its own',
    );
  });

  it('update() runs on the channels it is given and stops the ones it has no use for', async (t) => {
    // 3000 + 1500 pages in batches of 64 pages: many batches, two channels (the main thread and one given)
    const { blocks, out } = setup(t);
    await save({ output: out, blocks, channels: 2, fsync: false });
    blocks.forEach((b, i) => mutate(b.path, i + 1, 7));
    const team = prestartChannels(2);
    const r = await update({ output: out, blocks, channels: 2, batchBytes: 64 * kPage, fsync: false, team });
    assert.equal(team.taken, 1, 'one of the two was taken (-j 2: the main thread and one worker)');
    assert.equal(team.take(), undefined, 'the other was stopped');
    assert.ok(r.pagesWritten > 0);
    const v = await verify({ snapshot: out, against: blocks, channels: 2 });
    assert.equal(v.ok, true, JSON.stringify(v.failures.slice(0, 3)));
    // one batch in all: none is taken, all are stopped
    const small = setup(t, [16]);
    await save({ output: small.out, blocks: small.blocks, channels: 1, fsync: false });
    const idle = prestartChannels(1);
    await update({ output: small.out, blocks: small.blocks, channels: 2, fsync: false, team: idle });
    assert.equal(idle.taken, 0);
    assert.equal(idle.take(), undefined);
  });

  it('through the bin, save --update -j 2 runs on a channel started before the CLI loaded; -j 1 starts none', (t) => {
    // 3000 pages: three batches of 4 MiB
    const { blocks, out } = setup(t, [3000]);
    const args = [
      '-o',
      out,
      '-b',
      `b0=${blocks[0]!.path}`,
      '--no-fsync',
      '--log-level',
      'debug',
      '--log-format',
      'json',
    ];
    assert.equal(fixedram(['save', ...args.slice(0, 4), '--no-fsync']).status, 0);
    const ahead = (j: string): { given: unknown; taken: unknown } => {
      const r = fixedram(['save', '--update', ...args, '-j', j]);
      assert.equal(r.status, 0, r.stderr);
      const line = (msg: string): Record<string, unknown> => {
        const l = r.stderr.split('\n').find((x) => x.includes(msg));
        assert.ok(l, `${msg}: ${r.stderr}`);
        return JSON.parse(l) as Record<string, unknown>;
      };
      return {
        given: line('update: start').channelsStartedAhead,
        taken: line('update: pages written').channelsTakenAhead,
      };
    };
    assert.deepEqual(ahead('2'), { given: true, taken: 1 });
    assert.deepEqual(ahead('1'), { given: false, taken: 0 });
    // a usage error (no -o) with channels started ahead: exit 2 at once, nothing left running
    const r = spawnSync(process.execPath, [kBin, 'save', '--update', '-b', `b0=${blocks[0]!.path}`, '-j', '4'], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.equal(r.status, 2, `${r.error?.message ?? ''} ${r.stderr}`);
  });
});
