/**
 * Bounded work and memory (issue 10 items 7 and 8): hostile-but-valid snapshots whose header and
 * metadata checksums are right but whose lengths, gaps and page sizes ask for far more than the
 * bytes on disk, and a legitimate 1 TiB sparse block. Every case runs the real CLI in a child and
 * measures its peak RSS (all threads) against the README's bound; the work done is read from the
 * --json result (bytesRead), so "work follows the bytes present" is asserted, not timed. The child's
 * timeout only catches a hang (the old code took 91 s of CPU for the 2^42 gap).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { decodeHeader, encodeHeader, kEntryBytes, kFlagUpdating, kHeaderBytes } from '../src/format';
import { native } from '../src/native';
import { craftSnapshot } from './support/craft';
import { be64, fixturesAvailable, kFixtures, readManifest, unpackFixture } from './support/qemu';
import { fixedramPeak, kRssBoundMiB } from './support/peak-rss';
import { stampPage } from './support/stamp';
import { tempDir } from './support/tmp';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** A directory on tmpfs (files up to 2^63 bytes; ext4 stops at 16 TiB). */
function shmDir(t: { after: (fn: () => void) => void; skip: (why: string) => void }): string | undefined {
  if (!fs.existsSync('/dev/shm')) {
    if (process.env.CI) assert.fail('/dev/shm is missing');
    t.skip('no /dev/shm');
    return undefined;
  }
  return tempDir(t, '/dev/shm');
}

const allocated = (file: string): number => fs.statSync(file).blocks * 512;

function stamped(pageSize: number, block: number, page: number): Buffer {
  const b = Buffer.alloc(Math.min(pageSize, 64 << 10));
  stampPage(b.subarray(0, 4096), block, page, 1);
  return b;
}

function json(stdout: string): Record<string, unknown> {
  return JSON.parse(stdout) as Record<string, unknown>;
}

let current: { diagnostic: (m: string) => void } | undefined;

function assertBounded(r: ReturnType<typeof fixedramPeak>, what: string): void {
  current?.diagnostic(`${what}: peak RSS ${r.peakMiB.toFixed(1)} MiB, ${r.seconds.toFixed(1)} s`);
  assert.ok(
    Number.isFinite(r.peakMiB),
    `${what}: the child did not report its peak RSS (${r.signal ?? r.status}): ${r.stderr}`,
  );
  assert.ok(r.peakMiB <= kRssBoundMiB, `${what}: peak RSS ${r.peakMiB.toFixed(0)} MiB exceeds ${kRssBoundMiB} MiB`);
  assert.doesNotMatch(r.stderr, /\n\s+at /, `${what}: a stack trace on stderr`);
}

