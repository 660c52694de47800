/**
 * Mutation fuzzing of fixedram snapshots, shared by test/hostile.test.ts (property tests with a
 * fixed seed), test/fuzz-corpus.test.ts (replay of stored cases) and the long fuzz run
 * (scripts/fuzz.sh, which runs this file as a program).
 *
 * A case is a deterministic base snapshot (written by save() from stamped blocks without random
 * pages, so every byte of it is the same on every machine) plus one mutation. The oracle:
 * - verify (in process) ends in exit 0, 1 or 3: a result, or a FixedramError with exit status 3;
 *   anything else (a TypeError, a RangeError, a system error on a regular file) is a crash;
 * - a raw mutation that changes the file (a bit flip, a truncation, appended bytes, overwritten
 *   bytes) is always detected: exit 1 or 3, never 0;
 * - a "resealed" mutation (a field overwrite followed by recomputing the header or metadata
 *   checksum, to reach the checks behind the checksums) may also yield a valid file: 0, 1 or 3;
 * - inspect ends in a result or exit 3; nothing takes longer than kSlowMs.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { FixedramError } from '../../src/errors';
import { decodeHeader, kEntryBytes, kHeaderBytes, type SnapshotHeader } from '../../src/format';
import { inspect } from '../../src/inspect';
import { native } from '../../src/native';
import { save } from '../../src/save';
import { verify, type VerifyFailure } from '../../src/verify';
import { defaultKind, makeBlock, type PageKind } from './stamp';

/** A case taking longer than this (in process) counts as a hang. */
export const kSlowMs = 10_000;

// ---- base snapshots ----

export interface BaseSpec {
  pageSize: number;
  blocks: { name: string; pages: number }[];
}

/** Deterministic bases: stamped, zero and hole pages only (no random pages). */
export const kBases: Record<string, BaseSpec> = {
  // 4 KiB pages; a block crossing a 64-page bitmap word, an empty block, a block whose pages are
  // mostly the hole tail; names with '/', ':' and '.'
  mixed: {
    pageSize: 4096,
    blocks: [
      { name: 'mem0', pages: 200 },
      { name: '0000:00:01.0/vga.vram', pages: 70 },
      { name: 'empty', pages: 0 },
      { name: 'tail', pages: 5 },
    ],
  },
  // 64 KiB pages
  large: {
    pageSize: 65536,
    blocks: [
      { name: 'pc.ram', pages: 12 },
      { name: '/rom@etc/acpi/tables', pages: 2 },
    ],
  },
};

export const deterministicKind = (i: number, n: number): PageKind => {
  const k = defaultKind(i, n);
  return k === 'random' ? 'stamp' : k;
};

export interface Base {
  name: string;
  file: string;
  /** Block files the snapshot was saved from, by block name. */
  sources: Record<string, string>;
  bytes: Buffer;
  header: SnapshotHeader;
  regions: Region[];
}

export interface Region {
  what: 'header' | 'block table' | 'bitmap' | 'checksum table' | 'pages' | 'padding';
  /** Block index, for per-block regions. */
  block?: number;
  start: number;
  end: number;
}

const hash64 = (b: Uint8Array): bigint => native().hash64(b);

/** Builds a base snapshot in dir with save() (one channel, no fsync). */
export async function buildBase(dir: string, name: string): Promise<Base> {
  const spec = kBases[name];
  if (!spec) throw new RangeError(`unknown base '${name}'`);
  const sources: Record<string, string> = {};
  const blocks = spec.blocks.map((b, id) => {
    const p = path.join(dir, `${name}-${id}.ram`);
    makeBlock(p, id + 1, b.pages, { pageSize: spec.pageSize, kind: deterministicKind });
    sources[b.name] = p;
    return { name: b.name, path: p };
  });
  const file = path.join(dir, `${name}.fxr`);
  await save({ output: file, blocks, channels: 1, fsync: false, pageSize: spec.pageSize });
  const bytes = fs.readFileSync(file);
  const header = decodeHeader(bytes, bytes.length, hash64);
  return { name, file, sources, bytes, header, regions: regionsOf(header) };
}

