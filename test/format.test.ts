import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeBlockName, encodeBlockName } from '../src/block-names';
import {
  decodeHeader,
  encodeHeader,
  firstAbsentNonZero,
  kFlagComplete,
  kHeaderBytes,
  kPagesAlign,
  packBitmap,
  packBitmapCount,
  planLayout,
  unpackBitmap,
} from '../src/format';
import { native } from '../src/native';

const hash64 = (b: Uint8Array): bigint => native().hash64(b);

describe('format v1 layout', () => {
  it('places metadata first and every page region on a 1 MiB boundary, without overlap', () => {
    const layout = planLayout([
      { name: 'a', length: 0, pageSize: 4096 },
      { name: 'bb', length: 4096, pageSize: 4096 },
      { name: 'huge', length: 4 << 20, pageSize: 2 << 20 },
      { name: 'c', length: 4096 * 1000, pageSize: 4096 },
    ]);
    let prevEnd = layout.metadataEnd;
    for (const b of layout.blocks) {
      assert.equal(b.pagesOffset % kPagesAlign, 0);
      assert.ok(b.pagesOffset >= prevEnd, `${b.name} overlaps`);
      assert.equal(b.bitmapOffset % 8, 0);
      assert.equal(b.checksumsOffset, b.bitmapOffset + b.bitmapBytes);
      prevEnd = b.pagesOffset + b.length;
    }
    assert.equal(layout.fileSize, prevEnd);
    assert.equal(layout.blocks[3]!.bitmapBytes, Math.ceil(1000 / 64) * 8);
  });

  it('refuses bad names, page sizes and lengths', () => {
    assert.throws(() => planLayout([{ name: '', length: 0, pageSize: 4096 }]), /empty/);
    assert.throws(() => planLayout([{ name: 'x'.repeat(256), length: 0, pageSize: 4096 }]), /at most 255/);
    assert.throws(() => planLayout([{ name: 'a\0b', length: 0, pageSize: 4096 }]), /NUL/);
    assert.throws(() => planLayout([{ name: 'a', length: 4096, pageSize: 3000 }]), /power of two/);
    assert.throws(() => planLayout([{ name: 'a', length: 4097, pageSize: 4096 }]), /multiple/);
  });

  it('round-trips the header and block table, and checks the header checksum', () => {
    const layout = planLayout([
      { name: 'mem0', length: 8192, pageSize: 4096 },
      { name: '/rom@etc/x', length: 0, pageSize: 4096 },
    ]);
    const buf = encodeHeader(layout, kFlagComplete, [1, 0], [123n, 0n], hash64);
    const file = Buffer.alloc(layout.fileSize);
    buf.copy(file);
    const h = decodeHeader(file, file.length, hash64);
    assert.deepEqual(
      h.blocks.map((b) => [b.name, b.length, b.pagesOffset]),
      layout.blocks.map((b) => [b.name, b.length, b.pagesOffset]),
    );
    assert.deepEqual(h.presentPages, [1, 0]);
    assert.equal(h.flags, kFlagComplete);
    file[kHeaderBytes + 70] ^= 1;
    assert.throws(() => decodeHeader(file, file.length, hash64), {
      code: 'ERR_SNAPSHOT_INVALID',
      message: /header checksum/,
    });
  });

  it('reports a short file as truncated with the region it cuts', () => {
    const layout = planLayout([{ name: 'mem0', length: 4 << 20, pageSize: 4096 }]);
    const buf = encodeHeader(layout, kFlagComplete, [0], [0n], hash64);
    assert.throws(() => decodeHeader(buf, layout.fileSize - 1, hash64), {
      code: 'ERR_SNAPSHOT_TRUNCATED',
      message: /inside the pages of block 'mem0'/,
    });
  });

  it('packs bitmaps least significant bit first, and refuses bits past the end', () => {
    const present = new Uint8Array(70);
    [0, 1, 3, 63, 64, 69].forEach((p) => (present[p] = 1));
    const bm = packBitmap(present, 70);
    assert.deepEqual([...bm], [0x0b, 0, 0, 0, 0, 0, 0, 0x80, 0x21, 0, 0, 0, 0, 0, 0, 0]);
    const back = new Uint8Array(70);
    assert.equal(unpackBitmap(bm, 70, back, 'x', 0), 6);
    assert.deepEqual(back, present);
    bm[8] |= 0x40; // page 70: past the end
    assert.throws(() => unpackBitmap(bm, 70, new Uint8Array(70), 'x', 100), {
      code: 'ERR_SNAPSHOT_INVALID',
      message: /bit 70/,
    });
  });

  it('packs and unpacks (native loops) exactly as bit by bit, at every length around a byte and word edge', () => {
    // the reference: one page at a time, as the format spec says
    const refPack = (present: Uint8Array, pages: number): Uint8Array => {
      const out = new Uint8Array(Math.ceil(pages / 64) * 8);
      for (let i = 0; i < pages; i++) if (present[i]) out[i >> 3]! |= 1 << (i & 7);
      return out;
    };
    let seed = 7;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    for (const pages of [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 1000, 4099]) {
      // present values other than 1 count as present (the contract is "non-zero")
      const present = Uint8Array.from({ length: pages }, () => (rnd() < 0.5 ? 0 : 1 + Math.floor(rnd() * 255)));
      const bm = packBitmapCount(present, pages);
      assert.deepEqual([...bm.bitmap], [...refPack(present, pages)], `pages ${pages}`);
      assert.equal(bm.count, present.filter((v) => v !== 0).length, `pages ${pages}`);
      const back = new Uint8Array(pages);
      assert.equal(unpackBitmap(bm.bitmap, pages, back, 'x', 0), bm.count);
      assert.deepEqual(
        [...back],
        [...present].map((v) => (v ? 1 : 0)),
        `pages ${pages}`,
      );
      if (pages % 8 !== 0) {
        // a bit past the end in the last, partial byte is still refused
        const bad = Buffer.from(bm.bitmap);
        bad[pages >> 3]! |= 1 << (pages & 7);
        assert.throws(() => unpackBitmap(bad, pages, new Uint8Array(pages), 'x', 0), {
          message: new RegExp(`bit ${pages} `),
        });
      }
    }
  });

  it('finds the first absent page with a non-zero checksum entry, aligned or not, and none when there is none', () => {
    const pages = 1000;
    const present = Uint8Array.from({ length: pages }, (_, i) => (i % 3 === 0 || (i >= 256 && i < 320) ? 1 : 0));
    const bitmap = packBitmap(present, pages);
    for (const shift of [0, 1, 4]) {
      const backing = new Uint8Array(8 * pages + shift);
      const csums = backing.subarray(shift);
      for (let p = 0; p < pages; p++) if (present[p]) csums[8 * p + (p % 8)] = 0xa5; // present: any value
      assert.equal(firstAbsentNonZero(bitmap, csums, pages), -1);
      for (const bad of [1, 2, 322, 997, 998]) {
        assert.equal(present[bad], 0, `page ${bad} is absent`);
        csums[8 * bad + 7] = 1; // the last byte of the entry
        assert.equal(firstAbsentNonZero(bitmap, csums, pages), bad, `page ${bad}, shift ${shift}`);
        csums[8 * bad + 7] = 0;
      }
      // entries of pages past `pages` are not looked at
      assert.equal(firstAbsentNonZero(bitmap, csums, pages - 1), -1);
    }
  });
});

describe('block name encoding for load --dir', () => {
  const names = [
    'mem0',
    '0000:00:01.0/vga.vram',
    '/rom@etc/acpi/tables',
    '..',
    '.',
    '.hidden',
    'a%2Fb',
    'a/b',
    'ä€',
    'x'.repeat(255),
    '/'.repeat(255),
    'a+b',
    ' ',
    '-',
  ];
  it('never yields a path component that is empty, . or .., and never a /', () => {
    for (const n of names) {
      const enc = encodeBlockName(n);
      for (const part of enc.split('/')) {
        assert.ok(part.length > 0 && part.length <= 255, `${n}: ${part}`);
        assert.ok(!part.startsWith('.'), `${n}: ${part}`);
      }
      if (Buffer.byteLength(n) * 3 <= 200) assert.ok(!enc.includes('/'), n);
    }
  });
  it('is injective (decodes back)', () => {
    const seen = new Set<string>();
    for (const n of names) {
      const enc = encodeBlockName(n);
      assert.equal(decodeBlockName(enc), n);
      assert.ok(!seen.has(enc));
      seen.add(enc);
    }
  });
});