describe('faults: bounded work and memory (hostile valid-checksum files, TiB blocks)', () => {
  it('a 1-page block after a 2^42-byte gap: verify is OK, reads only the page, bounded RSS (-j 1 and 8)', (t) => {
    current = t;
    const dir = shmDir(t);
    if (!dir) return;
    const file = path.join(dir, 'gap.fxr');
    const layout = craftSnapshot(file, [
      { name: 'far', pageSize: 4096, length: 4096, gapBefore: 2 ** 42, present: new Map([[0, stamped(4096, 1, 0)]]) },
    ]);
    assert.ok(layout.blocks[0]!.pagesOffset > 2 ** 42, 'premise: the page lies past the gap');
    assert.ok(allocated(file) < 64 << 10, 'premise: the file holds a few KiB');
    for (const j of ['1', '8']) {
      const r = fixedramPeak(['verify', file, '--json', '-j', j], { timeoutMs: 60_000 });
      assert.equal(r.status, 0, r.stderr);
      assertBounded(r, `verify -j ${j}`);
      assert.ok((json(r.stdout).bytesRead as number) <= 4096, `read ${json(r.stdout).bytesRead as number} bytes`);
    }
  });

  it('a 2^48-byte block with 4 MiB pages and one present page: verify and inspect bounded (no object per batch)', (t) => {
    current = t;
    const dir = shmDir(t);
    if (!dir) return;
    const file = path.join(dir, 'huge.fxr');
    const pages = 2 ** 48 / (4 * MiB);
    craftSnapshot(file, [
      {
        name: 'big',
        pageSize: 4 * MiB,
        length: 2 ** 48,
        present: new Map([[pages - 1, stamped(4 * MiB, 1, pages - 1)]]),
      },
    ]);
    assert.ok(allocated(file) < 1 * MiB, `premise: the file holds little (${allocated(file)} bytes)`);
    for (const j of ['1', '8']) {
      const r = fixedramPeak(['verify', file, '--json', '-j', j], { timeoutMs: 120_000 });
      assert.equal(r.status, 0, r.stderr);
      assertBounded(r, `verify -j ${j}`);
      assert.ok((json(r.stdout).bytesRead as number) <= 4 * MiB, `read ${json(r.stdout).bytesRead as number} bytes`);
    }
  });

  for (const shift of [39, 40]) {
    it(`length 2^${shift} with 4 KiB pages in a file of a few KiB: verify and load bounded, no huge allocation`, (t) => {
      current = t;
      const dir = shmDir(t);
      if (!dir) return;
      const file = path.join(dir, 'long.fxr');
      const pages = 2 ** shift / 4096;
      craftSnapshot(file, [
        {
          name: 'long',
          pageSize: 4096,
          length: 2 ** shift,
          present: new Map([
            [0, stamped(4096, 1, 0)],
            [pages / 2 + 7, stamped(4096, 1, pages / 2 + 7)],
            [pages - 1, stamped(4096, 1, pages - 1)],
          ]),
        },
      ]);
      assert.ok(allocated(file) < 1 * MiB, `premise: the file holds little (${allocated(file)} bytes)`);
      for (const j of ['1', '8']) {
        const v = fixedramPeak(['verify', file, '--json', '-j', j], { timeoutMs: 120_000 });
        assert.equal(v.status, 0, v.stderr);
        assertBounded(v, `verify -j ${j}`);
        assert.equal(json(v.stdout).bytesRead, 3 * 4096);
      }
      const out = path.join(dir, 'out');
      const l = fixedramPeak(['load', file, '--dir', out, '--json', '-j', '8'], { timeoutMs: 120_000 });
      assert.equal(l.status, 0, l.stderr);
      assertBounded(l, 'load -j 8');
      const target = path.join(out, fs.readdirSync(out)[0]!);
      assert.equal(fs.statSync(target).size, 2 ** shift);
      assert.ok(allocated(target) <= 3 * 4096 * 4, `the target allocates ${allocated(target)} bytes`);
      const got = Buffer.alloc(4096);
      const fd = fs.openSync(target, 'r');
      fs.readSync(fd, got, 0, 4096, (pages - 1) * 4096);
      fs.closeSync(fd);
      assert.ok(got.equals(stamped(4096, 1, pages - 1).subarray(0, 4096)), 'the last page was loaded');
    });
  }

  it('four present 1 GiB pages in a 20 KiB file: verify -j 2 and -j 8 stay bounded (pages are hashed in pieces)', (t) => {
    current = t;
    const dir = shmDir(t);
    if (!dir) return;
    const file = path.join(dir, 'gig.fxr');
    craftSnapshot(file, [
      {
        name: 'gig',
        pageSize: GiB,
        length: 4 * GiB,
        present: new Map<number, Buffer | 'hole'>([
          [0, 'hole'],
          [1, 'hole'],
          [2, stamped(GiB, 1, 2)],
          [3, 'hole'],
        ]),
      },
    ]);
    assert.ok(allocated(file) <= 256 << 10, `premise: the file holds little (${allocated(file)} bytes)`);
    for (const j of ['2', '8']) {
      const r = fixedramPeak(['verify', file, '--json', '-j', j], { timeoutMs: 300_000 });
      assert.equal(r.status, 0, r.stderr);
      assertBounded(r, `verify -j ${j}`);
      // only the data extents of the pages are read; their holes are hashed as zeros
      assert.ok((json(r.stdout).bytesRead as number) <= 4 * MiB, `read ${json(r.stdout).bytesRead as number} bytes`);
    }
    const out = path.join(dir, 'gig.ram');
    const l = fixedramPeak(['load', file, '-b', `gig=${out}`, '-j', '8'], { timeoutMs: 300_000 });
    assert.equal(l.status, 0, l.stderr);
    assertBounded(l, 'load -j 8');
    const got = Buffer.alloc(4096);
    const fd = fs.openSync(out, 'r');
    fs.readSync(fd, got, 0, 4096, 2 * GiB);
    fs.closeSync(fd);
    assert.ok(got.equals(stamped(GiB, 1, 2).subarray(0, 4096)));
  });

  it('a legitimate save --page-size 1G of a sparse 4 GiB block, then verify, load, update: bounded at -j 8', (t) => {
    current = t;
    const dir = shmDir(t);
    if (!dir) return;
    const src = path.join(dir, 'src.ram');
    const fd = fs.openSync(src, 'w');
    fs.ftruncateSync(fd, 4 * GiB);
    for (let p = 0; p < 4; p += 2) fs.writeSync(fd, stamped(GiB, 2, p), 0, 64 << 10, p * GiB + 5 * MiB);
    fs.closeSync(fd);
    const snap = path.join(dir, 'snap.fxr');
    const s = fixedramPeak(['save', '-o', snap, '-b', `m=${src}`, '--page-size', '1G', '-j', '8', '--json'], {
      timeoutMs: 300_000,
    });
    assert.equal(s.status, 0, s.stderr);
    assertBounded(s, 'save -j 8');
    assert.equal(json(s.stdout).presentPages, 2);
    const v = fixedramPeak(['verify', snap, '--against', `m=${src}`, '-j', '8'], { timeoutMs: 300_000 });
    assert.equal(v.status, 0, v.stderr);
    assertBounded(v, 'verify --against -j 8');
    // change one page, make another non-zero: update rewrites them in pieces
    const w = fs.openSync(src, 'r+');
    fs.writeSync(w, stamped(GiB, 3, 0), 0, 4096, 0);
    fs.writeSync(w, stamped(GiB, 3, 3), 0, 4096, 4 * GiB - 4096);
    fs.closeSync(w);
    const u = fixedramPeak(['save', '--update', '-o', snap, '-b', `m=${src}`, '-j', '8', '--json'], {
      timeoutMs: 300_000,
    });
    assert.equal(u.status, 0, u.stderr);
    assertBounded(u, 'update -j 8');
    assert.equal(json(u.stdout).presentPages, 3);
    const out = path.join(dir, 'out.ram');
    const l = fixedramPeak(['load', snap, '-b', `m=${out}`, '-j', '8'], { timeoutMs: 300_000 });
    assert.equal(l.status, 0, l.stderr);
    assertBounded(l, 'load -j 8');
    const v2 = fixedramPeak(['verify', snap, '--against', `m=${out}`, '-j', '8'], { timeoutMs: 300_000 });
    assert.equal(v2.status, 0, v2.stderr);
  });

  it('a legitimate 1 TiB sparse tmpfs block (4 KiB pages): save, verify, load, update bounded at -j 1 and -j 8', (t) => {
    current = t;
    const dir = shmDir(t);
    if (!dir) return;
    const src = path.join(dir, 'tib.ram');
    const pages = 2 ** 40 / 4096;
    const data = [0, 1, 4095, pages / 3, pages / 2, pages - 1].map(Math.floor);
    const fd = fs.openSync(src, 'w');
    fs.ftruncateSync(fd, 2 ** 40);
    for (const p of data) fs.writeSync(fd, stamped(4096, 4, p), 0, 4096, p * 4096);
    fs.closeSync(fd);
    const snap = path.join(dir, 'tib.fxr');
    for (const j of ['1', '8']) {
      const s = fixedramPeak(['save', '-o', snap, '-b', `tib=${src}`, '-j', j, '--json'], { timeoutMs: 300_000 });
      assert.equal(s.status, 0, s.stderr);
      assertBounded(s, `save -j ${j}`);
      assert.equal(json(s.stdout).presentPages, data.length);
      assert.ok(allocated(snap) < 8 * MiB, `the snapshot allocates ${allocated(snap)} bytes: its tables are not holes`);
      const v = fixedramPeak(['verify', snap, '-j', j, '--json'], { timeoutMs: 300_000 });
      assert.equal(v.status, 0, v.stderr);
      assertBounded(v, `verify -j ${j}`);
      assert.equal(json(v.stdout).bytesRead, data.length * 4096);
    }
    const w = fs.openSync(src, 'r+');
    fs.writeSync(w, stamped(4096, 5, 7), 0, 4096, 7 * 4096);
    fs.writeSync(w, Buffer.alloc(4096), 0, 4096, (pages - 1) * 4096);
    fs.closeSync(w);
    const u = fixedramPeak(['save', '--update', '-o', snap, '-b', `tib=${src}`, '-j', '8', '--json'], {
      timeoutMs: 300_000,
    });
    assert.equal(u.status, 0, u.stderr);
    assertBounded(u, 'update -j 8');
    assert.equal(json(u.stdout).pagesWritten, 1);
    assert.equal(json(u.stdout).pagesPunched, 1);
    const out = path.join(dir, 'out.ram');
    const l = fixedramPeak(['load', snap, '-b', `tib=${out}`, '-j', '8', '--json'], { timeoutMs: 300_000 });
    assert.equal(l.status, 0, l.stderr);
    assertBounded(l, 'load -j 8');
    const v = fixedramPeak(['verify', snap, '--against', `tib=${out}`, '-j', '8'], { timeoutMs: 300_000 });
    assert.equal(v.status, 0, v.stderr);
    assertBounded(v, 'verify --against -j 8');
  });

  it('a QEMU mapped-ram file whose first block is 1 TiB (a real stream, regions moved): inspect, verify, load bounded', (t) => {
    current = t;
    if (!fixturesAvailable()) {
      if (process.env.CI) assert.fail(`the QEMU fixtures are not at ${kFixtures}`);
      return t.skip(`the QEMU fixtures are not at ${kFixtures}`);
    }
    const dir = shmDir(t);
    if (!dir) return;
    const m = readManifest('membackend-32m');
    const src = unpackFixture('membackend-32m.mig', dir);
    const file = path.join(dir, 'tib.mig');
    const b0 = m.blocks[0]!;
    const newLength = 2 ** 40;
    const newPagesOffset = 64 * MiB; // past the 32 MiB bitmap of 1 TiB of 4 KiB pages
    const oldEnd = b0.pages_offset + b0.used_length;
    const delta = newPagesOffset + newLength - oldEnd;
    const inFd = fs.openSync(src, 'r');
    const outFd = fs.openSync(file, 'w+');
    const copy = (from: number, length: number, to: number): void => {
      const buf = Buffer.alloc(4 * MiB);
      for (let done = 0; done < length;) {
        const n = fs.readSync(inFd, buf, 0, Math.min(buf.length, length - done), from + done);
        fs.writeSync(outFd, buf, 0, n, to + done);
        done += n;
      }
    };
    const patch = (at: number, bytes: Buffer): void => void fs.writeSync(outFd, bytes, 0, bytes.length, at);
    try {
      copy(0, b0.bitmap_offset + b0.bitmap_bytes, 0); // stream head, block 0's entry, header and bitmap
      copy(b0.pages_offset, b0.used_length, newPagesOffset); // block 0's pages, moved
      copy(oldEnd, m.file_size - oldEnd, oldEnd + delta); // every later block and the device state
      // the RAM total record (flag 0x04 in its low bits) and block 0's length and pages offset
      const head = Buffer.alloc(b0.bitmap_offset);
      fs.readSync(inFd, head, 0, head.length, 0);
      const total = be64(BigInt(m.ram_total) | 4n);
      const at = head.indexOf(total);
      assert.ok(at > 0 && head.indexOf(total, at + 1) < 0, 'premise: the RAM total record is found once');
      patch(at, be64(BigInt(m.ram_total - b0.used_length + newLength) | 4n));
      const header = b0.bitmap_offset - 28;
      patch(header - 8, be64(newLength));
      patch(header + 20, be64(newPagesOffset));
      // the later blocks' headers hold absolute offsets: moved by delta
      for (const b of m.blocks.slice(1)) {
        patch(b.bitmap_offset - 28 + delta + 12, be64(b.bitmap_offset + delta));
        patch(b.bitmap_offset - 28 + delta + 20, be64(b.pages_offset + delta));
      }
    } finally {
      fs.closeSync(inFd);
      fs.closeSync(outFd);
    }
    assert.ok(allocated(file) < 128 * MiB, `premise: the file holds little (${allocated(file)} bytes)`);
    const ins = fixedramPeak(['inspect', file, '--json'], { timeoutMs: 120_000 });
    assert.equal(ins.status, 0, ins.stderr);
    assertBounded(ins, 'inspect');
    for (const j of ['1', '8']) {
      const v = fixedramPeak(['verify', file, '--json', '-j', j], { timeoutMs: 300_000 });
      assert.equal(v.status, 0, v.stderr);
      assertBounded(v, `verify -j ${j} (QEMU)`);
    }
    const out = path.join(dir, 'out');
    const l = fixedramPeak(['load', file, '--dir', out, '-j', '8'], { timeoutMs: 300_000 });
    assert.equal(l.status, 0, l.stderr);
    assertBounded(l, 'load -j 8 (QEMU)');
    const mem0 = path.join(
      out,
      fs.readdirSync(out).find((n) => n.startsWith('mem0'))!,
    );
    assert.equal(fs.statSync(mem0).size, newLength);
    // the moved pages arrive where they were: page 1 of the pattern starts with u64le(1), "FXR:mem0"
    const got = Buffer.alloc(16);
    const fd = fs.openSync(mem0, 'r');
    fs.readSync(fd, got, 0, 16, 4096);
    fs.closeSync(fd);
    assert.equal(got.subarray(8, 16).toString('latin1'), 'FXR:mem0');
  });

  it('an interrupted update of a block larger than a table window is repaired window by window', (t) => {
    current = t;
    const dir = shmDir(t);
    if (!dir) return;
    // 5 × 2^20 pages: three windows of tables, so update takes the windowed walk; the middle
    // window has no data in the source (its slots and tables are punched whole)
    const pages = 5 * 2 ** 20;
    const src = path.join(dir, 'big.ram');
    const data = [0, 5, 2 ** 21 - 1, 2 ** 22, 2 ** 22 + 7, pages - 1];
    const fd = fs.openSync(src, 'w');
    fs.ftruncateSync(fd, pages * 4096);
    for (const p of data) fs.writeSync(fd, stamped(4096, 6, p), 0, 4096, p * 4096);
    fs.closeSync(fd);
    const snap = path.join(dir, 'big.fxr');
    assert.equal(fixedramPeak(['save', '-o', snap, '-b', `big=${src}`]).status, 0);
    // a torn update: the header says UPDATING, a page of the second window was rewritten with data
    // the tables do not know, and a stale page sits in the slot of a page that is now zero
    const w = fs.openSync(src, 'r+');
    fs.writeSync(w, stamped(4096, 6, 2 ** 22 + 7).fill(9, 4000, 4096), 0, 4096, (2 ** 22 + 7) * 4096);
    fs.writeSync(w, Buffer.alloc(4096), 0, 4096, 5 * 4096);
    fs.closeSync(w);
    const s = fs.openSync(snap, 'r+');
    const head = Buffer.alloc(kHeaderBytes + kEntryBytes);
    fs.readSync(s, head, 0, head.length, 0);
    const h = decodeHeader(head, fs.fstatSync(s).size, native().hash64);
    const torn = encodeHeader(h, kFlagUpdating, h.presentPages, h.metadataChecksums, native().hash64);
    fs.writeSync(s, torn, 0, torn.length, 0);
    // stale data in absent slots, in a window with source data and in one without
    fs.writeSync(s, stamped(4096, 7, 3), 0, 4096, h.blocks[0]!.pagesOffset + 3 * 4096);
    fs.writeSync(s, stamped(4096, 7, 2 ** 21 + 3), 0, 4096, h.blocks[0]!.pagesOffset + (2 ** 21 + 3) * 4096);
    fs.closeSync(s);
    assert.equal(fixedramPeak(['verify', snap]).status, 3, 'premise: the torn snapshot is refused');
    const u = fixedramPeak(['save', '--update', '-o', snap, '-b', `big=${src}`, '-j', '2', '--json'], {
      timeoutMs: 300_000,
    });
    assert.equal(u.status, 0, u.stderr);
    assertBounded(u, 'repair -j 2');
    assert.equal(json(u.stdout).repaired, true);
    assert.equal(json(u.stdout).presentPages, data.length - 1);
    const v = fixedramPeak(['verify', snap, '--against', `big=${src}`, '-j', '2'], { timeoutMs: 300_000 });
    assert.equal(v.status, 0, `${v.stdout}${v.stderr}`);
  });
});
