/**
 * Names reach the terminal escaped (issue 10 item 5): block names and QEMU idstrs holding ESC
 * sequences, newlines, DEL or C1 controls are shown as visible escapes in every human output and
 * error line (save, inspect, verify, load, errors); JSON carries them exactly. Names that are not
 * valid UTF-8 are refused: on the command line (exit 2) and in a snapshot (exit 3).
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { escapeControls } from '../src/escape';
import { kEntryBytes, kHeaderBytes } from '../src/format';
import { native } from '../src/native';
import { fixedram, kBin } from './support/cli';
import { requirePrereq } from './support/prereq';
import { blockOffsets, fixturesAvailable, kFixtures, patch, readManifest, unpackFixture } from './support/qemu';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

// ESC sequence, BEL, newline, carriage return, DEL, C1 CSI (U+009B), and a plain non-ASCII letter
const kEvil = 'x\u001b[31mRED\u0007\nforged line\r\u007f\u009b2Jé';
// eslint-disable-next-line no-control-regex
const kRaw = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;

/** stdout and stderr of a run hold no raw control character but the newlines ending lines. */
function assertEscaped(label: string, r: { stdout: string; stderr: string }): void {
  for (const [which, text] of [
    ['stdout', r.stdout],
    ['stderr', r.stderr],
  ] as const) {
    assert.doesNotMatch(text, kRaw, `${label}: a raw control character on ${which}: ${JSON.stringify(text)}`);
    assert.doesNotMatch(text, /\nforged line/, `${label}: the name broke a line on ${which}`);
  }
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

describe('faults: names reach the terminal escaped', () => {
  it('escapeControls: C0, DEL and C1 become visible escapes; printable text (also non-ASCII) and backslashes stay', () => {
    assert.equal(escapeControls(kEvil), 'x\\e[31mRED\\x07\\nforged line\\r\\x7f\\x9b2Jé');
    assert.equal(escapeControls('plain/é名\\'), 'plain/é名\\');
  });

  it('save, inspect, verify (with failures), load and errors escape a hostile block name; --json keeps it exact', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 16, { kind: () => 'stamp' });
    const snap = path.join(dir, 'snap.fxr');
    const s = fixedram(['save', '-o', snap, '-b', `${kEvil}=${a}`, '--no-fsync']);
    assert.equal(s.status, 0, s.stderr);
    assertEscaped('save', s);
    assert.ok(s.stdout.includes(escapeControls(kEvil)), s.stdout);

    const i = fixedram(['inspect', snap]);
    assert.equal(i.status, 0, i.stderr);
    assertEscaped('inspect', i);
    assert.ok(i.stdout.includes(escapeControls(kEvil)), i.stdout);
    const j = fixedram(['inspect', snap, '--json']);
    assert.equal(JSON.parse(j.stdout).blocks[0].name, kEvil, 'JSON must carry the exact name');

    const target = path.join(dir, 't.ram');
    const l = fixedram(['load', snap, '-b', `${kEvil}=${target}`]);
    assert.equal(l.status, 0, l.stderr);
    assertEscaped('load', l);

    // a flipped byte in page 3: verify's FAIL line names the block
    const info = JSON.parse(j.stdout) as { blocks: { pagesOffset?: number }[] };
    const pagesOffset =
      info.blocks[0]!.pagesOffset ??
      (JSON.parse(fixedram(['inspect', snap, '--json']).stdout).blocks[0].pagesOffset as number);
    const fd = fs.openSync(snap, 'r+');
    fs.writeSync(fd, Buffer.from([0x5a]), 0, 1, pagesOffset + 3 * 4096 + 100);
    fs.closeSync(fd);
    const v = fixedram(['verify', snap]);
    assert.equal(v.status, 1, v.stdout + v.stderr);
    assertEscaped('verify', v);
    assert.match(v.stdout, /FAIL .*x\\e\[31mRED/);
    const vj = fixedram(['verify', snap, '--json']);
    assert.equal(JSON.parse(vj.stdout).failures[0].block, kEvil);

    // errors: an unknown block named on the command line, and a missing source
    const e1 = fixedram(['load', snap, '-b', `${kEvil}zz=${target}`]);
    assert.equal(e1.status, 2, e1.stderr);
    assertEscaped('load error', e1);
    const e2 = fixedram(['save', '-o', path.join(dir, 'x.fxr'), '-b', `${kEvil}=${path.join(dir, `missing${kEvil}`)}`]);
    assert.equal(e2.status, 4, e2.stderr);
    assertEscaped('save error', e2);
  });

  it('a QEMU idstr with an ESC sequence is escaped by inspect and in errors', (t) => {
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const dir = tempDir(t);
    const mig = unpackFixture('membackend-32m.mig', dir);
    const m = readManifest('membackend-32m');
    const b = m.blocks.find((x) => x.name === 'mem0')!;
    patch(mig, blockOffsets(b).entry + 1, Buffer.from('m\u001b[m', 'latin1'));
    for (const args of [
      ['inspect', mig],
      ['verify', mig],
      ['load', mig, '--dir', path.join(dir, 'out')],
    ]) {
      const r = fixedram(args);
      assertEscaped(args[0]!, r);
      if (args[0] === 'verify') continue; // an OK verify names no block
      assert.ok(
        `${r.stdout}${r.stderr}`.includes('m\\e[m'),
        `${args[0]}: the name is not shown escaped: ${r.stdout}${r.stderr}`,
      );
    }
  });

  it('a block name that is not valid UTF-8 on the command line is refused (exit 2); a real U+FFFD is fine', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 4);
    // raw bytes reach argv only through a shell: printf '\377' is the byte 0xFF
    const r = spawnSync(
      'sh',
      [
        '-c',
        'exec "$0" "$1" save -o "$2" -b "$(printf "a\\377b")=$3" --no-fsync',
        process.execPath,
        kBin,
        path.join(dir, 's.fxr'),
        a,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /a block name must be valid UTF-8/);
    assert.equal(fs.existsSync(path.join(dir, 's.fxr')), false);
    const ok = fixedram(['save', '-o', path.join(dir, 'ok.fxr'), '-b', `a\uFFFDb=${a}`, '--no-fsync']);
    assert.equal(ok.status, 0, ok.stderr);
  });

  it('a snapshot whose block name is not valid UTF-8 (checksums resealed) is refused by inspect, verify and load (exit 3)', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 4);
    const snap = path.join(dir, 's.fxr');
    assert.equal(fixedram(['save', '-o', snap, '-b', `abcd=${a}`, '--no-fsync']).status, 0);
    rename(snap, 0, Buffer.from([0x61, 0xff, 0xfe, 0x62]));
    for (const args of [
      ['inspect', snap],
      ['verify', snap],
      ['load', snap, '--dir', path.join(dir, 'out')],
    ]) {
      const r = fixedram(args);
      assert.equal(r.status, 3, `${args[0]}: ${r.stderr}`);
      assert.match(r.stderr, /UTF-8/, args[0]);
    }
    assert.equal(fs.existsSync(path.join(dir, 'out')), false);
  });
});
