/**
 * Deterministic RAM images for the benchmark. A seeded PRNG (mulberry32) lays the image out in
 * runs of 1–32 pages of one kind: never-written holes, written zero pages, random pages (from a
 * 32 MiB pool of PRNG output) and text-like pages (from a 4 MiB pool of pseudo-words). Every data
 * page starts with its page index and kind, so no two data pages are equal. Pages are copied from
 * the pools into 4 MiB buffers and written with pwrite: a 2 GiB image takes a few seconds.
 */
import * as fs from 'node:fs';

export const kPage = 4096;

export interface Mix {
  /** Weights of the page kinds (normalised). */
  hole: number;
  zero: number;
  random: number;
  text: number;
}

/** Issue 2: about 35 % zero pages (of which 20 points never-written holes), 35 % random, 30 % text. */
export const kDefaultMix: Mix = { hole: 0.2, zero: 0.15, random: 0.35, text: 0.3 };
/** Issue 7: a sparse image with 5 % data, the rest holes. */
export const kSparseMix: Mix = { hole: 0.95, zero: 0, random: 0.025, text: 0.025 };
/** A dense image: every page holds data. */
export const kDenseMix: Mix = { hole: 0, zero: 0, random: 0.5, text: 0.5 };

export interface ImageStats {
  path: string;
  size: number;
  pages: number;
  holePages: number;
  zeroPages: number;
  randomPages: number;
  textPages: number;
  /** Bytes of pages that hold data (random + text). */
  dataBytes: number;
  seed: number;
}

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

let randomPool: Buffer | undefined;
let textPool: Buffer | undefined;

function pools(): { random: Buffer; text: Buffer } {
  if (!randomPool) {
    const rnd = mulberry32(0x66697865);
    const words = new Uint32Array(8 << 20); // 32 MiB
    for (let i = 0; i < words.length; i++) words[i] = rnd();
    randomPool = Buffer.from(words.buffer);
  }
  if (!textPool) {
    const rnd = mulberry32(0x74657874);
    const letters = 'etaoinshrdlucmfwypvbgkjqxz';
    const vocab: string[] = [];
    for (let i = 0; i < 2000; i++) {
      const len = 2 + (rnd() % 9);
      let w = '';
      for (let j = 0; j < len; j++) w += letters[Math.min(rnd() % 26, rnd() % 26)];
      vocab.push(w);
    }
    const parts: string[] = [];
    let size = 0;
    while (size < 4 << 20) {
      const r = rnd() % 100;
      const w = vocab[Math.min(rnd() % vocab.length, rnd() % vocab.length)]!;
      const s = r < 3 ? `${w}.\n` : r < 8 ? `${w}, ` : r < 10 ? `${w}=${rnd() % 10000} ` : `${w} `;
      parts.push(s);
      size += s.length;
    }
    textPool = Buffer.from(parts.join(''), 'latin1');
  }
  return { random: randomPool, text: textPool };
}

/** Writes a fresh image of `size` bytes at `file` (removed first) and returns what it holds. */
export function makeImage(file: string, size: number, mix: Mix, seed: number): ImageStats {
  if (size % kPage !== 0) throw new Error(`image size ${size} is not a multiple of ${kPage}`);
  const { random, text } = pools();
  const rnd = mulberry32(seed);
  const total = mix.hole + mix.zero + mix.random + mix.text;
  const cut = [mix.hole / total, (mix.hole + mix.zero) / total, (mix.hole + mix.zero + mix.random) / total];
  const pages = size / kPage;
  const stats: ImageStats = {
    path: file,
    size,
    pages,
    holePages: 0,
    zeroPages: 0,
    randomPages: 0,
    textPages: 0,
    dataBytes: 0,
    seed,
  };
  fs.rmSync(file, { force: true });
  const fd = fs.openSync(file, 'wx', 0o644);
  try {
    fs.ftruncateSync(fd, size);
    const buf = Buffer.alloc(4 << 20);
    let bufStart = -1; // page index of buf[0]; -1: empty
    let bufPages = 0;
    const flush = (): void => {
      if (bufPages > 0) {
        const len = bufPages * kPage;
        let done = 0;
        while (done < len) done += fs.writeSync(fd, buf, done, len - done, bufStart * kPage + done);
      }
      bufStart = -1;
      bufPages = 0;
    };
    const maxPages = buf.length / kPage;
    let page = 0;
    while (page < pages) {
      const u = rnd() / 2 ** 32;
      const kind = u < cut[0]! ? 0 : u < cut[1]! ? 1 : u < cut[2]! ? 2 : 3;
      const run = Math.min(1 + (rnd() % 32), pages - page);
      if (kind === 0) {
        flush();
        stats.holePages += run;
        page += run;
        continue;
      }
      for (let i = 0; i < run; i++, page++) {
        if (bufStart >= 0 && (bufStart + bufPages !== page || bufPages === maxPages)) flush();
        if (bufStart < 0) bufStart = page;
        const at = bufPages * kPage;
        bufPages++;
        if (kind === 1) {
          buf.fill(0, at, at + kPage);
          stats.zeroPages++;
          continue;
        }
        const pool = kind === 2 ? random : text;
        const off = (rnd() % ((pool.length - kPage) >>> 3)) << 3;
        pool.copy(buf, at, off, off + kPage);
        buf.writeUInt32LE(page >>> 0, at);
        buf.writeUInt32LE(((kind << 24) | (Math.floor(page / 2 ** 32) & 0xffffff)) >>> 0, at + 4);
        if (kind === 2) stats.randomPages++;
        else stats.textPages++;
      }
    }
    flush();
  } finally {
    fs.closeSync(fd);
  }
  stats.dataBytes = (stats.randomPages + stats.textPages) * kPage;
  return stats;
}

/**
 * Changes `fraction` of the pages of an image in place (issue 6): pages picked uniformly at
 * random (without repeats) get new random content. Returns the number of pages changed.
 */
export function mutateImage(file: string, fraction: number, seed: number): number {
  const { random } = pools();
  const size = fs.statSync(file).size;
  const pages = Math.floor(size / kPage);
  const want = Math.round(pages * fraction);
  const rnd = mulberry32(seed);
  const picked = new Uint8Array(pages);
  const list: number[] = [];
  while (list.length < want) {
    const p = Math.floor((rnd() / 2 ** 32) * pages);
    if (picked[p]) continue;
    picked[p] = 1;
    list.push(p);
  }
  list.sort((a, b) => a - b);
  const fd = fs.openSync(file, 'r+');
  try {
    const page = Buffer.alloc(kPage);
    for (const p of list) {
      const off = (rnd() % ((random.length - kPage) >>> 3)) << 3;
      random.copy(page, 0, off, off + kPage);
      page.writeUInt32LE(p >>> 0, 0);
      page.writeUInt32LE(seed >>> 0, 4);
      fs.writeSync(fd, page, 0, kPage, p * kPage);
    }
  } finally {
    fs.closeSync(fd);
  }
  return list.length;
}
