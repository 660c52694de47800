/**
 * Replays the stored fuzz corpus (test/fixtures/fuzz-corpus, see its README): every case must have
 * exactly its recorded outcome, and the regression cases the same exit status through the CLI.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fixedram } from './support/cli';
import {
  buildBase,
  expectOf,
  kBases,
  loadCorpus,
  mutate,
  oracleProblems,
  runCase,
  type Base,
  type CorpusCase,
} from './support/fuzz-driver';
import { tempDir } from './support/tmp';

const kCorpus = path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'fuzz-corpus');

const cleanup: (() => void)[] = [];
after(() => cleanup.forEach((fn) => fn()));
let dir: string;
const bases: Record<string, Base> = {};
const corpus: CorpusCase[] = loadCorpus(kCorpus);

before(async () => {
  dir = tempDir({ after: (fn: () => void) => cleanup.push(fn) });
  for (const name of Object.keys(kBases)) bases[name] = await buildBase(dir, name);
});

describe('fuzz corpus', () => {
  it('holds regression cases and a recorded spread, each with a known base and a unique id', () => {
    assert.ok(corpus.length >= 50, `${corpus.length} cases`);
    assert.ok(corpus.filter((c) => c.id.startsWith('regress-')).length >= 7);
    assert.equal(new Set(corpus.map((c) => c.id)).size, corpus.length);
    for (const c of corpus) assert.ok(c.base in kBases, `${c.id}: base ${c.base}`);
    // every outcome class is represented
    const exits = new Set(corpus.map((c) => c.expect?.exit));
    assert.deepEqual([...exits].sort(), [0, 1, 3]);
  });

  it('every case has exactly its recorded outcome (in process)', async () => {
    const work = path.join(dir, 'replay.fxr');
    for (const c of corpus) {
      const base = bases[c.base]!;
      const { outcome, mutated } = await runCase(base, c.mutation, work);
      assert.deepEqual(oracleProblems(base, c.mutation, mutated, outcome), [], c.id);
      if (c.expect) assert.deepEqual(expectOf(outcome, work), c.expect, c.id);
    }
  });

  it('the regression and catalogue cases end in the same exit status through the CLI', () => {
    for (const c of corpus.filter((x) => /^(regress|catalogue)-/.test(x.id))) {
      const file = path.join(dir, `${c.id}.fxr`);
      fs.writeFileSync(file, mutate(bases[c.base]!, c.mutation));
      const r = fixedram(['verify', file, '-j', '2']);
      assert.equal(r.status, c.expect!.exit, `${c.id}: ${r.stderr}`);
      const shown = c.expect!.message.split('{file}').join(file);
      assert.ok((c.expect!.exit === 3 ? r.stderr : r.stdout).includes(shown), `${c.id}: ${r.stdout}${r.stderr}`);
    }
  });
});