/** Every byte range of a snapshot, padding included, in file order. */
export function regionsOf(h: SnapshotHeader): Region[] {
  const rs: Region[] = [
    { what: 'header', start: 0, end: kHeaderBytes },
    { what: 'block table', start: kHeaderBytes, end: kHeaderBytes + h.blocks.length * kEntryBytes },
  ];
  h.blocks.forEach((b, i) => {
    rs.push({ what: 'bitmap', block: i, start: b.bitmapOffset, end: b.bitmapOffset + b.bitmapBytes });
    rs.push({ what: 'checksum table', block: i, start: b.checksumsOffset, end: b.checksumsOffset + b.checksumsBytes });
    rs.push({ what: 'pages', block: i, start: b.pagesOffset, end: b.pagesOffset + b.length });
  });
  const used = rs.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  const out: Region[] = [];
  let pos = 0;
  for (const r of used) {
    if (r.start > pos) out.push({ what: 'padding', start: pos, end: r.start });
    out.push(r);
    pos = Math.max(pos, r.end);
  }
  if (pos < h.fileSize) out.push({ what: 'padding', start: pos, end: h.fileSize });
  return out;
}

// ---- mutations ----

export type Mutation =
  | { kind: 'flip'; offset: number; bit: number }
  | { kind: 'truncate'; length: number }
  | { kind: 'append'; length: number; byte: number }
  /**
   * Overwrites bytes (hex). reseal 'header' then recomputes the header checksum over the header and
   * block table (as many entries as the mutated block count says, when they fit in the file);
   * 'metadata' first recomputes block `block`'s metadata checksum over its bitmap and checksum table
   * (at the base's offsets), then the header checksum.
   */
  | { kind: 'write'; offset: number; hex: string; reseal?: 'header' | 'metadata'; block?: number }
  /**
   * A hostile header with VALID checksums: field writes, then the file is grown (sparse) or cut to
   * the largest region end the mutated table declares (fileSize set to match), every block's
   * metadata checksum is recomputed at its mutated offsets over the mutated lengths, and finally the
   * header checksum. Such a file passes every checksum, so the checks behind them (bounds, overlap,
   * sizes) and the bounded page walk are what stands between it and a crash, a hang or a huge
   * allocation.
   */
  | { kind: 'hostile'; writes: { offset: number; hex: string }[] };

/** Applies a mutation to a copy of the base's bytes (in memory). */
export function mutate(base: Base, m: Mutation): Buffer {
  let buf = Buffer.from(base.bytes);
  switch (m.kind) {
    case 'flip':
      buf[m.offset]! ^= 1 << m.bit;
      break;
    case 'truncate':
      buf = buf.subarray(0, m.length);
      break;
    case 'append':
      buf = Buffer.concat([buf, Buffer.alloc(m.length, m.byte)]);
      break;
    case 'hostile':
      for (const w of m.writes) Buffer.from(w.hex, 'hex').copy(buf, w.offset);
      break;
    case 'write': {
      const bytes = Buffer.from(m.hex, 'hex');
      bytes.copy(buf, m.offset, 0, Math.min(bytes.length, buf.length - m.offset));
      if (m.reseal === 'metadata' && m.block !== undefined) {
        const b = base.header.blocks[m.block]!;
        const meta = Buffer.concat([
          buf.subarray(b.bitmapOffset, b.bitmapOffset + b.bitmapBytes),
          buf.subarray(b.checksumsOffset, b.checksumsOffset + b.checksumsBytes),
        ]);
        buf.writeBigUInt64LE(hash64(meta), kHeaderBytes + m.block * kEntryBytes + 48);
      }
      if (m.reseal) resealHeader(buf);
      break;
    }
  }
  return buf;
}

/** Recomputes the header checksum of buf in place, when its block table fits in buf. */
export function resealHeader(buf: Buffer): void {
  const n = buf.readUInt32LE(16);
  const end = kHeaderBytes + n * kEntryBytes;
  if (n > 65536 || end > buf.length) return;
  const copy = Buffer.from(buf.subarray(0, end));
  copy.fill(0, 56, 64);
  buf.writeBigUInt64LE(hash64(copy), 56);
}

/** Whether the oracle demands that a mutation is detected (exit 1 or 3). */
export function mustDetect(base: Base, m: Mutation, mutated: Buffer): boolean {
  if ((m.kind === 'write' && m.reseal) || m.kind === 'hostile') return false;
  return !mutated.equals(base.bytes);
}

// ---- running a case ----

