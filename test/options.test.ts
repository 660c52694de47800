/**
 * The shared option checks (src/options.ts): one rule per option, and every command core applies
 * it before any work (nothing is created beside the output, no target is touched).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { convert, exportSnapshot, load, save, update, verify } from '../src/index';
import { FixedramError } from '../src/errors';
import {
  checkBatchBytes,
  checkChannels,
  checkFsync,
  checkPageSize,
  checkUniqueNames,
  defaultChannels,
  kMaxChannels,
  requireOption,
} from '../src/options';
import { kDefaultBatchBytes } from '../src/plan';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

const usage =
  (re: RegExp) =>
  (err: unknown): boolean =>
    err instanceof FixedramError && err.code === 'ERR_USAGE' && err.exitCode === 2 && re.test(err.message);

describe('shared option checks (options.ts)', () => {
  it('each option has one rule: channels 1..64 (default one per CPU), batchBytes ≥ 0, pageSize a power of two 4096..1 GiB, fsync on by default', () => {
    assert.equal(checkChannels(undefined), defaultChannels());
    assert.equal(checkChannels(1), 1);
    assert.equal(checkChannels(kMaxChannels), kMaxChannels);
    for (const bad of [0, -1, kMaxChannels + 1, 1.5, Number.NaN])
      assert.throws(() => checkChannels(bad), usage(/option channels must be an integer from 1 to 64/));
    assert.equal(checkBatchBytes(undefined), kDefaultBatchBytes);
    assert.equal(checkBatchBytes(0), 0);
    assert.equal(checkBatchBytes(65536), 65536);
    for (const bad of [-1, 0.5, Number.POSITIVE_INFINITY])
      assert.throws(() => checkBatchBytes(bad), usage(/option batchBytes/));
    assert.equal(checkPageSize(undefined), undefined);
    assert.equal(checkPageSize(2 << 20), 2 << 20);
    for (const bad of [512, 4097, 2 ** 31])
      assert.throws(() => checkPageSize(bad), usage(/option pageSize must be a power of two from 4096 to 1 GiB/));
    assert.equal(checkFsync(undefined), true);
    assert.equal(checkFsync(false), false);
    assert.equal(requireOption('x', 'never'), 'x');
    assert.throws(() => requireOption('', 'an output file is required'), usage(/an output file is required/));
    assert.throws(
      () =>
        checkUniqueNames([
          { name: 'a', path: '1' },
          { name: 'a', path: '2' },
        ]),
      usage(/block 'a' is given more than once/),
    );
  });

  it('every command core refuses a bad channel count before any work: nothing created, the target untouched', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 8);
    const snap = path.join(dir, 's.fxr');
    await save({ output: snap, blocks: [{ name: 'a', path: src }], channels: 1, fsync: false });
    const before = fs.readdirSync(dir).sort();
    const target = path.join(dir, 'target.ram');
    const out = path.join(dir, 'new.fxr');
    const blocks = [{ name: 'a', path: src }];
    for (const [what, run] of [
      ['save', () => save({ output: out, blocks, channels: 65 })],
      ['update', () => update({ output: snap, blocks, channels: 65 })],
      ['load', () => load({ snapshot: snap, blocks: [{ name: 'a', path: target }], channels: 65 })],
      ['verify', () => verify({ snapshot: snap, channels: 65 })],
      ['convert', () => convert({ input: snap, output: out, channels: 65 })],
      ['export', () => exportSnapshot({ snapshot: snap, output: out, channels: 65 })],
      ['save batchBytes', () => save({ output: out, blocks, batchBytes: -1 })],
      ['load batchBytes', () => load({ snapshot: snap, blocks: [{ name: 'a', path: target }], batchBytes: 1.5 })],
      ['save pageSize', () => save({ output: out, blocks, pageSize: 1000 })],
    ] as const) {
      await assert.rejects(run(), usage(/option (channels|batchBytes|pageSize)/), what);
      assert.deepEqual(fs.readdirSync(dir).sort(), before, `${what}: something was created`);
    }
  });
});
