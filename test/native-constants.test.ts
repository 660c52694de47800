/**
 * The flag and kind constants of src/native.ts are copies of native/pages.h: every one of them must
 * equal the value the addon itself exports, and every value the addon exports must have its copy.
 */
import * as assert from 'node:assert/strict';
import { it } from 'node:test';
import * as nativeModule from '../src/native';

it('the TypeScript copies of the native flag constants equal the addon\'s', () => {
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
  assert.deepEqual(copies.filter((k) => !(k in fromAddon)), []);
});