export interface Outcome {
  /** 0 ok, 1 integrity failure, 3 invalid; 'crash' for anything else. */
  exit: 0 | 1 | 3 | 'crash';
  code?: string;
  message: string;
  failures?: Pick<VerifyFailure, 'block' | 'page' | 'offset' | 'kind'>[];
  /** inspect's result: 'ok', 3, or 'crash: ...'. */
  inspect: string;
  ms: number;
  /** Extra milliseconds the documented cost of a hostile case allows (hashing its tables). */
  slackMs?: number;
}

function classify(err: unknown): { exit: 3 | 'crash'; code?: string; message: string } {
  if (err instanceof FixedramError && err.exitCode === 3 && err.code.startsWith('ERR_SNAPSHOT_')) {
    return { exit: 3, code: err.code, message: err.message };
  }
  const e = err as Error & { code?: unknown };
  return {
    exit: 'crash',
    ...(typeof e?.code === 'string' ? { code: e.code } : {}),
    message: `${e?.name}: ${e?.message}\n${e?.stack ?? ''}`,
  };
}

/** Runs verify and inspect on a snapshot file in process. */
export async function runFile(file: string, opts: { channels?: number } = {}): Promise<Outcome> {
  const t0 = Date.now();
  let ins: string;
  try {
    inspect(file);
    ins = 'ok';
  } catch (err) {
    const c = classify(err);
    ins = c.exit === 3 ? '3' : `crash: ${c.message}`;
  }
  try {
    const r = await verify({ snapshot: file, channels: opts.channels ?? 1, maxReported: 10 });
    return {
      exit: r.ok ? 0 : 1,
      message: r.ok ? 'ok' : r.failures[0]!.message,
      inspect: ins,
      ms: Date.now() - t0,
      failures: r.failures.map((f) => ({
        block: f.block,
        kind: f.kind,
        ...(f.page !== undefined ? { page: f.page } : {}),
        ...(f.offset !== undefined ? { offset: f.offset } : {}),
      })),
    };
  } catch (err) {
    return { ...classify(err), inspect: ins, ms: Date.now() - t0 };
  }
}

/** Writes the mutated snapshot to `work` and runs it. */
export async function runCase(base: Base, m: Mutation, work: string): Promise<{ outcome: Outcome; mutated: Buffer }> {
  const mutated = mutate(base, m);
  fs.writeFileSync(work, mutated);
  if (m.kind === 'hostile') {
    const slack = resealHostile(work);
    const outcome = await runFile(work);
    return { outcome: { ...outcome, slackMs: slack }, mutated };
  }
  return { outcome: await runFile(work), mutated };
}

/** Largest file a hostile case may declare: tmpfs holds it sparse, other file systems may refuse. */
const kMaxHostileFile = 2 ** 50;

/**
 * Makes the checksums of a hostile file valid (see the 'hostile' mutation): grows or cuts the file
 * to the regions the mutated table declares and sets fileSize, recomputes each block's metadata
 * checksum at its mutated offsets (streamed by the addon, holes not read), then the header
 * checksum. Returns the extra time the documented cost allows: hashing the tables, 9 bytes a page
 * (docs/format-v1.md, "Reader rules"), at 200 MB/s.
 */
