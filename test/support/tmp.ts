/** A fresh temporary directory per test, removed afterwards. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestContext } from 'node:test';

/** Makes a temp dir under base (default: os.tmpdir()) that is removed when the test ends. */
export function tempDir(t: TestContext | { after: (fn: () => void) => void }, base = os.tmpdir()): string {
  const dir = fs.mkdtempSync(path.join(base, 'fixedram-test-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Allocated bytes of a file (st_blocks * 512). */
export function allocated(file: string): number {
  return Number(fs.statSync(file, { bigint: true }).blocks) * 512;
}

/** Number of open file descriptors of this process. */
export function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}
