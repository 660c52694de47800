/**
 * Durability (issue 10 item 14): the order of writes, syncs and renames of save, save --update and
 * convert is recorded by an LD_PRELOAD shim (test/support/io_trace.c) and checked against the
 * commit protocol of docs/format-v1.md:
 *   new snapshot: pages → tables → header → fdatasync → COMPLETE → fdatasync → rename → dir fsync
 *   update:       UPDATING → fdatasync → pages/punches/tables → fdatasync → COMPLETE → fdatasync
 * The recorded bytes are then replayed: what was durable when the rename happened must be the
 * complete new snapshot, and every crash state of an update (each prefix of the writes, and each
 * epoch between two syncs with only its header write landed) must read as the old snapshot, the new
 * one, or a detected interrupted update. A self-check proves the checks fail on broken orders.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { FixedramError, verify } from '../src/index';
import { fixedram } from './support/cli';
import { requirePrereq, requireSetup } from './support/prereq';
import { fixturesAvailable, kFixtures, unpackFixture } from './support/qemu';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';
import {
  applyWrites,
  checkNewSnapshotProtocol,
  checkUpdateProtocol,
  parseTrace,
  traceShimPath,
  type TraceEvent,
} from './support/trace';

interface Traced {
  events: TraceEvent[];
  data: Buffer;
}

/** Runs fixedram with the trace shim on files below dir (fsync on: the default). */
function traced(t: TestContext, so: string, dir: string, args: string[]): Traced {
  const trace = path.join(dir, '..', `${path.basename(dir)}.trace`);
  const data = path.join(dir, '..', `${path.basename(dir)}.data`);
  t.after(() => {
    fs.rmSync(trace, { force: true });
    fs.rmSync(data, { force: true });
  });
  fs.rmSync(trace, { force: true });
  const r = fixedram(args, { env: { LD_PRELOAD: so, FXR_TRACE: trace, FXR_TRACE_PATH: dir, FXR_TRACE_DATA: data } });
  assert.equal(r.status, 0, r.stderr);
  return { events: parseTrace(trace), data: fs.readFileSync(data) };
}

/** Where a snapshot's page data lies (other writes past the header are metadata). */
function pagesStart(snap: string): { start: number; end: number } {
  const j = JSON.parse(fixedram(['inspect', snap, '--json']).stdout) as {
    blocks: { pagesOffset: number; length: number }[];
  };
  return {
    start: Math.min(...j.blocks.map((b) => b.pagesOffset)),
    end: Math.max(...j.blocks.map((b) => b.pagesOffset + b.length)),
  };
}

/** What a crash state reads as: 'old', 'new', 'updating', or a description of what is wrong. */
async function readsAs(file: string, old: Buffer, now: Buffer): Promise<string> {
  const bytes = fs.readFileSync(file);
  try {
    const v = await verify({ snapshot: file, channels: 1 });
    if (!v.ok) return `verify fails: ${v.failures[0]?.message}`;
    if (bytes.equals(old)) return 'old';
    if (bytes.equals(now)) return 'new';
    return 'complete but neither the old nor the new snapshot';
  } catch (err) {
    if (
      err instanceof FixedramError &&
      err.code === 'ERR_SNAPSHOT_INCOMPLETE' &&
      /interrupted in-place update/.test(err.message)
    )
      return 'updating';
    return `error: ${(err as Error).message}`;
  }
}

/** The state durable when the rename happened: the temp file's writes before its last fdatasync. */
function durableAtRename(tr: Traced, tmp: string, output: string, size: number): Buffer {
  const iN = tr.events.findIndex((e) => e.kind === 'N' && e.to === output);
  const lastSync = tr.events
    .map((e, i) => (e.kind === 'D' && e.path === tmp && i < iN ? i : -1))
    .reduce((a, b) => Math.max(a, b), -1);
  const buf = Buffer.alloc(size);
  applyWrites(buf, tr.events, tmp, tr.data, (i) => i < lastSync);
  return buf;
}

