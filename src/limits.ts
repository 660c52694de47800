/**
 * Resource limits (`ulimit -n`, `-u`, `-v`, cgroups): what could not be created is said in one line
 * (a worker thread, a descriptor, memory), as an exit-4 error, so that the usual cleanup (temp file,
 * lock) runs and no stack trace or "rebuild" advice misleads.
 */
import { ExitCode, FixedramError } from './errors';

/** Turns a worker thread that could not start or ran out of memory into a one-line error. */
export function explainWorkerError(err: unknown, index: number, fromConstructor = false): unknown {
  const e = err as { code?: unknown; message?: unknown };
  const msg = typeof e.message === 'string' ? e.message : '';
  // new Worker() itself throws a bare errno name (EAGAIN) when the thread cannot be created
  if (
    e.code === 'ERR_WORKER_INIT_FAILED' ||
    /Worker initialization failure/.test(msg) ||
    (fromConstructor && /^E[A-Z]+$/.test(msg))
  ) {
    const why = /EMFILE|ENFILE/.test(msg)
      ? 'no file descriptor is left (EMFILE: raise `ulimit -n` or use fewer channels with -j)'
      : /EAGAIN/.test(msg)
        ? 'the thread limit is reached (EAGAIN: raise `ulimit -u` or use fewer channels with -j)'
        : /ENOMEM/.test(msg)
          ? 'no memory is left for it (ENOMEM)'
          : msg.replace(/^Worker initialization failure: /, '');
    return new FixedramError('ERR_RESOURCE', ExitCode.system, `could not start worker thread ${index}: ${why}`);
  }
  if (e.code === 'ERR_WORKER_OUT_OF_MEMORY') {
    return new FixedramError(
      'ERR_RESOURCE',
      ExitCode.system,
      `worker thread ${index} ran out of memory (a memory limit such as \`ulimit -v\`?): ${msg}`,
    );
  }
  return err;
}

/** Turns a failed allocation (RangeError from an ArrayBuffer) into a one-line error naming what it was for. */
export function explainAllocation(err: unknown, what: string, bytes: number): unknown {
  if (
    err instanceof RangeError &&
    /allocation failed|Array buffer|Invalid array length|out of memory/i.test(err.message)
  ) {
    return new FixedramError(
      'ERR_RESOURCE',
      ExitCode.system,
      `could not allocate ${bytes} bytes of memory for ${what} (a memory limit such as \`ulimit -v\`?)`,
    );
  }
  return err;
}
