/**
 * The pure QEMU parser and writer on Buffers, without files: streams built by the writer from
 * random blocks, bitmaps and a synthetic device state parse back to exactly what was written;
 * every truncation is a clean exit-3 error (or an interrupted save before the END of "ram"), never
 * success; random byte changes outside page data end in success or a clean exit-3 error, never
 * another exception; a page size other than the target's is refused.
 */
import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { DeviceState } from '../src/devstate';
import { FixedramError } from '../src/errors';
import { packBitmap } from '../src/format';
import { bufferSource, parseQemu } from '../src/qemu';
import { materializeStream, planMappedRamStream, type StreamBlock } from '../src/qemu-writer';

const be32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const str8 = (s: string): Buffer => Buffer.concat([Buffer.from([Buffer.byteLength(s)]), Buffer.from(s)]);

/** Stream header + configuration section (machine type, capabilities) as QEMU writes them. */
function head(machine = 'pc-q35-10.0'): Buffer {
  return Buffer.concat([
    Buffer.from('QEVM'),
    be32(3),
    Buffer.from([7]),
    be32(machine.length),
    Buffer.from(machine),
    Buffer.from([5]),
    str8('configuration/capabilities'),
    be32(1),
    be32(1),
    str8('mapped-ram'),
  ]);
}

/** Device sections with a field of `sizes[i]` bytes (and a subsection on the first), EOF, description. */
function tail(sizes: number[]): Buffer {
  const parts: Buffer[] = [];
  const devices = sizes.map((n, i) => {
    const name = `dev${i}`;
    const sub = i === 0;
    parts.push(Buffer.from([4]), be32(10 + i), str8(name), be32(0), be32(1), Buffer.alloc(n, i + 1));
    if (sub) parts.push(Buffer.from([5]), str8(`${name}/sub`), be32(2), Buffer.alloc(3, 9));
    parts.push(Buffer.from([0x7e]), be32(10 + i));
    return {
      name,
      instance_id: 0,
      vmsd_name: name,
      version: 1,
      fields: [{ name: 'data', type: 'buffer', size: n }],
      ...(sub
        ? {
            subsections: [
              { vmsd_name: `${name}/sub`, version: 2, fields: [{ name: 'x', type: 'uint8', size: 1, array_len: 3 }] },
            ],
          }
        : {}),
    };
  });
  const json = Buffer.from(JSON.stringify({ page_size: 4096, devices }));
  return Buffer.concat([...parts, Buffer.from([0, 6]), be32(json.length), json]);
}

function deviceState(sizes: number[]): DeviceState {
  return {
    kind: 'qemu-mapped-ram',
    origin: { source: 'test', targetPageSize: 4096 },
    head: head(),
    ramSection: { sectionId: 2, instanceId: 0, version: 4, footers: true },
    tail: tail(sizes),
  };
}

interface Built {
  bytes: Buffer;
  blocks: StreamBlock[];
  present: Uint8Array[];
  ramSectionEnd: number;
  ramEnd: number;
}

/** A stream of blocks with `pages[i]` pages, page j of block i present when `bits[i][j]`. */
function build(pages: number[], bits: boolean[][], names: string[], sizes: number[]): Built {
  const blocks = pages.map((n, i) => ({ name: names[i]!, length: n * 4096, pageSize: 4096 }));
  const present = pages.map((n, i) => Uint8Array.from({ length: n }, (_, j) => (bits[i]![j] ? 1 : 0)));
  const plan = planMappedRamStream(
    deviceState(sizes),
    blocks,
    present.map((p, i) => packBitmap(p, pages[i]!)),
    { libvirt: false },
  );
  const bytes = materializeStream(plan, (i) => {
    const data = Buffer.alloc(blocks[i]!.length);
    present[i]!.forEach((p, j) => {
      if (p) data.writeUInt32LE(0xf00d0000 + i * 4096 + j, j * 4096);
    });
    return data;
  });
  const last = plan.blocks[plan.blocks.length - 1];
  const ramEnd = last ? last.pagesOffset + last.length : 0;
  return { bytes, blocks, present, ramEnd, ramSectionEnd: ramEnd + 8 + 5 + 1 + 4 + 8 + 5 };
}

const arbStream = fc
  .record({
    pages: fc.array(fc.integer({ min: 1, max: 70 }), { minLength: 1, maxLength: 4 }),
    seed: fc.array(fc.boolean(), { minLength: 70, maxLength: 70 }),
    sizes: fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 4 }),
  })
  .map(({ pages, seed, sizes }) =>
    build(
      pages,
      pages.map((n, i) => Array.from({ length: n }, (_, j) => seed[(i * 7 + j) % 70]!)),
      pages.map((_, i) => [`pc.ram`, '0000:00:01.0/vga.vram', '/rom@etc/acpi/tables', `blk-${i}-é`][i]!),
      sizes,
    ),
  );