export function resealHostile(file: string): number {
  const fd = fs.openSync(file, 'r+');
  try {
    const head = Buffer.alloc(kHeaderBytes);
    fs.readSync(fd, head, 0, kHeaderBytes, 0);
    const n = Math.min(head.readUInt32LE(16), 65536);
    const size = fs.fstatSync(fd).size;
    if (kHeaderBytes + n * kEntryBytes > size) return 0;
    const table = Buffer.alloc(kHeaderBytes + n * kEntryBytes);
    fs.readSync(fd, table, 0, table.length, 0);
    const big = (at: number): number => {
      const v = table.readBigUInt64LE(at);
      return v > BigInt(kMaxHostileFile) ? NaN : Number(v);
    };
    const metas: { entry: number; ranges: number[] }[] = [];
    let end = Math.max(table.length, big(32) || 0);
    let tableBytes = 0;
    for (let i = 0; i < n; i++) {
      const e = kHeaderBytes + i * kEntryBytes;
      const ps = table.readUInt32LE(e + 4);
      const length = big(e + 8);
      if (!(ps >= 4096 && (ps & (ps - 1)) === 0 && ps <= 2 ** 30) || !(length % ps === 0)) continue;
      const pages = length / ps;
      const bitmap = big(e + 16);
      const csums = big(e + 24);
      const pagesAt = big(e + 32);
      const ranges = [bitmap, Math.ceil(pages / 64) * 8, csums, 8 * pages];
      if (ranges.some((v) => !Number.isSafeInteger(v)) || !Number.isSafeInteger(pagesAt)) continue;
      end = Math.max(end, bitmap + ranges[1]!, csums + ranges[3]!, pagesAt + length);
      tableBytes += ranges[1]! + ranges[3]!;
      metas.push({ entry: e, ranges });
    }
    if (!(end <= kMaxHostileFile)) return 0;
    try {
      fs.ftruncateSync(fd, end);
    } catch (err) {
      // a file system that cannot hold the file (ext4 stops at 16 TiB): the case stays unsealed
      if ((err as NodeJS.ErrnoException).code === 'EFBIG') return 0;
      throw err;
    }
    table.writeBigUInt64LE(BigInt(end), 40);
    for (const m of metas) table.writeBigUInt64LE(native().hashRanges(fd, m.ranges)[0], m.entry + 48);
    resealHeader(table);
    fs.writeSync(fd, table, 0, table.length, 0);
    return tableBytes / 200_000;
  } finally {
    fs.closeSync(fd);
  }
}

/** Problems with an outcome under the oracle, or [] when it passes. */
export function oracleProblems(base: Base, m: Mutation, mutated: Buffer, o: Outcome): string[] {
  const p: string[] = [];
  if (o.exit === 'crash') p.push(`verify crashed: ${o.message}`);
  if (o.inspect !== 'ok' && o.inspect !== '3') p.push(`inspect ${o.inspect}`);
  if (mustDetect(base, m, mutated) && o.exit === 0) p.push('mutation not detected (exit 0)');
  if (o.ms > kSlowMs + (o.slackMs ?? 0)) p.push(`took ${o.ms} ms`);
  return p;
}

