/**
 * The standard streams may fail under us: stderr closed by the reader of a `--progress json` pipe
 * (`2> >(head -n1)`), a terminal that went away, EIO. Progress, warnings and errors are only
 * reports: a stderr that cannot be written never stops the work, never leaves a temp file or a lock
 * behind, and is not written to again. (stdout carries the result: its failures are reported by the
 * CLI's output module with exit 4; EPIPE there stays quiet.)
 */
export function guardStderr(stream: NodeJS.WritableStream): void {
  stream.on('error', () => {
    /* nowhere left to report it: the work goes on and its exit status says how it ended */
  });
}
