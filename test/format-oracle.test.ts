/**
 * The format oracle (issue 10 item 18): snapshots written by save, save --update and convert are
 * read by test/support/oracle-reader.ts, a reader written from docs/format-v1.md alone (nothing
 * imported from src/, XXH3 by the xxhsum tool), which checks every validation rule of the spec and
 * gives back each block's content; that content must equal the source. The reference writer (also
 * independent of src/) must produce byte-identical files to save. The oracle itself is shown to
 * reject corrupt files, rule by rule.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { convert } from '../src/convert';
import { load, save, update } from '../src/index';
import { oracleBlockData, oracleRead, OracleError } from './support/oracle-reader';
import { fixturesAvailable, kFixtures, unpackFixture } from './support/qemu';
import { referenceSave } from './support/reference-writer';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

function needXxhsum(t: TestContext): boolean {
  if (spawnSync('xxhsum', ['--version']).status === 0) return true;
  if (process.env.CI) assert.fail('xxhsum (Debian package xxhash) is missing; .ci/install-system installs it');
  t.skip('xxhsum (Debian package xxhash) is not installed');
  return false;
}

function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, offset);
  b[0]! ^= 0x10;
  fs.writeSync(fd, b, 0, 1, offset);
  fs.closeSync(fd);
}

describe('format oracle: an independent reader of docs/format-v1.md', () => {
  it('save output (several blocks, 4 KiB and 64 KiB pages) passes every rule and holds the sources', async (t) => {
    if (!needXxhsum(t)) return;
    const dir = tempDir(t);
    for (const ps of [4096, 65536]) {
      const blocks = [
        { name: 'a', path: path.join(dir, `a-${ps}.ram`) },
        { name: 'β-ünïcode', path: path.join(dir, `b-${ps}.ram`) },
        { name: 'empty', path: path.join(dir, `e-${ps}.ram`) },
      ];
      makeBlock(blocks[0]!.path, 1, 300, { pageSize: ps });
      makeBlock(blocks[1]!.path, 2, 77, { pageSize: ps });
      fs.writeFileSync(blocks[2]!.path, '');
      const snap = path.join(dir, `s-${ps}.fxr`);
      await save({ output: snap, blocks, pageSize: ps, channels: 2 });
      const o = oracleRead(snap);
      assert.equal(o.complete, true);
      assert.deepEqual(
        o.blocks.map((b) => [b.name, b.pageSize]),
        blocks.map((b) => [b.name, ps]),
      );
      for (const b of blocks)
        assert.ok(oracleBlockData(snap, o, b.name).equals(fs.readFileSync(b.path)), `${b.name} differs`);
      assert.ok(
        o.blocks[0]!.present.length > 0 && o.blocks[0]!.present.length < 300,
        'premise: holes, zero and data pages',
      );
    }
  });

  it('the reference writer (independent of src/) writes the same bytes as save', async (t) => {
    if (!needXxhsum(t)) return;
    const dir = tempDir(t);
    const blocks = [
      { name: 'x', path: path.join(dir, 'x.ram') },
      { name: 'y', path: path.join(dir, 'y.ram') },
    ];
    makeBlock(blocks[0]!.path, 1, 513);
    makeBlock(blocks[1]!.path, 2, 64);
    const ours = path.join(dir, 'ours.fxr');
    const ref = path.join(dir, 'ref.fxr');
    await save({ output: ours, blocks, channels: 2 });
    referenceSave(ref, blocks);
    assert.ok(fs.readFileSync(ours).equals(fs.readFileSync(ref)), 'save and the reference writer differ');
    oracleRead(ref);
  });

  it('save --update output passes every rule and holds the changed sources', async (t) => {
    if (!needXxhsum(t)) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'm.ram');
    makeBlock(src, 1, 400);
    const snap = path.join(dir, 'm.fxr');
    await save({ output: snap, blocks: [{ name: 'm', path: src }], channels: 2 });
    makeBlock(src, 1, 400, { generation: 2, kind: (i) => (i % 3 === 0 ? 'hole' : i % 3 === 1 ? 'stamp' : 'zero') });
    const u = await update({ output: snap, blocks: [{ name: 'm', path: src }], channels: 2 });
    assert.ok(u.pagesWritten > 0 && u.pagesPunched > 0, 'premise: pages written and punched');
    const o = oracleRead(snap);
    assert.ok(oracleBlockData(snap, o, 'm').equals(fs.readFileSync(src)));
  });

  it('convert output (a real QEMU mapped-ram file) passes every rule and holds what QEMU saved', async (t) => {
    if (!needXxhsum(t)) return;
    if (!fixturesAvailable()) {
      if (process.env.CI) assert.fail(`the QEMU fixtures are not at ${kFixtures}`);
      return t.skip(`the QEMU fixtures are not at ${kFixtures}`);
    }
    const dir = tempDir(t);
    const mig = unpackFixture('membackend-32m.mig', dir);
    const snap = path.join(dir, 'c.fxr');
    await convert({ input: mig, output: snap, channels: 2 });
    const o = oracleRead(snap);
    assert.ok(o.blocks.length > 0);
    for (const b of o.blocks) {
      const target = path.join(dir, `qemu-${o.blocks.indexOf(b)}.ram`);
      await load({ snapshot: mig, blocks: [{ name: b.name, path: target }] });
      assert.ok(
        oracleBlockData(snap, o, b.name).equals(fs.readFileSync(target)),
        `${b.name} differs from the QEMU file`,
      );
    }
  });

  it('the oracle rejects corruption in each region, by the rule the spec gives', async (t) => {
    if (!needXxhsum(t)) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'r.ram');
    makeBlock(src, 1, 200);
    const good = path.join(dir, 'good.fxr');
    await save({ output: good, blocks: [{ name: 'r', path: src }] });
    const o = oracleRead(good);
    const b = o.blocks[0]!;
    const cases: [string, number, number][] = [
      ['header field', 32, 2],
      ['block name', 64 + 64, 2],
      ['bitmap', b.bitmapOffset, 5],
      ['checksum table', b.checksumsOffset + 8 * b.present[0]!, 5],
      ['present page', b.pagesOffset + b.present[0]! * b.pageSize + 100, 6],
      ['padding', b.checksumsOffset + 8 * b.pages + 16, 6],
    ];
    const absent = [...Array(b.pages).keys()].find((p) => !b.present.includes(p))!;
    cases.push(['absent slot', b.pagesOffset + absent * b.pageSize, 6]);
    for (const [what, offset, rule] of cases) {
      const bad = path.join(dir, 'bad.fxr');
      fs.copyFileSync(good, bad);
      flipByte(bad, offset);
      assert.throws(
        () => oracleRead(bad),
        (err: unknown) => err instanceof OracleError && err.rule === rule,
        `${what}: not rejected by rule ${rule}`,
      );
    }
    fs.truncateSync(path.join(dir, 'bad.fxr'), o.fileSize - 1);
    assert.throws(
      () => oracleRead(path.join(dir, 'bad.fxr')),
      (err: unknown) => err instanceof OracleError && err.rule === 4,
    );
  });
});
