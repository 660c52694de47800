/**
 * Every command's --json output (results and errors) and the --progress json events against the
 * documented shape: docs/json.schema.json (the machine form of docs/json.md), validated with ajv.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import Ajv from 'ajv';
import { commandsOf, makeProgram } from '../src/cli';
import { fixedram } from './support/cli';
import { requirePrereq } from './support/prereq';
import { buildGuest, guestMissing, startGuest } from './support/guest';
import { fixturesAvailable, kFixtures, qemuMissing, unpackFixture } from './support/qemu';
import { kS3Env, s3Client, s3Missing, tempBucket } from './support/storage';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

const root = path.resolve(__dirname, '..', '..');
const schema = JSON.parse(fs.readFileSync(path.join(root, 'docs', 'json.schema.json'), 'utf8')) as object;
const validate = new Ajv({ allErrors: true, strict: false }).compile(schema);

function check(args: string[], status: number): Record<string, unknown> {
  const r = fixedram(args);
  assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
  const lines = r.stdout.split('\n').filter(Boolean);
  assert.equal(lines.length, 1, `exactly one JSON object on stdout for ${args.join(' ')}:\n${r.stdout}`);
  const o = JSON.parse(lines[0]!) as Record<string, unknown>;
  assert.ok(validate(o), `${args.join(' ')}: ${JSON.stringify(validate.errors, null, 1)}\n${lines[0]}`);
  assert.equal(o.exitCode, status);
  return o;
}

/** Commands with a success sample below; a command added to the CLI must add one. */
type Sample = (t: TestContext) => void | Promise<void>;

function blocks(t: TestContext) {
  const dir = tempDir(t);
  const a = path.join(dir, 'a.ram');
  const b = path.join(dir, 'b.ram');
  makeBlock(a, 1, 40);
  makeBlock(b, 2, 9);
  const snap = path.join(dir, 's.fxr');
  return { dir, a, b, snap };
}

/** push and pull need the S3 endpoint of .ci/ceph-up (test/support/storage.ts). */
function s3Sample(t: TestContext, body: (bucket: string, snap: string) => Promise<void>): Promise<void> | undefined {
  if (!requirePrereq(t, s3Missing === '', s3Missing)) return undefined;
  const { a, snap } = blocks(t);
  check(['save', '-o', snap, '-b', `a=${a}`, '--json'], 0);
  const client = s3Client();
  t.after(() => client.destroy());
  return tempBucket(t, client).then((bucket) => body(bucket, snap));
}
const s3Check = (args: string[], status: number): Record<string, unknown> => {
  const saved = { ...process.env };
  Object.assign(process.env, kS3Env);
  try {
    return check(args, status);
  } finally {
    for (const k of Object.keys(kS3Env))
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
  }
};

