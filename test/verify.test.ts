/**
 * `fixedram verify` against damaged snapshots: a bit flipped in every region (a spread of offsets in
 * each, several blocks), truncation in every region, comparison with live files, the failure list,
 * the success summary, `xxhsum -H3` as an independent oracle, and `load` refusing what verify refuses.
 * The snapshots are real files written by save() (test/support/fuzz-driver.ts, deterministic bases).
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FixedramError } from '../src/errors';
import { kEntryBytes, kHeaderBytes, type BlockLayout } from '../src/format';
import { inspect } from '../src/inspect';
import { load } from '../src/load';
import { native } from '../src/native';
import { save } from '../src/save';
import { verify, type VerifyResult } from '../src/verify';
import { fixedram } from './support/cli';
import { buildBase, deterministicKind, le, mutate, type Base, type Mutation } from './support/fuzz-driver';
import { makeBlock, stampPage } from './support/stamp';
import { tempDir } from './support/tmp';
import { requirePrereq } from './support/prereq';

const hex = (v: bigint): string => v.toString(16).padStart(16, '0');
const hash = (b: Uint8Array): string => hex(native().hash64(b));

let dir: string;
let mixed: Base;
let large: Base;
let counter = 0;

const cleanup: (() => void)[] = [];
after(() => cleanup.forEach((fn) => fn()));
before(async () => {
  dir = tempDir({ after: (fn: () => void) => cleanup.push(fn) });
  mixed = await buildBase(dir, 'mixed');
  large = await buildBase(dir, 'large');
});

function block(base: Base, name: string): BlockLayout {
  const b = base.header.blocks.find((x) => x.name === name);
  assert.ok(b, name);
  return b;
}

/** Writes base + mutation to a fresh file and returns its path. */
function damaged(base: Base, m: Mutation): string {
  const file = path.join(dir, `case-${counter++}.fxr`);
  fs.writeFileSync(file, mutate(base, m));
  return file;
}

const storedSum = (base: Base, b: BlockLayout, page: number): string =>
  hex(base.bytes.readBigUInt64LE(b.checksumsOffset + 8 * page));

/** The pages of a block that the stamp pattern makes present / absent. */
const pagesOfKind = (b: BlockLayout, present: boolean): number[] =>
  Array.from({ length: b.pages }, (_, i) => i).filter((i) => (deterministicKind(i, b.pages) === 'stamp') === present);

async function rejects3(
  file: string,
  expected: { code: string; message: string; offset?: number; block?: string; page?: number },
) {
  await assert.rejects(verify({ snapshot: file, channels: 2 }), (err: unknown) => {
    assert.ok(err instanceof FixedramError, String(err));
    assert.equal(err.exitCode, 3);
    assert.equal(err.code, expected.code);
    assert.equal(err.message, expected.message);
    if ('offset' in expected) assert.equal(err.offset, expected.offset);
    if ('block' in expected) assert.equal(err.block, expected.block);
    if ('page' in expected) assert.equal(err.page, expected.page);
    return true;
  });
}

