/**
 * Stale temp cleanup deletes only what is provably ours and incomplete (issue 10 item 6): a file
 * named like a temp of this output (`.NAME.<pid>.<hex>.tmp`) goes only when it is a regular file
 * owned by us, starts with our magic without the COMPLETE flag, and its pid is dead. Everything else
 * that merely looks like one is left alone — and the save still succeeds.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { staleTempProblem } from '../src/cleanup';
import { kFlagComplete } from '../src/format';
import { fixedram } from './support/cli';
import { isRoot } from './support/faults';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

/** A pid that has just exited (a short child, waited for). */
function deadPid(): number {
  const r = spawnSync('sh', ['-c', 'echo $$']);
  return Number(r.stdout.toString().trim());
}

describe('faults: stale temp cleanup', () => {
  it('removes only a regular file of ours, with our magic, without COMPLETE, whose pid is dead; leaves every look-alike', (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'a.ram');
    makeBlock(src, 1, 16);
    const out = path.join(dir, 's.fxr');
    assert.equal(fixedram(['save', '-o', out, '-b', `a=${src}`, '--no-fsync']).status, 0);
    const complete = fs.readFileSync(out);
    assert.ok(complete.readUInt32LE(12) & kFlagComplete);
    const incomplete = Buffer.from(complete);
    incomplete.writeUInt32LE(0, 12);

    const dead = deadPid();
    const name = (pid: number, hex: string): string => path.join(dir, `.s.fxr.${pid}.${hex}.tmp`);
    const ours = name(dead, 'aaaaaaaa');
    fs.writeFileSync(ours, incomplete, { mode: 0o600 });
    const keep: Record<string, string> = {};
    keep[name(dead, 'bbbbbbbb')] = 'not our magic';
    fs.writeFileSync(name(dead, 'bbbbbbbb'), Buffer.alloc(4096, 0x41));
    keep[name(dead, 'cccccccc')] = 'complete';
    fs.writeFileSync(name(dead, 'cccccccc'), complete);
    keep[name(process.pid, 'dddddddd')] = 'live pid';
    fs.writeFileSync(name(process.pid, 'dddddddd'), incomplete);
    const elsewhere = path.join(dir, 'elsewhere.bin');
    fs.writeFileSync(elsewhere, incomplete);
    keep[name(dead, 'eeeeeeee')] = 'symlink';
    fs.symlinkSync(elsewhere, name(dead, 'eeeeeeee'));
    keep[name(dead, 'ffffffff')] = 'FIFO';
    assert.equal(spawnSync('mkfifo', [name(dead, 'ffffffff')]).status, 0);
    keep[path.join(dir, `.s.fxr.${dead}.AAAAAAAA.tmp`)] = 'not the exact name pattern';
    fs.writeFileSync(path.join(dir, `.s.fxr.${dead}.AAAAAAAA.tmp`), incomplete);
    keep[path.join(dir, `.s.fxr.x.${dead}.aaaaaaaa.tmp`)] = 'a temp of another output';
    fs.writeFileSync(path.join(dir, `.s.fxr.x.${dead}.aaaaaaaa.tmp`), incomplete);
    if (isRoot()) {
      keep[name(dead, '99999999')] = 'owned by another user';
      fs.writeFileSync(name(dead, '99999999'), incomplete);
      fs.chownSync(name(dead, '99999999'), 4242, 4242);
    }
    assert.equal(staleTempProblem(out, path.basename(ours)), undefined, 'the genuine stale temp is not recognised');

    const r = fixedram(['save', '-o', out, '-b', `a=${src}`, '--no-fsync']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(fs.existsSync(ours), false, 'the stale temp of a dead save was not removed');
    for (const [f, why] of Object.entries(keep)) {
      assert.ok(fs.existsSync(f) || fs.lstatSync(f, { throwIfNoEntry: false }), `${why}: '${f}' was removed`);
    }
    assert.ok(fs.lstatSync(name(dead, 'eeeeeeee')).isSymbolicLink());
    assert.ok(fs.readFileSync(elsewhere).equals(incomplete), 'the symlink target was touched');
  });
});
