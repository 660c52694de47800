/**
 * The commit protocol shared by save, convert and export (src/commit.ts): the temp file is private
 * from its creation and registered, the steps run in order (provisional → fill → COMPLETE →
 * rename), a failing fill leaves the output as it was and nothing beside it, a non-regular output
 * is refused before the fill runs, a re-written output keeps the mode and owner of the file it
 * replaces. And export, which now goes through it: it keeps an existing output's mode and owner and
 * refuses a non-regular output before any work.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { removeTempsSync } from '../src/cleanup';
import { writeAtomically } from '../src/commit';
import { convert } from '../src/convert';
import { FixedramError } from '../src/errors';
import { exportSnapshot } from '../src/export';
import { fixedram } from './support/cli';
import { isRoot, leftovers, sha1 } from './support/faults';
import { requirePrereq } from './support/prereq';
import { fixturesAvailable, kFixtures, unpackFixture } from './support/qemu';
import { tempDir } from './support/tmp';

const mode = (p: string): number => fs.statSync(p).mode & 0o7777;

describe('commit protocol (commit.ts)', () => {
  it('steps in order; the temp file is 0600 beside the output and locked while it is filled; the output appears only at the end', async (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, 'out.bin');
    const steps: string[] = [];
    const old = process.umask(0);
    let seen: { tmp: string; mode: number; size: number; outputThere: boolean; leftovers: string[] } | undefined;
    try {
      const r = await writeAtomically(
        out,
        {
          size: 8192,
          fsync: true,
          provisional: (fd) => {
            steps.push('provisional');
            fs.writeSync(fd, Buffer.from('HEAD'), 0, 4, 0);
          },
          complete: (fd) => {
            steps.push('complete');
            fs.writeSync(fd, Buffer.from('DONE'), 0, 4, 0);
          },
        },
        async (file) => {
          steps.push('fill');
          fs.writeSync(file.fd, Buffer.from('body'), 0, 4, 4096);
          await Promise.resolve();
          const st = fs.lstatSync(file.path);
          seen = {
            tmp: file.path,
            mode: st.mode & 0o7777,
            size: st.size,
            outputThere: fs.existsSync(out),
            leftovers: leftovers(dir),
          };
          return 42;
        },
      );
      assert.equal(r, 42);
    } finally {
      process.umask(old);
    }
    assert.deepEqual(steps, ['provisional', 'fill', 'complete']);
    assert.ok(seen, 'the fill never ran');
    assert.equal(path.dirname(seen.tmp), dir, 'the temp file is not beside the output');
    assert.equal(seen.mode, 0o600, 'the temp file is not private under umask 000');
    assert.equal(seen.size, 8192, 'the temp file was not sized');
    assert.equal(seen.outputThere, false, 'the output existed before the rename');
    assert.equal(seen.leftovers.length, 2, `temp and lock expected while filling: ${seen.leftovers.join(', ')}`);
    const bytes = fs.readFileSync(out);
    assert.equal(bytes.subarray(0, 4).toString(), 'DONE');
    assert.equal(bytes.subarray(4096, 4100).toString(), 'body');
    assert.equal(mode(out), 0o600);
    assert.deepEqual(leftovers(dir), []);
  });

  it('a fill that throws: the error comes through, the output is unchanged, no temp or lock left, nothing left registered', async (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, 'out.bin');
    fs.writeFileSync(out, 'previous');
    let tmp = '';
    await assert.rejects(
      writeAtomically(
        out,
        { size: 4096, fsync: false, complete: () => assert.fail('complete after a failed fill') },
        async (file) => {
          tmp = file.path;
          await Promise.resolve();
          throw new Error('injected');
        },
      ),
      /injected/,
    );
    assert.ok(tmp, 'the fill never ran');
    assert.equal(fs.readFileSync(out, 'utf8'), 'previous');
    assert.deepEqual(leftovers(dir), []);
    // nothing of ours is still registered: the abrupt-exit cleanup would have nothing to remove
    fs.writeFileSync(tmp, 'someone else');
    removeTempsSync();
    assert.equal(fs.readFileSync(tmp, 'utf8'), 'someone else', 'the temp file stayed registered after its removal');
  });

  it('refuses a FIFO, a directory or a symlink at the output before the fill runs (exit 2), and leaves it untouched', async (t) => {
    const dir = tempDir(t);
    const fifo = path.join(dir, 'fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo failed');
    const sub = path.join(dir, 'sub');
    fs.mkdirSync(sub);
    const link = path.join(dir, 'link');
    fs.symlinkSync(path.join(dir, 'elsewhere'), link);
    for (const out of [fifo, sub, link]) {
      let filled = false;
      await assert.rejects(
        writeAtomically(out, { size: 0, fsync: false }, () => {
          filled = true;
          return Promise.resolve();
        }),
        (err: unknown) => err instanceof FixedramError && err.code === 'ERR_NOT_REGULAR' && err.exitCode === 2,
      );
      assert.equal(filled, false, `${out}: the fill ran`);
    }
    assert.ok(fs.lstatSync(fifo).isFIFO() && fs.lstatSync(sub).isDirectory() && fs.lstatSync(link).isSymbolicLink());
    assert.equal(fs.existsSync(path.join(dir, 'elsewhere')), false, 'the symlink was followed');
    assert.deepEqual(leftovers(dir), []);
  });

  it('a rewrite keeps the mode and owner of the file it replaces', async (t) => {
    const dir = tempDir(t);
    const out = path.join(dir, 'out.bin');
    fs.writeFileSync(out, 'previous');
    fs.chmodSync(out, 0o640);
    const owner = isRoot() ? 4242 : process.getuid!();
    if (isRoot()) fs.chownSync(out, owner, 4343);
    await writeAtomically(out, { size: 4, fsync: false }, (file) => {
      fs.writeSync(file.fd, Buffer.from('next'), 0, 4, 0);
      return Promise.resolve();
    });
    assert.equal(fs.readFileSync(out, 'utf8'), 'next');
    assert.equal(mode(out), 0o640);
    assert.equal(fs.statSync(out).uid, owner);
    if (isRoot()) assert.equal(fs.statSync(out).gid, 4343);
  });
});

describe('export through the commit protocol', () => {
  it('refuses a FIFO at the output before any work: the output is checked before the snapshot is even opened', async (t) => {
    const dir = tempDir(t);
    const fifo = path.join(dir, 'vm.mig');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo failed');
    // the snapshot does not exist: an error about the output proves the output was checked first
    await assert.rejects(
      exportSnapshot({ snapshot: path.join(dir, 'missing.fxr'), output: fifo, fsync: false }),
      (err: unknown) =>
        err instanceof FixedramError &&
        err.code === 'ERR_NOT_REGULAR' &&
        /is a FIFO, not a regular file/.test(err.message),
    );
    const r = fixedram(['export', path.join(dir, 'missing.fxr'), '-o', fifo, '--json']);
    assert.equal(r.status, 2, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'ERR_NOT_REGULAR');
    assert.ok(fs.lstatSync(fifo).isFIFO());
    assert.deepEqual(leftovers(dir), []);
  });

  it('keeps the mode and owner of an existing output and refuses a directory there, leaving it as it was', async (t) => {
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const dir = tempDir(t);
    const mig = unpackFixture('membackend-32m.mig', dir);
    const snap = path.join(dir, 'vm.fxr');
    await convert({ input: mig, output: snap, channels: 2, fsync: false });
    const out = path.join(dir, 'out.mig');
    fs.writeFileSync(out, 'previous');
    fs.chmodSync(out, 0o640);
    const owner = isRoot() ? 4242 : process.getuid!();
    if (isRoot()) fs.chownSync(out, owner, 4343);
    const r = await exportSnapshot({ snapshot: snap, output: out, channels: 2, fsync: false });
    assert.equal(r.output, out);
    const fresh = path.join(dir, 'fresh.mig');
    await exportSnapshot({ snapshot: snap, output: fresh, channels: 2, fsync: false });
    assert.equal(sha1(out), sha1(fresh), 'the export over an existing file differs from one to a new name');
    assert.equal(mode(fresh), 0o600);
    assert.equal(mode(out), 0o640);
    assert.equal(fs.statSync(out).uid, owner);
    if (isRoot()) assert.equal(fs.statSync(out).gid, 4343);

    const sub = path.join(dir, 'sub.mig');
    fs.mkdirSync(sub);
    fs.writeFileSync(path.join(sub, 'inside'), 'x');
    await assert.rejects(
      exportSnapshot({ snapshot: snap, output: sub, fsync: false }),
      (err: unknown) => err instanceof FixedramError && err.code === 'ERR_NOT_REGULAR',
    );
    assert.deepEqual(fs.readdirSync(sub), ['inside']);
    assert.deepEqual(leftovers(dir), []);
  });
});
