/** `fixedram save` (and `save --update`). */
import type { BlockArg } from '../../blocks';
import { ExitCode } from '../../errors';
import type { SaveOptions, SaveResult } from '../../save';
import type { UpdateOptions, UpdateResult } from '../../update';
import { defineCommand, withContext } from '../command';
import { jsonBlock, mib, plural, rate, sum } from '../human';
import { collectBlock, parseSize } from '../options';
import { blockTotals } from './totals';

interface Flags {
  output: string; block?: BlockArg[]; pageSize?: number; fsync: boolean; update?: boolean; directIo?: boolean;
  allowDevice?: boolean;
}
type Options = { update: false; save: SaveOptions } | { update: true; save: UpdateOptions };
type Result = { update: false; r: SaveResult } | { update: true; r: UpdateResult };

export default defineCommand<Flags, Options, Result>({
  name: 'save',
  description: 'snapshot RAM block files into one file (written atomically)',
  globals: { channels: true, followSymlinks: true },
  define: (cmd) => {
    cmd.requiredOption('-o, --output <file>', 'snapshot file to write')
      .option('-b, --block <name=path>', 'a block: its name and file (repeat for more)', collectBlock)
      .option('--page-size <bytes>', 'page size (default 4096, the huge page size on hugetlbfs)', parseSize)
      .option('--no-fsync', 'do not fsync the snapshot and its directory')
      .option('--update', 'refresh an existing snapshot in place, writing only the pages that changed')
      .option('--direct-io', 'write page data with O_DIRECT (falls back to buffered I/O with a warning)')
      .option('--allow-device', 'accept block devices as block files');
  },
  options: (_args, o, ctx) => {
    const common = {
      output: o.output, blocks: o.block ?? [], fsync: o.fsync, followSymlinks: o.followSymlinks ?? false,
      allowDevice: o.allowDevice ?? false,
      ...(o.channels !== undefined ? { channels: o.channels } : {}),
      ...(o.pageSize !== undefined ? { pageSize: o.pageSize } : {}),
      ...withContext(ctx),
    };
    return o.update ? { update: true, save: common } : { update: false, save: { ...common, ...(o.directIo ? { directIo: true } : {}) } };
  },
  run: async (o) => (o.update
    ? { update: true, r: await (await import('../../update')).update(o.save) }
    : { update: false, r: await (await import('../../save')).save(o.save) }),
  json: (res) => {
    const update = res.update;
    const { command: _c, output, blocks, ...rest } = res.r;
    return { snapshot: output, format: 'fixedram', update, ...blockTotals(blocks), blocks: blocks.map(jsonBlock), ...rest };
  },
  print: (res, out) => {
    if (res.update) {
      const r = res.r;
      out.write(`updated ${r.output} in place${r.repaired ? ' (repaired an interrupted update: every page rewritten)' : ''}\n`);
      out.write(`  ${r.pagesChecked} pages checked: ${r.pagesWritten} written, ${r.pagesPunched} punched (now zero), ` +
        `${r.pagesUnchanged} unchanged; ${r.presentPages} present\n`);
      out.write(`  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s, ${plural(r.channels, 'channel')}\n`);
      return;
    }
    const r = res.r;
    const bytes = sum(r.blocks, (b) => b.length);
    out.write(`saved ${plural(r.blocks.length, 'block')} (${mib(bytes)}) to ${r.output}\n`);
    for (const b of r.blocks) {
      out.write(`  ${b.name}: ${b.pages} pages of ${b.pageSize} B, ${b.presentPages} present, ${b.zeroPages} zero\n`);
    }
    out.write(`  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s (${rate(bytes, r.seconds)}), ${plural(r.channels, 'channel')}\n`);
  },
  status: () => ExitCode.ok,
});