const samples: Record<string, Sample> = {
  push: (t) =>
    s3Sample(t, async (bucket, snap) => {
      const p = s3Check(['push', snap, `s3://${bucket}/s`, '--json'], 0);
      assert.equal(p.snapshot, `s3://${bucket}/s`);
      assert.equal(p.source, snap);
    }),
  pull: (t) =>
    s3Sample(t, async (bucket, snap) => {
      s3Check(['push', snap, `s3://${bucket}/s`, '--json'], 0);
      const out = `${snap}.pulled`;
      const p = s3Check(['pull', `s3://${bucket}/s`, out, '--json'], 0);
      assert.equal(p.snapshot, out);
      assert.equal(p.source, `s3://${bucket}/s`);
    }),
  save: (t) => {
    const { a, b, snap } = blocks(t);
    const s = check(['save', '-o', snap, '-b', `a=${a}`, '-b', `b=${b}`, '--json'], 0);
    assert.equal(s.command, 'save');
    assert.equal(s.snapshot, snap);
    assert.equal(s.update, false);
    assert.equal(s.bytes, 49 * 4096);
    const u = check(['save', '--update', '-o', snap, '-b', `a=${a}`, '-b', `b=${b}`, '--json'], 0);
    assert.equal(u.command, 'save');
    assert.equal(u.update, true);
    assert.equal(u.snapshot, snap);
    // where the time went, in ms: the phases in order, then the channels' sums
    const phases = u.phases as Record<string, number>;
    assert.deepEqual(Object.keys(phases).slice(0, 3), ['startup', 'logger', 'open']);
    for (const k of ['tablesRead', 'pages', 'commit', 'chHash', 'chCpu'])
      assert.ok(typeof phases[k] === 'number' && phases[k] >= 0, `phases.${k}: ${phases[k]}`);
    assert.ok(phases.startup! > 0 && phases.startup! < 60_000, `startup ${phases.startup}`);
  },
  load: (t) => {
    const { dir, a, snap } = blocks(t);
    check(['save', '-o', snap, '-b', `a=${a}`, '--json'], 0);
    const l = check(['load', snap, '--dir', path.join(dir, 'out'), '--json'], 0);
    assert.equal(l.snapshot, snap);
    assert.equal((l.blocks as { path: string }[])[0]!.path, path.join(dir, 'out', 'a'));
  },
  verify: (t) => {
    const { a, snap } = blocks(t);
    check(['save', '-o', snap, '-b', `a=${a}`, '--json'], 0);
    const v = check(['verify', snap, '--json'], 0);
    assert.equal(v.snapshot, snap);
    // an integrity failure is a result too (ok false, exit 1)
    const info = JSON.parse(fixedram(['inspect', snap, '--json']).stdout) as { blocks: { pagesOffset: number }[] };
    const fd = fs.openSync(snap, 'r+');
    fs.writeSync(fd, Buffer.from([0xee]), 0, 1, info.blocks[0]!.pagesOffset + 5);
    fs.closeSync(fd);
    const bad = check(['verify', snap, '--json'], 1);
    assert.equal(bad.ok, false);
    assert.equal(bad.failureCount, 1);
  },
  inspect: (t) => {
    const { a, snap } = blocks(t);
    check(['save', '-o', snap, '-b', `a=${a}`, '--json'], 0);
    const i = check(['inspect', snap, '--json'], 0);
    assert.equal(i.snapshot, snap);
    assert.equal(i.pages, 40);
  },
  convert: (t) => {
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const dir = tempDir(t);
    const mig = unpackFixture('membackend-32m.mig', dir);
    const c = check(['convert', mig, '-o', path.join(dir, 'c.fxr'), '--json'], 0);
    assert.equal(c.source, mig);
    assert.equal(c.snapshot, path.join(dir, 'c.fxr'));
  },
  export: (t) => {
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const dir = tempDir(t);
    const mig = unpackFixture('membackend-32m.mig', dir);
    check(['convert', mig, '-o', path.join(dir, 'c.fxr'), '--json'], 0);
    const e = check(['export', path.join(dir, 'c.fxr'), '-o', path.join(dir, 'e.mig'), '--json'], 0);
    assert.equal(e.snapshot, path.join(dir, 'c.fxr'));
    assert.equal(e.output, path.join(dir, 'e.mig'));
    assert.equal(e.outputFormat, 'qemu-mapped-ram');
  },
  'vm save': async (t) => {
    if (!requirePrereq(t, !vmMissing, `VM: ${vmMissing}`)) return;
    const { snap, vm } = await vmSample(t);
    const s = check(['vm', 'save', '--qmp', vm.fixedramQmp, '-o', snap, '--json', '--then', 'quit'], 0);
    assert.equal(s.snapshot, snap);
    assert.equal(s.mode, 'shared-file');
  },
  'vm restore': async (t) => {
    if (!requirePrereq(t, !vmMissing, `VM: ${vmMissing}`)) return;
    const { dir, snap, vm, kernel } = await vmSample(t);
    check(['vm', 'save', '--qmp', vm.fixedramQmp, '-o', snap, '--json', '--then', 'quit'], 0);
    const b = await startGuest(dir, 'b', { kernel, mib: 16, memPath: path.join(dir, 'mem0.ram'), incoming: true });
    t.after(() => b.stop());
    const r = check(['vm', 'restore', '--qmp', b.fixedramQmp, snap, '--json'], 0);
    assert.equal(r.snapshot, snap);
    assert.equal(r.then, 'resume');
  },
};

