/**
 * Outputs and targets that are not regular files (issue 10 items 1 and 3): `save -o` / `convert -o`
 * refuse a directory, FIFO, character device, socket or symlink at the output before any work (the
 * thing there is untouched, no temp or lock file is made), a missing parent directory is named;
 * `load` refuses every non-regular target with one rule (exit 2, ERR_NOT_REGULAR) and refuses two
 * targets that are one file (same path, hard link, followed symlink) before writing anything.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fixedram } from './support/cli';
import { isRoot, sha1 } from './support/faults';
import { requirePrereq } from './support/prereq';
import { fillFile, makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

interface Kind {
  label: string;
  make: (p: string) => Promise<void> | void;
}

/** Creates a unix socket file at p (the server is closed in t.after; the file stays). */
async function makeSocket(t: TestContext, p: string): Promise<void> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, resolve);
  });
  t.after(() => server.close());
}

function kinds(t: TestContext): Kind[] {
  const list: Kind[] = [
    { label: 'a directory', make: (p) => fs.mkdirSync(p) },
    { label: 'a FIFO', make: (p) => assert.equal(spawnSync('mkfifo', [p]).status, 0, 'mkfifo failed') },
    { label: 'a socket', make: (p) => makeSocket(t, p) },
  ];
  if (isRoot())
    list.push({
      label: 'a character device',
      make: (p) => assert.equal(spawnSync('mknod', [p, 'c', '1', '3']).status, 0),
    });
  return list;
}

/** Identity and kind of a path (lstat), to prove it was not replaced. */
function ident(p: string): string {
  const st = fs.lstatSync(p);
  return `${st.ino}:${st.mode}:${st.size}`;
}

/** Everything in dir except the given names. */
const extras = (dir: string, keep: string[]): string[] =>
  fs
    .readdirSync(dir)
    .filter((f) => !keep.includes(f))
    .sort();

