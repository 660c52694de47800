/** `fixedram save` (and `save --update`). */
import type { BlockArg } from '../../block-args';
import { ExitCode } from '../../errors';
import type { SaveOptions, SaveResult } from '../../save';
import type { S3CommandOptions, S3SaveResult } from '../../s3/commands';
import type { UpdateOptions, UpdateResult } from '../../update';
import { defineCommand, given, withContext } from '../command';
import { jsonBlock, mib, plural, rate, s3PushLine, sum } from '../human';
import { collectBlock, directIoOption, noFsyncOption, parseSize, s3EndpointOption } from '../options';
import { blockTotals } from './totals';

interface Flags {
  output: string;
  block?: BlockArg[];
  pageSize?: number;
  fsync: boolean;
  update?: boolean;
  directIo?: boolean;
  allowDevice?: boolean;
  s3Endpoint?: string;
}
type Options =
  | { update: false; save: SaveOptions }
  | { update: true; save: UpdateOptions }
  | { s3: true; update: boolean; save: SaveOptions & S3CommandOptions };
type Result =
  { update: false; r: SaveResult } | { update: true; r: UpdateResult } | { s3: true; update: boolean; r: S3SaveResult };

export default defineCommand<Flags, Options, Result>({
  name: 'save',
  description: 'snapshot RAM block files into one file (written atomically)',
  globals: { channels: true, followSymlinks: true },
  define: (cmd) => {
    cmd
      .requiredOption(
        '-o, --output <file>',
        'snapshot file to write (a regular file or nothing; created 0600, a re-save keeps its mode and owner)',
      )
      .option('-b, --block <name=path>', 'a block: its name and file (repeat for more)', collectBlock)
      .option('--page-size <bytes>', 'page size (default 4096, the huge page size on hugetlbfs)', parseSize)
      .addOption(noFsyncOption('the snapshot'))
      .option('--update', 'refresh an existing snapshot in place, writing only the pages that changed')
      .addOption(directIoOption('write page data'))
      .option('--allow-device', 'accept block devices as block files')
      .addOption(s3EndpointOption(' for -o s3://BUCKET/KEY'));
  },
  options: (_args, o, ctx) => {
    const common = {
      output: o.output,
      blocks: o.block ?? [],
      fsync: o.fsync,
      followSymlinks: o.followSymlinks ?? false,
      allowDevice: o.allowDevice ?? false,
      ...given(o, 'channels', 'pageSize'),
      ...withContext(ctx),
    };
    if (o.output.startsWith('s3://')) {
      return {
        s3: true,
        update: o.update ?? false,
        save: {
          ...common,
          ...(o.directIo ? { directIo: true } : {}),
          ...given(o, 's3Endpoint'),
        },
      };
    }
    return o.update
      ? { update: true, save: { ...common, ...(ctx.team ? { team: ctx.team } : {}) } }
      : { update: false, save: { ...common, ...(o.directIo ? { directIo: true } : {}) } };
  },
  run: async (o) =>
    's3' in o
      ? {
          s3: true,
          update: o.update,
          r: await (await import('../../s3/commands')).saveS3({ ...o.save, update: o.update }),
        }
      : o.update
        ? { update: true, r: await (await import('../../update')).update(o.save) }
        : { update: false, r: await (await import('../../save')).save(o.save) },
  json: (res) => {
    const update = res.update;
    const { command: _c, output, blocks, ...rest } = res.r;
    return {
      snapshot: output,
      format: 'fixedram',
      update,
      ...blockTotals(blocks),
      blocks: blocks.map(jsonBlock),
      ...rest,
    };
  },
  print: (res, out) => {
    if ('s3' in res) {
      printSaved(res.r, out);
      out.write(`${s3PushLine(res.r.s3)}\n`);
      return;
    }
    if (res.update) {
      const r = res.r;
      out.write(
        `updated ${r.output} in place${r.repaired ? ' (repaired an interrupted update: every page rewritten)' : ''}\n`,
      );
      out.write(
        `  ${r.pagesChecked} pages checked: ${r.pagesWritten} written, ${r.pagesPunched} punched (now zero), ` +
          `${r.pagesUnchanged} unchanged; ${r.presentPages} present\n`,
      );
      out.write(`  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s, ${plural(r.channels, 'channel')}\n`);
      return;
    }
    printSaved(res.r, out);
  },
  status: () => ExitCode.ok,
});

function printSaved(r: SaveResult, out: NodeJS.WritableStream): void {
  const bytes = sum(r.blocks, (b) => b.length);
  out.write(`saved ${plural(r.blocks.length, 'block')} (${mib(bytes)}) to ${r.output}\n`);
  for (const b of r.blocks) {
    out.write(`  ${b.name}: ${b.pages} pages of ${b.pageSize} B, ${b.presentPages} present, ${b.zeroPages} zero\n`);
  }
  out.write(
    `  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s (${rate(bytes, r.seconds)}), ${plural(r.channels, 'channel')}\n`,
  );
}
