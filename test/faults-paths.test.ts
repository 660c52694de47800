/**
 * Fault catalogue, paths: hostile block names never lead `load --dir` outside DIR (#12), and
 * targets or sources that are symlinks, directories, FIFOs or devices are refused with a clear
 * message (#13; block devices only with --allow-device, symlinks only with --follow-symlinks).
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { decodeBlockName, encodeBlockName, inspect } from '../src/index';
import { kEntryBytes, kHeaderBytes } from '../src/format';
import { native } from '../src/native';
import { fixedram } from './support/cli';
import { isRoot, sha1 } from './support/faults';
import { firstDifferentPage, makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';
import { requirePrereq } from './support/prereq';

/** Every file and directory below root, relative. */
function walk(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    out.push(r);
    if (e.isDirectory()) out.push(...walk(root, r));
  }
  return out;
}

/** Overwrites a block's name in a snapshot with raw bytes and reseals the header checksum. */
function rename(snap: string, index: number, name: Buffer): void {
  const buf = fs.readFileSync(snap);
  const e = kHeaderBytes + index * kEntryBytes;
  buf.writeUInt16LE(name.length, e);
  buf.fill(0, e + 64, e + 320);
  name.copy(buf, e + 64);
  const n = buf.readUInt32LE(16);
  const head = Buffer.from(buf.subarray(0, kHeaderBytes + n * kEntryBytes));
  head.fill(0, 56, 64);
  buf.writeBigUInt64LE(native().hash64(head), 56);
  fs.writeFileSync(snap, buf);
}

const kHostile = [
  '..',
  '.',
  '/',
  '/etc/passwd',
  '../../escape',
  'a/../../b',
  '0000:00:01.0/vga.vram',
  '/rom@etc/acpi/tables',
  '%2E%2E',
  'a+',
  'a%2B',
  'x'.repeat(255),
  '.'.repeat(255),
  `${'y'.repeat(199)}+`,
  'é名',
  'tab\there',
  'new\nline',
  '\\..\\',
];

