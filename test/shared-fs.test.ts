/**
 * Snapshots on a shared file system, each mounted twice, the two mounts standing for two hosts: one
 * GlusterFS volume mounted twice with FUSE (.ci/gluster-up) and one CephFS mounted by two ceph-fuse
 * clients (.ci/ceph-up). What one host writes, the other reads, updates and locks.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe } from 'node:test';
import { fixedram, kBin } from './support/cli';
import { prereqSuite } from './support/prereq';
import { makeBlock, stampPage } from './support/stamp';
import { cephfsMissing, cephfsMounts, glusterMissing, glusterMounts } from './support/storage';
import { allocated, tempDir } from './support/tmp';

function run(args: string[]): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [kBin, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    c.on('close', (status) => resolve({ status, stderr }));
  });
}

interface SharedFs {
  name: string;
  mounts: { a: string; b: string };
  missing: string;
  /** Whether SEEK_DATA and hole punching work, so a snapshot's zero pages stay holes. */
  sparse: boolean;
}

const kFileSystems: SharedFs[] = [
  { name: 'GlusterFS mounted twice (FUSE)', mounts: glusterMounts, missing: glusterMissing, sparse: true },
  // CephFS: SEEK_DATA is the generic fallback (the whole file is data) and a punched hole reads back
  // zeros but keeps its space, so a snapshot there takes its full size (README "Shared storage")
  { name: 'CephFS mounted by two ceph-fuse clients', mounts: cephfsMounts, missing: cephfsMissing, sparse: false },
];

for (const sfs of kFileSystems) sharedFsSuite(sfs);

function sharedFsSuite(sfs: SharedFs): void {
  const { it } = prereqSuite(sfs.missing === '', sfs.missing);

  /** A fresh directory on the shared file system, seen as `a` through mount A and as `b` through mount B. */
  function sharedDir(t: { after: (fn: () => void) => void }): { a: string; b: string } {
    const a = fs.mkdtempSync(path.join(sfs.mounts.a, 'fixedram-test-'));
    t.after(() => fs.rmSync(a, { recursive: true, force: true }));
    return { a, b: path.join(sfs.mounts.b, path.basename(a)) };
  }

  describe(`shared file system: ${sfs.name}`, () => {
    it('both mounts show the same volume (a file written on A is read on B)', (t) => {
      const d = sharedDir(t);
      fs.writeFileSync(path.join(d.a, 'x'), 'from A');
      assert.equal(fs.readFileSync(path.join(d.b, 'x'), 'utf8'), 'from A');
    });

    it('save on host A; verify, load and update on host B; verify and load on host A', (t) => {
      const d = sharedDir(t);
      const local = tempDir(t);
      const src = path.join(local, 'mem');
      makeBlock(src, 1, 3000);
      const s = fixedram(['save', '-o', path.join(d.a, 'vm.fxr'), '-b', `mem=${src}`, '-j', '2']);
      assert.equal(s.status, 0, s.stderr);
      const onB = path.join(d.b, 'vm.fxr');
      assert.equal(fixedram(['verify', onB]).status, 0);
      const out = path.join(local, 'out');
      const l = fixedram(['load', onB, '-b', `mem=${out}`]);
      assert.equal(l.status, 0, l.stderr);
      assert.ok(fs.readFileSync(out).equals(fs.readFileSync(src)));
      if (sfs.sparse) assert.ok(allocated(onB) < fs.statSync(onB).size, 'zero pages are holes (SEEK_DATA, punch hole)');
      else
        assert.ok(allocated(onB) >= fs.statSync(onB).size, 'the documented cost: no holes, the full size is counted');
      // host B updates in place (one page changed, one data page became zero: punched, or zeros
      // written where punching frees nothing); host A sees the new pages
      const page = Buffer.alloc(4096);
      stampPage(page, 1, 10, 42);
      const fd = fs.openSync(src, 'r+');
      fs.writeSync(fd, page, 0, 4096, 10 * 4096);
      fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, 12 * 4096);
      fs.closeSync(fd);
      const u = fixedram(['save', '--update', '-o', onB, '-b', `mem=${src}`]);
      assert.equal(u.status, 0, u.stderr);
      assert.match(u.stdout, /1 written, 1 punched/);
      const onA = path.join(d.a, 'vm.fxr');
      assert.equal(fixedram(['verify', onA, '--against', `mem=${src}`]).status, 0);
      const out2 = path.join(local, 'out2');
      assert.equal(fixedram(['load', onA, '-b', `mem=${out2}`]).status, 0);
      assert.ok(fs.readFileSync(out2).equals(fs.readFileSync(src)));
    });

    it('two hosts save different snapshots into one directory at the same time', async (t) => {
      const d = sharedDir(t);
      const local = tempDir(t);
      const srcA = path.join(local, 'a');
      const srcB = path.join(local, 'b');
      makeBlock(srcA, 1, 4000);
      makeBlock(srcB, 2, 4000);
      const [ra, rb] = await Promise.all([
        run(['save', '-o', path.join(d.a, 'a.fxr'), '-b', `mem=${srcA}`, '-j', '2']),
        run(['save', '-o', path.join(d.b, 'b.fxr'), '-b', `mem=${srcB}`, '-j', '2']),
      ]);
      assert.equal(ra.status, 0, ra.stderr);
      assert.equal(rb.status, 0, rb.stderr);
      // each host's snapshot is whole when read through the other mount
      assert.equal(fixedram(['verify', path.join(d.b, 'a.fxr'), '--against', `mem=${srcA}`]).status, 0);
      assert.equal(fixedram(['verify', path.join(d.a, 'b.fxr'), '--against', `mem=${srcB}`]).status, 0);
      assert.deepEqual(fs.readdirSync(d.a).sort(), ['a.fxr', 'b.fxr'], 'no temp or lock file left behind');
    });

    it('a second writer on the other mount is refused by the lock (flock works across the clients)', async (t) => {
      const d = sharedDir(t);
      const local = tempDir(t);
      const src = path.join(local, 'mem');
      makeBlock(src, 1, 100);
      // host A holds the output's lock, as a save in progress does
      const holder = spawn(
        process.execPath,
        [
          '-e',
          `
      const { lockOutput } = require(${JSON.stringify(path.resolve(__dirname, '..', 'src', 'lock.js'))});
      const l = lockOutput(process.argv[1]);
      process.stdout.write('locked\\n');
      process.stdin.on('data', () => { l.release(); process.exit(0); });`,
          path.join(d.a, 'vm.fxr'),
        ],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      t.after(() => {
        holder.kill();
      });
      await new Promise<void>((res) => holder.stdout!.once('data', () => res()));
      const r = fixedram(['save', '-o', path.join(d.b, 'vm.fxr'), '-b', `mem=${src}`]);
      assert.equal(r.status, 4, r.stderr);
      assert.match(r.stderr, new RegExp(`locked by pid ${holder.pid}`));
      assert.ok(!fs.existsSync(path.join(d.a, 'vm.fxr')), 'the refused save wrote nothing');
      holder.stdin!.write('go\n');
      await new Promise<void>((res) => holder.on('close', () => res()));
      const ok = fixedram(['save', '-o', path.join(d.b, 'vm.fxr'), '-b', `mem=${src}`]);
      assert.equal(ok.status, 0, ok.stderr);
    });
  });
}
