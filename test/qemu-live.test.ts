/**
 * Against a real QEMU >= 9: a paused q35 guest whose RAM is a pre-filled memory-backend-file
 * (stamped pages, random pages, zero runs, holes) is saved with mapped-ram + multifd (1 and 4
 * channels, and once behind a libvirt header with file:PATH,offset=N); fixedram must list exactly
 * the blocks QEMU has and give back the backend file byte for byte. Skipped, with the reason, when
 * qemu-system-x86_64 >= 9 is not installed (CI always has it).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe } from 'node:test';
import { convert } from '../src/convert';
import { decodeBlockName, encodeBlockName, inspect, load, verify } from '../src/index';
import { fixedram } from './support/cli';
import {
  infoRamblock,
  libvirtHeader,
  qemuMissing,
  saveMappedRam,
  startQemu,
  truncatedCopy,
  type QemuVm,
} from './support/qemu';
import { fillFile, makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';
import { prereqSuite } from './support/prereq';

const missing = qemuMissing();

const kPages = 8192; // 32 MiB guest RAM
const kRamBytes = kPages * 4096;

const { it, before, after } = prereqSuite(!missing, `QEMU: ${missing}`);

describe('live QEMU mapped-ram saves', () => {
  let dir: string;
  let backend: string;
  let original: Buffer;
  let dataPages = 0;
  const vms: QemuVm[] = [];
  /** channels → { file, blocks QEMU reported with `info ramblock` } */
  const saves = new Map<number, { file: string; ramblocks: { name: string; used: number }[] }>();
  let wrapped: { file: string; streamOffset: number };

  const memArgs = (): string[] => [
    '-m',
    '32M',
    '-object',
    `memory-backend-file,id=mem0,size=32M,mem-path=${backend},share=on`,
    '-numa',
    'node,memdev=mem0',
  ];

  /** Starts a paused guest, saves it to `uri` with `channels` multifd channels, quits it. */
  const saveOnce = async (tag: string, uri: string, channels: number): Promise<{ name: string; used: number }[]> => {
    const vm = await startQemu(dir, tag, memArgs());
    vms.push(vm);
    try {
      assert.equal((await vm.qmp.execute<{ status: string }>('query-status')).status, 'prelaunch');
      const ramblocks = await infoRamblock(vm.qmp);
      const st = await saveMappedRam(vm.qmp, uri, channels);
      assert.equal(st.status, 'completed', `QEMU save ${tag}: ${st['error-desc'] ?? ''}`);
      return ramblocks;
    } finally {
      await vm.stop();
    }
  };

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-qemu-live-'));
    backend = path.join(dir, 'mem0.ram');
    const kinds = makeBlock(backend, 7, kPages);
    dataPages = kinds.filter((k) => k === 'stamp' || k === 'random').length;
    original = fs.readFileSync(backend);
    for (const channels of [1, 4]) {
      const file = path.join(dir, `multifd-${channels}.mig`);
      saves.set(channels, { file, ramblocks: await saveOnce(`save${channels}`, `file:${file}`, channels) });
    }
    // libvirt: its header first, then QEMU writes the stream at offset N (as virsh save --image-format sparse)
    const header = libvirtHeader({ dataLen: 65536 + 1234, domainName: 'fxr-live' });
    const file = path.join(dir, 'domain.save');
    fs.writeFileSync(file, header);
    await saveOnce('libvirt', `file:${file},offset=${header.length}`, 2);
    assert.ok(fs.readFileSync(file).subarray(0, header.length).equals(header), 'QEMU overwrote the libvirt header');
    wrapped = { file, streamOffset: header.length };
  });

  after(async () => {
    for (const vm of vms) await vm.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the paused guest never touched its RAM: the backend file is still the pattern written before QEMU started', () => {
    assert.ok(fs.readFileSync(backend).equals(original));
  });

  for (const channels of [1, 4]) {
    it(`multifd ${channels}: inspect lists exactly the blocks QEMU has (info ramblock), mem0 with one bit per data page`, () => {
      const s = saves.get(channels)!;
      const info = inspect(s.file);
      assert.equal(info.format, 'qemu-mapped-ram');
      assert.equal(info.state, 'complete');
      assert.match(String(info.machineType), /^pc-q35-\d+\.\d+$/);
      assert.deepEqual(info.capabilities, ['mapped-ram']);
      assert.deepEqual(
        info.blocks.map((b) => ({ name: b.name, used: b.length })),
        s.ramblocks,
      );
      const mem0 = info.blocks.find((b) => b.name === 'mem0')!;
      assert.equal(mem0.length, kRamBytes);
      assert.equal(mem0.presentPages, dataPages);
      assert.equal(
        info.ramTotal,
        s.ramblocks.reduce((sum, b) => sum + b.used, 0),
      );
      for (const b of info.blocks) assert.equal(b.pagesOffset % (1 << 20), 0, b.name);
    });

    it(`multifd ${channels}: load of mem0 reproduces the backend file byte for byte, into a fresh and a pre-dirtied target`, async (t) => {
      const s = saves.get(channels)!;
      const d = tempDir(t);
      const fresh = path.join(d, 'fresh.ram');
      const dirty = path.join(d, 'dirty.ram');
      fillFile(dirty, kRamBytes, 0xaa);
      await load({ snapshot: s.file, blocks: [{ name: 'mem0', path: fresh }], channels: 3, batchBytes: 256 << 10 });
      const r = await load({ snapshot: s.file, blocks: [{ name: 'mem0', path: dirty }], channels: 2 });
      assert.equal(r.blocks[0]!.zeroPages, kPages - dataPages);
      assert.ok(fs.readFileSync(fresh).equals(original), 'fresh target differs from the backend file');
      assert.ok(fs.readFileSync(dirty).equals(original), 'pre-dirtied target differs from the backend file');

      const v = await verify({ snapshot: s.file, against: [{ name: 'mem0', path: backend }], channels: 2 });
      assert.equal(v.ok, true, JSON.stringify(v.failures));

      // every block into a directory: the names QEMU gave, encoded, nothing outside it
      const out = path.join(d, 'blocks');
      const all = await load({ snapshot: s.file, dir: out, channels: 2 });
      assert.deepEqual(fs.readdirSync(out).map(decodeBlockName).sort(), s.ramblocks.map((b) => b.name).sort());
      assert.deepEqual(fs.readdirSync(d).sort(), ['blocks', 'dirty.ram', 'fresh.ram']);
      assert.ok(fs.readFileSync(path.join(out, encodeBlockName('mem0'))).equals(original));
      assert.equal(all.blocks.length, s.ramblocks.length);
    });
  }

  it('convert of a live file, then verify passes, and load of the snapshot equals the extraction from the QEMU file', async (t) => {
    const s = saves.get(4)!;
    const d = tempDir(t);
    const snap = path.join(d, 'vm.fxr');
    const r = await convert({ input: s.file, output: snap, channels: 4, fsync: false });
    assert.equal(r.command, 'convert');
    assert.deepEqual(
      r.blocks.map((b) => b.name),
      s.ramblocks.map((b) => b.name),
    );
    assert.equal(fixedram(['verify', snap, '--against', `mem0=${backend}`]).status, 0);
    const a = path.join(d, 'a');
    const b = path.join(d, 'b');
    await load({ snapshot: s.file, dir: a, channels: 2 });
    await load({ snapshot: snap, dir: b, channels: 2 });
    for (const name of fs.readdirSync(a)) {
      assert.ok(fs.readFileSync(path.join(a, name)).equals(fs.readFileSync(path.join(b, name))), decodeBlockName(name));
    }
  });

  it('a file QEMU wrote behind a libvirt header (file:PATH,offset=N) is recognised and its RAM read through it', async (t) => {
    const info = inspect(wrapped.file);
    assert.equal(info.state, 'complete');
    assert.equal(info.streamOffset, wrapped.streamOffset);
    assert.deepEqual(info.libvirt && { ...(info.libvirt as object), cookieOffset: 0 }, {
      magic: 'LibvirtQemudSave',
      version: 2,
      dataLen: 65536 + 1234,
      wasRunning: false,
      format: 'sparse',
      formatCode: 6,
      cookieOffset: 0,
      domainName: 'fxr-live',
    });
    assert.deepEqual(
      info.blocks.map((b) => b.name),
      saves.get(1)!.ramblocks.map((b) => b.name),
    );
    const target = path.join(tempDir(t), 'mem0.ram');
    fillFile(target, kRamBytes, 0x5a);
    await load({ snapshot: wrapped.file, blocks: [{ name: 'mem0', path: target }], channels: 4 });
    assert.ok(fs.readFileSync(target).equals(original));
  });

  it('a live file cut inside a page region (QEMU 10 segfaults on it with multifd) is a clean exit-3 error', (t) => {
    const d = tempDir(t);
    const info = inspect(saves.get(4)!.file);
    const mem0 = info.blocks.find((b) => b.name === 'mem0')!;
    const cut = truncatedCopy(saves.get(4)!.file, path.join(d, 'cut.mig'), mem0.pagesOffset + 100 * 4096 + 1000);
    const target = path.join(d, 'target.ram');
    const r = fixedram(['load', cut, '-b', `mem0=${target}`, '-j', '4', '--json']);
    assert.equal(r.status, 3, r.stderr);
    assert.equal(JSON.parse(r.stdout).error.code, 'ERR_SNAPSHOT_TRUNCATED');
    assert.match(r.stderr, /block 'mem0' pages end at offset/);
    assert.equal(fs.existsSync(target), false);
  });
});
