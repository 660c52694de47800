/**
 * export against a real QEMU >= 9 (TCG is enough): a q35 guest whose RAM is a memory-backend-file
 * runs its firmware for a moment, is stopped and saved with mapped-ram (+ multifd); fixedram converts
 * the file (device state kept) and exports it again; a fresh QEMU started with -incoming defer
 * restores the export (migrate-incoming completes) and its RAM equals the saved RAM byte for byte.
 * Also: the libvirt image form, a tail cut after the RAM (fixedram exit 3, QEMU fails too), a
 * snapshot without device state (exit 3) and a damaged page (exit 1, nothing written).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe } from 'node:test';
import { convert } from '../src/convert';
import { exportSnapshot } from '../src/export';
import { inspect, load, save } from '../src/index';
import { fixedram } from './support/cli';
import { prereqSuite } from './support/prereq';
import {
  libvirtHeader,
  qemuMissing,
  saveMappedRam,
  startQemu,
  truncatedCopy,
  type MigrationStatus,
  type Qmp,
  type QemuVm,
} from './support/qemu';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

const missing = qemuMissing();
const { it, before, after } = prereqSuite(!missing, `QEMU: ${missing}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Indexes of the 4 KiB pages in which two RAM images differ. */
const differingPages = (a: Buffer, b: Buffer): number[] => {
  const out: number[] = [];
  for (let i = 0; i * 4096 < Math.max(a.length, b.length); i++) {
    if (!a.subarray(i * 4096, (i + 1) * 4096).equals(b.subarray(i * 4096, (i + 1) * 4096))) out.push(i);
  }
  return out;
};

