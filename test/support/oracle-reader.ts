/**
 * An independent reader of the fixedram format, written from docs/format-v1.md alone: it imports
 * nothing from src/ and hashes with the `xxhsum` tool (Debian package xxhash), so a layout or
 * checksum bug in the code under test cannot be shared by its oracle. It is deliberately naive:
 * it reads whole files into memory (test files are small) and checks every rule of the spec's
 * "Validation" section in order, throwing OracleError with the rule's number on the first violation.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export class OracleError extends Error {
  constructor(
    readonly rule: number,
    message: string,
  ) {
    super(`rule ${rule}: ${message}`);
  }
}

export interface OracleBlock {
  name: string;
  pageSize: number;
  length: number;
  pages: number;
  bitmapOffset: number;
  checksumsOffset: number;
  pagesOffset: number;
  presentPages: number;
  /** Indexes of the pages whose bitmap bit is set. */
  present: number[];
}

export interface OracleSnapshot {
  flags: number;
  complete: boolean;
  updating: boolean;
  metadataEnd: number;
  fileSize: number;
  blocks: OracleBlock[];
  /** Offset of the device-state record (flag DEVICE_STATE). */
  deviceState?: number;
}

/** XXH3-64 (seed 0) of each buffer, by `xxhsum -H3` (one process per 400 buffers). */
export function xxh3Many(bufs: Uint8Array[]): bigint[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fixedram-oracle-'));
  try {
    const files = bufs.map((b, i) => {
      const f = path.join(dir, String(i));
      fs.writeFileSync(f, b);
      return f;
    });
    const out: bigint[] = [];
    for (let i = 0; i < files.length; i += 400) {
      const r = spawnSync('xxhsum', ['-H3', ...files.slice(i, i + 400)], { encoding: 'utf8', maxBuffer: 64 << 20 });
      if (r.status !== 0) throw new Error(`xxhsum failed (${r.error?.message ?? r.stderr})`);
      const lines = r.stdout.trim().split('\n');
      for (const line of lines) {
        // "XXH3 (FILE) = 0123456789abcdef" (BSD style, which -H3 selects)
        const m = /^XXH3 \((.*)\) = ([0-9a-f]{16})$/.exec(line);
        if (!m) throw new Error(`unexpected xxhsum output: ${line}`);
        out.push(BigInt(`0x${m[2]}`));
      }
    }
    if (out.length !== bufs.length) throw new Error('xxhsum gave fewer hashes than files');
    return out;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export const xxh3 = (b: Uint8Array): bigint => xxh3Many([b])[0]!;

const u64 = (buf: Buffer, at: number, what: string): number => {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new OracleError(3, `${what} ${v} is above 2^53 - 1`);
  return Number(v);
};

/** Reads and checks a snapshot by the spec; `pages: false` stops after rule 5 (structure and tables). */
export function oracleRead(file: string, opts: { pages?: boolean } = {}): OracleSnapshot {
  const f = fs.readFileSync(file);
  // rule 1
  if (f.length < 64) throw new OracleError(1, 'shorter than the 64-byte header');
  if (f.subarray(0, 8).toString('latin1') !== 'FIXEDRAM') throw new OracleError(1, 'bad magic');
  if (f.readUInt32LE(8) !== 1) throw new OracleError(1, `version ${f.readUInt32LE(8)}`);
  const flags = f.readUInt32LE(12);
  if ((flags & ~7) !== 0) throw new OracleError(1, `unknown flag bits 0x${flags.toString(16)}`);
  const blockCount = f.readUInt32LE(16);
  if (f.readUInt32LE(20) !== 320) throw new OracleError(1, 'entrySize is not 320');
  if (f.readBigUInt64LE(24) !== 64n) throw new OracleError(1, 'tableOffset is not 64');
  if (blockCount > 65536) throw new OracleError(1, 'more than 65536 blocks');
  const tableEnd = 64 + 320 * blockCount;
  if (tableEnd > f.length) throw new OracleError(1, 'the block table is cut');
  // rule 2
  const head = Buffer.from(f.subarray(0, tableEnd));
  head.fill(0, 56, 64);
  if (xxh3(head) !== f.readBigUInt64LE(56)) throw new OracleError(2, 'header checksum');
  const metadataEnd = u64(f, 32, 'metadataEnd');
  const fileSize = u64(f, 40, 'fileSize');
  // rule 3
  const blocks: OracleBlock[] = [];
  const sums: bigint[] = [];
  const names = new Set<string>();
  for (let i = 0; i < blockCount; i++) {
    const e = 64 + 320 * i;
    const nameLength = f.readUInt16LE(e);
    if (nameLength < 1 || nameLength > 255) throw new OracleError(3, `entry ${i}: name length ${nameLength}`);
    if (f.readUInt16LE(e + 2) !== 0) throw new OracleError(3, `entry ${i}: reserved u16 is not 0`);
    const nameBytes = f.subarray(e + 64, e + 64 + nameLength);
    let name: string;
    try {
      name = new TextDecoder('utf-8', { fatal: true }).decode(nameBytes);
    } catch {
      throw new OracleError(3, `entry ${i}: name is not UTF-8`);
    }
    if (nameBytes.includes(0)) throw new OracleError(3, `entry ${i}: NUL in the name`);
    if (f.subarray(e + 64 + nameLength, e + 320).some((b) => b !== 0))
      throw new OracleError(3, `entry ${i}: name padding`);
    if (names.has(name)) throw new OracleError(3, `duplicate name ${name}`);
    names.add(name);
    const pageSize = f.readUInt32LE(e + 4);
    if (pageSize < 4096 || pageSize > 2 ** 30 || (pageSize & (pageSize - 1)) !== 0)
      throw new OracleError(3, `page size ${pageSize}`);
    const length = u64(f, e + 8, 'length');
    if (length % pageSize !== 0 || length > 2 ** 50) throw new OracleError(3, `length ${length}`);
    const b: OracleBlock = {
      name,
      pageSize,
      length,
      pages: length / pageSize,
      bitmapOffset: u64(f, e + 16, 'bitmapOffset'),
      checksumsOffset: u64(f, e + 24, 'checksumsOffset'),
      pagesOffset: u64(f, e + 32, 'pagesOffset'),
      presentPages: u64(f, e + 40, 'presentPages'),
      present: [],
    };
    u64(f, e + 56, 'reserved');
    if (b.bitmapOffset % 8 || b.checksumsOffset % 8 || b.pagesOffset % 2 ** 20)
      throw new OracleError(3, `${name}: alignment`);
    if (b.presentPages > b.pages) throw new OracleError(3, `${name}: presentPages > pages`);
    blocks.push(b);
    sums.push(f.readBigUInt64LE(e + 48));
  }
  // rule 4
  const bitmapBytes = (b: OracleBlock): number => Math.ceil(b.pages / 64) * 8;
  const regions: [number, number][] = [[0, tableEnd]];
  for (const b of blocks) {
    regions.push(
      [b.bitmapOffset, b.bitmapOffset + bitmapBytes(b)],
      [b.checksumsOffset, b.checksumsOffset + 8 * b.pages],
      [b.pagesOffset, b.pagesOffset + b.length],
    );
    if (b.bitmapOffset + bitmapBytes(b) > metadataEnd || b.checksumsOffset + 8 * b.pages > metadataEnd) {
      throw new OracleError(4, `${b.name}: metadata past metadataEnd`);
    }
    if (b.length > 0 && b.pagesOffset < metadataEnd) throw new OracleError(4, `${b.name}: pages before metadataEnd`);
  }
  const used = regions.filter(([s, e]) => e > s).sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < used.length; i++)
    if (used[i]![0] < used[i - 1]![1]) throw new OracleError(4, 'overlapping regions');
  if (metadataEnd > fileSize || used.some(([, e]) => e > fileSize))
    throw new OracleError(4, 'a region ends past fileSize');
  if (f.length !== fileSize) throw new OracleError(4, `file is ${f.length} bytes, header says ${fileSize}`);
  // rule 7: the device-state record (flag DEVICE_STATE) runs from deviceStateOffset to fileSize
  let deviceState: number | undefined;
  if (flags & 4) {
    const ds = u64(f, 48, 'deviceStateOffset');
    const end = Math.max(metadataEnd, ...used.map(([, e]) => e));
    if (ds % 4096 !== 0 || ds < end || ds + 64 > fileSize || fileSize - ds > 256 * 2 ** 20)
      throw new OracleError(7, 'device-state placement');
    const rec = Buffer.from(f.subarray(ds, fileSize));
    if (rec.subarray(0, 8).toString('latin1') !== 'FXRDEVST' || rec.readUInt32LE(8) !== 1)
      throw new OracleError(7, 'device-state magic or version');
    if (rec.readBigUInt64LE(16) !== BigInt(rec.length)) throw new OracleError(7, 'device-state recordBytes');
    const parts = rec.readUInt32LE(24);
    if (parts < 1 || parts > 8) throw new OracleError(7, 'device-state part count');
    let total = 64 + 16 * parts;
    for (let i = 0; i < parts; i++) total += Number(rec.readBigUInt64LE(64 + 16 * i + 8));
    if (total !== rec.length) throw new OracleError(7, 'device-state parts do not end at the record end');
    const stored = rec.readBigUInt64LE(32);
    rec.fill(0, 32, 40);
    if (xxh3(rec) !== stored) throw new OracleError(7, 'device-state checksum');
    deviceState = ds;
    used.push([ds, fileSize]);
  }
  // rule 5
  blocks.forEach((b, i) => {
    const bitmap = f.subarray(b.bitmapOffset, b.bitmapOffset + bitmapBytes(b));
    const csums = f.subarray(b.checksumsOffset, b.checksumsOffset + 8 * b.pages);
    if (xxh3(Buffer.concat([bitmap, csums])) !== sums[i]) throw new OracleError(5, `${b.name}: metadata checksum`);
    for (let bit = 0; bit < bitmap.length * 8; bit++) {
      if (!(bitmap[bit >> 3]! & (1 << (bit & 7)))) continue;
      if (bit >= b.pages) throw new OracleError(5, `${b.name}: bit ${bit} past the last page`);
      b.present.push(bit);
    }
    if (b.present.length !== b.presentPages)
      throw new OracleError(5, `${b.name}: popcount ${b.present.length} != ${b.presentPages}`);
    const set = new Set(b.present);
    for (let p = 0; p < b.pages; p++) {
      if (!set.has(p) && csums.readBigUInt64LE(8 * p) !== 0n)
        throw new OracleError(5, `${b.name}: absent page ${p} has a checksum`);
    }
  });
  // rule 6
  if (opts.pages !== false) {
    for (const b of blocks) {
      const got = xxh3Many(
        b.present.map((p) => f.subarray(b.pagesOffset + p * b.pageSize, b.pagesOffset + (p + 1) * b.pageSize)),
      );
      b.present.forEach((p, k) => {
        if (got[k] !== f.readBigUInt64LE(b.checksumsOffset + 8 * p))
          throw new OracleError(6, `${b.name}: page ${p} checksum`);
      });
      const set = new Set(b.present);
      for (let p = 0; p < b.pages; p++) {
        if (set.has(p)) continue;
        if (f.subarray(b.pagesOffset + p * b.pageSize, b.pagesOffset + (p + 1) * b.pageSize).some((v) => v !== 0)) {
          throw new OracleError(6, `${b.name}: absent page ${p} is not zero`);
        }
      }
    }
    // every byte outside the regions is padding and reads as zero
    let pos = 0;
    for (const [s, e] of [...used, [fileSize, fileSize] as [number, number]]) {
      if (s > pos && f.subarray(pos, s).some((v) => v !== 0)) throw new OracleError(6, `padding at ${pos} is not zero`);
      pos = Math.max(pos, e);
    }
  }
  return {
    flags,
    complete: (flags & 1) !== 0,
    updating: (flags & 2) !== 0,
    metadataEnd,
    fileSize,
    blocks,
    ...(deviceState !== undefined ? { deviceState } : {}),
  };
}

/** The content of a block as the snapshot describes it (absent pages are zero). */
export function oracleBlockData(file: string, snap: OracleSnapshot, name: string): Buffer {
  const b = snap.blocks.find((x) => x.name === name);
  if (!b) throw new Error(`no block ${name}`);
  const f = fs.readFileSync(file);
  const out = Buffer.alloc(b.length);
  for (const p of b.present)
    f.copy(out, p * b.pageSize, b.pagesOffset + p * b.pageSize, b.pagesOffset + (p + 1) * b.pageSize);
  return out;
}