describe('verify: a single bit flip in each region', () => {
  it('is exit 0 on the undamaged snapshots (the control)', async () => {
    for (const base of [mixed, large]) {
      const r = await verify({ snapshot: base.file, channels: 2 });
      assert.equal(r.ok, true, JSON.stringify(r.failures));
      assert.equal(r.failureCount, 0);
    }
  });

  it('header: each field is refused with its own message and offset (exit 3)', async () => {
    const cases: [number, number, { code: string; message: string; offset: number }][] = [
      [
        8,
        0,
        {
          code: 'ERR_SNAPSHOT_UNSUPPORTED',
          message: 'unsupported snapshot version 0 (this fixedram reads 1)',
          offset: 8,
        },
      ],
      [
        11,
        7,
        {
          code: 'ERR_SNAPSHOT_UNSUPPORTED',
          message: 'unsupported snapshot version 2147483649 (this fixedram reads 1)',
          offset: 8,
        },
      ],
      [12, 0, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: header checksum mismatch', offset: 56 }],
      [12, 2, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: header checksum mismatch', offset: 56 }],
      [16, 0, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: header checksum mismatch', offset: 56 }],
      [
        18,
        1,
        { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: block count 131076 exceeds 65536', offset: 16 },
      ],
      [20, 3, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: bad block table geometry', offset: 20 }],
      [24, 6, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: bad block table geometry', offset: 20 }],
      [33, 0, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: header checksum mismatch', offset: 56 }],
      [47, 7, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: header checksum mismatch', offset: 56 }],
      [50, 4, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: header checksum mismatch', offset: 56 }],
      [56, 0, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: header checksum mismatch', offset: 56 }],
      [63, 7, { code: 'ERR_SNAPSHOT_INVALID', message: 'corrupt header: header checksum mismatch', offset: 56 }],
    ];
    for (const [offset, bit, expected] of cases) {
      await rejects3(damaged(mixed, { kind: 'flip', offset, bit }), expected);
    }
    for (const offset of [0, 3, 7]) {
      const file = damaged(mixed, { kind: 'flip', offset, bit: offset });
      await rejects3(file, {
        code: 'ERR_SNAPSHOT_INVALID',
        offset: 0,
        message: `'${file}' is not a fixedram snapshot or a QEMU mapped-ram file (unknown magic)`,
      });
    }
  });

  it('block table: every entry and field, in both bases, fails the header checksum (exit 3)', async () => {
    for (const base of [mixed, large]) {
      for (let i = 0; i < base.header.blocks.length; i++) {
        for (const o of [0, 2, 4, 9, 16, 31, 40, 48, 56, 64, 65, 200, 319]) {
          await rejects3(damaged(base, { kind: 'flip', offset: kHeaderBytes + i * kEntryBytes + o, bit: o % 8 }), {
            code: 'ERR_SNAPSHOT_INVALID',
            message: 'corrupt header: header checksum mismatch',
            offset: 56,
          });
        }
      }
    }
  });

  it('bitmap and checksum table: the metadata checksum names the block and its tables (exit 3)', async () => {
    const cases: [Base, string][] = [
      [mixed, 'mem0'],
      [mixed, '0000:00:01.0/vga.vram'],
      [mixed, 'tail'],
      [large, 'pc.ram'],
      [large, '/rom@etc/acpi/tables'],
    ];
    for (const [base, name] of cases) {
      const b = block(base, name);
      const spread = [
        b.bitmapOffset,
        b.bitmapOffset + b.bitmapBytes - 1,
        b.checksumsOffset,
        b.checksumsOffset + 13,
        b.checksumsOffset + b.checksumsBytes - 1,
        b.checksumsOffset + Math.floor(b.checksumsBytes / 2),
      ];
      for (const offset of spread) {
        await rejects3(damaged(base, { kind: 'flip', offset, bit: offset % 8 }), {
          code: 'ERR_SNAPSHOT_INVALID',
          block: name,
          offset: b.bitmapOffset,
          message:
            `corrupt metadata: the bitmap or checksum table of block '${name}' fails its checksum ` +
            `(bitmap at 0x${b.bitmapOffset.toString(16)}, checksums at 0x${b.checksumsOffset.toString(16)})`,
        });
      }
    }
  });

  it('page data of several blocks: exit 1 naming block, page, offset, expected and actual checksum', async () => {
    const cases: [Base, string, number, number][] = []; // base, block, page, byte in page
    const m0 = block(mixed, 'mem0');
    const present0 = pagesOfKind(m0, true);
    cases.push(
      [mixed, 'mem0', present0[0]!, 0],
      [mixed, 'mem0', present0[57]!, 4095],
      [mixed, 'mem0', present0.at(-1)!, 2048],
    );
    const vga = block(mixed, '0000:00:01.0/vga.vram');
    cases.push(
      [mixed, vga.name, pagesOfKind(vga, true)[0]!, 17],
      [mixed, vga.name, pagesOfKind(vga, true).at(-1)!, 4000],
    );
    cases.push([mixed, 'tail', 1, 100]);
    cases.push(
      [large, 'pc.ram', 0, 65535],
      [large, 'pc.ram', pagesOfKind(block(large, 'pc.ram'), true).at(-1)!, 30000],
    );
    for (const [base, name, page, byte] of cases) {
      const b = block(base, name);
      const offset = b.pagesOffset + page * b.pageSize + byte;
      const file = damaged(base, { kind: 'flip', offset, bit: 5 });
      const r = await verify({ snapshot: file, channels: 3, batchBytes: 8 * b.pageSize });
      const pageStart = b.pagesOffset + page * b.pageSize;
      const actual = hash(fs.readFileSync(file).subarray(pageStart, pageStart + b.pageSize));
      const expected = storedSum(base, b, page);
      assert.equal(r.ok, false);
      assert.equal(r.failureCount, 1);
      assert.deepEqual(r.failures, [
        {
          block: name,
          page,
          offset: pageStart,
          kind: 'checksum',
          expected,
          actual,
          message: `block '${name}' page ${page} (offset 0x${pageStart.toString(16)}): checksum mismatch (expected ${expected}, got ${actual})`,
        },
      ]);
    }
  });

  it('an absent page (a hole) and the padding must read as zero: exit 1 naming where', async () => {
    const m0 = block(mixed, 'mem0');
    for (const page of [pagesOfKind(m0, false)[0]!, 196, 199]) {
      const at = m0.pagesOffset + page * 4096;
      const r = await verify({ snapshot: damaged(mixed, { kind: 'flip', offset: at + 99, bit: 0 }), channels: 2 });
      assert.equal(r.failureCount, 1);
      assert.deepEqual(
        { ...r.failures[0], actual: undefined },
        {
          block: 'mem0',
          page,
          offset: at,
          kind: 'absent-not-zero',
          actual: undefined,
          message: `block 'mem0' page ${page} (offset 0x${at.toString(16)}): page absent from the bitmap holds non-zero data`,
        },
      );
    }
    // the padding after the metadata (unaligned start, aligned middle, last byte) and between page regions
    const pads = mixed.regions.filter((r) => r.what === 'padding');
    assert.equal(pads.length, 3);
    const vga = '0000:00:01.0/vga.vram';
    const first = `padding at 0xe10-0x100000 (between the checksum table of 'tail' and the pages of 'mem0')`;
    const spots: [number, string, string][] = [
      [pads[0]!.start, 'mem0', first],
      [pads[0]!.start + 500, 'mem0', first],
      [8192 + 7, 'mem0', first],
      [pads[0]!.end - 1, 'mem0', first],
      [
        pads[1]!.start + 4096 * 3,
        vga,
        `padding at 0x1c8000-0x200000 (between the pages of 'mem0' and the pages of '${vga}')`,
      ],
      [
        pads[2]!.end - 4097,
        'tail',
        `padding at 0x246000-0x300000 (between the pages of '${vga}' and the pages of 'tail')`,
      ],
    ];
    for (const [offset, name, where] of spots) {
      const r = await verify({ snapshot: damaged(mixed, { kind: 'flip', offset, bit: 7 }), channels: 1 });
      assert.equal(r.ok, false);
      assert.deepEqual(r.failures, [
        {
          block: name,
          offset,
          kind: 'padding-not-zero',
          message: `${where} holds non-zero data at offset 0x${offset.toString(16)}`,
        },
      ]);
    }
  });

  it('through the CLI: exit 1 or 3 by region, the failure on stdout (--json: the same as one object)', () => {
    const m0 = block(mixed, 'mem0');
    const page = pagesOfKind(m0, true)[10]!;
    const pageStart = m0.pagesOffset + page * 4096;
    const dataFile = damaged(mixed, { kind: 'flip', offset: pageStart + 1, bit: 1 });
    const actual = hash(fs.readFileSync(dataFile).subarray(pageStart, pageStart + 4096));
    const expected = storedSum(mixed, m0, page);
    const human = fixedram(['verify', dataFile, '-j', '2', '--progress', 'none']);
    assert.equal(human.status, 1, human.stderr);
    const lines = human.stdout.split('\n');
    assert.equal(
      lines[0],
      `FAIL block 'mem0' page ${page} (offset 0x${pageStart.toString(16)}): checksum mismatch ` +
        `(expected ${expected}, got ${actual})`,
    );
    assert.match(
      lines[1]!,
      new RegExp(`^FAILED: 1 failure: ${dataFile} \\(fixedram\\), 4 blocks, 175 pages present, 100 zero, `),
    );
    const json = fixedram(['verify', dataFile, '--json']);
    assert.equal(json.status, 1);
    const o = JSON.parse(json.stdout);
    assert.equal(o.ok, false);
    assert.equal(o.failureCount, 1);
    assert.deepEqual(
      o.failures.map((f: Record<string, unknown>) => [f.block, f.page, f.offset, f.kind, f.expected, f.actual]),
      [['mem0', page, pageStart, 'checksum', expected, actual]],
    );

    const table = fixedram(['verify', damaged(mixed, { kind: 'flip', offset: 300, bit: 3 }), '--json']);
    assert.equal(table.status, 3);
    assert.deepEqual(JSON.parse(table.stdout).error.code, 'ERR_SNAPSHOT_INVALID');
    const vga = block(mixed, '0000:00:01.0/vga.vram');
    const bm = fixedram(['verify', damaged(mixed, { kind: 'flip', offset: vga.checksumsOffset + 8, bit: 0 })]);
    assert.equal(bm.status, 3);
    assert.match(
      bm.stderr,
      /^fixedram: error: corrupt metadata: the bitmap or checksum table of block '0000:00:01.0\/vga.vram' fails its checksum/,
    );
    assert.equal(bm.stdout, '');
  });
});

describe('verify: truncation', () => {
  it('is exit 3 with the offset and the region it cuts, in every region', async () => {
    const m0 = block(mixed, 'mem0');
    const vga = block(mixed, '0000:00:01.0/vga.vram');
    const size = mixed.bytes.length;
    const cut = (length: number): string => damaged(mixed, { kind: 'truncate', length });
    const trunc = (length: number, where: string) => ({
      code: 'ERR_SNAPSHOT_TRUNCATED',
      offset: length,
      message: `truncated snapshot: file size is ${length} (0x${length.toString(16)}), expected ${size}${where}`,
    });
    const empty = cut(0);
    await rejects3(empty, {
      code: 'ERR_SNAPSHOT_TRUNCATED',
      offset: 0,
      message: `'${empty}' is too short (0 bytes) to be a snapshot`,
    });
    const seven = cut(7);
    await rejects3(seven, {
      code: 'ERR_SNAPSHOT_TRUNCATED',
      offset: 7,
      message: `'${seven}' is too short (7 bytes) to be a snapshot`,
    });
    await rejects3(cut(40), {
      code: 'ERR_SNAPSHOT_TRUNCATED',
      offset: 40,
      message: 'truncated snapshot: the 64-byte header is cut at offset 40',
    });
    await rejects3(cut(63), {
      code: 'ERR_SNAPSHOT_TRUNCATED',
      offset: 63,
      message: 'truncated snapshot: the 64-byte header is cut at offset 63',
    });
    for (const length of [64, 64 + 320 + 10, 1343]) {
      await rejects3(cut(length), {
        code: 'ERR_SNAPSHOT_TRUNCATED',
        offset: length,
        message: `truncated snapshot: the block table needs 1280 bytes at offset 64, file size is ${length}`,
      });
    }
    await rejects3(cut(m0.bitmapOffset + 5), trunc(m0.bitmapOffset + 5, " inside the bitmap of block 'mem0'"));
    await rejects3(cut(vga.bitmapOffset + 1), trunc(vga.bitmapOffset + 1, ` inside the bitmap of block '${vga.name}'`));
    await rejects3(
      cut(m0.checksumsOffset + 800),
      trunc(m0.checksumsOffset + 800, " inside the checksum table of block 'mem0'"),
    );
    await rejects3(cut(4096), trunc(4096, " before the pages of block 'mem0'"));
    await rejects3(
      cut(m0.pagesOffset + 4096 * 3 + 1),
      trunc(m0.pagesOffset + 4096 * 3 + 1, " inside the pages of block 'mem0'"),
    );
    await rejects3(
      cut(vga.pagesOffset + 4096 * 69),
      trunc(vga.pagesOffset + 4096 * 69, ` inside the pages of block '${vga.name}'`),
    );
    await rejects3(cut(size - 1), trunc(size - 1, " inside the pages of block 'tail'"));
    // one byte too many is invalid, not truncated
    await rejects3(damaged(mixed, { kind: 'append', length: 1, byte: 0 }), {
      code: 'ERR_SNAPSHOT_INVALID',
      offset: size,
      message: `snapshot has 1 unexpected bytes after offset 0x${size.toString(16)}`,
    });
  });

  it('through the CLI: exit 3 and the message on stderr, for a spread of cuts', () => {
    for (const length of [5, 100, 2000, 1 << 20, mixed.bytes.length - 1]) {
      const file = damaged(mixed, { kind: 'truncate', length });
      const r = fixedram(['verify', file]);
      assert.equal(r.status, 3, `${length}: ${r.stderr}`);
      assert.match(r.stderr, /^fixedram: error: (truncated snapshot|'.*' is too short \(5 bytes\))/);
      const l = fixedram(['load', file, '-b', `mem0=${path.join(dir, `t-${length}.bin`)}`]);
      assert.equal(l.status, 3);
      assert.equal(fs.existsSync(path.join(dir, `t-${length}.bin`)), false);
    }
  });
});

describe('verify --against a live file', () => {
  it('finds a single changed byte in a 64 MiB block and reports its page', async (t) => {
    const d = tempDir(t);
    const live = path.join(d, 'ram');
    const pages = 16384;
    makeBlock(live, 1, pages, { kind: (i, n) => (deterministicKind(i, n) === 'hole' ? 'hole' : 'stamp') });
    const snap = path.join(d, 'snap.fxr');
    await save({ output: snap, blocks: [{ name: 'ram', path: live }], fsync: false, channels: 2 });
    const same = fixedram(['verify', snap, '--against', `ram=${live}`, '-j', '2']);
    assert.equal(same.status, 0, same.stderr);
    assert.match(same.stdout, /^OK: .*, compared with live: ram\n$/);

    const base = inspect(snap).blocks[0]!.pagesOffset;
    assert.equal(base, 1 << 20);
    // a byte in a present page, one in an absent (hole) page: each a difference at its page
    for (const [page, byte] of [
      [12345, 4095],
      [pages - 1, 0],
      [64 * 3 + 5, 77],
    ] as const) {
      const fd = fs.openSync(live, 'r+');
      const old = Buffer.alloc(1);
      fs.readSync(fd, old, 0, 1, page * 4096 + byte);
      fs.writeSync(fd, Buffer.from([old[0]! ^ 0x10]), 0, 1, page * 4096 + byte);
      const r = fixedram(['verify', snap, '--against', `ram=${live}`, '--json', '-j', '3']);
      fs.writeSync(fd, old, 0, 1, page * 4096 + byte);
      fs.closeSync(fd);
      assert.equal(r.status, 1, r.stderr);
      const o = JSON.parse(r.stdout);
      assert.equal(o.failureCount, 1);
      assert.deepEqual(
        o.failures.map((f: Record<string, unknown>) => [f.block, f.page, f.offset, f.kind]),
        [['ram', page, base + page * 4096, 'differs']],
      );
      assert.equal(
        o.failures[0].message,
        `block 'ram' page ${page} (offset 0x${(base + page * 4096).toString(16)}): differs from the live file`,
      );
    }
  });

  it('a live file shorter or longer than the block is a difference (exit 1), not a crash', async () => {
    const m0 = mixed.sources['mem0']!;
    for (const delta of [-4096, -1, 1, 4096]) {
      const live = path.join(dir, `live-${delta}.ram`);
      const bytes = fs.readFileSync(m0);
      fs.writeFileSync(
        live,
        delta < 0 ? bytes.subarray(0, bytes.length + delta) : Buffer.concat([bytes, Buffer.alloc(delta)]),
      );
      const r = fixedram(['verify', mixed.file, '--against', `mem0=${live}`, '--json']);
      assert.equal(r.status, 1, r.stderr);
      const o = JSON.parse(r.stdout);
      assert.deepEqual(o.failures, [
        {
          block: 'mem0',
          kind: 'size',
          message: `block 'mem0': live file '${live}' is ${bytes.length + delta} bytes, the block is ${bytes.length} bytes`,
        },
      ]);
    }
    const empty = path.join(dir, 'live-empty.ram');
    fs.writeFileSync(empty, '');
    assert.equal(fixedram(['verify', mixed.file, '--against', `empty=${empty}`]).status, 0);
    const missing = fixedram(['verify', mixed.file, '--against', `nope=${empty}`]);
    assert.equal(missing.status, 2);
    assert.match(
      missing.stderr,
      /block 'nope' is not in '.*' \(it has: 'mem0', '0000:00:01.0\/vga.vram', 'empty', 'tail'\)/,
    );
    const gone = fixedram(['verify', mixed.file, '--against', `mem0=${path.join(dir, 'gone.ram')}`]);
    assert.equal(gone.status, 4);
    assert.match(gone.stderr, /ENOENT: no such file or directory, open '.*gone.ram'/);
  });

  it('an absent page equals a zero page of the live file, and a zeroed present page differs', async () => {
    const live = path.join(dir, 'live-zeroed.ram');
    fs.copyFileSync(mixed.sources['0000:00:01.0/vga.vram']!, live);
    const vga = block(mixed, '0000:00:01.0/vga.vram');
    const fd = fs.openSync(live, 'r+');
    const zeroPages = pagesOfKind(vga, false);
    for (const p of zeroPages) fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, p * 4096); // explicit zeros: still equal
    const r0 = await verify({ snapshot: mixed.file, against: [{ name: vga.name, path: live }] });
    assert.equal(r0.ok, true, JSON.stringify(r0.failures));
    const victim = pagesOfKind(vga, true)[3]!;
    fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, victim * 4096);
    fs.closeSync(fd);
    const r = await verify({ snapshot: mixed.file, against: [{ name: vga.name, path: live }] });
    assert.deepEqual(
      r.failures.map((f) => [f.block, f.page, f.kind, f.actual]),
      [[vga.name, victim, 'differs', hash(Buffer.alloc(4096))]],
    );
  });
});

describe('verify: the failure list and the summary', () => {
  it('lists the first 100 failures, then a count; --max-failures and --json agree', async () => {
    const m0 = block(mixed, 'mem0');
    const bytes = Buffer.from(mixed.bytes);
    const present = pagesOfKind(m0, true);
    assert.equal(present.length, 128);
    for (const p of present.slice(0, 120)) bytes[m0.pagesOffset + p * 4096 + 9]! ^= 0xff;
    const file = path.join(dir, 'many.fxr');
    fs.writeFileSync(file, bytes);
    const r = fixedram(['verify', file, '-j', '3']);
    assert.equal(r.status, 1);
    const lines = r.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 102);
    assert.deepEqual(
      lines.slice(0, 100).map((l) => /page (\d+) /.exec(l)![1]),
      present.slice(0, 100).map(String),
    );
    assert.equal(lines[100], '... and 20 more');
    assert.match(lines[101]!, /^FAILED: 120 failures: /);
    const j = JSON.parse(fixedram(['verify', file, '--json', '--max-failures', '3']).stdout);
    assert.equal(j.failureCount, 120);
    assert.deepEqual(
      j.failures.map((f: { page: number }) => f.page),
      present.slice(0, 3),
    );
    const none = fixedram(['verify', file, '--max-failures', '0']);
    assert.equal(none.status, 1, none.stderr);
    assert.deepEqual(none.stdout.split('\n').slice(0, 1), ['... and 120 more']);
  });

  it('on success prints blocks, pages present/zero, bytes checked, time and throughput', () => {
    const r = fixedram(['verify', mixed.file]);
    assert.equal(r.status, 0);
    const bytes = mixed.header.blocks.reduce((s, b) => s + b.length, 0);
    assert.match(
      r.stdout,
      new RegExp(
        `^OK: ${mixed.file.replace(/[.]/g, '\\.')} \\(fixedram\\), 4 blocks, 175 pages present, 100 zero, ` +
          `${(bytes / 2 ** 20).toFixed(1)} MiB checked in \\d+\\.\\d\\d s \\((\\d+\\.\\d MiB/s|-)\\)\n$`,
      ),
    );
    const j = JSON.parse(fixedram(['verify', large.file, '--json']).stdout) as VerifyResult & { ok: boolean };
    assert.equal(j.ok, true);
    assert.deepEqual(
      j.blocks.map((b) => [b.name, b.pages, b.presentPages, b.zeroPages]),
      [
        ['pc.ram', 12, 6, 6],
        ['/rom@etc/acpi/tables', 2, 0, 2],
      ],
    );
    assert.equal(j.bytesChecked, 14 * 65536);
  });
});

describe('xxhsum -H3 as an independent oracle', () => {
  const haveXxhsum = spawnSync('xxhsum', ['--version']).status === 0;
  it('agrees with the stored checksums for sampled pages of every block', (t) => {
    if (!requirePrereq(t, haveXxhsum, 'xxhsum (Debian package xxhash) is not installed')) return;
    let sampled = 0;
    for (const base of [mixed, large]) {
      for (const b of base.header.blocks) {
        const present = pagesOfKind(b, true);
        for (const p of [present[0], present[Math.floor(present.length / 2)], present.at(-1)]) {
          if (p === undefined) continue;
          const page = base.bytes.subarray(b.pagesOffset + p * b.pageSize, b.pagesOffset + (p + 1) * b.pageSize);
          const out = spawnSync('xxhsum', ['-H3', '-'], { input: page, encoding: 'utf8' });
          assert.equal(out.status, 0, out.stderr);
          assert.equal(out.stdout.trim(), `XXH3 (stdin) = ${storedSum(base, b, p)}`, `${b.name} page ${p}`);
          sampled++;
        }
      }
    }
    assert.equal(sampled, 12);
    // and for a page the test builds itself, so the bytes do not come from fixedram at all
    const own = Buffer.alloc(4096);
    stampPage(own, 1, 0, 1);
    const m0 = block(mixed, 'mem0');
    const out = spawnSync('xxhsum', ['-H3', '-'], { input: own, encoding: 'utf8' });
    assert.equal(out.stdout.trim(), `XXH3 (stdin) = ${storedSum(mixed, m0, 0)}`);
  });
});

describe('load refuses what verify refuses', () => {
  it('structure: exit 3 before any target is created (also when incomplete or updating)', async () => {
    const reseal = (flags: number): Mutation => ({
      kind: 'write',
      offset: 12,
      hex: le(BigInt(flags), 4),
      reseal: 'header',
    });
    const cases: [Mutation, string][] = [
      [
        { kind: 'flip', offset: block(mixed, 'mem0').bitmapOffset + 2, bit: 0 },
        'corrupt metadata: the bitmap or checksum table of block',
      ],
      [reseal(0), 'incomplete snapshot: the save that wrote it did not finish'],
      [
        reseal(3),
        'snapshot has an interrupted in-place update; re-run `fixedram save --update` with the same blocks to repair it',
      ],
    ];
    for (const [m, message] of cases) {
      const file = damaged(mixed, m);
      const target = path.join(dir, `never-${counter}.bin`);
      await assert.rejects(
        load({ snapshot: file, blocks: [{ name: 'mem0', path: target }] }),
        (err: FixedramError) => err.exitCode === 3 && err.message.startsWith(message),
      );
      assert.equal(fs.existsSync(target), false);
      const v = fixedram(['verify', file]);
      assert.equal(v.status, 3);
      assert.ok(v.stderr.startsWith(`fixedram: error: ${message}`), v.stderr);
    }
  });

  it('page checksums: exit 1 naming the page, unless --no-verify', async () => {
    const m0 = block(mixed, 'mem0');
    const page = pagesOfKind(m0, true)[5]!;
    const file = damaged(mixed, { kind: 'flip', offset: m0.pagesOffset + page * 4096 + 3, bit: 2 });
    const target = path.join(dir, `bad-page-${counter}.bin`);
    const r = fixedram(['load', file, '-b', `mem0=${target}`]);
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      new RegExp(
        `block 'mem0' page ${page}: checksum mismatch \\(expected ${storedSum(mixed, m0, page)}, got [0-9a-f]{16}\\) ` +
          `at offset 0x${(m0.pagesOffset + page * 4096).toString(16)}; the targets are incomplete`,
      ),
    );
    const n = fixedram(['load', file, '-b', `mem0=${target}`, '--no-verify']);
    assert.equal(n.status, 0, n.stderr);
  });
});
