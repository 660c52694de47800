/**
 * save's beforePages hook (what `vm save` stops the VM in): it runs once the private temp file
 * exists and the channels are started, before any page is read, so every page the snapshot holds
 * is read after it returned, and the device state it returns is stored with the RAM. A hook that
 * fails leaves nothing behind. Real files, real worker threads; pages stamped with block and index.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import type { DeviceState } from '../src/devstate';
import { load, save, snapshotDeviceState, verify } from '../src/index';
import { native } from '../src/native';
import { makeBlock, stampPage } from './support/stamp';
import { tempDir } from './support/tmp';

const kPages = 512;

/** Threads of this process now (/proc/self/status). */
function threads(): number {
  const m = /^Threads:\s+(\d+)$/m.exec(fs.readFileSync('/proc/self/status', 'latin1'));
  return Number(m![1]);
}

/** Rewrites every non-hole page of a block file in place with generation `gen` stamps (same inode, same size). */
function restamp(file: string, gen: number, holes: ReadonlySet<number>): void {
  const fd = fs.openSync(file, 'r+');
  const page = Buffer.alloc(4096);
  try {
    for (let i = 0; i < kPages; i++) {
      if (holes.has(i)) continue;
      stampPage(page, 1, i, gen);
      fs.writeSync(fd, page, 0, page.length, i * 4096);
    }
  } finally {
    fs.closeSync(fd);
  }
}

const deviceState = (): DeviceState => ({
  kind: 'qemu-stream',
  origin: { source: 'test (beforePages)', capabilities: ['x-ignore-shared'] },
  stream: Buffer.concat([Buffer.from('QEVM\0\0\0\x03', 'latin1'), Buffer.alloc(3000, 0x5a)]),
});

