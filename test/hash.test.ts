/**
 * XXH3 on every vector unit (native/hash.cc): the addon picks the widest unit the CPU has, and
 * FIXEDRAM_XXH3 caps it. Every unit must compute the digests xxhsum -H3 (an independent build of
 * xxHash) computes, one-shot and streamed (huge pages are hashed in pieces), so a snapshot written
 * on one machine verifies on another.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { it, type TestContext } from 'node:test';
import { fixedram } from './support/cli';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

// the addon as src/native.ts loads it (FIXEDRAM_ADDON: the sanitizer build of .ci/sanitizers)
const kNative = path.resolve(__dirname, '..', 'src', 'native.js');
const kUnits = ['sse2', 'avx2', 'avx512'] as const;

function needXxhsum(t: TestContext): boolean {
  if (spawnSync('xxhsum', ['--version']).status === 0) return true;
  if (process.env.CI) assert.fail('xxhsum (Debian package xxhash) is missing; .ci/install-system installs it');
  t.skip('xxhsum (Debian package xxhash) is not installed');
  return false;
}

/** The unit a fresh process uses under FIXEDRAM_XXH3=cap, and its digests of the files. */
function digestsWith(cap: string, files: string[]): { unit: string; digests: string[] } {
  const script = `const a = require(${JSON.stringify(kNative)}).native(); const fs = require('fs');
    const files = JSON.parse(process.argv[1]);
    console.log(JSON.stringify({ unit: a.hashUnit(), digests: files.map((f) => a.hash64(fs.readFileSync(f)).toString(16).padStart(16, '0')) }));`;
  const r = spawnSync(process.execPath, ['-e', script, JSON.stringify(files)], {
    encoding: 'utf8',
    env: { ...process.env, FIXEDRAM_XXH3: cap },
    timeout: 60_000,
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { unit: string; digests: string[] };
}

it('every vector unit computes the digests of xxhsum -H3, for lengths around every internal boundary of XXH3', (t) => {
  if (!needXxhsum(t)) return;
  const dir = tempDir(t);
  // XXH3 switches code paths at 16, 128, 240 bytes and at each 1 KiB stripe block; pages are 4 KiB and up
  const lengths = [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1023, 1024, 1025, 4096, 4097, 65536, 2 << 20];
  const files = lengths.map((n, i) => {
    const f = path.join(dir, `b${i}`);
    fs.writeFileSync(f, crypto.randomBytes(n));
    return f;
  });
  const oracle = files.map((f) => {
    const r = spawnSync('xxhsum', ['-H3', f], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    // "XXH3 (file) = <16 hex>" (BSD style) or "<hex>  file"
    const m = /([0-9a-f]{16})/.exec(r.stdout);
    assert.ok(m, r.stdout);
    return m[1]!;
  });
  const seen = new Set<string>();
  for (const cap of kUnits) {
    const { unit, digests } = digestsWith(cap, files);
    seen.add(unit);
    // capped at `cap`: never a wider unit
    assert.ok(kUnits.indexOf(unit as (typeof kUnits)[number]) <= kUnits.indexOf(cap), `${cap} → ${unit}`);
    digests.forEach((d, i) => assert.equal(d, oracle[i], `${unit}: length ${lengths[i]}`));
  }
  assert.ok(seen.has('sse2'), 'the SSE2 unit ran');
});

it('a snapshot of huge pages (hashed in pieces, streamed) saved on one unit verifies on every other', (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'ram');
  const ps = 2 << 20;
  makeBlock(src, 7, 6, { pageSize: ps, kind: (i) => (i === 2 ? 'hole' : i === 4 ? 'random' : 'stamp') });
  for (const from of kUnits) {
    const out = path.join(dir, `${from}.fixedram`);
    const s = fixedram(['save', '-o', out, '-b', `ram=${src}`, '--page-size', '2M', '-j', '2', '--no-fsync'], {
      env: { FIXEDRAM_XXH3: from },
    });
    assert.equal(s.status, 0, s.stderr);
    for (const to of kUnits) {
      const v = fixedram(['verify', out], { env: { FIXEDRAM_XXH3: to } });
      assert.equal(v.status, 0, `saved with ${from}, verified with ${to}: ${v.stdout}${v.stderr}`);
    }
  }
});
