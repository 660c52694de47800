/**
 * The transfer layer (src/transfer.ts) and the one place where a block's intent becomes the page
 * movers' flags (channels/channel.ts nativeFlags): every intent maps onto its own native flag, and a
 * transfer over a real snapshot reports progress from 0 to its total, the channels it used, and an
 * interrupt with what it leaves behind.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { nativeFlags } from '../src/channels/channel';
import type { ChannelBlock } from '../src/channels/messages';
import { FixedramError } from '../src/errors';
import {
  kLoadMmapTarget,
  kLoadVerify,
  kLoadZeroAbsent,
  kSaveMask,
  kSaveRewrite,
  kSaveUpdate,
  kSaveWriteback,
  kVerifyAbsentZero,
  kVerifyChecksums,
  kVerifyDataMask,
} from '../src/native';
import { save } from '../src/save';
import { openSnapshot, readTables } from '../src/snapshot';
import { transfer } from '../src/transfer';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

const mask = new Uint8Array(1);

describe('transfer layer', () => {
  it('intent → native flags: each intent sets its own flag and nothing else', () => {
    assert.equal(nativeFlags('save', { intent: {} }), 0);
    assert.equal(nativeFlags('save', { intent: {}, mask }), kSaveMask);
    assert.equal(nativeFlags('save', { intent: { writeback: true }, mask }), kSaveMask | kSaveWriteback);
    assert.equal(nativeFlags('save', { intent: { update: true }, mask }), kSaveMask | kSaveUpdate);
    assert.equal(
      nativeFlags('save', { intent: { update: true, rewrite: true }, mask }),
      kSaveMask | kSaveUpdate | kSaveRewrite,
    );
    assert.equal(nativeFlags('load', { intent: {} }), 0);
    assert.equal(nativeFlags('load', { intent: { verify: true } }), kLoadVerify);
    assert.equal(nativeFlags('load', { intent: { zeroAbsent: true } }), kLoadZeroAbsent);
    assert.equal(nativeFlags('load', { intent: {}, liveMmap: true }), kLoadMmapTarget);
    assert.equal(nativeFlags('verify', { intent: {} }), 0);
    assert.equal(nativeFlags('verify', { intent: { checksums: true } }), kVerifyChecksums | kVerifyAbsentZero);
    assert.equal(
      nativeFlags('verify', { intent: { checksums: true }, mask }),
      kVerifyChecksums | kVerifyAbsentZero | kVerifyDataMask,
    );
    // the intents of one kind never leak into another kind's flags
    assert.equal(nativeFlags('load', { intent: { writeback: true, update: true, checksums: true }, mask }), 0);
  });

  it('a planned verify over a real snapshot: progress 0 → total, the channels used, no bad page; an aborted run says what it leaves', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'ram');
    const pages = 64;
    makeBlock(src, 1, pages);
    const out = path.join(dir, 'snap.fixedram');
    await save({ output: out, blocks: [{ name: 'ram', path: src }], channels: 1, fsync: false });
    const snap = openSnapshot(out);
    t.after(() => fs.closeSync(snap.fd));
    const b = snap.header.blocks[0]!;
    const tables = readTables(snap, b, 0);
    const blocks: ChannelBlock[] = [
      {
        name: b.name,
        pageSize: b.pageSize,
        pages: b.pages,
        snapBase: b.pagesOffset,
        live: { fd: snap.fd, path: out }, // compared with itself: never differs
        liveBase: b.pagesOffset,
        present: tables.present,
        csums: tables.csums,
        intent: { checksums: true },
      },
    ];
    const events: number[] = [];
    const r = await transfer({
      kind: 'verify',
      command: 'verify',
      channels: 2,
      snapshot: { fd: snap.fd, path: out },
      batchBytes: 16 * b.pageSize, // 4 batches: two channels
      badCapacity: 10,
      onProgress: (e) => {
        assert.equal(e.command, 'verify');
        assert.equal(e.bytesTotal, pages * b.pageSize);
        events.push(e.bytesDone);
      },
      planned: { blocks },
    });
    assert.equal(r.channels, 2);
    assert.equal(r.bytesTotal, pages * b.pageSize);
    assert.equal(r.badCount, 0);
    assert.equal(r.batches, 4);
    assert.ok(r.bytesRead >= pages * b.pageSize, `bytesRead ${r.bytesRead}`);
    assert.equal(events[0], 0);
    assert.equal(events.at(-1), pages * b.pageSize);

    const ac = new AbortController();
    ac.abort();
    await assert.rejects(
      transfer({
        kind: 'verify',
        command: 'verify',
        channels: 2,
        snapshot: { fd: snap.fd, path: out },
        batchBytes: 16 * b.pageSize,
        signal: ac.signal,
        interrupted: 'nothing was changed',
        planned: { blocks },
      }),
      (err: unknown) =>
        err instanceof FixedramError &&
        err.code === 'ERR_INTERRUPTED' &&
        err.message === 'interrupted: nothing was changed',
    );
  });
});