const vmMissing = qemuMissing() ?? guestMissing();

/** A 16 MiB counting guest with its RAM in a shared file (test/support/guest.ts). */
async function vmSample(t: TestContext) {
  const dir = tempDir(t);
  const kernel = buildGuest(dir);
  const vm = await startGuest(dir, 'a', { kernel, mib: 16, memPath: path.join(dir, 'mem0.ram') });
  t.after(() => vm.stop());
  return { dir, kernel, vm, snap: path.join(dir, 'vm.fxr') };
}

const program = makeProgram({ stdout: process.stdout, stderr: process.stderr, setExitCode: () => undefined });
const names = commandsOf(program)
  .map((c) => c.name)
  .filter((n) => n !== 'completion');

describe('--json output matches docs/json.schema.json', () => {
  it('the schema rejects what the doc forbids (the validator is live)', () => {
    assert.equal(
      validate({ schemaVersion: 1, command: 'save', ok: true, exitCode: 0 }),
      false,
      'a save result without its fields',
    );
    assert.equal(
      validate({ schemaVersion: 1, command: 'x', ok: false, exitCode: 4, error: { code: 'E', message: 'a\nb' } }),
      false,
      'a two-line message',
    );
    assert.equal(
      validate({ schemaVersion: 1, command: null, ok: false, exitCode: 2, error: { code: 'ERR_USAGE', message: 'm' } }),
      true,
    );
  });

  for (const name of names) {
    it(`${name}: its result`, async (t) => {
      const sample = samples[name];
      assert.ok(sample, `no JSON sample for '${name}': add one to samples in test/json-shape.test.ts`);
      await sample(t);
    });
    it(`${name}: a usage error`, () => {
      const o = check([...name.split(' '), '--no-such-flag', '--json'], 2);
      assert.equal(o.command, name);
      assert.equal((o.error as { code: string }).code, 'ERR_USAGE');
    });
  }

  it('system and snapshot errors carry the errno fields and the command', (t) => {
    const { dir, snap } = blocks(t);
    const missing = path.join(dir, 'missing.ram');
    const s = check(['save', '-o', snap, '-b', `m=${missing}`, '--json'], 4);
    assert.deepEqual(
      { ...(s.error as object), message: undefined },
      { code: 'ENOENT', message: undefined, errno: -2, syscall: 'open', path: missing, block: 'm' },
    );
    const i = check(['inspect', missing, '--json'], 4);
    assert.equal(i.command, 'inspect');
    fs.writeFileSync(path.join(dir, 'junk'), Buffer.alloc(8192, 7));
    const j = check(['verify', path.join(dir, 'junk'), '--json'], 3);
    assert.match((j.error as { code: string }).code, /^ERR_SNAPSHOT_/);
  });

  it('an unknown command: command null, exit 2', () => {
    const o = check(['frobnicate', '--json'], 2);
    assert.equal(o.command, null);
  });

  it('--progress json events carry schemaVersion, command and elapsedMs', (t) => {
    const { a, snap } = blocks(t);
    const r = fixedram(['save', '-o', snap, '-b', `a=${a}`, '--progress', 'json']);
    assert.equal(r.status, 0, r.stderr);
    const events = r.stderr
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(events.length >= 1);
    for (const e of events) {
      assert.deepEqual(Object.keys(e), ['event', 'schemaVersion', 'command', 'bytesDone', 'bytesTotal', 'elapsedMs']);
      assert.equal(e.event, 'progress');
      assert.ok(Number.isInteger(e.elapsedMs) && (e.elapsedMs as number) >= 0);
    }
    assert.equal(events.at(-1)!.bytesDone, events.at(-1)!.bytesTotal);
  });
});
