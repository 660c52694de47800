/**
 * Child process of the benchmark: the floor of an update's page writes. Writes `count` distinct
 * 4 KiB pages at scattered page offsets of FILE (chosen by a seeded PRNG over the whole file,
 * written in file order, as an update writes them), one pwrite each from one thread, then
 * fdatasync: the device and file-system cost of the changed pages alone, with no reading, hashing
 * or metadata. usage: scattered-writes FILE COUNT SEED
 */
import * as fs from 'node:fs';
import { mulberry32 } from './image';

const kPage = 4096;

function main(): void {
  const [file, countArg, seedArg] = process.argv.slice(2);
  if (!file || !countArg) throw new Error('usage: scattered-writes FILE COUNT SEED');
  const fd = fs.openSync(file, 'r+');
  const pages = Math.floor(fs.fstatSync(fd).size / kPage);
  const count = Math.min(Number(countArg), pages);
  const rnd = mulberry32(Number(seedArg ?? 1));
  const picked = new Uint8Array(pages);
  for (let n = 0; n < count;) {
    const p = Math.floor((rnd() / 2 ** 32) * pages);
    if (picked[p]) continue;
    picked[p] = 1;
    n++;
  }
  const page = Buffer.alloc(kPage);
  for (let p = 0; p < pages; p++) {
    if (!picked[p]) continue;
    page.writeUInt32LE(p, 0);
    page.writeUInt32LE(rnd(), 8);
    fs.writeSync(fd, page, 0, kPage, p * kPage);
  }
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
}

main();