describe('durability: the commit protocol, recorded', () => {
  it('save: pages → tables → header → fdatasync → COMPLETE → fdatasync → rename → dir fsync; what was durable at the rename is the new snapshot', async (t) => {
    const so = traceShimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    const b = path.join(dir, 'b.ram');
    makeBlock(a, 1, 200);
    makeBlock(b, 2, 40);
    const out = path.join(dir, 's.fxr');
    const tr = traced(t, so, dir, ['save', '-o', out, '-b', `a=${a}`, '-b', `b=${b}`, '-j', '2']);
    const tmp = checkNewSnapshotProtocol(tr.events, out, pagesStart(out));
    const final = fs.readFileSync(out);
    const durable = durableAtRename(tr, tmp, out, final.length);
    assert.ok(durable.equals(final), 'the bytes synced before the rename are not the snapshot that was renamed');
  });

  it('save --update: UPDATING → fdatasync → pages → fdatasync → COMPLETE → fdatasync; every crash state reads as old, new or interrupted', async (t) => {
    const so = traceShimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 300, { kind: (i) => (i % 5 === 0 ? 'zero' : 'stamp') });
    const out = path.join(dir, 's.fxr');
    assert.equal(fixedram(['save', '-o', out, '-b', `a=${a}`, '--no-fsync']).status, 0);
    const old = fs.readFileSync(out);
    // changed pages, pages that became zero (punched), pages that became data
    makeBlock(a, 1, 300, { generation: 2, kind: (i) => (i % 7 === 0 ? 'zero' : i % 3 === 0 ? 'stamp' : 'stamp') });
    const tr = traced(t, so, dir, ['save', '--update', '-o', out, '-b', `a=${a}`, '-j', '2']);
    checkUpdateProtocol(tr.events, out);
    const now = fs.readFileSync(out);
    assert.ok(!now.equals(old), 'the update changed nothing: the replay would prove nothing');
    assert.ok(
      tr.events.some((e) => e.kind === 'P' && e.path === out),
      'no hole was punched: the zeroed pages are not exercised',
    );

    // replay: every prefix of the changes, and for each epoch between syncs, only its header write
    const changes = tr.events.flatMap((e, i) => ((e.kind === 'W' || e.kind === 'P') && e.path === out ? [i] : []));
    const syncs = tr.events.flatMap((e, i) => (e.kind === 'D' && e.path === out ? [i] : []));
    const file = path.join(dir, 'crash.fxr');
    const seen = new Map<string, number>();
    const check = async (label: string, pick: (i: number) => boolean): Promise<void> => {
      const buf = Buffer.from(old);
      applyWrites(buf, tr.events, out, tr.data, pick);
      fs.writeFileSync(file, buf);
      const as = await readsAs(file, old, now);
      seen.set(as, (seen.get(as) ?? 0) + 1);
      assert.ok(['old', 'new', 'updating'].includes(as), `crash state ${label} reads as: ${as}`);
    };
    for (let k = 0; k <= changes.length; k++)
      await check(`after ${k} of ${changes.length} changes`, (i) => k > 0 && i <= changes[k - 1]!);
    let prev = -1;
    for (const s of [...syncs, tr.events.length]) {
      const headerInEpoch = changes.filter(
        (i) => i > prev && i < s && tr.events[i]!.kind === 'W' && (tr.events[i] as { off: number }).off === 0,
      );
      for (const h of headerInEpoch)
        await check(`epoch ending at event ${s} with only its header (event ${h}) landed`, (i) => i < prev || i === h);
      prev = s;
    }
    t.diagnostic(`crash states: ${JSON.stringify(Object.fromEntries(seen))}`);
    assert.ok(
      (seen.get('updating') ?? 0) > 0 && (seen.get('new') ?? 0) > 0 && (seen.get('old') ?? 0) > 0,
      'the replay did not visit old, updating and new states',
    );
  });

  it('convert: the same protocol as save', async (t) => {
    const so = traceShimPath();
    if (!requireSetup(t, so)) return;
    if (!requirePrereq(t, fixturesAvailable(), `the QEMU fixtures are not at ${kFixtures}`)) return;
    const dir = tempDir(t);
    const mig = unpackFixture('membackend-32m.mig', dir);
    const out = path.join(dir, 'c.fxr');
    const tr = traced(t, so, dir, ['convert', mig, '-o', out, '-j', '2']);
    const tmp = checkNewSnapshotProtocol(tr.events, out, pagesStart(out));
    const final = fs.readFileSync(out);
    assert.ok(durableAtRename(tr, tmp, out, final.length).equals(final));
  });

  it('self-check: the checks reject a trace without a sync, with the rename before the last sync, or COMPLETE before the pages', (t) => {
    const so = traceShimPath();
    if (!requireSetup(t, so)) return;
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 64);
    const out = path.join(dir, 's.fxr');
    const tr = traced(t, so, dir, ['save', '-o', out, '-b', `a=${a}`]);
    const start = pagesStart(out);
    const tmp = checkNewSnapshotProtocol(tr.events, out, start);
    const syncs = tr.events.flatMap((e, i) => (e.kind === 'D' && e.path === tmp ? [i] : []));
    assert.equal(syncs.length, 2);
    const without = (i: number): TraceEvent[] => tr.events.filter((_, k) => k !== i);
    assert.throws(
      () => checkNewSnapshotProtocol(without(syncs[0]!), out, start),
      /no fdatasync between the header and its COMPLETE flag/,
    );
    assert.throws(
      () => checkNewSnapshotProtocol(without(syncs[1]!), out, start),
      /no fdatasync between the COMPLETE flag and the rename/,
    );
    const iN = tr.events.findIndex((e) => e.kind === 'N');
    const early = [...tr.events];
    const [rename] = early.splice(iN, 1);
    early.splice(syncs[1]!, 0, rename!);
    assert.throws(() => checkNewSnapshotProtocol(early, out, start), /between the COMPLETE flag and the rename/);
    const iDir = tr.events.findIndex((e) => e.kind === 'S');
    assert.throws(() => checkNewSnapshotProtocol(without(iDir), out, start), /no fsync of the directory/);
    // without its syncs, what was durable at the rename is not the snapshot
    const noSync: Traced = { events: tr.events.filter((e) => e.kind !== 'D'), data: tr.data };
    assert.ok(!durableAtRename(noSync, tmp, out, fs.statSync(out).size).equals(fs.readFileSync(out)));

    assert.equal(fixedram(['save', '-o', out, '-b', `a=${a}`, '--no-fsync']).status, 0);
    makeBlock(a, 1, 64, { generation: 3 });
    const up = traced(t, so, dir, ['save', '--update', '-o', out, '-b', `a=${a}`]);
    checkUpdateProtocol(up.events, out);
    const usyncs = up.events.flatMap((e, i) => (e.kind === 'D' && e.path === out ? [i] : []));
    assert.throws(
      () =>
        checkUpdateProtocol(
          up.events.filter((_, k) => k !== usyncs[0]),
          out,
        ),
      /no fdatasync between UPDATING and the first page/,
    );
    assert.throws(
      () =>
        checkUpdateProtocol(
          up.events.filter((_, k) => k !== usyncs.at(-2)),
          out,
        ),
      /no fdatasync between the last page or table and COMPLETE/,
    );
  });
});