describe('save: beforePages (the hook vm save stops the VM in)', () => {
  it('runs once, with the 0600 temp file present, the output absent and the channels started; the snapshot holds the pages as they were after it, and its device state', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'mem0.ram');
    const kinds = makeBlock(src, 1, kPages, { generation: 1 });
    const holes = new Set(kinds.flatMap((k, i) => (k === 'hole' ? [i] : [])));
    const out = path.join(dir, 'vm.fxr');
    const threadsBefore = threads();
    const seen: { temps: string[]; mode: number; outputExists: boolean; threads: number }[] = [];
    const r = await save({
      output: out,
      blocks: [{ name: 'mem0', path: src }],
      channels: 2,
      fsync: true,
      writeback: 'commit',
      batchBytes: 64 << 10, // 32 batches: the walk needs its worker threads
      beforePages: () => {
        const temps = fs.readdirSync(dir).filter((f) => /^\.vm\.fxr\.\d+\.[0-9a-f]{8}\.tmp$/.test(f));
        seen.push({
          temps,
          mode: temps.length ? fs.statSync(path.join(dir, temps[0]!)).mode & 0o777 : -1,
          outputExists: fs.existsSync(out),
          threads: threads(),
        });
        // the "guest" writes until it is stopped: every data page changes to generation 2
        restamp(src, 2, holes);
        return Promise.resolve(deviceState());
      },
    });
    assert.equal(seen.length, 1, 'the hook ran once');
    assert.equal(seen[0]!.temps.length, 1, `one temp file beside the output: ${seen[0]!.temps.join(', ')}`);
    assert.equal(seen[0]!.mode, 0o600);
    assert.equal(seen[0]!.outputExists, false);
    assert.ok(
      seen[0]!.threads >= threadsBefore + 2,
      `the 2 channels were started before the hook (threads ${threadsBefore} → ${seen[0]!.threads})`,
    );
    assert.equal(r.channels, 2);

    // the premise: generation 1 and 2 differ, so a page read before the hook would show
    const back = path.join(dir, 'back.ram');
    await load({ snapshot: out, blocks: [{ name: 'mem0', path: back }], channels: 2 });
    assert.ok(
      fs.readFileSync(back).equals(fs.readFileSync(src)),
      'the snapshot holds generation 2 (read after the hook)',
    );
    assert.equal(fs.readFileSync(back).readUInt32LE(4), 2, 'page 0 is a generation 2 stamp');

    const ds = snapshotDeviceState(out);
    assert.ok(ds, 'the device state returned by the hook is stored');
    assert.equal(ds.checksumOk, true);
    assert.ok(Buffer.from(ds.stream!).equals(Buffer.from(deviceState().stream!)));
    const v = await verify({ snapshot: out, channels: 2 });
    assert.equal(v.ok, true);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['back.ram', 'mem0.ram', 'vm.fxr']);
  });

  it('preCopy: every page is copied before the hook, and after it only the pages that changed are written (new data, data that became zero or a hole, zeros and holes that became data)', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'mem0.ram');
    const kinds = makeBlock(src, 1, kPages, { generation: 1 });
    const data = kinds.flatMap((k, i) => (k === 'stamp' || k === 'random' ? [i] : []));
    const zeros = kinds.flatMap((k, i) => (k === 'zero' ? [i] : []));
    const holes = kinds.flatMap((k, i) => (k === 'hole' ? [i] : []));
    // what the "guest" does between the copy and the stop
    const restamped = data.filter((_, n) => n % 10 === 0);
    const zeroed = data.filter((_, n) => n % 10 === 3);
    const punched = data.filter((_, n) => n % 10 === 6);
    const filled = [zeros[0]!, zeros[zeros.length - 1]!, holes[0]!, holes[holes.length - 1]!];
    const out = path.join(dir, 'vm.fxr');
    let tempAtHook: Buffer | undefined;
    const r = await save({
      output: out,
      blocks: [{ name: 'mem0', path: src }],
      channels: 2,
      fsync: true,
      batchBytes: 64 << 10,
      preCopy: true,
      beforePages: () => {
        const temp = fs.readdirSync(dir).find((f) => f.endsWith('.tmp'))!;
        tempAtHook = fs.readFileSync(path.join(dir, temp));
        const fd = fs.openSync(src, 'r+');
        const page = Buffer.alloc(4096);
        try {
          for (const i of [...restamped, ...filled]) {
            stampPage(page, 1, i, 2);
            fs.writeSync(fd, page, 0, page.length, i * 4096);
          }
          for (const i of zeroed) fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, i * 4096);
          for (const i of punched) assert.ok(native().punchHole(fd, i * 4096, 4096), 'tmpfs/ext4 punch holes');
        } finally {
          fs.closeSync(fd);
        }
        return Promise.resolve(deviceState());
      },
    });
    // the premise: the temp file held every generation-1 data page before the hook ran
    const pagesOffset = r.blocks[0]!.pagesOffset;
    for (const i of data) {
      const at = pagesOffset + i * 4096;
      const page = tempAtHook!.subarray(at, at + 4096);
      assert.ok(!page.equals(Buffer.alloc(4096)), `page ${i} was copied before the hook`);
      if (kinds[i] === 'stamp') assert.equal(page.readUInt32LE(4), 1, `page ${i} holds generation 1 before the hook`);
    }
    // after: the snapshot is the source as it was after the hook, page for page
    const back = path.join(dir, 'back.ram');
    await load({ snapshot: out, blocks: [{ name: 'mem0', path: back }], channels: 2 });
    assert.ok(
      fs.readFileSync(back).equals(fs.readFileSync(src)),
      'the snapshot holds the pages as they were after the hook',
    );
    for (const i of restamped)
      assert.equal(fs.readFileSync(back).readUInt32LE(i * 4096 + 4), 2, `page ${i} generation 2`);
    const present = new Set([...data.filter((i) => !zeroed.includes(i) && !punched.includes(i)), ...filled]);
    assert.equal(r.presentPages, present.size);
    assert.equal(r.zeroPages, kPages - present.size);
    // only the changed pages were written after the copy: the copy's data pages, then the
    // restamped and filled ones (zeroed and punched pages are punched, not written)
    assert.equal(r.bytesWritten, (data.length + new Set([...restamped, ...filled]).size) * 4096);
    const v = await verify({ snapshot: out, channels: 2 });
    assert.equal(v.ok, true);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['back.ram', 'mem0.ram', 'vm.fxr']);
  });

  it('preCopy: the copy and the refresh run on the same channels (no thread starts or stops between the passes, none is left after), and onPhase tells each step in order', async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'mem0.ram');
    makeBlock(src, 1, kPages);
    const out = path.join(dir, 'vm.fxr');
    const tasks = (): Set<string> => new Set(fs.readdirSync('/proc/self/task'));
    const before = tasks();
    const phases: string[] = [];
    let atCopied: Set<string> | undefined;
    let atHook: Set<string> | undefined;
    await save({
      output: out,
      blocks: [{ name: 'mem0', path: src }],
      channels: 2,
      fsync: true,
      writeback: 'channels', // no libuv pool threads: every new thread is a channel
      batchBytes: 64 << 10,
      preCopy: true,
      onPhase: (p) => {
        phases.push(p);
        if (p === 'pre-copied') atCopied = tasks();
      },
      beforePages: () => {
        atHook = tasks();
        return Promise.resolve(deviceState());
      },
    });
    assert.deepEqual(phases, ['pre-copied', 'pages', 'tables', 'synced', 'completed', 'renamed', 'dir synced']);
    const channels = [...atCopied!].filter((id) => !before.has(id));
    // the premise: the copy ran on channel threads still alive when it ended
    assert.ok(channels.length >= 2, `channel threads alive after the copy: ${channels.length}`);
    assert.deepEqual([...atHook!].sort(), [...atCopied!].sort(), 'the same threads from the copy to the refresh');
    const after = tasks();
    assert.deepEqual(
      channels.filter((id) => after.has(id)),
      [],
      'the channels are gone once save returns',
    );
    const v = await verify({ snapshot: out, channels: 2 });
    assert.equal(v.ok, true);
  });

  for (const preCopy of [false, true]) {
    it(`a hook that fails${preCopy ? ' after the copy (preCopy)' : ''}: its error comes back, the previous output is unchanged, no temp file, lock or channel left`, async (t) => {
      const dir = tempDir(t);
      const src = path.join(dir, 'mem0.ram');
      makeBlock(src, 1, kPages);
      const out = path.join(dir, 'vm.fxr');
      await save({ output: out, blocks: [{ name: 'mem0', path: src }], channels: 2, fsync: false });
      const before = fs.readFileSync(out);
      const tasks = (): Set<string> => new Set(fs.readdirSync('/proc/self/task'));
      let atHook: Set<string> | undefined;
      const ahead = tasks();
      await assert.rejects(
        save({
          output: out,
          blocks: [{ name: 'mem0', path: src }],
          channels: 2,
          fsync: false,
          batchBytes: 64 << 10,
          preCopy,
          beforePages: () => {
            atHook = tasks();
            return Promise.reject(new Error('QEMU said no'));
          },
        }),
        /QEMU said no/,
      );
      assert.ok(atHook, 'the fault was injected (the hook ran)');
      assert.ok(fs.readFileSync(out).equals(before));
      assert.deepEqual(fs.readdirSync(dir).sort(), ['mem0.ram', 'vm.fxr']);
      // the channels running when the hook failed (the copy's, kept for the refresh) are gone
      const channels = [...atHook].filter((id) => !ahead.has(id));
      assert.ok(channels.length >= 2, `channel threads at the hook: ${channels.length}`);
      const after = tasks();
      assert.deepEqual(
        channels.filter((id) => after.has(id)),
        [],
      );
    });
  }
});