// ---- generators ----

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** Little-endian bytes of v in `width` bytes. */
export function le(v: bigint, width: number): string {
  const b = Buffer.alloc(width);
  for (let i = 0; i < width; i++) b[i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return b.toString('hex');
}

/** Header and block table fields: [offset, width] relative to the header or an entry. */
export const kHeaderFields: Record<string, [number, number]> = {
  version: [8, 4],
  flags: [12, 4],
  blockCount: [16, 4],
  entrySize: [20, 4],
  tableOffset: [24, 8],
  metadataEnd: [32, 8],
  fileSize: [40, 8],
  reserved: [48, 8],
};
export const kEntryFields: Record<string, [number, number]> = {
  nameLength: [0, 2],
  reserved16: [2, 2],
  pageSize: [4, 4],
  length: [8, 8],
  bitmapOffset: [16, 8],
  checksumsOffset: [24, 8],
  pagesOffset: [32, 8],
  presentPages: [40, 8],
  metadataChecksum: [48, 8],
  reserved64: [56, 8],
};

/** Values that break parsers: limits of each width, around 2^53, powers of two, off-by-ones. */
function extremes(width: number, original: bigint, fileSize: number): bigint[] {
  const max = (1n << BigInt(8 * width)) - 1n;
  const vs = [
    0n,
    1n,
    2n,
    7n,
    8n,
    255n,
    4095n,
    4096n,
    4097n,
    65535n,
    65536n,
    65537n,
    1n << 20n,
    (1n << 20n) + 8n,
    1n << 30n,
    1n << 31n,
    (1n << 32n) - 1n,
    1n << 32n,
    1n << 50n,
    (1n << 50n) + 4096n,
    (1n << 53n) - 1n,
    1n << 53n,
    (1n << 53n) + 1n,
    1n << 63n,
    max,
    max - 1n,
    original + 1n,
    original - 1n,
    original * 2n,
    original + 8n,
    original + 4096n,
    original + (1n << 20n),
    BigInt(fileSize),
    BigInt(fileSize) + 1n,
    BigInt(fileSize) - 8n,
  ];
  return [...new Set(vs.filter((v) => v >= 0n && v <= max).map(String))].map(BigInt);
}

/**
 * Hostile headers with valid checksums: one to three geometry fields of the block table (length,
 * page size, the three offsets, the present count) or of the header (metadataEnd, blockCount) set
 * to extreme or geometry-shaped values (huge lengths in whole pages, offsets moved by large aligned
 * gaps, 1 GiB pages); runCase then grows the file sparsely and recomputes every checksum.
 */
export function hostileArb(base: Base): fc.Arbitrary<Mutation> {
  const blocks = base.header.blocks.length;
  const pow = (lo: number, hi: number): fc.Arbitrary<bigint> =>
    fc.integer({ min: lo, max: hi }).map((k) => 1n << BigInt(k));
  const entryField = fc
    .tuple(
      fc.integer({ min: 0, max: Math.max(0, blocks - 1) }),
      fc.constantFrom(
        'length',
        'length',
        'pageSize',
        'bitmapOffset',
        'checksumsOffset',
        'pagesOffset',
        'pagesOffset',
        'presentPages',
      ),
    )
    .chain(([i, field]) => {
      const [o, w] = kEntryFields[field]!;
      const at = kHeaderBytes + i * kEntryBytes + o;
      const b = base.header.blocks[i]!;
      const values: fc.Arbitrary<bigint> =
        field === 'length'
          ? fc.tuple(pow(0, 38), fc.constantFrom(0n, 1n)).map(([k, d]) => (k + d) * BigInt(b.pageSize))
          : field === 'pageSize'
            ? pow(12, 30)
            : field === 'pagesOffset'
              ? fc
                  .tuple(pow(20, 49), fc.integer({ min: 0, max: 3 }))
                  .map(([g, k]) => BigInt(b.pagesOffset) + g * BigInt(k + 1))
              : field === 'presentPages'
                ? fc.constantFrom(0n, 1n, BigInt(b.pages), BigInt(b.pages) + 1n)
                : fc
                    .tuple(pow(3, 49), fc.constantFrom(0n, 8n))
                    .map(([g, d]) => BigInt(field === 'bitmapOffset' ? b.bitmapOffset : b.checksumsOffset) + g + d);
      return values.map((v) => ({ offset: at, hex: le(v & ((1n << BigInt(8 * w)) - 1n), w) }));
    });
  const headerField = fc.constantFrom('metadataEnd', 'blockCount').chain((field) => {
    const [o, w] = kHeaderFields[field]!;
    const values = field === 'blockCount' ? fc.integer({ min: 0, max: blocks + 1 }).map(BigInt) : pow(6, 49);
    return values.map((v) => ({ offset: o, hex: le(v, w) }));
  });
  return fc
    .array(fc.oneof({ weight: 4, arbitrary: entryField }, { weight: 1, arbitrary: headerField }), {
      minLength: 1,
      maxLength: 3,
    })
    .map((writes) => ({ kind: 'hostile' as const, writes }));
}

/** fast-check arbitrary of mutations of a base, biased towards every region and every field. */
export function mutationArb(base: Base): fc.Arbitrary<Mutation> {
  const size = base.bytes.length;
  const regions = base.regions;
  const inRegion = (pred: (r: Region) => boolean): fc.Arbitrary<number> => {
    const rs = regions.filter(pred);
    return fc.constantFrom(...rs).chain((r) => fc.integer({ min: r.start, max: r.end - 1 }));
  };
  const anyOffset = fc.oneof(
    { weight: 3, arbitrary: inRegion((r) => r.what === 'header' || r.what === 'block table') },
    { weight: 2, arbitrary: inRegion((r) => r.what === 'bitmap' || r.what === 'checksum table') },
    { weight: 2, arbitrary: inRegion((r) => r.what === 'pages') },
    { weight: 1, arbitrary: inRegion((r) => r.what === 'padding') },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: size - 1 }) },
  );
  const boundaries = [...new Set(regions.flatMap((r) => [r.start, r.end]))].filter((v) => v < size);
  const cut = fc.oneof(
    fc
      .constantFrom(...boundaries)
      .chain((b) => fc.integer({ min: -9, max: 9 }).map((d) => Math.min(size - 1, Math.max(0, b + d)))),
    fc.integer({ min: 0, max: size - 1 }),
  );
  const flip = fc.record({
    kind: fc.constant('flip' as const),
    offset: anyOffset,
    bit: fc.integer({ min: 0, max: 7 }),
  });
  const truncate = fc.record({ kind: fc.constant('truncate' as const), length: cut });
  const append = fc.record({
    kind: fc.constant('append' as const),
    length: fc.integer({ min: 1, max: 8192 }),
    byte: fc.constantFrom(0, 1, 0xff),
  });
  const rawWrite = fc.record({
    kind: fc.constant('write' as const),
    offset: anyOffset,
    hex: fc.uint8Array({ minLength: 1, maxLength: 16 }).map(hexOf),
  });
  const blocks = base.header.blocks.length;
  const fieldWrite = fc
    .oneof(
      fc.constantFrom(...Object.values(kHeaderFields)).map(([o, w]) => [o, w] as const),
      fc
        .tuple(fc.integer({ min: 0, max: blocks - 1 }), fc.constantFrom(...Object.values(kEntryFields)))
        .map(([i, [o, w]]) => [kHeaderBytes + i * kEntryBytes + o, w] as const),
    )
    .chain(([offset, width]) => {
      let original = 0n;
      for (let i = width - 1; i >= 0; i--) original = (original << 8n) | BigInt(base.bytes[offset + i]!);
      return fc
        .record({
          kind: fc.constant('write' as const),
          offset: fc.constant(offset),
          hex: fc.constantFrom(...extremes(width, original, size)).map((v) => le(v, width)),
          reseal: fc.constantFrom('header' as const, 'header' as const, 'header' as const, undefined),
        })
        .map((r) => {
          const { reseal, ...rest } = r;
          return reseal ? { ...rest, reseal } : rest;
        });
    });
  // a bit flipped in a bitmap or checksum table, with the metadata checksum recomputed
  const metaRegions = regions.filter((r) => (r.what === 'bitmap' || r.what === 'checksum table') && r.end > r.start);
  const metaWrite = fc.constantFrom(...metaRegions).chain((r) =>
    fc.tuple(fc.integer({ min: r.start, max: r.end - 1 }), fc.integer({ min: 0, max: 7 })).map(([offset, bit]) => ({
      kind: 'write' as const,
      offset,
      hex: le(BigInt(base.bytes[offset]! ^ (1 << bit)), 1),
      reseal: 'metadata' as const,
      block: r.block!,
    })),
  );
  return fc.oneof(
    { weight: 4, arbitrary: hostileArb(base) },
    { weight: 4, arbitrary: flip },
    { weight: 2, arbitrary: truncate },
    { weight: 1, arbitrary: append },
    { weight: 2, arbitrary: rawWrite },
    { weight: 4, arbitrary: fieldWrite },
    { weight: 2, arbitrary: metaWrite },
  );
}