describe('export: QEMU restores what fixedram exports (live QEMU, TCG)', () => {
  let dir: string;
  let saved: string;
  let savedRam: Buffer;
  let qemuRestored: Buffer | undefined;
  let libvirtSave: string;
  let libvirtOffset: number;
  const vms: QemuVm[] = [];

  const memArgs = (backend: string): string[] => [
    '-m',
    '32M',
    '-object',
    `memory-backend-file,id=mem0,size=32M,mem-path=${backend},share=on`,
    '-numa',
    'node,memdev=mem0',
  ];

  /** Waits for an incoming migration to end; returns its final status. */
  const waitIncoming = async (qmp: Qmp): Promise<MigrationStatus> => {
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      const st = await qmp.execute<MigrationStatus>('query-migrate');
      if (st.status === 'completed' || st.status === 'failed' || st.status === 'cancelled') return st;
      await sleep(50);
    }
    throw new Error('the incoming migration did not finish within 120 s');
  };

  /** A fresh QEMU with -incoming defer restores `uri`; returns the status and the restored RAM. */
  const restore = async (
    tag: string,
    uri: string,
    channels: number,
  ): Promise<{ status: MigrationStatus; ram: Buffer; runstate: string }> => {
    const backend = path.join(dir, `${tag}.ram`);
    const vm = await startQemu(dir, tag, [...memArgs(backend), '-incoming', 'defer']);
    vms.push(vm);
    try {
      await vm.qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'mapped-ram', state: true },
          { capability: 'multifd', state: channels > 0 },
        ],
      });
      if (channels > 0) await vm.qmp.execute('migrate-set-parameters', { 'multifd-channels': channels });
      await vm.qmp.execute('migrate-incoming', { uri, 'exit-on-error': false });
      const status = await waitIncoming(vm.qmp);
      const runstate = (await vm.qmp.execute<{ status: string }>('query-status')).status;
      return { status, ram: fs.readFileSync(backend), runstate };
    } finally {
      await vm.stop();
    }
  };

  /** Starts a guest, lets its firmware run, stops it and saves it to `uri`. */
  const saveRunning = async (tag: string, backend: string, uri: string, channels: number): Promise<void> => {
    const vm = await startQemu(dir, tag, memArgs(backend));
    vms.push(vm);
    try {
      await vm.qmp.execute('cont');
      await sleep(1500);
      await vm.qmp.execute('stop');
      const st = await saveMappedRam(vm.qmp, uri, channels);
      assert.equal(st.status, 'completed', `QEMU save ${tag}: ${st['error-desc'] ?? ''}`);
    } finally {
      await vm.stop();
    }
  };

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-export-live-'));
    const backend = path.join(dir, 'source.ram');
    makeBlock(backend, 3, 8192);
    saved = path.join(dir, 'saved.mig');
    await saveRunning('source', backend, `file:${saved}`, 2);
    // the guest RAM the stream carries (a page or two of the firmware area can differ from the backend
    // file as read after the save, so the reference is the stream itself, checked against QEMU below)
    const ref = path.join(dir, 'saved-mem0.ram');
    await load({ snapshot: saved, blocks: [{ name: 'mem0', path: ref }], channels: 2 });
    savedRam = fs.readFileSync(ref);
    // the same VM behind a libvirt header, as virsh save --image-format sparse writes it
    const header = libvirtHeader({ dataLen: 65536 + 777, domainName: 'fxr-export', wasRunning: true });
    libvirtSave = path.join(dir, 'domain.save');
    fs.writeFileSync(libvirtSave, header);
    libvirtOffset = header.length;
    const backend2 = path.join(dir, 'source2.ram');
    makeBlock(backend2, 4, 8192);
    await saveRunning('source2', backend2, `file:${libvirtSave},offset=${libvirtOffset}`, 2);
  });

  after(async () => {
    for (const vm of vms) await vm.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the premise: QEMU itself restores its own save, and the firmware ran', async () => {
    const r = await restore('premise', `file:${saved}`, 2);
    assert.equal(r.status.status, 'completed', r.status['error-desc']);
    // Loading the device state may write guest RAM (kvmvapic's post-load patches a firmware page):
    // what QEMU restores from its own file is the reference for what it restores from ours.
    qemuRestored = r.ram;
    assert.ok(
      differingPages(r.ram, savedRam).length <= 4,
      `${differingPages(r.ram, savedRam).length} pages differ from the stream`,
    );
    const d = path.join(dir, 'pattern.ram');
    makeBlock(d, 3, 8192);
    assert.ok(!fs.readFileSync(d).equals(savedRam), 'the guest did not run: its RAM is still the pattern');
    fs.rmSync(d);
  });

  for (const channels of [0, 2]) {
    it(`convert → export → a fresh QEMU restores it (multifd ${channels || 'off'}): completed, paused, RAM byte for byte equal to QEMU's own restore of the original`, async (t) => {
      const d = tempDir(t);
      const snap = path.join(d, 'vm.fxr');
      await convert({ input: saved, output: snap, channels: 2 });
      const out = path.join(d, 'export.mig');
      const r = await exportSnapshot({ snapshot: snap, output: out, channels: 3 });
      assert.equal(r.outputFormat, 'qemu-mapped-ram');
      assert.equal(fs.statSync(out).mode & 0o777, 0o600);
      // fixedram reads its own export back: same blocks, same device sections
      const a = inspect(saved);
      const b = inspect(out);
      assert.deepEqual(
        b.blocks.map((x) => [x.name, x.length, x.presentPages]),
        a.blocks.map((x) => [x.name, x.length, x.presentPages]),
      );
      assert.equal(b.deviceSections, a.deviceSections);
      const res = await restore(`restore${channels}`, `file:${out}`, channels);
      assert.equal(res.status.status, 'completed', res.status['error-desc']);
      assert.equal(res.runstate, 'paused');
      assert.ok(qemuRestored, 'the premise test did not run');
      assert.deepEqual(
        differingPages(res.ram, qemuRestored),
        [],
        "the RAM restored from the export differs from QEMU's own restore",
      );
      assert.deepEqual(differingPages(res.ram, savedRam), differingPages(qemuRestored, savedRam));
    });
  }

  it('a libvirt save image converts and exports back to a libvirt image (default format) that QEMU restores at the same offset', async (t) => {
    const d = tempDir(t);
    const snap = path.join(d, 'lv.fxr');
    await convert({ input: libvirtSave, output: snap, channels: 2 });
    const out = path.join(d, 'lv.save');
    const r = fixedram(['export', snap, '-o', out, '--json']);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { outputFormat: string; streamOffset: number };
    assert.equal(j.outputFormat, 'libvirt-save-image');
    assert.equal(j.streamOffset, libvirtOffset);
    assert.ok(
      fs.readFileSync(out).subarray(0, libvirtOffset).equals(fs.readFileSync(libvirtSave).subarray(0, libvirtOffset)),
    );
    const info = inspect(out) as ReturnType<typeof inspect> & { libvirt?: { domainName: string } };
    assert.equal(info.libvirt?.domainName, 'fxr-export');
    const res = await restore('restore-lv', `file:${out},offset=${libvirtOffset}`, 2);
    assert.equal(res.status.status, 'completed', res.status['error-desc']);
    // --format qemu writes the bare stream of the same VM
    const bare = path.join(d, 'bare.mig');
    await exportSnapshot({ snapshot: snap, output: bare, format: 'qemu', channels: 2 });
    assert.equal(inspect(bare).streamOffset, 0);
    const res2 = await restore('restore-bare', `file:${bare}`, 0);
    assert.equal(res2.status.status, 'completed', res2.status['error-desc']);
    assert.ok(res2.ram.equals(res.ram));
  });

  it('a QEMU file cut a few KB after the END of its RAM section: fixedram exits 3 everywhere, and QEMU fails to load it too', async (t) => {
    const d = tempDir(t);
    const end = Number(inspect(saved).ramSectionEnd);
    const cut = truncatedCopy(saved, path.join(d, 'cut.mig'), end + 3000);
    for (const args of [
      ['inspect', cut],
      ['verify', cut],
      ['load', cut, '--dir', path.join(d, 'out')],
      ['convert', cut, '-o', path.join(d, 'c.fxr')],
    ]) {
      const r = fixedram(args);
      assert.equal(r.status, 3, `${args[0]}: ${r.stderr}`);
      assert.match(r.stderr, /device state after the RAM section/);
    }
    const res = await restore('restore-cut', `file:${cut}`, 0);
    assert.equal(res.status.status, 'failed');
  });

  it('refusals: no device state (exit 3, says why), --format libvirt without libvirt data (exit 3), a damaged page (exit 1, nothing written)', async (t) => {
    const d = tempDir(t);
    const block = path.join(d, 'b0');
    makeBlock(block, 0, 16);
    const plain = path.join(d, 'plain.fxr');
    await save({ output: plain, blocks: [{ name: 'b0', path: block }], channels: 1 });
    const out = path.join(d, 'out.mig');
    const r = fixedram(['export', plain, '-o', out]);
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, /holds no device state .* QEMU cannot restore a VM from/);
    const snap = path.join(d, 'vm.fxr');
    await convert({ input: saved, output: snap, channels: 2 });
    const lv = fixedram(['export', snap, '-o', out, '--format', 'libvirt']);
    assert.equal(lv.status, 3, lv.stderr);
    assert.match(lv.stderr, /did not come from a libvirt save image/);
    // flip a byte of a present page of mem0: the page checksum stops the export
    const info = inspect(snap);
    const mem0 = info.blocks.find((b) => b.name === 'mem0')!;
    const fd = fs.openSync(snap, 'r+');
    const page = Buffer.alloc(4096);
    let at = -1;
    for (let i = 0; i < mem0.pages && at < 0; i++) {
      fs.readSync(fd, page, 0, 4096, mem0.pagesOffset + i * 4096);
      if (page.some((v) => v !== 0)) at = mem0.pagesOffset + i * 4096 + 100;
    }
    assert.ok(at > 0, 'no present page found');
    fs.writeSync(fd, Buffer.from([page[100]! ^ 0xff]), 0, 1, at);
    fs.closeSync(fd);
    const bad = fixedram(['export', snap, '-o', out]);
    assert.equal(bad.status, 1, bad.stderr);
    assert.deepEqual(
      fs.readdirSync(d).filter((f) => f.startsWith('.') || f.startsWith('out')),
      [],
    );
  });
});
