/**
 * The flag and kind constants of src/native.ts are copies of native/pages.h: every one of them must
 * equal the value the addon itself exports, and every value the addon exports must have its copy.
 */
import * as assert from 'node:assert/strict';
import { it } from 'node:test';
import * as nativeModule from '../src/native';

it("the TypeScript copies of the native flag constants equal the addon's", () => {
  const fromAddon = nativeModule.native().constants;
  const names = Object.keys(fromAddon);
  assert.ok(names.length >= 15, `the addon exports its constants (${names.join(', ')})`);
  const ours = nativeModule as unknown as Record<string, unknown>;
  for (const name of names) {
    assert.equal(typeof ours[name], 'number', `src/native.ts has no copy of ${name}`);
    assert.equal(ours[name], fromAddon[name], name);
  }
  // and no flag of ours is missing from the addon
  const copies = Object.keys(ours).filter((k) => /^k[A-Z]/.test(k) && typeof ours[k] === 'number');
  assert.deepEqual(
    copies.filter((k) => !(k in fromAddon)),
    [],
  );
});

it('the page movers take one options object: a positional call, a missing or a mistyped field is a TypeError naming it', () => {
  const addon = nativeModule.native();
  const call = (f: () => unknown): string => {
    try {
      f();
    } catch (err) {
      assert.ok(err instanceof TypeError, `not a TypeError: ${String(err)}`);
      return err.message;
    }
    return assert.fail('no error');
  };
  const scratch = new Uint8Array(4096);
  const ok = {
    snapFd: -1,
    snapBase: 0,
    dstFd: -1,
    dstBase: 0,
    pageSize: 4096,
    firstPage: 0,
    pageCount: 0,
    scratch,
    csums: new Uint8Array(8),
    present: new Uint8Array(1),
    flags: 0,
  };
  // the premise: a well-formed empty batch is accepted (no pages, no I/O)
  assert.deepEqual(addon.loadPages(ok).slice(0, 3), [0, 0, 0]);
  const positional = addon.loadPages.bind(addon) as unknown as (...a: unknown[]) => unknown;
  assert.match(
    call(() => positional(-1, 0, -1, 0, 4096, 0, 0, scratch, ok.csums, ok.present, 0)),
    /the options must be an object/,
  );
  const { dstBase: _omitted, ...missing } = ok;
  assert.match(
    call(() => addon.loadPages(missing as typeof ok)),
    /dstBase must be a number/,
  );
  assert.match(
    call(() => addon.loadPages({ ...ok, present: [1] as unknown as Uint8Array })),
    /present must be a Uint8Array/,
  );
  assert.match(
    call(() =>
      addon.savePages({
        ...ok,
        srcFd: -1,
        srcBase: 0,
        mask: new Uint8Array(0),
        flags: nativeModule.kSaveMask,
        pageCount: 1,
      }),
    ),
    /mask is too short/,
  );
  assert.match(
    call(() => addon.updatePages({ ...ok, srcFd: -1, srcBase: 0, mask: new Uint8Array(1) })),
    /updatePages needs kSaveUpdate/,
  );
});
