/**
 * RAM is secret (issue 10 item 2): every file and directory fixedram creates is 0600/0700 whatever
 * the umask — the snapshot, its temp file while the save runs, the lock file, convert's output,
 * load targets and load --dir directories — and a re-save over an existing snapshot keeps the
 * snapshot's mode and owner, as `save --update` does.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { spawnSync } from 'node:child_process';
import { fixedram, kBin } from './support/cli';
import { denseBlock, isRoot, reap, shimPath, slowEnv, Watched } from './support/faults';
import { requirePrereq, requireSetup } from './support/prereq';
import { fixturesAvailable, kFixtures, unpackFixture } from './support/qemu';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

const kUmasks = ['022', '000', '077'];
const mode = (p: string): string => (fs.lstatSync(p).mode & 0o7777).toString(8);

/** fixedram with a given umask (set by sh, as a user's shell would). */
function withUmask(umask: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('sh', ['-c', `umask ${umask}; exec "$@"`, 'sh', process.execPath, kBin, ...args], {
    encoding: 'utf8',
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every path below root (relative), with its mode. */
function modes(root: string, rel = ''): [string, string][] {
  const out: [string, string][] = [];
  for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    out.push([r, mode(path.join(root, r))]);
    if (e.isDirectory()) out.push(...modes(root, r));
  }
  return out;
}

describe('faults: privacy of what we create', () => {
  it('save: the snapshot is 0600 under umask 022, 000 and 077', (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 16);
    for (const u of kUmasks) {
      const out = path.join(dir, `s-${u}.fxr`);
      const r = withUmask(u, ['save', '-o', out, '-b', `a=${src}`, '--no-fsync']);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(mode(out), '600', `umask ${u}`);
    }
  });

  it('save: the temp file and the lock file are 0600 while the save runs (umask 000)', async (t) => {
    const so = shimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    denseBlock(src, 1, 2048);
    const out = path.join(dir, 's.fxr');
    const w = new Watched(
      ['save', '-o', out, '-b', `a=${src}`, '--progress', 'json', '-j', '1', '--no-fsync'],
      slowEnv(t, so, { delayUs: 20_000, path: dir }),
      { argv0: ['sh', '-c', 'umask 000; exec "$@"', 'sh'] },
    );
    reap(t, w);
    // the first progress event comes after the temp file and the lock exist, before any page moves
    const e = await w.waitFor(() => true);
    assert.ok(e, `the save never reported progress: ${w.stderr}`);
    const live = fs.readdirSync(dir).filter((f) => f.endsWith('.tmp') || f.endsWith('.lock'));
    assert.equal(
      live.filter((f) => f.endsWith('.tmp')).length,
      1,
      `no temp file seen while the save ran: ${live.join(', ')}`,
    );
    assert.equal(
      live.filter((f) => f.endsWith('.lock')).length,
      1,
      `no lock file seen while the save ran: ${live.join(', ')}`,
    );
    for (const f of live) assert.equal(mode(path.join(dir, f)), '600', f);
    const x = await w.exited;
    assert.equal(x.status, 0, x.stderr);
    assert.equal(mode(out), '600');
  });

  it('a re-save keeps the mode and owner of the snapshot it replaces (as --update does)', (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 16);
    const out = path.join(dir, 's.fxr');
    assert.equal(fixedram(['save', '-o', out, '-b', `a=${src}`, '--no-fsync']).status, 0);
    fs.chmodSync(out, 0o640);
    const owner = isRoot() ? 4242 : process.getuid!();
    if (isRoot()) fs.chownSync(out, owner, 4343);
    const r = fixedram(['save', '-o', out, '-b', `a=${src}`, '--no-fsync']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(mode(out), '640');
    assert.equal(fs.statSync(out).uid, owner);
    if (isRoot()) assert.equal(fs.statSync(out).gid, 4343);
    const u = fixedram(['save', '--update', '-o', out, '-b', `a=${src}`, '--no-fsync']);
    assert.equal(u.status, 0, u.stderr);
    assert.equal(mode(out), '640');
    assert.equal(fs.statSync(out).uid, owner);
  });

  it('load: created targets are 0600, load --dir directories (also the long-name "+" ones) 0700, under every umask', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 8);
    const long = 'L'.repeat(250);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${a}`, '-b', `${long}=${a}`, '--no-fsync']).status, 0);
    for (const u of kUmasks) {
      const tgt = path.join(dir, `t-${u}.ram`);
      const r = withUmask(u, ['load', snap, '-b', `a=${tgt}`]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(mode(tgt), '600', `umask ${u}`);
      const out = path.join(dir, `out-${u}`, 'deeper');
      const d = withUmask(u, ['load', snap, '--dir', out]);
      assert.equal(d.status, 0, d.stderr);
      assert.equal(mode(path.join(dir, `out-${u}`)), '700', `umask ${u}: the parent of DIR`);
      assert.equal(mode(out), '700', `umask ${u}: DIR`);
      const seen = modes(out);
      assert.ok(
        seen.some(([p]) => p.endsWith('+')),
        'the long name made no "+" directory',
      );
      for (const [p, m] of seen)
        assert.equal(m, fs.statSync(path.join(out, p)).isDirectory() ? '700' : '600', `umask ${u}: ${p}`);
    }
  });

  it('convert: the output is 0600 under umask 022', (t) => {
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const dir = tempDir(t);
    const mig = unpackFixture('membackend-32m.mig', dir);
    const out = path.join(dir, 'c.fxr');
    const r = withUmask('022', ['convert', mig, '-o', out, '--no-fsync']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(mode(out), '600');
  });
});