describe('faults: paths', () => {
  it('#12 hostile block names (.., /, empty-looking, 255 bytes, UTF-8): load --dir never writes outside DIR', (t) => {
    const dir = tempDir(t);
    const blocks = kHostile.map((name, i) => {
      const p = path.join(dir, `src${i}.ram`);
      makeBlock(p, i + 1, 3, { kind: () => 'stamp' });
      return { name, path: p };
    });
    const snap = path.join(dir, 'snap.fxr');
    const s = fixedram(['save', '-o', snap, ...blocks.flatMap((b) => ['-b', `${b.name}=${b.path}`]), '--no-fsync']);
    assert.equal(s.status, 0, s.stderr);
    assert.deepEqual(
      inspect(snap).blocks.map((b) => b.name),
      kHostile,
    );

    const parent = path.join(dir, 'p');
    const out = path.join(parent, 'out');
    fs.mkdirSync(parent);
    const l = fixedram(['load', snap, '--dir', out]);
    assert.equal(l.status, 0, l.stderr);
    assert.deepEqual(fs.readdirSync(parent), ['out'], 'load --dir wrote next to DIR');
    const before = fs.readdirSync(dir).sort();
    assert.ok(!fs.existsSync('/escape') && !fs.existsSync(path.join(dir, 'escape')));
    // every file is an encoded block name, each holds its block, and nothing else exists
    const files = walk(out)
      .filter((r) => fs.statSync(path.join(out, r)).isFile())
      .sort();
    assert.deepEqual(files, kHostile.map(encodeBlockName).sort());
    for (const f of files) {
      assert.ok(!f.split('/').some((c) => c === '.' || c === '..' || c === ''), f);
      assert.ok(Buffer.byteLength(path.basename(f)) <= 255, f);
    }
    blocks.forEach((b) => {
      assert.equal(decodeBlockName(encodeBlockName(b.name)), b.name);
      assert.equal(firstDifferentPage(b.path, path.join(out, encodeBlockName(b.name))), -1, b.name);
    });
    assert.deepEqual(fs.readdirSync(dir).sort(), before);
  });

  it('#12 names that are empty, hold NUL, are not UTF-8, are duplicated or > 255 bytes: refused, nothing written', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    const b = path.join(dir, 'b.ram');
    makeBlock(a, 1, 3);
    makeBlock(b, 2, 3);
    // on the command line
    for (const arg of [`=${a}`, `${'z'.repeat(256)}=${a}`]) {
      const r = fixedram(['save', '-o', path.join(dir, 'x.fxr'), '-b', arg]);
      assert.equal(r.status, 2, `${arg.slice(0, 20)}: ${r.stderr}`);
    }
    assert.equal(fixedram(['save', '-o', path.join(dir, 'x.fxr'), '-b', `n=${a}`, '-b', `n=${b}`]).status, 2);
    // in a snapshot (crafted, header checksum resealed): load --dir must refuse before creating DIR
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `aaaa=${a}`, '-b', `bbbb=${b}`, '--no-fsync']).status, 0);
    const cases: [string, Buffer][] = [
      ['empty', Buffer.alloc(0)],
      ['NUL', Buffer.from('a\0/b', 'latin1')],
      ['invalid UTF-8', Buffer.from([0x2e, 0x2e, 0xff, 0x2f, 0xfe])],
      ['overlong UTF-8 slash', Buffer.from([0xc0, 0xaf, 0x2e, 0x2e])],
      ['duplicate', Buffer.from('aaaa')],
    ];
    for (const [what, name] of cases) {
      const bad = path.join(dir, 'bad.fxr');
      fs.copyFileSync(snap, bad);
      rename(bad, 1, name);
      const out = path.join(dir, 'out');
      const r = fixedram(['load', bad, '--dir', out]);
      assert.equal(r.status, 3, `${what}: ${r.stderr}`);
      assert.ok(!fs.existsSync(out), `${what}: load created DIR before refusing`);
    }
  });

  it('#12 load --dir into a DIR holding a planted symlink (at a block file or a long-name directory): refused, nothing written outside', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 3);
    const long = 'L'.repeat(250);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `mem=${a}`, '--no-fsync']).status, 0);
    const snapLong = path.join(dir, 'long.fxr');
    assert.equal(fixedram(['save', '-o', snapLong, '-b', `${long}=${a}`, '--no-fsync']).status, 0);
    const outside = path.join(dir, 'outside');
    fs.mkdirSync(outside);
    const victim = path.join(outside, 'victim');
    fs.writeFileSync(victim, 'keep me');

    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    fs.symlinkSync(victim, path.join(out, 'mem'));
    const r = fixedram(['load', snap, '--dir', out]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /symbolic link/);
    assert.equal(fs.readFileSync(victim, 'utf8'), 'keep me');

    const out2 = path.join(dir, 'out2');
    fs.mkdirSync(out2);
    const first = encodeBlockName(long).split('/')[0]!;
    fs.symlinkSync(outside, path.join(out2, first));
    const r2 = fixedram(['load', snapLong, '--dir', out2]);
    assert.notEqual(r2.status, 0);
    assert.match(r2.stderr, /behind a symbolic link inside the --dir directory/);
    assert.deepEqual(fs.readdirSync(outside), ['victim']);
  });

  it('#12 load --dir against a concurrent swapper (an intermediate "+" directory keeps turning into a symlink): nothing is ever written outside DIR', async (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 8);
    const long = 'L'.repeat(250);
    const snap = path.join(dir, 'long.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `${long}=${a}`, '--no-fsync']).status, 0);
    const outside = path.join(dir, 'outside');
    fs.mkdirSync(outside);
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    const [first, last] = encodeBlockName(long).split('/') as [string, string];
    const plus = path.join(out, first);
    // the swapper: moves the real directory aside (inside DIR), puts a symlink to `outside` in its
    // place, then puts it back, as fast as it can, until it is killed or 60 s have passed
    const script = `
      const fs = require('fs');
      const [plus, aside, outside] = process.argv.slice(1);
      let swaps = 0;
      const end = Date.now() + 60000;
      (function loop() {
        for (let i = 0; i < 200; i++) {
          try { fs.renameSync(plus, aside); } catch (e) {
            // a load made a new directory while the old one was aside: drop the old one
            // (a load may be writing into it right now: then the next round tries again)
            if (e.code === 'ENOTEMPTY' || e.code === 'EEXIST') try { fs.rmSync(aside, { recursive: true, force: true }); } catch {}
          }
          try { fs.symlinkSync(outside, plus); swaps++; } catch {}
          try { fs.unlinkSync(plus); } catch {}
          try { fs.renameSync(aside, plus); } catch {}
        }
        fs.writeFileSync(outside + '.count', String(swaps));
        if (Date.now() < end) setImmediate(loop); else process.exit(0);
      })();`;
    const { spawn } = await import('node:child_process');
    const aside = path.join(out, 'aside');
    const swapper = spawn(process.execPath, ['-e', script, plus, aside, outside], { stdio: 'ignore' });
    t.after(() => swapper.kill('SIGKILL'));
    let ok = 0;
    let refused = 0;
    // At least 40 loads, and on until the swapper has made 1000 swaps: on a loaded machine it may
    // get little CPU while the loads run (bounded: 50 s).
    const swapsSoFar = () => {
      try {
        return Number(fs.readFileSync(`${outside}.count`, 'utf8'));
      } catch {
        return 0;
      }
    };
    const until = Date.now() + 50_000;
    for (let k = 0; k < 40 || (swapsSoFar() <= 1000 && Date.now() < until); k++) {
      for (const d of [plus, aside]) {
        try {
          fs.rmSync(path.join(d, last), { force: true });
        } catch {
          /* the swapper moved it */
        }
      }
      const r = fixedram(['load', snap, '--dir', out]);
      if (r.status === 0) ok++;
      else {
        refused++;
        assert.notEqual(r.status, 1, r.stderr);
        assert.doesNotMatch(r.stderr, /\n\s+at /, 'a stack trace');
      }
      assert.deepEqual(fs.readdirSync(outside), [], `round ${k}: something was written outside DIR (${r.stderr})`);
    }
    swapper.kill('SIGKILL');
    const swaps = Number(fs.readFileSync(`${outside}.count`, 'utf8'));
    t.diagnostic(`${ok} loads completed, ${refused} refused, ${swaps} swaps`);
    assert.ok(swaps > 1000, `the swapper made only ${swaps} swaps: the race was not exercised`);
    assert.ok(refused > 0, 'no load ever met the symlink: the race was not exercised');
  });

  it('#13 a target or source that is a symlink: refused (exit 2) unless --follow-symlinks', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 20);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${a}`]).status, 0);
    const real = path.join(dir, 'real.ram');
    fs.writeFileSync(real, Buffer.alloc(20 * 4096, 0xaa));
    const link = path.join(dir, 'link.ram');
    fs.symlinkSync(real, link);
    const r = fixedram(['load', snap, '-b', `a=${link}`]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /is a symbolic link; use --follow-symlinks to accept it/);
    assert.ok(fs.readFileSync(real).equals(Buffer.alloc(20 * 4096, 0xaa)));
    const ok = fixedram(['load', snap, '-b', `a=${link}`, '--follow-symlinks']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(firstDifferentPage(a, real), -1);
    assert.ok(fs.lstatSync(link).isSymbolicLink());

    const srcLink = path.join(dir, 'src-link.ram');
    fs.symlinkSync(a, srcLink);
    const s = fixedram(['save', '-o', path.join(dir, 's2.fxr'), '-b', `a=${srcLink}`]);
    assert.equal(s.status, 2, s.stderr);
    assert.match(s.stderr, /is a symbolic link/);
    assert.equal(
      fixedram(['save', '-o', path.join(dir, 's2.fxr'), '-b', `a=${srcLink}`, '--follow-symlinks']).status,
      0,
    );
  });

  it('#13 a target or source that is a directory, a FIFO or a character device: refused with a clear message (exit 2)', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 20);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${a}`]).status, 0);
    const sub = path.join(dir, 'sub');
    fs.mkdirSync(sub);
    const fifo = path.join(dir, 'fifo');
    const mk = spawnSync('mkfifo', [fifo]);
    const kinds: [string, string][] = [
      [sub, 'a directory'],
      ['/dev/null', 'a character device'],
    ];
    if (mk.status === 0) kinds.push([fifo, 'a FIFO']);
    else t.diagnostic('mkfifo failed: the FIFO case is not run');
    for (const [p, what] of kinds) {
      const l = fixedram(['load', snap, '-b', `a=${p}`]);
      assert.equal(l.status, 2, `load into ${what}: ${l.stderr}`);
      assert.match(l.stderr, new RegExp(`is ${what}, not a regular file|EISDIR`));
      const s = fixedram(['save', '-o', path.join(dir, 'x.fxr'), '-b', `a=${p}`]);
      assert.equal(s.status, 2, `save from ${what}: ${s.stderr}`);
      assert.match(s.stderr, new RegExp(`is ${what}, not a regular file`));
    }
    // an output that is a directory
    const o = fixedram(['save', '-o', sub, '-b', `a=${a}`]);
    assert.notEqual(o.status, 0);
    assert.ok(fs.statSync(sub).isDirectory());
  });

  it('#13 a block device: refused without --allow-device; with it, load into and save from a loop device', (t: TestContext) => {
    if (!requirePrereq(t, isRoot(), 'needs root for losetup')) return;
    const dir = tempDir(t);
    const img = path.join(dir, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 64 * 4096);
    const lo = spawnSync('losetup', ['-f', '--show', img], { encoding: 'utf8' });
    if (!requirePrereq(t, lo.status === 0, `losetup failed: ${lo.stderr.trim()}`)) return;
    const dev = lo.stdout.trim();
    t.after(() => spawnSync('losetup', ['-d', dev]));
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 64);
    const snap = path.join(dir, 'snap.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `a=${a}`]).status, 0);
    const r = fixedram(['load', snap, '-b', `a=${dev}`]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /is a block device, not a regular file \(use --allow-device to accept/);
    const l = fixedram(['load', snap, '-b', `a=${dev}`, '--allow-device']);
    assert.equal(l.status, 0, l.stderr);
    const back = path.join(dir, 'back.fxr');
    const s = fixedram(['save', '-o', back, '-b', `a=${dev}`, '--allow-device']);
    assert.equal(s.status, 0, s.stderr);
    assert.equal(fixedram(['verify', back, '--against', `a=${a}`]).status, 0);
    spawnSync('sync');
    assert.equal(firstDifferentPage(a, img), -1);
    assert.equal(sha1(snap), sha1(back));
  });
});
