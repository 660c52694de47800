/**
 * The object layout of a snapshot on S3 (docs/s3.md): the snapshot file cut into fixed-size
 * chunks, one object per chunk that holds any non-zero byte, named by the SHA-256 of its bytes
 * (`KEY.fixedram-chunks/<sha256>`), and a manifest at `KEY` itself, written last, that lists the
 * chunks by index. Builds and parses manifest bytes; touches no file system and no network.
 * Nothing read is trusted: every field is checked before it is used.
 */
import { snapshotError } from '../errors';
import { mapBytes } from './chunk';

export const kManifestFormat = 'fixedram-s3';
/** Version 1: a chunk object holds the chunk's bytes (dense). Version 2: packed chunk objects (chunk.ts). */
export const kManifestVersion = 2;
export const kManifestVersions: readonly number[] = [1, 2];
export const kDefaultChunkBytes = 4 << 20;
export const kMinChunkBytes = 1 << 20;
export const kMaxChunkBytes = 1 << 30;
/** A manifest larger than this is refused before it is read (about 10 million chunks). */
export const kMaxManifestBytes = 1 << 30;
export const kMaxSnapshotBytes = 2 ** 52;

export interface ChunkRef {
  index: number;
  sha256: string;
  /** Bytes of the object (packed manifests); a dense chunk's object is the chunk itself. */
  bytes?: number;
}

/** One object of a patch layer: the bytes of `runs` ([offset, length] in the file), concatenated. */
export interface PatchPart {
  sha256: string;
  runs: [number, number][];
}

export interface Manifest {
  /** Chunk objects are packed (version 2: page map + present pages) rather than dense (version 1). */
  packed: boolean;
  size: number;
  chunkBytes: number;
  /** Present chunks in increasing index order; absent chunks read as zeros. */
  chunks: ChunkRef[];
  /**
   * Page-level updates, applied in order over the chunks (save --update): each layer is a list of
   * parts whose runs are disjoint; zero pages in a run make those pages zero.
   */
  patches: PatchPart[][];
}

export const kMaxPatchLayers = 64;
export const partBytes = (p: PatchPart): number => p.runs.reduce((s, [, len]) => s + len, 0);

export const chunkPrefix = (key: string): string => `${key}.fixedram-chunks/`;
export const chunkKey = (key: string, sha256: string): string => `${chunkPrefix(key)}${sha256}`;

/** Bytes in chunk `index` of a file of `size` bytes. */
export const chunkLength = (m: Pick<Manifest, 'size' | 'chunkBytes'>, index: number): number =>
  Math.min(m.chunkBytes, m.size - index * m.chunkBytes);
export const chunkCount = (m: Pick<Manifest, 'size' | 'chunkBytes'>): number => Math.ceil(m.size / m.chunkBytes);

export function checkChunkBytes(n: number): string | undefined {
  if (!Number.isSafeInteger(n) || n < kMinChunkBytes || n > kMaxChunkBytes || (n & (n - 1)) !== 0) {
    return `chunk size must be a power of two from 1 MiB to 1 GiB (got ${n})`;
  }
  return undefined;
}

export function encodeManifest(m: Manifest): Buffer {
  return Buffer.from(
    `${JSON.stringify({
      format: kManifestFormat,
      version: m.packed ? 2 : 1,
      size: m.size,
      chunkBytes: m.chunkBytes,
      chunks: m.chunks.map((c) => (m.packed ? [c.index, c.sha256, c.bytes] : [c.index, c.sha256])),
      ...(m.patches.length ? { patches: m.patches.map((layer) => layer.map((p) => [p.sha256, p.runs])) } : {}),
    })}\n`,
  );
}

