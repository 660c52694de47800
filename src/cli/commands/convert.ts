/** `fixedram convert`. */
import type { ConvertOptions, ConvertResult } from '../../convert';
import type { S3CommandOptions, S3ConvertResult } from '../../s3/commands';
import { defineCommand, given, withContext } from '../command';
import { directIoOption, noFsyncOption, s3EndpointOption } from '../options';
import { jsonBlock, mib, plural, rate, s3PushLine, sum } from '../human';
import { blockTotals } from './totals';

interface Flags {
  output: string;
  fsync: boolean;
  directIo?: boolean;
  s3Endpoint?: string;
}

export default defineCommand<Flags, ConvertOptions & S3CommandOptions, ConvertResult | S3ConvertResult>({
  name: 'convert',
  description: 'write a fixedram snapshot (with checksums) of the RAM blocks of a QEMU mapped-ram file',
  globals: { channels: true },
  define: (cmd) => {
    cmd
      .argument('<qemufile>', 'QEMU mapped-ram migration file (or libvirt sparse save image)')
      .requiredOption('-o, --output <file>', 'snapshot file to write (a regular file or nothing; created 0600)')
      .addOption(noFsyncOption('the snapshot'))
      .addOption(directIoOption('write page data'))
      .addOption(s3EndpointOption(' for -o s3://BUCKET/KEY'));
  },
  options: ([file], o, ctx) => ({
    input: file!,
    output: o.output,
    fsync: o.fsync,
    directIo: o.directIo ?? false,
    ...given(o, 'channels', 's3Endpoint'),
    ...withContext(ctx),
  }),
  run: async (o) =>
    o.output.startsWith('s3://')
      ? (await import('../../s3/commands')).convertS3(o)
      : (await import('../../convert')).convert(o),
  json: (r) => {
    const { command: _c, input, inputFormat, output, blocks, ...rest } = r;
    return {
      snapshot: output,
      format: 'fixedram',
      source: input,
      sourceFormat: inputFormat,
      ...blockTotals(blocks),
      blocks: blocks.map(jsonBlock),
      ...rest,
    };
  },
  print: (r, out) => {
    const bytes = sum(r.blocks, (b) => b.length);
    out.write(
      `converted ${r.input} (QEMU mapped-ram, ${r.machineType}) to ${r.output}: ${plural(r.blocks.length, 'block')} (${mib(bytes)})\n`,
    );
    for (const b of r.blocks) {
      out.write(`  ${b.name}: ${b.pages} pages of ${b.pageSize} B, ${b.presentPages} present, ${b.zeroPages} zero\n`);
    }
    if (r.deviceStateBytes)
      out.write(`  device state kept: ${r.deviceStateBytes} bytes (checked by verify, used by export)\n`);
    out.write(
      `  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s (${rate(bytes, r.seconds)}), ${plural(r.channels, 'channel')}\n`,
    );
    if ('s3' in r) out.write(`${s3PushLine(r.s3)}\n`);
  },
});
