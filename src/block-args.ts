/** A block as the user names it: `NAME=PATH`, parsed and checked (the name is stored exactly). */
import * as fs from 'node:fs';
import { usageError } from './errors';
import { nameProblem } from './format';

export interface BlockArg {
  name: string;
  path: string;
}

/** Parses `NAME=PATH` (split at the first '='). */
export function parseBlockArg(arg: string): BlockArg {
  const eq = arg.indexOf('=');
  if (eq <= 0 || eq === arg.length - 1) throw usageError(`block must be NAME=PATH (got '${arg}')`);
  const name = arg.slice(0, eq);
  const problem = nameProblem(name);
  if (problem) throw usageError(`${problem}: '${name}'`);
  if (name.includes('\uFFFD') && argvHasInvalidUtf8()) {
    // Node decodes argv as UTF-8 and turns invalid bytes into U+FFFD: a name we cannot store exactly
    throw usageError(`a block name must be valid UTF-8: '${name}' (U+FFFD marks the bytes that are not)`);
  }
  return { name, path: arg.slice(eq + 1) };
}

let rawArgvInvalid: boolean | undefined;

/**
 * Whether this process's command line, as the kernel holds it (/proc/self/cmdline: the bytes
 * before Node decoded them), has an argument that is not valid UTF-8. Where it cannot be read, a
 * U+FFFD is taken as the mark of one (refusing is the safe side).
 */
function argvHasInvalidUtf8(): boolean {
  if (rawArgvInvalid !== undefined) return rawArgvInvalid;
  try {
    const raw = fs.readFileSync('/proc/self/cmdline');
    const decoder = new TextDecoder('utf-8', { fatal: true });
    rawArgvInvalid = false;
    let start = 0;
    for (let i = 0; i <= raw.length; i++) {
      if (i < raw.length && raw[i] !== 0) continue;
      try {
        decoder.decode(raw.subarray(start, i));
      } catch {
        rawArgvInvalid = true;
      }
      start = i + 1;
    }
  } catch {
    rawArgvInvalid = true;
  }
  return rawArgvInvalid;
}
