/** `fixedram load`. */
import type { BlockArg } from '../../block-args';
import type { LoadOptions, LoadResult } from '../../load';
import type { S3CommandOptions } from '../../s3/commands';
import { defineCommand, given, withContext } from '../command';
import { jsonBlock, mib, plural, rate, sum } from '../human';
import { collectBlock, directIoOption, s3EndpointOption } from '../options';
import { blockTotals } from './totals';

interface Flags {
  block?: BlockArg[];
  dir?: string;
  verify: boolean;
  directIo?: boolean;
  allowDevice?: boolean;
  s3Endpoint?: string;
}

export default defineCommand<Flags, LoadOptions & S3CommandOptions, LoadResult>({
  name: 'load',
  description: 'write the blocks of a snapshot (or QEMU mapped-ram file) into files',
  globals: { channels: true, followSymlinks: true },
  define: (cmd) => {
    cmd
      .argument('<file>', 'snapshot to load')
      .option('-b, --block <name=path>', 'load block NAME into PATH (repeat for more)', collectBlock)
      .option(
        '--dir <dir>',
        'load every block into DIR/<encoded name> (files 0600, directories 0700, never outside DIR)',
      )
      .option('--no-verify', 'do not check page checksums while loading')
      .addOption(directIoOption('read the snapshot'))
      .option('--allow-device', 'accept block devices as targets')
      .addOption(s3EndpointOption(' for an s3://BUCKET/KEY snapshot', 'the AWS chain'));
  },
  options: ([file], o, ctx) => ({
    snapshot: file!,
    ...(o.block ? { blocks: o.block } : {}),
    ...given(o, 'dir'),
    verify: o.verify,
    followSymlinks: o.followSymlinks ?? false,
    allowDevice: o.allowDevice ?? false,
    directIo: o.directIo ?? false,
    ...given(o, 's3Endpoint', 'channels'),
    ...withContext(ctx),
  }),
  run: async (o) =>
    o.snapshot.startsWith('s3://')
      ? (await import('../../s3/commands')).loadS3(o)
      : (await import('../../load')).load(o),
  json: (r) => {
    const { command: _c, snapshot, format, blocks, ...rest } = r;
    return { snapshot, format, ...blockTotals(blocks), blocks: blocks.map(jsonBlock), ...rest };
  },
  print: (r, out) => {
    const bytes = sum(r.blocks, (b) => b.length);
    out.write(
      `loaded ${plural(r.blocks.length, 'block')} (${mib(bytes)}) from ${r.snapshot}` +
        `${r.verified ? ', checksums verified' : ''}\n`,
    );
    for (const b of r.blocks) {
      out.write(
        `  ${b.name} -> ${b.path}: ${b.presentPages} pages present, ${b.zeroPages} zero${b.created ? ' (created)' : ''}\n`,
      );
    }
    out.write(
      `  ${mib(r.bytesRead)} read in ${r.seconds.toFixed(2)} s (${rate(bytes, r.seconds)}), ${plural(r.channels, 'channel')}\n`,
    );
  },
});
