/**
 * Prerequisites that hide nothing. A test that needs something from its environment (the QEMU
 * fixtures, QEMU itself, root, hugetlbfs, the LD_PRELOAD shim, prlimit, xxhsum …) calls
 * requirePrereq first:
 *
 *   if (!requirePrereq(t, haveIt, 'why it is missing')) return;
 *
 * When the CI environment variable is set (as `.ci/run` runs), a missing prerequisite FAILS the
 * test: .ci/run is supposed to provide it, so its absence is a broken CI, not a reason to skip.
 * Outside CI the test is skipped with the reason (it still shows in the skipped count).
 *
 * Suites whose hooks need the prerequisite use prereqSuite: its it/before/after replace node:test's
 * in that file, so every test is counted (failed in CI, skipped with a reason elsewhere) instead of
 * vanishing with describe(..., { skip }).
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as test from 'node:test';
import type { TestContext } from 'node:test';

/** True when running under CI (the CI variable is set to anything but '', '0' or 'false'). */
export function inCI(): boolean {
  const v = process.env.CI;
  return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
}

type Skippable = Pick<TestContext, 'skip'>;

/**
 * Returns true when `ok`; otherwise fails the test under CI (throws) or skips it with `reason` and
 * returns false.
 */
export function requirePrereq(t: Skippable, ok: boolean, reason: string): boolean {
  if (ok) return true;
  if (inCI()) assert.fail(`missing prerequisite under CI (.ci/run must provide it): ${reason}`);
  t.skip(reason);
  return false;
}

/** strace, for the tests that count or place system calls (.ci/install-system installs it). */
export function requireStrace(t: Skippable): boolean {
  return requirePrereq(
    t,
    spawnSync('strace', ['-V']).status === 0,
    'strace is not installed (.ci/install-system installs it)',
  );
}

/**
 * For the helpers' convention of returning either a value or a string starting with 'skip:'
 * (shimPath(), mountTmpfs(), hugetlbfsDir()): true when `value` is usable.
 */
export function requireSetup(t: Skippable, value: string): boolean {
  return requirePrereq(t, !value.startsWith('skip:'), value.replace(/^skip:\s*/, ''));
}

type TestFn = (t: TestContext) => void | Promise<void>;
type HookFn = () => void | Promise<void>;

export interface PrereqSuite {
  it: (name: string, a: TestFn | test.TestOptions, b?: TestFn) => void;
  before: (fn: HookFn) => void;
  after: (fn: HookFn) => void;
  beforeEach: (fn: HookFn) => void;
  afterEach: (fn: HookFn) => void;
}

/**
 * it/before/after for a suite that needs one prerequisite: the hooks run only when it holds; each
 * test calls requirePrereq first, so it is counted either way.
 */
export function prereqSuite(ok: boolean, reason: string): PrereqSuite {
  const hook = (h: (fn: HookFn) => void) => (fn: HookFn) => h(() => (ok ? fn() : undefined));
  return {
    it(name, a, b) {
      const fn = (typeof a === 'function' ? a : b) as TestFn;
      const opts = typeof a === 'function' ? {} : a;
      test.it(name, opts, (t) => (requirePrereq(t, ok, reason) ? fn(t) : undefined));
    },
    before: hook(test.before),
    after: hook(test.after),
    beforeEach: hook(test.beforeEach),
    afterEach: hook(test.afterEach),
  };
}
