/**
 * The device-state record (format v1, flag DEVICE_STATE): convert keeps QEMU's non-RAM stream (and
 * the libvirt data) byte for byte, inspect shows it, verify checks its checksum (exit 1) and its
 * structure (exit 3), load ignores it, save --update keeps it, the library's save() stores one, and
 * a reader that does not know the flag refuses the file.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { convert } from '../src/convert';
import {
  decodeDeviceState,
  deviceStateBytes,
  encodeDeviceState,
  kDeviceStateHeaderBytes,
  kMaxDeviceStateBytes,
  kMaxOriginBytes,
  kPartEntryBytes,
  type DeviceState,
} from '../src/devstate';
import { FixedramError } from '../src/errors';
import { decodeHeader, kFlagDeviceState, kHeaderBytes } from '../src/format';
import { inspect, load, save, update, verify } from '../src/index';
import { native } from '../src/native';
import { openSnapshot, readDeviceState } from '../src/snapshot';
import { fixedram } from './support/cli';
import {
  fixturesAvailable,
  kFixtures,
  patch,
  readManifest,
  truncatedCopy,
  unpackFixture,
  wrapInLibvirt,
  type Manifest,
} from './support/qemu';
import { prereqSuite } from './support/prereq';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

// fixture tests: a missing fixture fails under CI and skips with the reason elsewhere
const fx = prereqSuite(fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures} (set FIXEDRAM_QEMU_FIXTURES)`);
const hash64 = (b: Uint8Array): bigint => native().hash64(b);

/** A small deterministic device state of either kind. */
function sample(kind: DeviceState['kind'], seed: number, bytes = 5000): DeviceState {
  const fill = (n: number, s: number): Buffer =>
    Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + s * 7) & 0xff));
  return kind === 'qemu-stream'
    ? {
        kind,
        origin: { source: 'test', machineType: 'pc-q35-10.0', capabilities: ['x-ignore-shared'] },
        stream: fill(bytes, seed),
      }
    : {
        kind,
        origin: { source: 'test', machineType: 'pc-q35-10.0' },
        head: fill(61, seed),
        ramSection: { sectionId: 2, instanceId: 0, version: 4, footers: true },
        tail: fill(bytes, seed + 1),
      };
}

describe('device-state record: encoding', () => {
  it('round-trips both kinds, with and without libvirt data; the size is what deviceStateBytes says', () => {
    for (const kind of ['qemu-mapped-ram', 'qemu-stream'] as const) {
      for (const libvirt of [undefined, Buffer.from('LibvirtQemudSave-and-xml')]) {
        const ds = { ...sample(kind, 3), ...(libvirt ? { libvirt } : {}) };
        const rec = encodeDeviceState(ds, hash64);
        assert.equal(rec.length, deviceStateBytes(ds));
        const back = decodeDeviceState(rec, 0, hash64);
        assert.equal(back.checksumOk, true);
        assert.equal(back.kind, kind);
        assert.deepEqual(back.origin, ds.origin);
        for (const k of ['head', 'tail', 'stream', 'libvirt'] as const) {
          assert.equal(Buffer.compare(Buffer.from(back[k] ?? []), Buffer.from(ds[k] ?? [])), 0, k);
        }
        if (kind === 'qemu-mapped-ram') assert.deepEqual(back.ramSection, ds.ramSection);
      }
    }
  });

  it('every flipped bit outside the checksum field is caught: a structural error (exit 3) or checksumOk false', () => {
    const rec = encodeDeviceState(sample('qemu-mapped-ram', 1, 300), hash64);
    let structural = 0;
    let checksum = 0;
    for (let i = 0; i < rec.length; i++) {
      if (i >= 32 && i < 40) continue;
      const bad = Buffer.from(rec);
      bad[i]! ^= 1 << (i % 8);
      try {
        const d = decodeDeviceState(bad, 0, hash64);
        assert.equal(d.checksumOk, false, `byte ${i}`);
        checksum++;
      } catch (err) {
        assert.ok(err instanceof FixedramError && err.exitCode === 3, `byte ${i}: ${String(err)}`);
        structural++;
      }
    }
    assert.ok(structural > 0 && checksum > 0, `${structural} structural, ${checksum} checksum`);
  });

  it('truncations are structural errors; the bounds are enforced on write and on read', () => {
    const rec = encodeDeviceState(sample('qemu-stream', 2, 1000), hash64);
    for (const n of [0, 8, 63, 64, 70, kDeviceStateHeaderBytes + 2 * kPartEntryBytes, rec.length - 1]) {
      assert.throws(
        () => decodeDeviceState(rec.subarray(0, n), 0, hash64),
        (e: unknown) => e instanceof FixedramError && e.exitCode === 3,
        `${n}`,
      );
    }
    const big = { ...sample('qemu-stream', 1), origin: { source: 'x'.repeat(kMaxOriginBytes) } };
    assert.throws(() => encodeDeviceState(big, hash64), /origin is \d+ bytes/);
    // a part length that claims more than the record holds
    const lie = Buffer.from(rec);
    lie.writeBigUInt64LE(BigInt(kMaxDeviceStateBytes), kDeviceStateHeaderBytes + 8);
    assert.throws(() => decodeDeviceState(lie, 0, hash64), /runs past the end of the record/);
  });
});

