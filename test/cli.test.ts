/** The real command line: exit statuses, messages, --json discipline, files left behind. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { fixedram } from './support/cli';
import { firstDifferentPage, makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

function setup(t: Parameters<typeof tempDir>[0]) {
  const dir = tempDir(t);
  const a = path.join(dir, 'a.ram');
  const b = path.join(dir, 'b.ram');
  makeBlock(a, 1, 300);
  makeBlock(b, 2, 77);
  return { dir, a, b, out: path.join(dir, 'snap.fxr') };
}

const onlyOutput = (dir: string): string[] =>
  fs
    .readdirSync(dir)
    .filter((f) => !f.endsWith('.ram'))
    .sort();

describe('fixedram CLI', () => {
  it('save → inspect --json → load → verify, with exit status 0', (t) => {
    const { dir, a, b, out } = setup(t);
    const s = fixedram(['save', '-o', out, '-b', `a=${a}`, '-b', `b=${b}`, '-j', '2', '--json']);
    assert.equal(s.status, 0, s.stderr);
    const saved = JSON.parse(s.stdout);
    assert.equal(saved.ok, true);
    assert.equal(saved.blocks.length, 2);

    const i = fixedram(['inspect', out, '--json']);
    assert.equal(i.status, 0, i.stderr);
    const info = JSON.parse(i.stdout);
    assert.equal(info.format, 'fixedram');
    assert.equal(info.state, 'complete');
    for (const blk of info.blocks) {
      for (const k of ['name', 'length', 'pageSize', 'pagesOffset', 'bitmapOffset', 'presentPages'])
        assert.ok(k in blk, k);
      assert.equal(blk.pagesOffset % (1 << 20), 0);
    }
    assert.deepEqual(
      info.blocks.map((x: { name: string }) => x.name),
      ['a', 'b'],
    );

    const l = fixedram(['load', out, '--dir', path.join(dir, 'out'), '-j', '2']);
    assert.equal(l.status, 0, l.stderr);
    assert.equal(firstDifferentPage(a, path.join(dir, 'out', 'a')), -1);
    assert.equal(firstDifferentPage(b, path.join(dir, 'out', 'b')), -1);
    assert.match(l.stdout, /checksums verified/);

    const v = fixedram(['verify', out, '--against', `a=${a}`]);
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stdout, /^OK: /);
  });

  it('a missing block file: exit 4, ENOENT with the syscall and path, no output left', (t) => {
    const { dir, a, out } = setup(t);
    const missing = path.join(dir, 'nope.ram');
    const r = fixedram(['save', '-o', out, '-b', `a=${a}`, '-b', `m=${missing}`]);
    assert.equal(r.status, 4);
    assert.match(r.stderr, new RegExp(`ENOENT: no such file or directory, open '${missing}'.*block 'm'`));
    assert.deepEqual(onlyOutput(dir), []);
    assert.equal(r.stdout, '');
  });

  it('duplicate block names: exit 2', (t) => {
    const { dir, a, b, out } = setup(t);
    const r = fixedram(['save', '-o', out, '-b', `a=${a}`, '-b', `a=${b}`]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /block 'a' is given more than once/);
    assert.deepEqual(onlyOutput(dir), []);
  });

  it('a length that is not a multiple of the page size: exit 2', (t) => {
    const { dir, out } = setup(t);
    const odd = path.join(dir, 'odd.ram');
    fs.writeFileSync(odd, Buffer.alloc(5000, 1));
    const r = fixedram(['save', '-o', out, '-b', `odd=${odd}`]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /5000 bytes, not a multiple of the page size 4096/);
    assert.deepEqual(onlyOutput(dir), []);
  });

  it('an output that is a source (also through a hard link): exit 2, source untouched', (t) => {
    const { dir, a } = setup(t);
    const before = fs.readFileSync(a);
    const link = path.join(dir, 'link.fxr');
    fs.linkSync(a, link);
    for (const out of [a, link]) {
      const r = fixedram(['save', '-o', out, '-b', `a=${a}`]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /is the same file as block 'a'/);
    }
    assert.ok(fs.readFileSync(a).equals(before));
  });

  it('bad flags are usage errors (exit 2), also with --json', (t) => {
    const { out, a } = setup(t);
    assert.equal(fixedram(['save', '-o', out, '-b', `a=${a}`, '-j', '257']).status, 2);
    assert.equal(fixedram(['save', '-o', out, '-b', `a=${a}`, '-j', 'x']).status, 2);
    assert.equal(fixedram(['save', '-o', out, '-b', 'noequals']).status, 2);
    assert.equal(fixedram(['frobnicate']).status, 2);
    const j = fixedram(['save', '-b', `a=${a}`, '--json']);
    assert.equal(j.status, 2);
    assert.equal(JSON.parse(j.stdout).ok, false);
  });

  it('--json errors put exactly one JSON object on stdout', (t) => {
    const { dir } = setup(t);
    const r = fixedram(['inspect', path.join(dir, 'a.ram'), '--json']);
    assert.equal(r.status, 3);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 1);
    const o = JSON.parse(lines[0]!);
    assert.equal(o.ok, false);
    assert.equal(o.exitCode, 3);
    assert.equal(o.error.code, 'ERR_SNAPSHOT_INVALID');
  });

  it('help and version go to stdout with exit 0 and list the exit statuses', () => {
    const h = fixedram(['--help']);
    assert.equal(h.status, 0);
    assert.match(h.stdout, /Exit status:[\s\S]*130/);
    const sh = fixedram(['save', '--help']);
    assert.match(sh.stdout, /--channels/);
    assert.equal(fixedram(['--version']).status, 0);
  });

  it('load refuses an existing target of another size without changing it (exit 2)', (t) => {
    const { dir, a, out } = setup(t);
    assert.equal(fixedram(['save', '-o', out, '-b', `a=${a}`]).status, 0);
    const target = path.join(dir, 't.bin');
    fs.writeFileSync(target, Buffer.alloc(4096, 7));
    const r = fixedram(['load', out, '-b', `a=${target}`]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /4096 bytes, the block is 1228800 bytes/);
    assert.ok(fs.readFileSync(target).equals(Buffer.alloc(4096, 7)));
  });
});
