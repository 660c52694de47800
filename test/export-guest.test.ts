/**
 * convert → export → QEMU restores and the guest continues: a guest that counts in RAM and prints
 * the count on its serial port (test/support/guest.S) runs under QEMU (TCG, anonymous RAM), is
 * stopped and saved with QEMU's own mapped-ram + multifd; fixedram converts the file and exports it
 * again; a fresh QEMU with -incoming defer restores the export and, after `cont`, the guest prints
 * counts that go on from the saved count instead of starting from 0.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe } from 'node:test';
import { convert } from '../src/convert';
import { exportSnapshot } from '../src/export';
import { load } from '../src/index';
import {
  buildGuest,
  guestMissing,
  serialCounts,
  startGuest,
  waitForCounts,
  waitForStatus,
  type GuestKernel,
  type GuestVm,
} from './support/guest';
import { prereqSuite } from './support/prereq';
import { qemuMissing, saveMappedRam, type MigrationStatus } from './support/qemu';

const missing = qemuMissing() ?? guestMissing();
const { it, before, after } = prereqSuite(!missing, `export guest test: ${missing}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('export: a running guest continues after convert → export → QEMU restore (TCG)', () => {
  let dir: string;
  let kernel: GuestKernel;
  const vms: GuestVm[] = [];

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-export-guest-'));
    kernel = buildGuest(dir);
  });
  after(async () => {
    for (const vm of vms) await vm.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the restored guest prints counts that continue from the saved count', async () => {
    const src = await startGuest(dir, 'src', { kernel, mib: 64 });
    vms.push(src);
    await waitForCounts(src.serial, 10);
    await src.qmp.execute('stop');
    const before = serialCounts(src.serial);
    const last = before[before.length - 1]!;
    assert.ok(last >= 9, `the guest counted to ${last}`);
    const mig = path.join(dir, 'guest.mig');
    const st = await saveMappedRam(src.qmp, `file:${mig}`, 2);
    assert.equal(st.status, 'completed', st['error-desc']);
    await src.stop();

    const snap = path.join(dir, 'guest.fxr');
    await convert({ input: mig, output: snap, channels: 2 });
    // the count stored in the snapshot's RAM is at least the last one printed
    const ramFile = path.join(dir, 'pc.ram');
    await load({ snapshot: snap, blocks: [{ name: 'pc.ram', path: ramFile }], channels: 2 });
    const fd = fs.openSync(ramFile, 'r');
    const b = Buffer.alloc(4);
    fs.readSync(fd, b, 0, 4, kernel.countAddress);
    fs.closeSync(fd);
    const saved = b.readUInt32LE(0);
    assert.ok(saved >= last, `saved count ${saved}, last printed ${last}`);
    fs.rmSync(mig);

    const out = path.join(dir, 'export.mig');
    await exportSnapshot({ snapshot: snap, output: out, channels: 2 });
    const dst = await startGuest(dir, 'dst', { kernel, mib: 64, incoming: true });
    vms.push(dst);
    await dst.qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'mapped-ram', state: true },
        { capability: 'multifd', state: true },
      ],
    });
    await dst.qmp.execute('migrate-set-parameters', { 'multifd-channels': 2 });
    await dst.qmp.execute('migrate-incoming', { uri: `file:${out}`, 'exit-on-error': false });
    let status: MigrationStatus = { status: '' };
    for (let i = 0; i < 2400; i++) {
      status = await dst.qmp.execute<MigrationStatus>('query-migrate');
      if (status.status === 'completed' || status.status === 'failed') break;
      await sleep(50);
    }
    assert.equal(status.status, 'completed', status['error-desc']);
    await waitForStatus(dst.qmp, 'paused');
    await dst.qmp.execute('cont');
    const after = await waitForCounts(dst.serial, 5);
    assert.ok(
      after[0]! >= saved && after[0]! <= saved + 1,
      `the restored guest printed ${after.slice(0, 5).join(', ')}; the saved count is ${saved} (it must go on from there, not from 0)`,
    );
    for (let i = 1; i < 5; i++)
      assert.ok(after[i]! > after[i - 1]!, `counts ${after.slice(0, 5).join(', ')} do not increase`);
    await dst.stop();
  });
});