const isCleanError = (err: unknown): boolean => err instanceof FixedramError && err.exitCode === 3;

describe('QEMU stream parser and writer (pure, on Buffers)', () => {
  it('what the writer builds parses back to the same blocks, bitmaps, device-state parts and section count', () => {
    fc.assert(
      fc.property(arbStream, (s) => {
        const p = parseQemu(bufferSource(s.bytes));
        assert.equal(p.incomplete, undefined);
        assert.deepEqual(
          p.blocks.map((b) => [b.name, b.length, b.pageSize, b.pagesOffset % (1 << 20)]),
          s.blocks.map((b) => [b.name, b.length, 4096, 0]),
        );
        p.blocks.forEach((b, i) =>
          assert.equal(
            b.presentPages,
            s.present[i]!.reduce((a, v) => a + v, 0),
          ),
        );
        assert.equal(p.details.ramSectionEnd, s.ramSectionEnd);
        assert.ok(p.parts);
        assert.ok(s.bytes.subarray(p.parts.head.offset, p.parts.head.offset + p.parts.head.length).equals(head()));
        assert.equal(p.parts.tail.offset + p.parts.tail.length, s.bytes.length);
      }),
      { numRuns: 60, seed: 12 },
    );
  });

  it('every truncation is a clean exit-3 error, or an interrupted save when cut between the RAM and the END of "ram"; never success', () => {
    fc.assert(
      fc.property(arbStream, fc.double({ min: 0, max: 1, noNaN: true }), (s, f) => {
        const cut = Math.min(s.bytes.length - 1, Math.floor(f * s.bytes.length));
        let p: ReturnType<typeof parseQemu> | undefined;
        try {
          p = parseQemu(bufferSource(s.bytes.subarray(0, cut)));
        } catch (err) {
          assert.ok(isCleanError(err), `cut ${cut}: ${String(err)}`);
          return;
        }
        assert.ok(p.incomplete, `cut at ${cut} of ${s.bytes.length} parsed as complete`);
        assert.ok(
          cut >= s.ramEnd && cut < s.ramSectionEnd,
          `cut ${cut}: incomplete outside [${s.ramEnd}, ${s.ramSectionEnd})`,
        );
      }),
      { numRuns: 300, seed: 13 },
    );
  });

  it('the region after the RAM is checked to its last byte: each cut there is refused', () => {
    const s = build([3], [[true, false, true]], ['mem0'], [40, 0, 7]);
    for (let cut = s.ramSectionEnd; cut < s.bytes.length; cut++) {
      assert.throws(() => parseQemu(bufferSource(s.bytes.subarray(0, cut))), isCleanError, `cut ${cut}`);
    }
  });

  it('random byte changes outside page data end in success or a clean exit-3 error, never another exception', () => {
    fc.assert(
      fc.property(
        arbStream,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }),
        (s, edits) => {
          const bytes = Buffer.from(s.bytes);
          const p0 = parseQemu(bufferSource(bytes));
          const meta: number[] = [];
          // offsets outside every page region
          const regions = p0.blocks.map((b) => [b.pagesOffset, b.pagesOffset + b.length] as const);
          for (let o = 0; o < bytes.length; o += 1) if (!regions.some(([a, z]) => o >= a && o < z)) meta.push(o);
          for (const [k, x] of edits) bytes[meta[k % meta.length]!]! ^= x;
          try {
            parseQemu(bufferSource(bytes));
          } catch (err) {
            assert.ok(isCleanError(err), String(err));
          }
        },
      ),
      { numRuns: 150, seed: 14 },
    );
  });

  it('a page size other than the target page size is refused (exit 3), naming the block and both sizes', () => {
    const s = build([2], [[true, true]], ['mem0'], [5]);
    const p = parseQemu(bufferSource(s.bytes));
    const bytes = Buffer.from(s.bytes);
    bytes.writeBigUInt64BE(8192n, p.blocks[0]!.headerOffset + 4);
    assert.throws(
      () => parseQemu(bufferSource(bytes)),
      (e: unknown) =>
        isCleanError(e) &&
        /block 'mem0' page size 8192 differs from the target page size 4096/.test((e as Error).message),
    );
  });

  it('the device description must account for every section byte: one byte more or less in a section is refused', () => {
    const s = build([1], [[true]], ['mem0'], [16]);
    const t = tail([16]);
    const json = t.subarray(t.indexOf(Buffer.from([0, 6])) + 6);
    for (const delta of [-1, 1]) {
      const lie = Buffer.from(json.toString().replace('"size":16', `"size":${16 + delta}`));
      const bad = Buffer.concat([s.bytes.subarray(0, s.bytes.length - json.length - 4), be32(lie.length), lie]);
      assert.throws(
        () => parseQemu(bufferSource(bad)),
        (e: unknown) => isCleanError(e) && /device state:/.test((e as Error).message),
        `delta ${delta}`,
      );
    }
  });
});
