import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeBlockName, encodeBlockName } from '../src/block-names';
import {
  decodeHeader, encodeHeader, kFlagComplete, kHeaderBytes, kPagesAlign, packBitmap, planLayout, unpackBitmap,
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
    const layout = planLayout([{ name: 'mem0', length: 8192, pageSize: 4096 }, { name: '/rom@etc/x', length: 0, pageSize: 4096 }]);
    const buf = encodeHeader(layout, kFlagComplete, [1, 0], [123n, 0n], hash64);
    const file = Buffer.alloc(layout.fileSize);
    buf.copy(file);
    const h = decodeHeader(file, file.length, hash64);
    assert.deepEqual(h.blocks.map((b) => [b.name, b.length, b.pagesOffset]), layout.blocks.map((b) => [b.name, b.length, b.pagesOffset]));
    assert.deepEqual(h.presentPages, [1, 0]);
    assert.equal(h.flags, kFlagComplete);
    file[kHeaderBytes + 70] ^= 1;
    assert.throws(() => decodeHeader(file, file.length, hash64), { code: 'ERR_SNAPSHOT_INVALID', message: /header checksum/ });
  });

  it('reports a short file as truncated with the region it cuts', () => {
    const layout = planLayout([{ name: 'mem0', length: 4 << 20, pageSize: 4096 }]);
    const buf = encodeHeader(layout, kFlagComplete, [0], [0n], hash64);
    assert.throws(() => decodeHeader(buf, layout.fileSize - 1, hash64),
      { code: 'ERR_SNAPSHOT_TRUNCATED', message: /inside the pages of block 'mem0'/ });
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
    assert.throws(() => unpackBitmap(bm, 70, new Uint8Array(70), 'x', 100), { code: 'ERR_SNAPSHOT_INVALID', message: /bit 70/ });
  });
});

describe('block name encoding for load --dir', () => {
  const names = ['mem0', '0000:00:01.0/vga.vram', '/rom@etc/acpi/tables', '..', '.', '.hidden', 'a%2Fb', 'a/b', 'ä€',
    'x'.repeat(255), '/'.repeat(255), 'a+b', ' ', '-'];
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
