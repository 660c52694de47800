/**
 * `fixedram vm save` / `vm restore` against a real QEMU (TCG) running a guest that counts in RAM
 * and prints the count on its serial port (test/support/guest.S). Save, kill QEMU, start a fresh
 * one with -incoming defer, restore: the guest continues from the saved count (read from the
 * snapshot's RAM), and the RAM backend file equals the saved block byte for byte. Also --update
 * after the guest ran on, and the failure paths. Skipped outside CI when QEMU or binutils is
 * missing; in CI (CI set) a missing prerequisite fails.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe } from 'node:test';
import { load } from '../src/index';
import { fixedram, fixedramChild } from './support/cli';
import {
  buildGuest,
  guestMissing,
  serialCounts,
  startGuest,
  waitForCounts,
  type GuestKernel,
  type GuestVm,
} from './support/guest';
import { qemuMissing, sha256File } from './support/qemu';
import { prereqSuite } from './support/prereq';
import { fillFile } from './support/stamp';

const missing = qemuMissing() ?? guestMissing();
const { it, before, after } = prereqSuite(!missing, `VM tests: ${missing}`);

const kMib = 64;

describe('vm save / vm restore: shared-file RAM (x-ignore-shared)', () => {
  let dir: string;
  let kernel: GuestKernel;
  const vms: GuestVm[] = [];
  const start = async (
    tag: string,
    o: { memPath?: string; incoming?: boolean; mib?: number; paused?: boolean } = {},
  ): Promise<GuestVm> => {
    const vm = await startGuest(dir, tag, { kernel, mib: o.mib ?? kMib, ...o });
    vms.push(vm);
    return vm;
  };
  /** The guest's counter as stored in block mem0 of a snapshot. */
  const savedCount = async (snapshot: string): Promise<number> => {
    const out = path.join(dir, `count-${path.basename(snapshot)}.ram`);
    await load({ snapshot, blocks: [{ name: 'mem0', path: out }], channels: 1 });
    const fd = fs.openSync(out, 'r');
    try {
      const b = Buffer.alloc(4);
      fs.readSync(fd, b, 0, 4, kernel.countAddress);
      return b.readUInt32LE(0);
    } finally {
      fs.closeSync(fd);
      fs.rmSync(out);
    }
  };
  const json = (r: { stdout: string; stderr: string }): Record<string, unknown> => {
    try {
      return JSON.parse(r.stdout) as Record<string, unknown>;
    } catch {
      throw new Error(`no JSON on stdout: ${r.stdout} / ${r.stderr}`);
    }
  };

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-vm-'));
    kernel = buildGuest(dir);
  });
  after(async () => {
    for (const vm of vms) await vm.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('save (resume), update after the guest ran on, kill QEMU, restore into a fresh QEMU: the count goes on, RAM equal', async () => {
    const mem = path.join(dir, 'mem0.ram');
    const snap = path.join(dir, 'vm.fxr');
    const a = await start('a', { memPath: mem });
    await waitForCounts(a.serial, 5);

    // 1. save; the VM runs on afterwards (--then resume is the default)
    const r1 = fixedram([
      'vm',
      'save',
      '--qmp',
      a.fixedramQmp,
      '-o',
      snap,
      '-j',
      '2',
      '--json',
      '--progress',
      'none',
      '--log-level',
      'debug',
    ]);
    assert.equal(r1.status, 0, r1.stderr);
    // where the time went: every phase of a shared-file save, in the order they ended
    const phasesLine = r1.stderr.split('\n').find((l) => l.includes('vm save: phases (ms)'));
    assert.ok(phasesLine, r1.stderr);
    const phases = (JSON.parse(phasesLine) as { phases: Record<string, number> }).phases;
    assert.deepEqual(Object.keys(phases), [
      'startup',
      'qmpConnect',
      'qmpQueries',
      'preCopy',
      'stop',
      'deviceState',
      'refresh',
      'checked',
      'cont',
      'tables',
      'dataSync',
      'completeSync',
      'rename',
      'dirSync',
      'end',
      'total',
    ]);
    const { startup, total, ...steps } = phases;
    assert.ok(startup! > 0 && Object.values(steps).every((ms) => ms >= 0), JSON.stringify(phases));
    const sum = Object.values(steps).reduce((x, y) => x + y, 0);
    assert.ok(
      Math.abs(sum - total!) < 0.1 * Object.keys(steps).length,
      `the steps add up to the total: ${sum} vs ${total}`,
    );
    const j1 = json(r1);
    assert.equal(j1.command, 'vm save');
    assert.equal(j1.mode, 'shared-file');
    assert.deepEqual(
      (j1.blocks as { name: string }[]).map((b) => b.name),
      ['mem0'],
    );
    assert.ok(
      (j1.deviceStateBytes as number) > 1000 && (j1.deviceStateBytes as number) < 4 << 20,
      String(j1.deviceStateBytes),
    );
    assert.equal(typeof j1.downtimeSeconds, 'number');
    assert.equal(j1.channels, 2);
    assert.equal((await a.qmp.execute<{ status: string }>('query-status')).status, 'running');
    const c1 = await savedCount(snap);
    assert.ok(c1 >= 5, `saved count ${c1}`);
    assert.ok(serialCounts(a.serial).includes(c1), 'the saved count was printed before the save');
    assert.equal(fixedram(['verify', snap]).status, 0);

    // 2. the guest runs on; --update rewrites only the pages it changed
    const seen = serialCounts(a.serial).length;
    await waitForCounts(a.serial, seen + 10);
    const r2 = fixedram([
      'vm',
      'save',
      '--update',
      '--qmp',
      a.fixedramQmp,
      '-o',
      snap,
      '--json',
      '--progress',
      'none',
      '--then',
      'pause',
    ]);
    assert.equal(r2.status, 0, r2.stderr);
    const j2 = json(r2);
    const written = j2.pagesWritten as number;
    assert.ok(written >= 2 && written <= 40, `pages written by --update: ${written}`);
    assert.ok((j2.pagesUnchanged as number) > 1000);
    assert.equal(j2.downtimeSeconds, undefined);
    assert.equal(
      (await a.qmp.execute<{ status: string }>('query-status')).status,
      'postmigrate',
      '--then pause leaves it stopped',
    );
    const c2 = await savedCount(snap);
    assert.ok(c2 >= c1 + 10, `count ${c1} then ${c2}`);
    const printedBeforeKill = serialCounts(a.serial);
    assert.equal(printedBeforeKill.at(-1), c2, 'the paused guest printed nothing after the saved count');

    // 3. crash QEMU, scribble over its RAM file, start a fresh QEMU waiting for an incoming migration
    a.kill();
    await a.stop();
    fillFile(mem, kMib << 20, 0xaa);
    const b = await start('b', { memPath: mem, incoming: true });
    assert.equal((await b.qmp.execute<{ status: string }>('query-status')).status, 'inmigrate');
    const r3 = fixedram([
      'vm',
      'restore',
      '--qmp',
      b.fixedramQmp,
      snap,
      '--then',
      'pause',
      '--json',
      '--progress',
      'none',
    ]);
    assert.equal(r3.status, 0, r3.stderr);
    const j3 = json(r3);
    assert.equal(j3.command, 'vm restore');
    assert.equal(j3.deviceStateBytes, j2.deviceStateBytes);
    assert.equal((await b.qmp.execute<{ status: string }>('query-status')).status, 'paused');
    // the backend file equals the saved block, byte for byte
    const copy = path.join(dir, 'expected.ram');
    await load({ snapshot: snap, blocks: [{ name: 'mem0', path: copy }], channels: 2 });
    assert.ok(fs.readFileSync(mem).equals(fs.readFileSync(copy)), 'the RAM file differs from the snapshot');
    fs.rmSync(copy);
    assert.equal(serialCounts(b.serial).length, 0, 'the restored guest printed before it was resumed');

    await b.qmp.execute('cont');
    const after = await waitForCounts(b.serial, 3);
    assert.equal(after[0], c2 + 1, `the restored guest printed ${after.slice(0, 3).join(',')} after saving at ${c2}`);
    assert.deepEqual(after.slice(0, 3), [c2 + 1, c2 + 2, c2 + 3]);
  });

  it('restore with the default --then resume reports the downtime and the guest runs at once', async () => {
    const mem = path.join(dir, 'mem1.ram');
    const snap = path.join(dir, 'vm1.fxr');
    const a = await start('c', { memPath: mem });
    await waitForCounts(a.serial, 3);
    const r1 = fixedram(['vm', 'save', '--qmp', a.fixedramQmp, '-o', snap, '--then', 'quit', '--progress', 'none']);
    assert.equal(r1.status, 0, r1.stderr);
    assert.match(r1.stdout, /saved the VM \(QEMU \d+\.\d+\.\d+, shared-file RAM\)/);
    for (let i = 0; i < 100 && a.alive(); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(a.alive(), false, '--then quit ends QEMU');
    const c = await savedCount(snap);
    const b = await start('d', { memPath: mem, incoming: true });
    const r = fixedram(['vm', 'restore', '--qmp', b.fixedramQmp, snap, '--json', '-j', '3', '--progress', 'none']);
    assert.equal(r.status, 0, r.stderr);
    const j = json(r);
    assert.equal(typeof j.downtimeSeconds, 'number');
    assert.equal(j.channels, 3);
    assert.equal((await b.qmp.execute<{ status: string }>('query-status')).status, 'running');
    assert.equal((await waitForCounts(b.serial, 1))[0], c + 1);
  });

  it('a mismatched snapshot (other RAM size) is exit 3 before anything is written', async () => {
    const snap = path.join(dir, 'vm.fxr');
    assert.ok(fs.existsSync(snap));
    const mem = path.join(dir, 'small.ram');
    const b = await start('e', { memPath: mem, incoming: true, mib: 32 });
    const before = sha256File(mem);
    const r = fixedram(['vm', 'restore', '--qmp', b.fixedramQmp, snap, '--json', '--progress', 'none']);
    assert.equal(r.status, 3, r.stderr);
    assert.match(
      r.stderr,
      /^fixedram: error: snapshot '.*' does not match this VM: block 'mem0' is 64 MiB in the snapshot, 32 MiB in QEMU; nothing was written\n$/,
    );
    assert.equal(sha256File(mem), before);
    assert.equal((await b.qmp.execute<{ status: string }>('query-status')).status, 'inmigrate');
    await b.stop();
  });

  it('a truncated device state is exit 3, an altered one exit 1, both before anything is written', async () => {
    const orig = path.join(dir, 'vm.fxr');
    const info = JSON.parse(fixedram(['inspect', orig, '--json']).stdout) as {
      deviceStateOffset: number;
      deviceState: { kind: string };
      fileSize: number;
    };
    assert.equal(info.deviceState.kind, 'qemu-stream');
    const cut = path.join(dir, 'cut.fxr');
    fs.copyFileSync(orig, cut);
    fs.truncateSync(cut, info.fileSize - 1000);
    const altered = path.join(dir, 'altered.fxr');
    fs.copyFileSync(orig, altered);
    const fd = fs.openSync(altered, 'r+');
    const at = info.deviceStateOffset + 4096;
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    fs.writeSync(fd, Buffer.from([b[0]! ^ 0x40]), 0, 1, at);
    fs.closeSync(fd);
    assert.equal(fixedram(['verify', altered]).status, 1, 'the premise: verify sees the altered device state');

    const mem = path.join(dir, 'cut.ram');
    const vm = await start('f', { memPath: mem, incoming: true });
    const before = sha256File(mem);
    const r = fixedram(['vm', 'restore', '--qmp', vm.fixedramQmp, cut, '--progress', 'none']);
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, /truncated|shorter|past the end/);
    const r2 = fixedram(['vm', 'restore', '--qmp', vm.fixedramQmp, altered, '--progress', 'none']);
    assert.equal(r2.status, 1, r2.stderr);
    assert.match(r2.stderr, /device state .* fails its checksum/);
    assert.equal(sha256File(mem), before);
    assert.equal((await vm.qmp.execute<{ status: string }>('query-status')).status, 'inmigrate');
    await vm.stop();
  });

  it('restore into a QEMU not started with -incoming defer: exit 4 naming the state, nothing written, VM untouched', async () => {
    const mem = path.join(dir, 'running.ram');
    const b = await start('g', { memPath: mem });
    await waitForCounts(b.serial, 2);
    const r = fixedram(['vm', 'restore', '--qmp', b.fixedramQmp, path.join(dir, 'vm.fxr'), '--progress', 'none']);
    assert.equal(r.status, 4, r.stderr);
    assert.match(
      r.stderr,
      /^fixedram: error: QEMU is not waiting for an incoming migration \(status 'running'\): start it with -incoming defer/,
    );
    assert.equal(r.stderr.split('\n').length, 2, 'one line');
    assert.equal((await b.qmp.execute<{ status: string }>('query-status')).status, 'running');
    const n = serialCounts(b.serial).length;
    await waitForCounts(b.serial, n + 2);
    await b.stop();
  });

  it("a save that fails after stopping the VM resumes it and says so (update of another VM's snapshot)", async () => {
    const other = path.join(dir, 'other.fxr');
    const src = path.join(dir, 'other-src.ram');
    fillFile(src, 1 << 20, 0x11);
    assert.equal(fixedram(['save', '-o', other, '-b', `mem0=${src}`, '--no-fsync']).status, 0);
    const b = await start('h', { memPath: path.join(dir, 'h.ram') });
    await waitForCounts(b.serial, 2);
    const r = fixedram(['vm', 'save', '--update', '--qmp', b.fixedramQmp, '-o', other, '--progress', 'none']);
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, /; the VM was resumed\n$/);
    assert.equal((await b.qmp.execute<{ status: string }>('query-status')).status, 'running');
    await b.stop();
  });

  it("QEMU killed mid-save: exit 4 with QEMU's disconnect, no snapshot and no temp file left", async () => {
    const outDir = path.join(dir, 'killed');
    fs.mkdirSync(outDir);
    const snap = path.join(outDir, 'vm.fxr');
    const b = await start('i', { memPath: path.join(dir, 'i.ram') });
    await waitForCounts(b.serial, 2);
    // kill QEMU as soon as vm save creates its temp file (it does so just before stopping the VM)
    let killed = false;
    const watcher = fs.watch(outDir, () => {
      if (!killed && fs.readdirSync(outDir).some((f) => f.includes('.vmstate.'))) {
        killed = true;
        b.kill();
      }
    });
    const child = fixedramChild(['vm', 'save', '--qmp', b.fixedramQmp, '-o', snap, '--progress', 'none']);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const status = await new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    watcher.close();
    assert.ok(killed, 'the fault was injected (QEMU killed during the save)');
    assert.equal(status, 4, stderr);
    assert.match(
      stderr,
      /^fixedram: error: QEMU closed the QMP connection '.*' \(did QEMU exit\?\) (during [a-z-]+|\(before stop\))/,
    );
    assert.equal(stderr.trim().split('\n').length, 1, stderr);
    assert.deepEqual(fs.readdirSync(outDir), []);
    await b.stop();
  });

  it('anonymous RAM (through QEMU mapped-ram): save, kill QEMU, restore into a fresh one: the count goes on', async () => {
    const snap = path.join(dir, 'anon.fxr');
    const a = await start('anon-a');
    await waitForCounts(a.serial, 3);
    const r1 = fixedram(['vm', 'save', '--qmp', a.fixedramQmp, '-o', snap, '-j', '2', '--json', '--progress', 'none']);
    assert.equal(r1.status, 0, r1.stderr);
    const j1 = json(r1);
    assert.equal(j1.mode, 'mapped-ram');
    assert.ok((j1.blocks as { name: string }[]).some((b) => b.name === 'pc.ram'));
    assert.equal((await a.qmp.execute<{ status: string }>('query-status')).status, 'running');
    const caps = await a.qmp.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
    assert.deepEqual(
      caps.filter((c) => c.state).map((c) => c.capability),
      [],
      'the capabilities fixedram set were put back',
    );
    assert.equal(fs.readdirSync(dir).filter((f) => f.startsWith('.anon.fxr')).length, 0, 'no temp file left');
    const info = JSON.parse(fixedram(['inspect', snap, '--json']).stdout) as { deviceState: { kind: string } };
    assert.equal(info.deviceState.kind, 'qemu-mapped-ram');
    const out = path.join(dir, 'anon-pc.ram');
    await load({ snapshot: snap, blocks: [{ name: 'pc.ram', path: out }], channels: 1 });
    const saved = fs.readFileSync(out).readUInt32LE(kernel.countAddress);
    fs.rmSync(out);
    a.kill();
    await a.stop();

    // a QEMU with another memory size: exit 3, it stays waiting
    const small = await start('anon-small', { incoming: true, mib: 32 });
    const bad = fixedram(['vm', 'restore', '--qmp', small.fixedramQmp, snap, '--progress', 'none']);
    assert.equal(bad.status, 3, bad.stderr);
    assert.match(
      bad.stderr,
      /does not match this VM: block 'pc\.ram' is 64 MiB in the snapshot, 32 MiB in QEMU; nothing was written/,
    );
    assert.equal((await small.qmp.execute<{ status: string }>('query-status')).status, 'inmigrate');
    await small.stop();

    const b = await start('anon-b', { incoming: true });
    const r = fixedram(['vm', 'restore', '--qmp', b.fixedramQmp, snap, '--json', '--progress', 'none']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(json(r).mode, 'mapped-ram');
    assert.equal((await b.qmp.execute<{ status: string }>('query-status')).status, 'running');
    const after = await waitForCounts(b.serial, 3);
    assert.deepEqual(after.slice(0, 3), [saved + 1, saved + 2, saved + 3]);
  });

  it('vm save against a socket nobody listens on: exit 4, one line', () => {
    const r = fixedram(['vm', 'save', '--qmp', path.join(dir, 'nothing.qmp'), '-o', path.join(dir, 'x.fxr')]);
    assert.equal(r.status, 4, r.stderr);
    assert.match(r.stderr, /^fixedram: error: cannot connect to the QMP socket '.*nothing\.qmp': ENOENT/);
  });
});