// ---- the stored corpus (test/fixtures/fuzz-corpus) ----

/** What a stored case must produce; `{file}` in a message stands for the mutated file's path. */
export interface Expect {
  exit: 0 | 1 | 3;
  code?: string;
  message: string;
  failures?: Outcome['failures'];
}

export interface CorpusCase {
  id: string;
  base: string;
  mutation: Mutation;
  /** How the case was found or made. */
  origin: string;
  /** Absent for a case the fuzz run just found: then only the oracle applies. */
  expect?: Expect;
}

/** The expectation that records an outcome (paths replaced by `{file}`). */
export function expectOf(o: Outcome, file: string): Expect {
  if (o.exit === 'crash') throw new Error(`cannot record a crash: ${o.message}`);
  const message = o.message.split(file).join('{file}');
  return {
    exit: o.exit,
    ...(o.code ? { code: o.code } : {}),
    message,
    ...(o.failures?.length ? { failures: o.failures } : {}),
  };
}

/** Loads every case of a corpus directory, sorted by id. */
export function loadCorpus(dir: string): CorpusCase[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as CorpusCase);
}

/**
 * Samples `runs` mutations per base with `seed` and keeps the first case of every distinct outcome
 * (exit status, code and message with the numbers blanked): a small corpus that still reaches
 * every check the mutations reach.
 */