describe('device state in snapshots', () => {
  let dir: string;
  let mig: string;
  let ram: string;
  let mb: Manifest;
  let snap: string;

  fx.before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-devstate-'));
    mig = unpackFixture('membackend-32m.mig', dir);
    ram = unpackFixture('membackend-32m.ram', dir);
    mb = readManifest('membackend-32m');
    snap = path.join(dir, 'vm.fxr');
    await convert({ input: mig, output: snap, channels: 2 });
  });
  fx.after(() => fs.rmSync(dir, { recursive: true, force: true }));

  fx.it(
    'convert keeps the stream before "ram" and everything after its END byte for byte; inspect shows kind, size and origin',
    () => {
      const info = inspect(snap) as ReturnType<typeof inspect> & { deviceState: Record<string, unknown> };
      assert.equal(info.state, 'complete');
      assert.equal(info.deviceState.kind, 'qemu-mapped-ram');
      assert.equal(info.deviceState.checksumOk, true);
      assert.deepEqual(info.deviceState.origin, {
        source: 'qemu-mapped-ram-file',
        machineType: 'pc-q35-10.0',
        capabilities: ['mapped-ram'],
        targetPageSize: 4096,
      });
      const s = openSnapshot(snap);
      try {
        assert.ok(s.header.flags & kFlagDeviceState);
        const ds = readDeviceState(s)!;
        const whole = fs.readFileSync(mig);
        // head: from the magic to the START record of "ram" (0x47 in this file)
        assert.ok(Buffer.from(ds.head!).equals(whole.subarray(0, 0x47)));
        assert.ok(Buffer.from(ds.tail!).equals(whole.subarray(mb.ram_section_end)));
        assert.deepEqual(ds.ramSection, { sectionId: 2, instanceId: 0, version: 4, footers: true });
        assert.equal(info.deviceState.streamBytes, 0x47 + whole.length - mb.ram_section_end);
        // the record is the end of the file, 4 KiB-aligned, after the last page region
        assert.equal(s.header.deviceState!.offset % 4096, 0);
        assert.equal(s.header.deviceState!.offset + s.header.deviceState!.bytes, fs.statSync(snap).size);
      } finally {
        fs.closeSync(s.fd);
      }
    },
  );

  fx.it(
    'verify checks the record: OK as written; a flipped device-state byte fails with exit 1, a broken record header with exit 3',
    async (t) => {
      const ok = await verify({ snapshot: snap, channels: 2 });
      assert.equal(ok.ok, true);
      assert.deepEqual(ok.deviceState, { kind: 'qemu-mapped-ram', bytes: ok.deviceState!.bytes, checksumOk: true });
      const d = tempDir(t);
      const s = openSnapshot(snap);
      const at = s.header.deviceState!.offset;
      const end = at + s.header.deviceState!.bytes;
      fs.closeSync(s.fd);
      const flipped = path.join(d, 'flipped.fxr');
      fs.copyFileSync(snap, flipped);
      const byte = Buffer.alloc(1);
      const fd = fs.openSync(flipped, 'r+');
      fs.readSync(fd, byte, 0, 1, end - 1000);
      byte[0]! ^= 0x40;
      fs.writeSync(fd, byte, 0, 1, end - 1000);
      fs.closeSync(fd);
      const r = fixedram(['verify', flipped]);
      assert.equal(r.status, 1, r.stderr + r.stdout);
      assert.match(r.stdout, /FAIL the device-state record \(qemu-mapped-ram, \d+ bytes\) fails its checksum/);
      const j = JSON.parse(fixedram(['verify', flipped, '--json']).stdout) as { failures: { kind: string }[] };
      assert.deepEqual(
        j.failures.map((f) => f.kind),
        ['device-state-checksum'],
      );
      // load ignores the device state: a damaged one does not stop it
      const target = path.join(d, 'mem0.ram');
      await load({ snapshot: flipped, blocks: [{ name: 'mem0', path: target }], channels: 2 });
      assert.ok(fs.readFileSync(target).equals(fs.readFileSync(ram)));

      const magic = path.join(d, 'magic.fxr');
      fs.copyFileSync(snap, magic);
      patch(magic, at, Buffer.from('FXRDEVSX'));
      const m = fixedram(['verify', magic]);
      assert.equal(m.status, 3, m.stderr);
      assert.match(m.stderr, /corrupt device-state record: bad magic/);
      const cut = truncatedCopy(snap, path.join(d, 'cut.fxr'), end - 10);
      const c = fixedram(['inspect', cut]);
      assert.equal(c.status, 3, c.stderr);
      assert.match(c.stderr, /truncated snapshot: .* inside the device-state record/);
    },
  );

  fx.it('convert of a libvirt save image keeps the libvirt header and domain XML', async (t) => {
    const d = tempDir(t);
    const image = path.join(d, 'vm.save');
    const shift = wrapInLibvirt(mig, image, mb.blocks[0]!, { domainName: 'guest-1', wasRunning: true });
    const out = path.join(d, 'lv.fxr');
    const r = await convert({ input: image, output: out, channels: 2 });
    assert.ok(r.deviceStateBytes > shift);
    const info = inspect(out) as ReturnType<typeof inspect> & {
      deviceState: { origin: Record<string, unknown>; libvirtBytes: number };
    };
    assert.equal(info.deviceState.origin.source, 'libvirt-save-image');
    assert.deepEqual(info.deviceState.origin.libvirt, {
      domainName: 'guest-1',
      wasRunning: true,
      version: 2,
      format: 'sparse',
    });
    assert.equal(info.deviceState.libvirtBytes, shift);
    const s = openSnapshot(out);
    try {
      const ds = readDeviceState(s)!;
      assert.ok(Buffer.from(ds.libvirt!).equals(fs.readFileSync(image).subarray(0, shift)));
      assert.ok(Buffer.from(ds.head!).subarray(0, 4).equals(Buffer.from('QEVM')));
    } finally {
      fs.closeSync(s.fd);
    }
  });
});

