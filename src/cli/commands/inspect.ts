/** `fixedram inspect`. */
import type { InspectResult } from '../../inspect';
import { defineCommand, given } from '../command';
import { s3EndpointOption } from '../options';
import { jsonBlock } from '../human';
import { blockTotals } from './totals';

export default defineCommand<
  { s3Endpoint?: string },
  { snapshot: string; s3Endpoint?: string; signal?: AbortSignal },
  InspectResult
>({
  name: 'inspect',
  description: 'show the blocks and layout of a snapshot or QEMU mapped-ram file',
  globals: {},
  define: (cmd) => {
    cmd
      .argument('<file>', 'file to inspect')
      .addOption(s3EndpointOption(' for an s3://BUCKET/KEY snapshot', 'the AWS chain'));
  },
  options: ([file], o, ctx) => ({
    snapshot: file!,
    ...given(o, 's3Endpoint'),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
  }),
  run: async (o) =>
    o.snapshot.startsWith('s3://')
      ? (await import('../../s3/commands')).inspectS3(o.snapshot, o)
      : (await import('../../inspect')).inspect(o.snapshot),
  json: (r) => {
    const { path, format, fileSize, state, blocks, ...rest } = r;
    return { snapshot: path, format, fileSize, state, ...blockTotals(blocks), blocks: blocks.map(jsonBlock), ...rest };
  },
  print: (r, out) => {
    out.write(`${r.path}: ${r.format}, ${r.fileSize} bytes, ${r.state}\n`);
    if (r.stateMessage) out.write(`  ${r.stateMessage}\n`);
    for (const [k, v] of Object.entries(r)) {
      if (['format', 'path', 'fileSize', 'state', 'stateMessage', 'updateRunning', 'updaterPid', 'blocks'].includes(k))
        continue;
      // eslint-disable-next-line @typescript-eslint/no-base-to-string -- objects take the JSON branch
      out.write(`  ${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}\n`);
    }
    const rows = r.blocks.map((b) => [
      b.name,
      String(b.length),
      String(b.pageSize),
      `0x${b.bitmapOffset.toString(16)}`,
      `0x${b.pagesOffset.toString(16)}`,
      String(b.presentPages),
      String(b.zeroPages),
    ]);
    const head = ['name', 'length', 'page', 'bitmap', 'pages', 'present', 'zero'];
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    for (const row of [head, ...rows])
      out.write(`  ${row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')}\n`);
  },
});
