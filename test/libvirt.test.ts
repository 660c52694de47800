/**
 * libvirt 11 (bookworm-backports) round trip with a guest that runs code: a transient domain runs
 * the counting kernel of test/support/guest.S, `virsh save --image-format sparse` writes a libvirt
 * save image, `fixedram convert` keeps its RAM, device state and libvirt header, `fixedram export`
 * writes a libvirt image back, and `virsh restore` brings the domain back: it counts on from the
 * saved count. The test starts virtlogd and libvirtd itself (as root, no systemd) when no libvirtd
 * answers, with pidfiles in its own directory, and stops only what it started.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe } from 'node:test';
import { load } from '../src/index';
import { fixedram } from './support/cli';
import { buildGuest, guestMissing, serialCounts, waitForCounts, type GuestKernel } from './support/guest';
import { prereqSuite } from './support/prereq';
import { qemuMissing } from './support/qemu';

const kUri = 'qemu:///system';
const haveExport = /Usage: fixedram export/.test(fixedram(['export', '--help']).stdout);

function have(cmd: string): boolean {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0;
}

function libvirtMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'the libvirt test runs libvirtd as root';
  for (const c of ['virsh', 'libvirtd', 'virtlogd']) {
    if (!have(c)) return `${c} is not installed (libvirt 11 from bookworm-backports: .ci/install-system)`;
  }
  return undefined;
}

const missing = qemuMissing() ?? guestMissing() ?? libvirtMissing();
const { it, before, after } = prereqSuite(!missing, `libvirt: ${missing}`);

const virsh = (...args: string[]): { status: number | null; stdout: string; stderr: string } => {
  // -k 0: no client keepalive. On a loaded 2-core machine libvirtd can miss the 5 s x 6 pings and
  // virsh then gives up ("Disconnected from qemu:///system"); the spawn timeout still bounds a hang.
  const r = spawnSync('virsh', ['-k', '0', '-c', kUri, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
};

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('libvirt: virsh save → fixedram convert → fixedram export → virsh restore', () => {
  let dir: string;
  let kernel: GuestKernel;
  const started: { pidfile: string; name: string }[] = [];
  const domain = `fixedram-test-${process.pid}`;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-libvirt-'));
    fs.chmodSync(dir, 0o755); // libvirt's QEMU may run as another user: it reads the kernel here
    kernel = buildGuest(dir);
    fs.chmodSync(kernel.elf, 0o644);
    if (virsh('version').status !== 0) {
      // no libvirtd answers: start virtlogd and libvirtd by hand (CI has no systemd)
      fs.mkdirSync('/run/libvirt', { recursive: true });
      for (const name of ['virtlogd', 'libvirtd']) {
        const pidfile = path.join(dir, `${name}.pid`);
        const r = spawnSync(name, ['--daemon', '--pid-file', pidfile], { encoding: 'utf8', timeout: 30_000 });
        assert.equal(r.status, 0, `${name} --daemon: ${r.stderr}`);
        started.push({ pidfile, name });
      }
      for (let i = 0; i < 100 && virsh('version').status !== 0; i++) await sleep(100);
    }
    const v = virsh('version');
    assert.equal(v.status, 0, `libvirtd does not answer: ${v.stderr}`);
  });

  after(async () => {
    virsh('destroy', domain);
    for (const s of started.reverse()) {
      try {
        const pid = Number(fs.readFileSync(s.pidfile, 'utf8').trim());
        if (fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(s.name)) process.kill(pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  let exported: { snap: string; saved: number; serial: string } | undefined;

  it('virsh save --image-format sparse → convert keeps RAM, device state and libvirt header; virsh restore of the image counts on', async () => {
    const serial = path.join(dir, 'serial.txt');
    const xml = path.join(dir, 'domain.xml');
    fs.writeFileSync(
      xml,
      `<domain type='qemu'>
  <name>${domain}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>${kernel.elf}</kernel></os>
  <devices>
    <serial type='file'><source path='${serial}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`,
    );
    const c = virsh('create', xml);
    assert.equal(c.status, 0, c.stderr);
    await waitForCounts(serial, 3);

    const image = path.join(dir, 'domain.save');
    const s = virsh('save', domain, image, '--image-format', 'sparse');
    assert.equal(s.status, 0, s.stderr);
    assert.notEqual(virsh('domstate', domain).status, 0, 'virsh save ends the domain');

    const snap = path.join(dir, 'domain.fxr');
    const conv = fixedram(['convert', image, '-o', snap, '--json']);
    assert.equal(conv.status, 0, conv.stderr);
    const info = JSON.parse(fixedram(['inspect', snap, '--json']).stdout) as {
      deviceState?: { kind: string; origin: { libvirt?: unknown } };
    };
    assert.equal(info.deviceState?.kind, 'qemu-mapped-ram');
    assert.ok(info.deviceState?.origin.libvirt, 'the libvirt header is kept');

    // the count the guest had when it was saved, from the snapshot's RAM
    const ram = path.join(dir, 'pc.ram');
    await load({ snapshot: snap, blocks: [{ name: 'pc.ram', path: ram }], channels: 2 });
    const saved = fs.readFileSync(ram).readUInt32LE(kernel.countAddress);
    assert.ok(saved >= 3 && serialCounts(serial).includes(saved), `saved count ${saved}`);
    fs.rmSync(ram);

    // premise: libvirt restores its own image and the guest counts on (the setup works)
    fs.rmSync(serial, { force: true });
    const r0 = virsh('restore', image);
    assert.equal(r0.status, 0, r0.stderr);
    assert.deepEqual((await waitForCounts(serial, 2)).slice(0, 2), [saved + 1, saved + 2]);
    assert.equal(virsh('destroy', domain).status, 0);
    exported = { snap, saved, serial };
  });

  it(
    'export of the converted snapshot → virsh restore: the domain counts on from the saved count',
    { todo: haveExport ? false : 'fixedram export is not in this build yet' },
    async () => {
      assert.ok(exported, 'the first test made the snapshot');
      const { snap, saved, serial } = exported;
      const back = path.join(dir, 'restored.save');
      const ex = fixedram(['export', snap, '-o', back, '--json']);
      assert.equal(ex.status, 0, ex.stderr);
      fs.rmSync(serial, { force: true });
      const r = virsh('restore', back);
      assert.equal(r.status, 0, r.stderr);
      assert.match(virsh('domstate', domain).stdout, /running/);
      const after = await waitForCounts(serial, 3);
      assert.deepEqual(after.slice(0, 3), [saved + 1, saved + 2, saved + 3]);
    },
  );
});
