/**
 * Names reach a terminal only escaped. Block names and QEMU idstrs come from command lines and from
 * files we do not trust; printed raw, an ESC sequence could recolour, retitle or rewrite the
 * terminal, a newline could forge a line of output. Human output therefore shows every control
 * character — C0 (U+0000–U+001F), DEL (U+007F) and C1 (U+0080–U+009F, where U+009B is a CSI on
 * some terminals) — as a visible escape: \n, \t, \r, \e, or \xNN. Printable text (any other
 * character, including non-ASCII letters) and backslashes are left as they are, so an ordinary name
 * reads unchanged. JSON output is not escaped this way: it carries the exact name.
 */

// eslint-disable-next-line no-control-regex
const kControl = /[\u0000-\u001f\u007f-\u009f]/g;
const kNamed: Record<string, string> = { '\n': '\\n', '\t': '\\t', '\r': '\\r', '\u001b': '\\e' };

/** `s` with every control character replaced by a visible escape. */
export function escapeControls(s: string): string {
  return s.replace(kControl, (c) => kNamed[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** True when `s` holds a character escapeControls would replace. */
export function hasControls(s: string): boolean {
  kControl.lastIndex = 0;
  const found = kControl.test(s);
  kControl.lastIndex = 0;
  return found;
}

/**
 * A writable for human output: each write is one line (ending in '\n'); everything before that
 * final newline is escaped, so names inside it cannot break the line or reach the terminal raw.
 */
export function escapingWriter(out: NodeJS.WritableStream): NodeJS.WritableStream {
  const write = (chunk: unknown, ...rest: unknown[]): boolean => {
    const s = typeof chunk === 'string' ? chunk : Buffer.isBuffer(chunk) ? chunk.toString('utf8') : String(chunk);
    const body = s.endsWith('\n') ? s.slice(0, -1) : s;
    return (out.write as (c: string, ...r: unknown[]) => boolean)(
      `${escapeControls(body)}${s.endsWith('\n') ? '\n' : ''}`,
      ...rest,
    );
  };
  return new Proxy(out, {
    get(target, prop, receiver) {
      if (prop === 'write') return write;
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