async function record(dir: string, out: string, bases: string[], seed: number, runs: number): Promise<number> {
  fs.mkdirSync(out, { recursive: true });
  let written = 0;
  for (const name of bases) {
    const base = await buildBase(dir, name);
    const work = path.join(dir, 'work.fxr');
    const seen = new Set<string>();
    for (const [k, m] of fc.sample(mutationArb(base), { seed, numRuns: runs }).entries()) {
      const { outcome, mutated } = await runCase(base, m, work);
      if (oracleProblems(base, m, mutated, outcome).length) continue; // the fuzz run reports those
      const key = `${outcome.exit} ${outcome.code ?? ''} ${outcome.message
        .split(work)
        .join('')
        .replace(/'[^']*'|[0-9a-f]{16}|0x[0-9a-f]+|\d+/g, 'N')}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const id = `${name}-${String(seed)}-${String(k).padStart(4, '0')}`;
      const c: CorpusCase = {
        id,
        base: name,
        mutation: m,
        origin: `fuzz-driver --record, seed ${seed}, sample ${k}`,
        expect: expectOf(outcome, work),
      };
      fs.writeFileSync(path.join(out, `${id}.json`), `${JSON.stringify(c, null, 2)}\n`);
      written++;
    }
  }
  return written;
}

// ---- the long fuzz run ----

interface Args {
  runs: number;
  seed: number;
  out?: string;
  bases: string[];
  seconds?: number;
  record?: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { runs: 2000, seed: Date.now() % 2 ** 31, bases: Object.keys(kBases) };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--runs':
        a.runs = Number(v);
        i++;
        break;
      case '--seed':
        a.seed = Number(v);
        i++;
        break;
      case '--out':
        a.out = v;
        i++;
        break;
      case '--base':
        a.bases = [v!];
        i++;
        break;
      case '--seconds':
        a.seconds = Number(v);
        i++;
        break;
      case '--record':
        a.record = v;
        i++;
        break;
      default:
        throw new Error(`fuzz-driver: unknown argument '${argv[i]}'`);
    }
  }
  return a;
}

/** Entry point of scripts/fuzz.sh. Exit status 0 when every case passes the oracle, 1 otherwise. */
export async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  // on tmpfs when there is one: hostile cases declare sparse files of up to 2^50 bytes
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'fixedram-fuzz-'));
  let failed = 0;
  try {
    if (args.record) {
      process.stderr.write(
        `fuzz: recorded ${await record(dir, args.record, args.bases, args.seed, args.runs)} cases in ${args.record}\n`,
      );
      return 0;
    }
    const deadline = args.seconds !== undefined ? Date.now() + args.seconds * 1000 : Infinity;
    for (let round = 0; Date.now() < deadline || round === 0; round++) {
      for (const name of args.bases) {
        const base = await buildBase(dir, name);
        const work = path.join(dir, 'work.fxr');
        const seed = args.seed + round;
        let count = 0;
        const details = await fc.check(
          fc.asyncProperty(mutationArb(base), async (m) => {
            count++;
            const { outcome, mutated } = await runCase(base, m, work);
            return oracleProblems(base, m, mutated, outcome).length === 0;
          }),
          { seed, numRuns: args.runs, interruptAfterTimeLimit: Math.max(1000, deadline - Date.now()) },
        );
        process.stderr.write(`fuzz: base ${name} seed ${seed}: ${count} cases, ${details.failed ? 'FAILED' : 'ok'}\n`);
        if (details.failed && details.counterexample) {
          failed++;
          const [m] = details.counterexample;
          const { outcome, mutated } = await runCase(base, m, work);
          const found = {
            base: name,
            mutation: m,
            seed,
            path: details.counterexamplePath,
            problems: oracleProblems(base, m, mutated, outcome),
            observed: outcome,
          };
          process.stderr.write(`${JSON.stringify(found, null, 2)}\n`);
          if (args.out) {
            fs.mkdirSync(args.out, { recursive: true });
            const file = path.join(args.out, `found-${name}-${seed}.json`);
            fs.writeFileSync(
              file,
              `${JSON.stringify(
                {
                  id: path.basename(file, '.json'),
                  base: name,
                  mutation: m,
                  origin: `scripts/fuzz.sh seed ${seed} (shrunk by fast-check); expect to be filled in once fixed`,
                  problems: found.problems,
                },
                null,
                2,
              )}\n`,
            );
            process.stderr.write(`fuzz: wrote ${file}\n`);
          }
        }
      }
      if (args.seconds === undefined) break;
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return failed ? 1 : 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`fuzz-driver: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 2;
    },
  );
}
