/**
 * The injective block name → relative file name encoding of `load --dir` (README "Use"): bytes
 * other than `A–Z a–z 0–9 _ . -` become `%XX`, and long encodings are split into directories.
 */

/**
 * Encodes a block name as a relative path below a directory, injectively: bytes other than
 * [A-Za-z0-9_.-] become %XX (upper-case hex), a leading '.' becomes %2E, so no component is '.',
 * '..' or hidden and no '/' survives. An encoding longer than 200 bytes is split into 200-byte
 * components, each but the last followed by '+' (which the encoding never produces), so a prefix
 * directory can never collide with a file name.
 */
export function encodeBlockName(name: string): string {
  const bytes = Buffer.from(name, 'utf8');
  let out = '';
  bytes.forEach((b, i) => {
    const ch = String.fromCharCode(b);
    const keep = /[A-Za-z0-9_.-]/.test(ch) && !(i === 0 && ch === '.');
    out += keep ? ch : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  });
  const parts: string[] = [];
  for (let i = 0; i < out.length; i += 200) parts.push(out.slice(i, i + 200));
  return parts.map((p, i) => (i < parts.length - 1 ? `${p}+` : p)).join('/');
}

/** Inverse of {@link encodeBlockName}. */
export function decodeBlockName(rel: string): string {
  const joined = rel
    .split('/')
    .map((p, i, all) => (i < all.length - 1 ? p.slice(0, -1) : p))
    .join('');
  const bytes: number[] = [];
  for (let i = 0; i < joined.length; i++) {
    if (joined[i] === '%') {
      bytes.push(parseInt(joined.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(joined.charCodeAt(i));
  }
  return Buffer.from(bytes).toString('utf8');
}