/** Parses and checks a manifest; anything else is "not a fixedram snapshot on S3" (exit 3). */
export function decodeManifest(bytes: Buffer, where: string): Manifest {
  const bad = (why: string): Error =>
    snapshotError('ERR_SNAPSHOT_INVALID', `${where} is not a fixedram snapshot on S3: ${why}`);
  if (bytes.length < 2 || bytes[0] !== 0x7b) throw bad('no manifest');
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw bad('the manifest is not JSON');
  }
  const o = raw as Record<string, unknown>;
  if (typeof o !== 'object' || o === null || o.format !== kManifestFormat) throw bad('no manifest');
  if (typeof o.version !== 'number' || !kManifestVersions.includes(o.version)) {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `${where}: unsupported manifest version ${JSON.stringify(o.version)}`,
    );
  }
  const size = o.size;
  const chunkBytes = o.chunkBytes;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || size > kMaxSnapshotBytes)
    throw bad('bad size');
  if (typeof chunkBytes !== 'number' || checkChunkBytes(chunkBytes)) throw bad('bad chunk size');
  if (!Array.isArray(o.chunks)) throw bad('no chunk list');
  const count = Math.ceil(size / chunkBytes);
  if (o.chunks.length > count) throw bad('more chunks than the size holds');
  const packed = o.version === 2;
  const chunks: ChunkRef[] = [];
  let last = -1;
  for (const c of o.chunks as unknown[]) {
    if (!Array.isArray(c) || c.length !== (packed ? 3 : 2)) throw bad('bad chunk entry');
    const [index, sha256, bytes] = c as [unknown, unknown, unknown];
    if (typeof index !== 'number' || !Number.isSafeInteger(index) || index <= last || index >= count) {
      throw bad('chunk indexes out of order or range');
    }
    if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) throw bad('bad chunk checksum');
    if (packed) {
      const len = chunkLength({ size, chunkBytes }, index);
      if (
        typeof bytes !== 'number' ||
        !Number.isSafeInteger(bytes) ||
        bytes <= mapBytes(len) ||
        bytes > mapBytes(len) + len
      ) {
        throw bad('bad chunk object length');
      }
      chunks.push({ index, sha256, bytes });
    } else {
      chunks.push({ index, sha256 });
    }
    last = index;
  }
  const patches: PatchPart[][] = [];
  if (o.patches !== undefined) {
    if (!Array.isArray(o.patches) || o.patches.length > kMaxPatchLayers) throw bad('bad patch list');
    for (const layer of o.patches as unknown[]) {
      if (!Array.isArray(layer)) throw bad('bad patch layer');
      const parts: PatchPart[] = [];
      const spans: [number, number][] = [];
      for (const part of layer as unknown[]) {
        if (
          !Array.isArray(part) ||
          part.length !== 2 ||
          typeof part[0] !== 'string' ||
          !/^[0-9a-f]{64}$/.test(part[0]) ||
          !Array.isArray(part[1]) ||
          part[1].length === 0
        ) {
          throw bad('bad patch part');
        }
        const runs: [number, number][] = [];
        let total = 0;
        for (const run of part[1] as unknown[]) {
          if (!Array.isArray(run) || run.length !== 2) throw bad('bad patch run');
          const [off, len] = run as [unknown, unknown];
          if (
            typeof off !== 'number' ||
            typeof len !== 'number' ||
            !Number.isSafeInteger(off) ||
            !Number.isSafeInteger(len) ||
            off < 0 ||
            len <= 0 ||
            off + len > size
          ) {
            throw bad('patch run out of range');
          }
          total += len;
          runs.push([off, len]);
          spans.push([off, len]);
        }
        if (total > chunkBytes) throw bad('patch part larger than a chunk');
        parts.push({ sha256: part[0], runs });
      }
      // runs of one layer never overlap (they are applied in parallel)
      spans.sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < spans.length; i++)
        if (spans[i - 1]![0] + spans[i - 1]![1] > spans[i]![0]) throw bad('overlapping patch runs');
      patches.push(parts);
    }
  }
  return { packed, size, chunkBytes, chunks, patches };
}