describe('device state through the library and the format rules', () => {
  it('save({deviceState}) stores it; save --update keeps it; a reader that does not know the flag refuses the file', async (t) => {
    const d = tempDir(t);
    const block = path.join(d, 'b0');
    makeBlock(block, 0, 64);
    const out = path.join(d, 'snap.fxr');
    const ds = { ...sample('qemu-stream', 9, 70_000), libvirt: Buffer.from('header+xml') };
    await save({ output: out, blocks: [{ name: 'b0', path: block }], channels: 2, deviceState: ds });
    const s = openSnapshot(out);
    const back = readDeviceState(s)!;
    fs.closeSync(s.fd);
    assert.ok(Buffer.from(back.stream!).equals(Buffer.from(ds.stream!)));
    assert.ok((await verify({ snapshot: out, channels: 2 })).ok);

    makeBlock(block, 0, 64, { generation: 2 });
    await update({ output: out, blocks: [{ name: 'b0', path: block }], channels: 2 });
    const after = inspect(out) as ReturnType<typeof inspect> & { deviceState?: { checksumOk: boolean; kind: string } };
    assert.equal(after.deviceState?.kind, 'qemu-stream');
    assert.equal(after.deviceState?.checksumOk, true);
    assert.ok((await verify({ snapshot: out, channels: 2 })).ok);

    // A version-1 reader without the extension knows flags COMPLETE and UPDATING only and refuses
    // any other bit (docs/format-v1.md, "Versioning"). The file sets bit 2 ...
    const head = Buffer.alloc(kHeaderBytes);
    const fd = fs.openSync(out, 'r');
    fs.readSync(fd, head, 0, kHeaderBytes, 0);
    fs.closeSync(fd);
    const flags = head.readUInt32LE(12);
    assert.equal(flags & ~0x3, kFlagDeviceState);
    // ... and this reader applies the same rule to a bit it does not know (bit 3), so an older one refuses bit 2.
    const table = fs.readFileSync(out).subarray(0, kHeaderBytes + 320);
    const unknown = Buffer.from(table);
    unknown.writeUInt32LE(flags | 0x8, 12);
    unknown.fill(0, 56, 64);
    unknown.writeBigUInt64LE(hash64(unknown), 56);
    assert.throws(() => decodeHeader(unknown, fs.statSync(out).size, hash64), {
      code: 'ERR_SNAPSHOT_UNSUPPORTED',
      message: 'unsupported header flags 0xd',
    });
  });
});
