/**
 * Files a run must remove if the process exits abruptly (a second SIGINT exits at once): temp
 * files of saves in progress. Normal paths remove their own files in `finally` blocks.
 */
import * as fs from 'node:fs';

const temps = new Set<string>();

export function registerTemp(file: string): void {
  temps.add(file);
}

export function unregisterTemp(file: string): void {
  temps.delete(file);
}

/** Removes every registered temp file, synchronously (safe to call from a signal handler). */
export function removeTempsSync(): void {
  for (const f of temps) {
    try {
      fs.unlinkSync(f);
    } catch {
      /* already gone */
    }
  }
  temps.clear();
}
