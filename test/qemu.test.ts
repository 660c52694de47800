/**
 * The QEMU mapped-ram reader against the shared fixtures written by QEMU 10.0.2 (decompressed in
 * the test) and their JSON ground truth: the block walk, page contents byte for byte, loads into
 * dirty targets, verify, truncations, interrupted saves, hostile headers and the libvirt wrapper.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe } from 'node:test';
import { decodeBlockName, encodeBlockName, ExitCode, FixedramError, inspect, load, verify } from '../src/index';
import { openImage } from '../src/image';
import { fixedram } from './support/cli';
import {
  be32,
  be64,
  blockOffsets,
  fixturesAvailable,
  isPatternZero,
  kFixtures,
  memBackendPattern,
  patch,
  readManifest,
  sha256,
  sha256File,
  truncatedCopy,
  unpackFixture,
  wrapInLibvirt,
  type Manifest,
} from './support/qemu';
import { fillFile } from './support/stamp';
import { openFds, tempDir } from './support/tmp';
import { prereqSuite } from './support/prereq';

const { it, before, after } = prereqSuite(
  fixturesAvailable(),
  `the QEMU fixtures are not at ${kFixtures} (set FIXEDRAM_QEMU_FIXTURES)`,
);

/** Asserts that fn throws a FixedramError with exit status 3 and the given code (and block). */
function assertImageError(
  fn: () => unknown,
  code: string,
  opts: { block?: string; message?: RegExp } = {},
): FixedramError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof FixedramError, `expected a FixedramError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  assert.equal(caught.exitCode, ExitCode.invalid);
  if (opts.block !== undefined) assert.equal(caught.block, opts.block, caught.message);
  if (opts.message) assert.match(caught.message, opts.message);
  return caught;
}

describe('QEMU mapped-ram files (shared fixtures)', () => {
  let dir: string;
  let mig: string;
  let ram: string;
  let q35: string;
  let mb: Manifest;
  let q35m: Manifest;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-qemu-'));
    mig = unpackFixture('membackend-32m.mig', dir);
    ram = unpackFixture('membackend-32m.ram', dir);
    q35 = unpackFixture('q35-default-64m.mig', dir);
    mb = readManifest('membackend-32m');
    q35m = readManifest('q35-default-64m');
    assert.equal(sha256File(mig), (mb as unknown as { unpacked_sha256: string }).unpacked_sha256);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('inspect lists exactly the blocks of the manifest, with offsets, counts, machine type and capabilities', () => {
    for (const [file, m] of [
      [mig, mb],
      [q35, q35m],
    ] as const) {
      const info = inspect(file);
      assert.equal(info.format, 'qemu-mapped-ram');
      assert.equal(info.state, 'complete');
      assert.equal(info.fileSize, m.file_size);
      assert.equal(info.machineType, m.machine);
      assert.deepEqual(info.capabilities, m.capabilities);
      assert.equal(info.streamOffset, 0);
      assert.equal(info.ramTotal, m.ram_total);
      assert.equal(info.ramEndOffset, m.ram_end_offset);
      assert.equal(info.ramSectionEnd, m.ram_section_end);
      assert.deepEqual(
        info.blocks.map((b) => ({
          name: b.name,
          used_length: b.length,
          page_size: b.pageSize,
          bitmap_offset: b.bitmapOffset,
          pages_offset: b.pagesOffset,
          pages_present: b.presentPages,
        })),
        m.blocks.map((b) => ({
          name: b.name,
          used_length: b.used_length,
          page_size: b.page_size,
          bitmap_offset: b.bitmap_offset,
          pages_offset: b.pages_offset,
          pages_present: b.pages_present,
        })),
      );
      for (const b of info.blocks) assert.equal(b.zeroPages, b.pages - b.presentPages);
    }
  });

  it('reads the bitmap least significant bit first: the clear bits of mem0 are exactly the zero pages of the pattern', () => {
    const image = openImage(mig);
    try {
      const t = image.readTables(0);
      assert.equal(image.blocks[0]!.name, 'mem0');
      assert.equal(t.present.length, 8192);
      assert.deepEqual([...t.present.subarray(0, 6)], [1, 1, 0, 1, 1, 0]);
      for (let i = 0; i < 8192; i++) assert.equal(t.present[i], isPatternZero(i) ? 0 : 1, `page ${i}`);
      assert.equal(t.presentCount, 4983);
      assert.ok(
        t.csums.every((v) => v === 0),
        'QEMU files have no checksums',
      );
      assert.equal(image.hasChecksums, false);
    } finally {
      image.close();
    }
  });

  it('the documented pattern regenerates membackend-32m.ram exactly', () => {
    assert.ok(memBackendPattern().equals(fs.readFileSync(ram)));
  });

  for (const channels of [1, 4]) {
    it(`load of mem0 with ${channels} channel(s) reproduces membackend-32m.ram byte for byte, into fresh and 0xAA-dirtied targets`, async (t) => {
      const d = tempDir(t);
      const fresh = path.join(d, 'fresh.ram');
      const dirty = path.join(d, 'dirty.ram');
      fillFile(dirty, 32 << 20, 0xaa);
      const r1 = await load({
        snapshot: mig,
        blocks: [{ name: 'mem0', path: fresh }],
        channels,
        batchBytes: 256 << 10,
      });
      const r2 = await load({
        snapshot: mig,
        blocks: [{ name: 'mem0', path: dirty }],
        channels,
        batchBytes: 256 << 10,
      });
      assert.equal(r1.format, 'qemu-mapped-ram');
      assert.equal(r1.verified, false);
      assert.deepEqual([r1.blocks[0]!.created, r2.blocks[0]!.created], [true, false]);
      assert.equal(r2.blocks[0]!.presentPages, 4983);
      assert.equal(r2.blocks[0]!.zeroPages, 3209);
      const want = fs.readFileSync(ram);
      assert.ok(fs.readFileSync(fresh).equals(want), 'fresh target differs');
      assert.ok(fs.readFileSync(dirty).equals(want), 'dirty target differs: stale 0xAA pages were left');
    });
  }

  it('load --dir writes every block with the digests of the manifest; names are encoded and stay inside DIR', async (t) => {
    for (const [file, m] of [
      [q35, q35m],
      [mig, mb],
    ] as const) {
      const d = tempDir(t);
      const out = path.join(d, 'blocks');
      const r = await load({ snapshot: file, dir: out, channels: 3 });
      assert.equal(r.blocks.length, m.blocks.length);
      assert.deepEqual(fs.readdirSync(d), ['blocks'], 'nothing written beside DIR');
      const entries = fs.readdirSync(out).sort();
      assert.deepEqual(entries, m.blocks.map((b) => encodeBlockName(b.name)).sort());
      assert.deepEqual(entries.map(decodeBlockName).sort(), m.blocks.map((b) => b.name).sort());
      assert.ok(entries.includes('0000%3A00%3A01.0%2Fvga.vram') && entries.includes('%2From%40etc%2Facpi%2Ftables'));
      for (const b of m.blocks) {
        const got = fs.readFileSync(path.join(out, encodeBlockName(b.name)));
        assert.equal(got.length, b.used_length, b.name);
        assert.equal(sha256(got), b.sha256, `block ${b.name}`);
      }
    }
  });

  it('verify passes; --against compares a block with a live file and names the differing pages (exit 1)', async (t) => {
    const ok = await verify({ snapshot: mig, against: [{ name: 'mem0', path: ram }], channels: 2 });
    assert.equal(ok.ok, true);
    assert.equal(ok.format, 'qemu-mapped-ram');
    assert.equal(ok.checksums, false);
    assert.deepEqual(ok.compared, ['mem0']);
    assert.equal(ok.blocks.length, 9);

    const d = tempDir(t);
    const live = path.join(d, 'live.ram');
    fs.copyFileSync(ram, live);
    patch(live, 5 * 4096 + 100, Buffer.from([0x42])); // a present page changed
    patch(live, 2 * 4096 + 7, Buffer.from([0x01])); // a zero page that is no longer zero
    const bad = await verify({ snapshot: mig, against: [{ name: 'mem0', path: live }], channels: 2 });
    assert.equal(bad.ok, false);
    assert.deepEqual(
      bad.failures.map((f) => [f.block, f.page, f.kind]),
      [
        ['mem0', 2, 'differs'],
        ['mem0', 5, 'differs'],
      ],
    );

    const cli = fixedram(['verify', mig, '--against', `mem0=${live}`, '--json']);
    assert.equal(cli.status, 1, cli.stderr);
    assert.equal(JSON.parse(cli.stdout).failureCount, 2);
    assert.equal(fixedram(['verify', mig, '--against', `mem0=${ram}`]).status, 0);
  });

  for (const variant of ['truncated-bitmap.mig', 'truncated-pages.mig']) {
    it(`${variant}: a clean exit-3 truncation error naming mem0, the offset and the file size; no target is touched`, (t) => {
      const d = tempDir(t);
      const file = unpackFixture(variant, d);
      const size = fs.statSync(file).size;
      const e = assertImageError(() => inspect(file), 'ERR_SNAPSHOT_TRUNCATED', { block: 'mem0' });
      assert.match(e.message, new RegExp(`file size is ${size} \\(0x${size.toString(16)}\\)`));
      assert.match(
        e.message,
        variant.includes('bitmap') ? /bitmap needs 1024 bytes at offset 0x89/ : /pages end at offset 0x2100000/,
      );

      const target = path.join(d, 'target.ram');
      fillFile(target, 32 << 20, 0x55);
      const before = fs.statSync(target);
      for (const args of [
        ['inspect', file, '--json'],
        ['verify', file, '--json'],
        ['load', file, '-b', `mem0=${target}`, '--json'],
        ['load', file, '--dir', path.join(d, 'out'), '--json'],
      ]) {
        const r = fixedram(args);
        assert.equal(r.status, 3, `${args[0]}: ${r.stderr}`);
        const o = JSON.parse(r.stdout);
        assert.equal(o.error.code, 'ERR_SNAPSHOT_TRUNCATED');
        assert.equal(o.error.block, 'mem0');
        assert.match(r.stderr, /truncated QEMU file: block 'mem0'/);
      }
      assert.equal(fs.statSync(target).mtimeMs, before.mtimeMs);
      assert.ok(fs.readFileSync(target).equals(Buffer.alloc(32 << 20, 0x55)), 'the target was modified');
      assert.equal(fs.existsSync(path.join(d, 'out')), false, 'load --dir created its directory for a bad file');
    });
  }

  it('truncations inside the block list, a header, a bitmap, a page region and an all-zero region are clean errors', (t) => {
    const d = tempDir(t);
    const vga = mb.blocks[1]!;
    const bios = mb.blocks[3]!;
    const rsdp = mb.blocks[8]!;
    const cases: [string, number, string | undefined, RegExp][] = [
      ['configuration section', 0x20, undefined, /subsection name needs/],
      ['RAM size record', 0x5c, undefined, /RAM size record needs 8 bytes at offset 0x58/],
      ['name of block 2', blockOffsets(vga).entry + 5, undefined, /RAM block 2 \(after 'mem0'\) name needs 21 bytes/],
      ['header of block 2', blockOffsets(vga).header + 10, vga.name, /mapped-ram header needs 28 bytes/],
      ['bitmap of pc.bios', bios.bitmap_offset + 3, bios.name, /bitmap needs 8 bytes/],
      ['pages of mem0', 0x100000 + 10 * 4096 + 1, 'mem0', /pages end at offset 0x2100000/],
      ['all-zero pages of vga.vram (QEMU: Unknown ramblock "")', 0x2800000, vga.name, /pages end at offset 0x3200000/],
      ['last byte of the last block', rsdp.pages_offset + 4095, rsdp.name, /pages end at offset 0x3901000/],
    ];
    for (const [what, cut, block, message] of cases) {
      const file = truncatedCopy(mig, path.join(d, 'cut.mig'), cut);
      const e = assertImageError(() => inspect(file), 'ERR_SNAPSHOT_TRUNCATED', { message });
      assert.equal(e.block, block, what);
      assert.match(e.message, new RegExp(`file size is ${cut} `), what);
    }
  });

  it('a file that ends before the END record of "ram" is an interrupted save: inspect reports it, load and verify refuse (exit 3)', async (t) => {
    const d = tempDir(t);
    const end = mb.ram_end_offset;
    for (const cut of [end, end + 4, end + 8, end + 13, end + 20, end + 36, mb.ram_section_end - 1]) {
      const file = truncatedCopy(mig, path.join(d, 'cut.mig'), cut);
      const info = inspect(file);
      assert.equal(info.state, 'incomplete', `cut at 0x${cut.toString(16)}`);
      assert.match(
        info.stateMessage!,
        /incomplete QEMU file: the file ends at offset .* before the END record of section 'ram'/,
      );
      assert.equal(info.blocks.length, 9, 'the blocks are still listed');
      await assert.rejects(load({ snapshot: file, blocks: [{ name: 'mem0', path: path.join(d, 'never.ram') }] }), {
        code: 'ERR_SNAPSHOT_INCOMPLETE',
        exitCode: 3,
      });
      await assert.rejects(verify({ snapshot: file }), { code: 'ERR_SNAPSHOT_INCOMPLETE' });
      assert.equal(fs.existsSync(path.join(d, 'never.ram')), false);
    }
    const r = fixedram(['load', path.join(d, 'cut.mig'), '--dir', path.join(d, 'out'), '--json']);
    assert.equal(r.status, 3);
    assert.equal(JSON.parse(r.stdout).error.code, 'ERR_SNAPSHOT_INCOMPLETE');
    const i = fixedram(['inspect', path.join(d, 'cut.mig'), '--json']);
    assert.equal(i.status, 0, i.stderr);
    assert.equal(JSON.parse(i.stdout).state, 'incomplete');
  });

  it('a file cut after the END record of "ram" (device state cut short) is refused by inspect, verify, load and convert (exit 3)', async (t) => {
    const d = tempDir(t);
    for (const cut of [mb.ram_section_end, mb.ram_section_end + 4000, mb.file_size - 1]) {
      const file = truncatedCopy(mig, path.join(d, `cut-${cut}.mig`), cut);
      for (const args of [
        ['inspect', file],
        ['verify', file],
        ['load', file, '--dir', path.join(d, 'out')],
        ['convert', file, '-o', path.join(d, 'out.fxr')],
      ]) {
        const r = fixedram(args);
        assert.equal(r.status, 3, `${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, /truncated QEMU file: the device state after the RAM section/);
      }
      assert.equal(fs.existsSync(path.join(d, 'out')), false);
      assert.equal(fs.existsSync(path.join(d, 'out.fxr')), false);
    }
  });

  it('an interrupted save (all-zero bitmaps, no END record) is refused, not read as empty RAM', async (t) => {
    const d = tempDir(t);
    const file = truncatedCopy(mig, path.join(d, 'interrupted.mig'), mb.ram_end_offset + 31);
    for (const b of mb.blocks) patch(file, b.bitmap_offset, Buffer.alloc(b.bitmap_bytes));
    const info = inspect(file);
    assert.equal(info.state, 'incomplete');
    assert.equal(
      info.blocks.reduce((s, b) => s + b.presentPages, 0),
      0,
    );
    await assert.rejects(load({ snapshot: file, dir: path.join(d, 'out') }), { code: 'ERR_SNAPSHOT_INCOMPLETE' });
    assert.equal(fs.existsSync(path.join(d, 'out')), false);
  });

  it('corrupt and hostile headers give clean exit-3 errors before anything is read or allocated', (t) => {
    const d = tempDir(t);
    const file = path.join(d, 'bad.mig');
    fs.copyFileSync(mig, file);
    const mem0 = mb.blocks[0]!;
    const vga = mb.blocks[1]!;
    const tables = mb.blocks[2]!;
    const loader = mb.blocks[7]!;
    const rsdp = mb.blocks[8]!;
    const h0 = blockOffsets(mem0).header;
    const R = mb.ram_end_offset;
    const cases: {
      what: string;
      at: number;
      bytes: Buffer;
      also?: [number, Buffer][];
      code: string;
      block?: string;
      message: RegExp;
    }[] = [
      {
        what: 'bitmap bit past the end',
        at: rsdp.bitmap_offset,
        bytes: Buffer.from([0x03]),
        code: 'ERR_SNAPSHOT_INVALID',
        block: rsdp.name,
        message: /bitmap bit 1 is set past the last page 0/,
      },
      {
        what: 'bitmap bit in the padding of the last word',
        at: tables.bitmap_offset + 7,
        bytes: Buffer.from([0x80]),
        code: 'ERR_SNAPSHOT_INVALID',
        block: tables.name,
        message: /bitmap bit 63 is set past the last page 31/,
      },
      {
        what: 'pages_offset not aligned',
        at: h0 + 20,
        bytes: be64(0x100800),
        code: 'ERR_SNAPSHOT_INVALID',
        block: 'mem0',
        message: /pages_offset 0x100800 is not aligned/,
      },
      {
        what: 'pages_offset inside the bitmap',
        at: h0 + 20,
        bytes: be64(0),
        code: 'ERR_SNAPSHOT_INVALID',
        block: 'mem0',
        message: /overlaps its bitmap/,
      },
      {
        what: 'mapped-ram header version 2',
        at: h0,
        bytes: be32(2),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        block: 'mem0',
        message: /mapped-ram header version 2/,
      },
      {
        what: 'mapped-ram header version 0',
        at: h0,
        bytes: be32(0),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /version 0/,
      },
      {
        what: 'stream version 2',
        at: 4,
        bytes: be32(2),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /stream version 2/,
      },
      {
        what: 'page size not a power of two',
        at: h0 + 4,
        bytes: be64(3000),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /page size 3000/,
      },
      { what: 'page size 0', at: h0 + 4, bytes: be64(0), code: 'ERR_SNAPSHOT_INVALID', message: /page size 0 / },
      {
        what: 'page size 2^63',
        at: h0 + 4,
        bytes: be64(1n << 63n),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /out of range/,
      },
      {
        what: 'used_length not a multiple of the page size',
        at: h0 - 8,
        bytes: be64(0x2000000 + 512),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /not a multiple of its page size/,
      },
      {
        what: 'used_length above the RAM total',
        at: h0 - 8,
        bytes: be64(0x4000000),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /exceeds what is left of the RAM total/,
      },
      {
        what: 'used_length 2^63',
        at: h0 - 8,
        bytes: be64(1n << 63n),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /out of range/,
      },
      {
        what: 'RAM total and used_length of 1 PiB (nothing allocated)',
        at: 0x58,
        bytes: be64((1n << 50n) | 4n),
        also: [
          [h0 - 8, be64(1n << 50n)],
          [h0 + 20, be64(1n << 36n)],
        ],
        code: 'ERR_SNAPSHOT_TRUNCATED',
        message: /block 'mem0' bitmap needs 34359738368 bytes/,
      },
      {
        what: 'bitmap_offset elsewhere',
        at: h0 + 12,
        bytes: be64(0x1000),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /not right after its header/,
      },
      {
        what: 'duplicate block names',
        at: blockOffsets(loader).entry + 1,
        bytes: Buffer.from(vga.name),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /duplicate RAM block '0000:00:01.0\/vga.vram'/,
      },
      {
        what: 'empty block name',
        at: blockOffsets(mem0).entry,
        bytes: Buffer.from([0]),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /must not be empty/,
      },
      {
        what: 'NUL in a block name',
        at: blockOffsets(mem0).entry + 2,
        bytes: Buffer.from([0]),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /must not contain NUL/,
      },
      {
        what: 'RAM size record without its flag',
        at: 0x5f,
        bytes: Buffer.from([0x08]),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /expected the RAM size record/,
      },
      {
        what: 'no end-of-section marker after the blocks',
        at: R + 7,
        bytes: Buffer.from([0x11]),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /expected the end-of-section marker/,
      },
      {
        what: 'bad section footer',
        at: R + 12,
        bytes: Buffer.from([0x09]),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /bad section footer/,
      },
      {
        what: 'a record of another section before END',
        at: R + 14,
        bytes: be32(7),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /another iterable section \(id 7\)/,
      },
      {
        what: 'another section starting before END',
        at: R + 13,
        bytes: Buffer.from([0x01]),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /another section starts/,
      },
      {
        what: 'an unknown migration command',
        at: R + 32,
        bytes: Buffer.from([0x00, 0x03]),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /migration command 3/,
      },
      {
        what: 'garbage instead of a record',
        at: R + 31,
        bytes: Buffer.from([0x55]),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /unexpected record type 0x55/,
      },
      {
        what: 'capability list without mapped-ram',
        at: 0x3d,
        bytes: Buffer.from('mapped-rom'),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /not saved with the mapped-ram capability \(capabilities: mapped-rom\)/,
      },
      {
        what: 'unknown configuration subsection',
        at: 0x19 + 26,
        bytes: Buffer.from('z'),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /unknown configuration subsection 'configuration\/capabilitiez'/,
      },
      {
        what: 'machine type length 2^32-1',
        at: 9,
        bytes: be32(0xffffffff),
        code: 'ERR_SNAPSHOT_INVALID',
        message: /machine type length/,
      },
      {
        what: 'first section not ram',
        at: 0x4d,
        bytes: Buffer.from('rom'),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /first section is 'rom'/,
      },
      {
        what: 'ram section version 3',
        at: 0x54,
        bytes: be32(3),
        code: 'ERR_SNAPSHOT_UNSUPPORTED',
        message: /section 'ram' version 3/,
      },
    ];
    const pristine = sha256File(file);
    const read = (at: number, n: number): Buffer => {
      const b = Buffer.alloc(n);
      const fd = fs.openSync(file, 'r');
      fs.readSync(fd, b, 0, n, at);
      fs.closeSync(fd);
      return b;
    };
    for (const c of cases) {
      const edits: [number, Buffer][] = [[c.at, c.bytes], ...(c.also ?? [])];
      const olds = edits.map(([at, b]): [number, Buffer] => [at, read(at, b.length)]);
      for (const [at, b] of edits) patch(file, at, b);
      try {
        const e = assertImageError(() => inspect(file), c.code, { message: c.message });
        if (c.block !== undefined) assert.equal(e.block, c.block, c.what);
        assert.equal(e.path, file, c.what);
      } catch (err) {
        (err as Error).message = `${c.what}: ${(err as Error).message}`;
        throw err;
      } finally {
        for (const [at, b] of olds.reverse()) patch(file, at, b);
      }
    }
    assert.equal(sha256File(file), pristine);
    // one through the CLI, for the exit status and the single JSON object
    patch(file, rsdp.bitmap_offset, Buffer.from([0x03]));
    const r = fixedram(['verify', file, '--json']);
    assert.equal(r.status, 3);
    assert.equal(r.stdout.trim().split('\n').length, 1);
    assert.equal(JSON.parse(r.stdout).error.code, 'ERR_SNAPSHOT_INVALID');
  });

  it('x-ignore-shared files are refused cleanly (their layout differs between QEMU versions)', (t) => {
    const d = tempDir(t);
    const head = fs.readFileSync(mig).subarray(0, 4096);
    const caps = Buffer.concat([
      be32(2),
      Buffer.from([10]),
      Buffer.from('mapped-ram'),
      Buffer.from([15]),
      Buffer.from('x-ignore-shared'),
    ]);
    const file = path.join(d, 'ignore-shared.mig');
    fs.writeFileSync(file, Buffer.concat([head.subarray(0, 0x38), caps, head.subarray(0x47)]));
    assertImageError(() => inspect(file), 'ERR_SNAPSHOT_UNSUPPORTED', { message: /x-ignore-shared/ });
  });

  it('libvirt save image ("sparse"): inspect reports the wrapper and the stream offset; the RAM is read through it', async (t) => {
    const d = tempDir(t);
    const file = path.join(d, 'domain.save');
    const streamOffset = wrapInLibvirt(mig, file, mb.blocks[0]!, {
      dataLen: 70000,
      domainName: 'fxr-vm',
      wasRunning: true,
    });
    assert.equal(streamOffset, 92 + 70000);
    const info = inspect(file);
    assert.equal(info.format, 'qemu-mapped-ram');
    assert.equal(info.state, 'complete');
    assert.equal(info.streamOffset, streamOffset);
    assert.deepEqual(info.libvirt, {
      magic: 'LibvirtQemudSave',
      version: 2,
      dataLen: 70000,
      wasRunning: true,
      format: 'sparse',
      formatCode: 6,
      cookieOffset: (info.libvirt as { cookieOffset: number }).cookieOffset,
      domainName: 'fxr-vm',
    });
    assert.equal(info.blocks[0]!.bitmapOffset, mb.blocks[0]!.bitmap_offset + streamOffset);
    assert.deepEqual(
      info.blocks.map((b) => [b.name, b.pagesOffset, b.presentPages]),
      mb.blocks.map((b) => [b.name, b.pages_offset, b.pages_present]),
    );

    const target = path.join(d, 'mem0.ram');
    fillFile(target, 32 << 20, 0xaa);
    await load({ snapshot: file, blocks: [{ name: 'mem0', path: target }], channels: 2 });
    assert.ok(fs.readFileSync(target).equals(fs.readFileSync(ram)));
    assert.equal((await verify({ snapshot: file, against: [{ name: 'mem0', path: ram }] })).ok, true);
    const j = fixedram(['inspect', file, '--json']);
    assert.equal(j.status, 0, j.stderr);
    assert.equal(JSON.parse(j.stdout).libvirt.magic, 'LibvirtQemudSave');

    // a save libvirt did not finish, other formats, the other byte order
    patch(file, 0, Buffer.from('LibvirtQemudPart'));
    const part = inspect(file);
    assert.equal(part.state, 'incomplete');
    assert.match(part.stateMessage!, /LibvirtQemudPart/);
    await assert.rejects(load({ snapshot: file, blocks: [{ name: 'mem0', path: target }] }), {
      code: 'ERR_SNAPSHOT_INCOMPLETE',
    });
    const partCut = truncatedCopy(file, path.join(d, 'part-cut.save'), 0x100000 + 5000);
    assertImageError(() => inspect(partCut), 'ERR_SNAPSHOT_INCOMPLETE', {
      block: 'mem0',
      message: /LibvirtQemudPart.*pages end/,
    });
    patch(file, 0, Buffer.from('LibvirtQemudSave'));
    const fmt = Buffer.alloc(4);
    fmt.writeUInt32LE(3);
    patch(file, 28, fmt);
    assertImageError(() => inspect(file), 'ERR_SNAPSHOT_UNSUPPORTED', { message: /format 'xz'/ });
    fmt.writeUInt32LE(6);
    patch(file, 28, fmt);
    patch(file, 16, be32(2));
    assertImageError(() => inspect(file), 'ERR_SNAPSHOT_UNSUPPORTED', { message: /other byte order/ });
    patch(file, 16, Buffer.from([2, 0, 0, 0]));
    fs.truncateSync(file, 92 + 100);
    assertImageError(() => inspect(file), 'ERR_SNAPSHOT_TRUNCATED');
  });

  it('inspect --json through the CLI: QEMU names exactly, wrapper-free stream offset 0', () => {
    const r = fixedram(['inspect', q35, '--json']);
    assert.equal(r.status, 0, r.stderr);
    const o = JSON.parse(r.stdout);
    assert.equal(o.ok, true);
    assert.equal(o.format, 'qemu-mapped-ram');
    assert.equal(o.machineType, 'pc-q35-10.0');
    assert.deepEqual(o.capabilities, ['mapped-ram']);
    assert.deepEqual(
      o.blocks.map((b: { name: string }) => b.name),
      q35m.blocks.map((b) => b.name),
    );
    for (const b of o.blocks) {
      for (const k of ['name', 'length', 'pageSize', 'bitmapOffset', 'pagesOffset', 'presentPages'])
        assert.ok(k in b, k);
    }
    const human = fixedram(['inspect', q35]);
    assert.equal(human.status, 0);
    assert.match(human.stdout, /qemu-mapped-ram, 93549293 bytes, complete/);
    assert.match(human.stdout, /\/rom@etc\/acpi\/tables/);
  });

  it('does not leak file descriptors when QEMU files fail to open', async (t) => {
    const d = tempDir(t);
    const cut = truncatedCopy(mig, path.join(d, 'cut.mig'), mb.ram_end_offset + 20);
    const trunc = truncatedCopy(mig, path.join(d, 'trunc.mig'), 0x100000 + 4096);
    const before = openFds();
    for (let i = 0; i < 20; i++) {
      assert.throws(() => inspect(trunc), { code: 'ERR_SNAPSHOT_TRUNCATED' });
      assert.equal(inspect(cut).state, 'incomplete');
      await assert.rejects(load({ snapshot: cut, dir: path.join(d, 'out') }), { code: 'ERR_SNAPSHOT_INCOMPLETE' });
      await assert.rejects(verify({ snapshot: trunc }), { code: 'ERR_SNAPSHOT_TRUNCATED' });
    }
    assert.equal(openFds(), before);
  });
});
