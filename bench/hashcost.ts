/**
 * Child process of the benchmark: the CPU cost of the page checksums alone. Reads the image given
 * as argv[2], packs its non-zero pages into 4 MiB buffers and times XXH3-64 (the addon's hash64,
 * the same function the channels use) over them on one thread. Prints one JSON object:
 * { hashSeconds, dataBytes }. Reading and zero detection are not timed.
 */
import * as fs from 'node:fs';
import { native } from '../src/native';

const kPage = 4096;
const kChunk = 4 << 20;

function main(): void {
  const file = process.argv[2];
  if (!file) throw new Error('usage: hashcost IMAGE');
  const hash64 = native().hash64;
  const fd = fs.openSync(file, 'r');
  const zero = Buffer.alloc(kPage);
  const inBuf = Buffer.alloc(kChunk);
  const packed = Buffer.alloc(kChunk);
  let packedLen = 0;
  let hashNs = 0n;
  let dataBytes = 0;
  let sink = 0n;
  const hashPacked = (): void => {
    if (packedLen === 0) return;
    const t0 = process.hrtime.bigint();
    sink ^= hash64(packed.subarray(0, packedLen));
    hashNs += process.hrtime.bigint() - t0;
    dataBytes += packedLen;
    packedLen = 0;
  };
  try {
    let pos = 0;
    for (;;) {
      const n = fs.readSync(fd, inBuf, 0, kChunk, pos);
      if (n <= 0) break;
      pos += n;
      for (let at = 0; at + kPage <= n; at += kPage) {
        if (inBuf.subarray(at, at + kPage).equals(zero)) continue;
        inBuf.copy(packed, packedLen, at, at + kPage);
        packedLen += kPage;
        if (packedLen === kChunk) hashPacked();
      }
    }
    hashPacked();
  } finally {
    fs.closeSync(fd);
  }
  process.stdout.write(
    `${JSON.stringify({ hashSeconds: Number(hashNs) / 1e9, dataBytes, sink: sink.toString(16) })}\n`,
  );
}

main();
