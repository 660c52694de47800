/**
 * convert: QEMU mapped-ram file → fixedram snapshot with checksums. Round trips against the shared
 * fixtures: convert, verify, and load of the snapshot equals the extraction from the QEMU file.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe } from 'node:test';
import { convert } from '../src/convert';
import { encodeBlockName, inspect, load, save, verify } from '../src/index';
import { fixedram } from './support/cli';
import {
  fixturesAvailable,
  kFixtures,
  patch,
  readManifest,
  sha256,
  sha256File,
  truncatedCopy,
  unpackFixture,
  wrapInLibvirt,
  type Manifest,
} from './support/qemu';
import { allocated, openFds, tempDir } from './support/tmp';
import { prereqSuite } from './support/prereq';

const { it, before, after } = prereqSuite(
  fixturesAvailable(),
  `the QEMU fixtures are not at ${kFixtures} (set FIXEDRAM_QEMU_FIXTURES)`,
);

/** Files of a directory other than block files, fixture files and the given names. */
const leftovers = (dir: string): string[] =>
  fs.readdirSync(dir).filter((f) => f.startsWith('.') || f.endsWith('.tmp') || f.endsWith('.lock'));

describe('convert (QEMU mapped-ram → fixedram snapshot)', () => {
  let dir: string;
  let mig: string;
  let ram: string;
  let q35: string;
  let mb: Manifest;
  let q35m: Manifest;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-convert-'));
    mig = unpackFixture('membackend-32m.mig', dir);
    ram = unpackFixture('membackend-32m.ram', dir);
    q35 = unpackFixture('q35-default-64m.mig', dir);
    mb = readManifest('membackend-32m');
    q35m = readManifest('q35-default-64m');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const channels of [1, 4]) {
    it(`convert with ${channels} channel(s), then verify passes and load of the snapshot equals the extraction from the QEMU file`, async (t) => {
      const d = tempDir(t);
      const snap = path.join(d, 'vm.fxr');
      const events: number[] = [];
      const r = await convert({
        input: mig,
        output: snap,
        channels,
        fsync: channels === 1,
        batchBytes: 512 << 10,
        onProgress: (e) => {
          assert.equal(e.command, 'convert');
          events.push(e.bytesDone);
        },
      });
      assert.equal(r.command, 'convert');
      assert.equal(r.input, mig);
      assert.equal(r.output, snap);
      assert.equal(r.inputFormat, 'qemu-mapped-ram');
      assert.equal(r.machineType, 'pc-q35-10.0');
      assert.equal(r.fileSize, fs.statSync(snap).size);
      assert.deepEqual(
        r.blocks.map((b) => [b.name, b.length]),
        mb.blocks.map((b) => [b.name, b.used_length]),
      );
      assert.equal(r.blocks[0]!.presentPages, 4983);
      assert.equal(events[events.length - 1], mb.ram_total);
      assert.deepEqual(leftovers(d), []);
      // only the QEMU bitmap's pages are read; zero pages stay holes in the snapshot
      assert.ok(r.bytesRead <= mb.blocks.reduce((s, b) => s + b.pages_present * 4096, 0), `read ${r.bytesRead}`);
      assert.ok(allocated(snap) <= r.presentPages * 4096 + (1 << 20), `allocated ${allocated(snap)}`);

      // the snapshot is a complete fixedram snapshot with checksums
      const info = inspect(snap);
      assert.equal(info.format, 'fixedram');
      assert.equal(info.state, 'complete');
      assert.deepEqual(
        info.blocks.map((b) => b.name),
        mb.blocks.map((b) => b.name),
      );
      const v = await verify({ snapshot: snap, against: [{ name: 'mem0', path: ram }], channels });
      assert.equal(v.ok, true);
      assert.equal(v.checksums, true);

      // load of both into directories: identical block files, equal to the manifest digests
      const fromQemu = path.join(d, 'from-qemu');
      const fromSnap = path.join(d, 'from-snap');
      await load({ snapshot: mig, dir: fromQemu, channels });
      const lr = await load({ snapshot: snap, dir: fromSnap, channels });
      assert.equal(lr.verified, true);
      for (const b of mb.blocks) {
        const a = fs.readFileSync(path.join(fromQemu, encodeBlockName(b.name)));
        const c = fs.readFileSync(path.join(fromSnap, encodeBlockName(b.name)));
        assert.ok(a.equals(c), `block ${b.name} differs`);
        assert.equal(sha256(c), b.sha256, `block ${b.name}`);
      }
      assert.ok(fs.readFileSync(path.join(fromSnap, 'mem0')).equals(fs.readFileSync(ram)));
    });
  }

  it('converts the default q35 machine (all-zero RAM, ROMs) with the digests of the manifest, and verifies through the CLI', async (t) => {
    const d = tempDir(t);
    const snap = path.join(d, 'q35.fxr');
    const r = await convert({ input: q35, output: snap, channels: 2, fsync: false });
    assert.equal(r.blocks.find((b) => b.name === 'pc.ram')!.presentPages, 0);
    const v = fixedram(['verify', snap, '--json']);
    assert.equal(v.status, 0, v.stderr);
    assert.equal(JSON.parse(v.stdout).checksums, true);
    const out = path.join(d, 'blocks');
    await load({ snapshot: snap, dir: out, channels: 2 });
    for (const b of q35m.blocks) assert.equal(sha256File(path.join(out, encodeBlockName(b.name))), b.sha256, b.name);
  });

  it('converts a libvirt save image through its wrapper', async (t) => {
    const d = tempDir(t);
    const wrapped = path.join(d, 'domain.save');
    wrapInLibvirt(mig, wrapped, mb.blocks[0]!);
    const snap = path.join(d, 'domain.fxr');
    await convert({ input: wrapped, output: snap, channels: 2, fsync: false });
    const v = await verify({ snapshot: snap, against: [{ name: 'mem0', path: ram }] });
    assert.equal(v.ok, true);
  });

  it('a converted snapshot detects a flipped bit that the QEMU file could not (exit 1)', async (t) => {
    const d = tempDir(t);
    const snap = path.join(d, 'vm.fxr');
    await convert({ input: mig, output: snap, channels: 2, fsync: false });
    const info = inspect(snap);
    const mem0 = info.blocks.find((b) => b.name === 'mem0')!;
    patch(snap, mem0.pagesOffset + 3 * 4096 + 17, Buffer.from([0xff]));
    const r = fixedram(['verify', snap, '--json']);
    assert.equal(r.status, 1, r.stderr);
    const o = JSON.parse(r.stdout);
    assert.deepEqual(
      o.failures.map((f: { block: string; page: number; kind: string }) => [f.block, f.page, f.kind]),
      [['mem0', 3, 'checksum']],
    );
  });

  it('refuses an output that is the input, also through a hard link (exit 2), and leaves the input untouched', async (t) => {
    const d = tempDir(t);
    const input = path.join(d, 'vm.mig');
    fs.copyFileSync(mig, input);
    const link = path.join(d, 'link.fxr');
    fs.linkSync(input, link);
    const before = sha256File(input);
    for (const output of [input, link]) {
      await assert.rejects(convert({ input, output }), (err: Error & { code?: string; exitCode?: number }) => {
        assert.equal(err.code, 'ERR_USAGE');
        assert.equal(err.exitCode, 2);
        assert.match(err.message, /is the input file itself/);
        return true;
      });
    }
    assert.equal(sha256File(input), before);
    assert.deepEqual(fs.readdirSync(d).sort(), ['link.fxr', 'vm.mig']);
  });

  it('refuses incomplete, truncated and corrupt inputs (exit 3) and leaves no output, temp or lock file', async (t) => {
    const d = tempDir(t);
    const out = path.join(d, 'out.fxr');
    const incomplete = truncatedCopy(mig, path.join(d, 'incomplete.mig'), mb.ram_end_offset + 20);
    const truncated = truncatedCopy(mig, path.join(d, 'truncated.mig'), 0x100000 + 3000 * 4096 + 2048);
    const corrupt = path.join(d, 'corrupt.mig');
    fs.copyFileSync(mig, corrupt);
    patch(corrupt, mb.blocks[8]!.bitmap_offset, Buffer.from([0x02]));
    for (const [input, code] of [
      [incomplete, 'ERR_SNAPSHOT_INCOMPLETE'],
      [truncated, 'ERR_SNAPSHOT_TRUNCATED'],
      [corrupt, 'ERR_SNAPSHOT_INVALID'],
    ] as const) {
      await assert.rejects(convert({ input, output: out, channels: 2 }), { code, exitCode: 3 });
      assert.equal(fs.existsSync(out), false);
      assert.deepEqual(leftovers(d), []);
    }
  });

  it('refuses a fixedram snapshot as input (exit 2) and a bad channel count', async (t) => {
    const d = tempDir(t);
    const block = path.join(d, 'a.ram');
    fs.writeFileSync(block, Buffer.alloc(8192, 1));
    const snap = path.join(d, 'a.fxr');
    await save({ output: snap, blocks: [{ name: 'a', path: block }], channels: 1, fsync: false });
    await assert.rejects(convert({ input: snap, output: path.join(d, 'b.fxr') }), {
      code: 'ERR_USAGE',
      message: /already/,
    });
    await assert.rejects(convert({ input: mig, output: path.join(d, 'b.fxr'), channels: 0 }), { code: 'ERR_USAGE' });
    await assert.rejects(convert({ input: path.join(d, 'missing.mig'), output: path.join(d, 'b.fxr') }), {
      code: 'ENOENT',
    });
    assert.equal(fs.existsSync(path.join(d, 'b.fxr')), false);
  });

  it('an aborted convert leaves the previous output in place and no temp file', async (t) => {
    const d = tempDir(t);
    const out = path.join(d, 'vm.fxr');
    fs.writeFileSync(out, 'previous');
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(convert({ input: mig, output: out, channels: 2, signal: ac.signal }), {
      code: 'ERR_INTERRUPTED',
    });
    assert.equal(fs.readFileSync(out, 'utf8'), 'previous');
    assert.deepEqual(leftovers(d), []);
  });

  it('does not leak file descriptors', async (t) => {
    const d = tempDir(t);
    const incomplete = truncatedCopy(mig, path.join(d, 'incomplete.mig'), mb.ram_end_offset + 20);
    const before = openFds();
    for (let i = 0; i < 10; i++) {
      await assert.rejects(convert({ input: incomplete, output: path.join(d, 'x.fxr') }), {
        code: 'ERR_SNAPSHOT_INCOMPLETE',
      });
      await assert.rejects(convert({ input: mig, output: mig }), { code: 'ERR_USAGE' });
    }
    await convert({ input: mig, output: path.join(d, 'ok.fxr'), channels: 2, fsync: false });
    assert.equal(openFds(), before);
  });
});