describe('faults: outputs that are not regular files', () => {
  it('save -o refuses a directory, FIFO, socket, character device or symlink at the output: exit 2, untouched, no temp or lock', async (t) => {
    requirePrereq(t, isRoot(), 'the character-device case needs root (mknod)');
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 64);
    const cases = [
      ...kinds(t),
      { label: 'a symbolic link', make: (p: string) => fs.symlinkSync(path.join(dir, 'elsewhere.fxr'), p) },
    ];
    for (const k of cases) {
      const out = path.join(dir, `out-${k.label.replace(/ /g, '-')}`);
      await k.make(out);
      const before = ident(out);
      const r = fixedram(['save', '-o', out, '-b', `a=${src}`, '--no-fsync', '--json']);
      assert.equal(r.status, 2, `${k.label}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`is ${k.label}, not a regular file; refusing to replace it`), k.label);
      assert.equal(JSON.parse(r.stdout).error.code, 'ERR_NOT_REGULAR', k.label);
      assert.equal(ident(out), before, `${k.label}: the output was replaced`);
      assert.deepEqual(
        extras(dir, ['a.ram', ...cases.map((c) => `out-${c.label.replace(/ /g, '-')}`)]),
        [],
        `${k.label}: leftovers`,
      );
    }
    assert.equal(fs.existsSync(path.join(dir, 'elsewhere.fxr')), false, 'the symlink was followed');
  });

  it('save --update refuses a FIFO at the output the same way (exit 2)', (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 16);
    const out = path.join(dir, 'fifo');
    assert.equal(spawnSync('mkfifo', [out]).status, 0);
    const r = fixedram(['save', '--update', '-o', out, '-b', `a=${src}`, '--no-fsync']);
    assert.equal(r.status, 2, r.stderr);
    assert.ok(fs.lstatSync(out).isFIFO());
  });

  it('convert -o refuses a non-regular output before it even opens its input (exit 2)', (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, 'fifo');
    assert.equal(spawnSync('mkfifo', [out]).status, 0);
    // the input does not exist: a refusal of the output proves the check runs first
    const r = fixedram(['convert', path.join(dir, 'missing.mig'), '-o', out]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /is a FIFO, not a regular file/);
    assert.deepEqual(extras(dir, ['fifo']), []);
  });

  it('save -o into a missing directory or below a file names the parent (exit 4), before any work', (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 16);
    const r = fixedram(['save', '-o', path.join(dir, 'nope', 's.fxr'), '-b', `a=${src}`, '--no-fsync']);
    assert.equal(r.status, 4, r.stderr);
    assert.match(r.stderr, new RegExp(`ENOENT.*'${path.join(dir, 'nope')}'`));
    const r2 = fixedram(['save', '-o', path.join(src, 's.fxr'), '-b', `a=${src}`, '--no-fsync']);
    assert.equal(r2.status, 4, r2.stderr);
    assert.match(r2.stderr, new RegExp(`ENOTDIR.*'${src}'`));
    assert.deepEqual(extras(dir, ['a.ram']), []);
  });
});

describe('faults: load targets that are not regular files or are one file', () => {
  function snapshot(t: TestContext): { dir: string; snap: string } {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    const b = path.join(dir, 'b.ram');
    makeBlock(a, 1, 32);
    makeBlock(b, 2, 32);
    const snap = path.join(dir, 'snap.fxr');
    const s = fixedram(['save', '-o', snap, '-b', `a=${a}`, '-b', `b=${b}`, '--no-fsync']);
    assert.equal(s.status, 0, s.stderr);
    return { dir, snap };
  }

  it('one rule for every kind: a directory, FIFO, socket or character device target is exit 2 ERR_NOT_REGULAR, nothing written', async (t) => {
    requirePrereq(t, isRoot(), 'the character-device case needs root (mknod)');
    const { dir, snap } = snapshot(t);
    for (const k of kinds(t)) {
      const bad = path.join(dir, `bad-${k.label.replace(/ /g, '-')}`);
      await k.make(bad);
      const before = ident(bad);
      const fresh = path.join(dir, 'fresh.ram');
      // the first target is new: it must be removed again when the second is refused
      const r = fixedram(['load', snap, '-b', `a=${fresh}`, '-b', `b=${bad}`, '--json']);
      assert.equal(r.status, 2, `${k.label}: ${r.stderr}`);
      assert.equal(JSON.parse(r.stdout).error.code, 'ERR_NOT_REGULAR', `${k.label}: ${r.stdout}`);
      assert.match(r.stderr, new RegExp(`is ${k.label}, not a regular file`), k.label);
      assert.equal(ident(bad), before, k.label);
      assert.equal(fs.existsSync(fresh), false, `${k.label}: the created target was left behind`);
    }
  });

  it('two targets that are the same file (same path, hard link, symlink with --follow-symlinks): exit 2, nothing written', (t) => {
    const { dir, snap } = snapshot(t);
    const tgt = path.join(dir, 't.ram');
    fillFile(tgt, 32 * 4096, 0xaa);
    const hash = sha1(tgt);
    const hard = path.join(dir, 'hard.ram');
    fs.linkSync(tgt, hard);
    const soft = path.join(dir, 'soft.ram');
    fs.symlinkSync(tgt, soft);
    for (const [label, other, extra] of [
      ['same path', tgt, []],
      ['hard link', hard, []],
      ['symlink', soft, ['--follow-symlinks']],
    ] as const) {
      const r = fixedram(['load', snap, '-b', `a=${tgt}`, '-b', `b=${other}`, ...extra]);
      assert.equal(r.status, 2, `${label}: ${r.stderr}`);
      assert.match(r.stderr, /targets of blocks 'a' and 'b' are the same file/, label);
      assert.equal(sha1(tgt), hash, `${label}: the target was written`);
    }
    // a target that does not exist yet, given twice: refused and not left behind
    const fresh = path.join(dir, 'fresh.ram');
    const r = fixedram(['load', snap, '-b', `a=${fresh}`, '-b', `b=${fresh}`]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(fs.existsSync(fresh), false);
  });
});
