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
import { FixedramError, isSystemError } from '../src/errors';
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
  native,
} from '../src/native';
import { save } from '../src/save';
import { openSnapshot, readTables } from '../src/snapshot';
import { transfer } from '../src/transfer';
import { makeBlock, stampPage } from './support/stamp';
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

  it(
    'the main thread as a channel (mainJoins): it waits for a mask published late without stopping the event loop, and its pages land where the block and index say',
    { timeout: 30_000 },
    async (t) => {
      const dir = tempDir(t);
      const src = path.join(dir, 'ram');
      const pages = 96;
      const ps = 4096;
      makeBlock(src, 3, pages);
      const out = path.join(dir, 'snap.fixedram');
      await save({ output: out, blocks: [{ name: 'ram', path: src }], channels: 1, fsync: false });
      // generation 2 of every 5th page: the update must write exactly these
      const changed = new Set<number>();
      const page = Buffer.alloc(ps);
      const fd = fs.openSync(src, 'r+');
      for (let i = 0; i < pages; i += 5) {
        stampPage(page, 3, i, 2);
        fs.writeSync(fd, page, 0, ps, i * ps);
        changed.add(i);
      }
      fs.closeSync(fd);
      const snap = openSnapshot(out, true);
      t.after(() => fs.closeSync(snap.fd));
      const b = snap.header.blocks[0]!;
      const tables = readTables(snap, b, 0);
      const st = fs.statSync(src, { bigint: true });
      // the mask comes in two parts, both published only after a timer
      const per = pages / 2;
      const ready = new Int32Array(new SharedArrayBuffer(8));
      const blocks: ChannelBlock[] = [
        {
          name: b.name,
          pageSize: ps,
          pages,
          snapBase: b.pagesOffset,
          live: { path: src, dev: st.dev, ino: st.ino, follow: false },
          liveBase: 0,
          present: tables.present,
          csums: tables.csums,
          mask: new Uint8Array(pages).fill(1),
          maskReady: ready,
          maskPartPages: per,
          intent: { update: true },
        },
      ];
      let ticks = 0;
      let ticksBeforeReady = -1;
      const ticker = setInterval(() => ticks++, 2);
      setTimeout(() => {
        ticksBeforeReady = ticks;
        Atomics.store(ready, 0, per);
        Atomics.store(ready, 1, per);
      }, 60);
      // (a main channel that blocked on the mask would hang here: the timer could never run; the
      // test's timeout turns that into a failure)
      const started = Date.now();
      let r;
      try {
        for (const channels of [1, 2]) {
          r = await transfer({
            kind: 'save',
            command: 'save',
            channels,
            snapshot: { fd: snap.fd, path: out },
            batchBytes: 8 * ps, // 12 batches
            planned: { blocks, mainJoins: true },
          });
          if (channels === 1) {
            // the premise: the run had to wait for the mask, and the event loop went on meanwhile
            assert.ok(
              Date.now() - started >= 55,
              `finished after ${Date.now() - started} ms, before the mask was ready`,
            );
            assert.ok(
              ticksBeforeReady >= 5,
              `the event loop stood still while the main channel waited (${ticksBeforeReady} ticks)`,
            );
            assert.equal(r.writtenPages, changed.size);
          } else {
            assert.equal(r.writtenPages, 0); // the first run stored the new checksums
          }
          assert.equal(r.channels, channels);
          assert.equal(r.batches, 12);
        }
      } finally {
        clearInterval(ticker);
      }
      // every slot holds its source page, and the stored checksums are the new pages' hashes
      const now = fs.readFileSync(src);
      const snapBytes = Buffer.alloc(ps);
      for (let i = 0; i < pages; i++) {
        const want = now.subarray(i * ps, (i + 1) * ps);
        if (!tables.present[i]) {
          assert.ok(
            want.every((v) => v === 0),
            `page ${i} absent but not zero`,
          );
          continue;
        }
        fs.readSync(snap.fd, snapBytes, 0, ps, b.pagesOffset + i * ps);
        assert.ok(snapBytes.equals(want), `page ${i}: the snapshot slot differs from the source`);
        assert.equal(
          Buffer.from(tables.csums.buffer, tables.csums.byteOffset + 8 * i, 8).readBigUInt64LE(0),
          native().hash64(want),
          `page ${i}: stored checksum`,
        );
      }

      // a failing main channel (the source is not the file it claims to be) fails the run with its error
      const wrong: ChannelBlock[] = [
        { ...blocks[0]!, live: { path: src, dev: st.dev, ino: st.ino + 1n, follow: false } },
      ];
      await assert.rejects(
        transfer({
          kind: 'save',
          command: 'save',
          channels: 1,
          snapshot: { fd: snap.fd, path: out },
          batchBytes: 8 * ps,
          planned: { blocks: wrong, mainJoins: true },
        }),
        (err: unknown) => err instanceof Error && (isSystemError(err) || err instanceof FixedramError),
      );
    },
  );
});
