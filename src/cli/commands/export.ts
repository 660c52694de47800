/** `fixedram export`. */
import { InvalidArgumentError } from 'commander';
import type { ExportFormat, ExportOptions, ExportResult } from '../../export';
import { defineCommand, given, withContext } from '../command';
import { noFsyncOption } from '../options';
import { jsonBlock, mib, plural, rate, sum } from '../human';
import { blockTotals } from './totals';

interface Flags {
  output: string;
  format?: ExportFormat;
  fsync: boolean;
}

const parseFormat = (v: string): ExportFormat => {
  if (v !== 'qemu' && v !== 'libvirt') throw new InvalidArgumentError(`expected qemu or libvirt (got '${v}')`);
  return v;
};

export default defineCommand<Flags, ExportOptions, ExportResult>({
  name: 'export',
  description:
    'write a QEMU mapped-ram migration file (or libvirt save image) that QEMU restores, from a snapshot with device state',
  globals: { channels: true },
  define: (cmd) => {
    cmd
      .argument('<snapshot>', "fixedram snapshot holding a VM's device state (from convert or vm save)")
      .requiredOption('-o, --output <file>', 'file to write (atomically)')
      .option(
        '--format <format>',
        'qemu (a mapped-ram migration file) or libvirt (a sparse save image); ' +
          'default: libvirt when the snapshot came from a libvirt save image, else qemu',
        parseFormat,
      )
      .addOption(noFsyncOption('the output'))
      .addHelpText(
        'after',
        '\nRestore with QEMU: start it with the same machine and devices plus -incoming defer, enable the ' +
          'mapped-ram capability (multifd optional), then migrate-incoming file:FILE. A libvirt image: virsh restore FILE.',
      );
  },
  options: ([file], o, ctx) => ({
    snapshot: file!,
    output: o.output,
    fsync: o.fsync,
    ...(o.format ? { format: o.format } : {}),
    ...given(o, 'channels'),
    ...withContext(ctx),
  }),
  run: async (o) => (await import('../../export')).exportSnapshot(o),
  json: (r) => {
    const { command: _c, snapshot, output, outputFormat, blocks, ...rest } = r;
    return {
      snapshot,
      format: 'fixedram',
      output,
      outputFormat,
      ...blockTotals(blocks),
      blocks: blocks.map(jsonBlock),
      ...rest,
    };
  },
  print: (r, out) => {
    const bytes = sum(r.blocks, (b) => b.length);
    out.write(
      `exported ${r.snapshot} to ${r.output} (${r.outputFormat === 'libvirt-save-image' ? 'libvirt save image' : 'QEMU mapped-ram file'}, ` +
        `${r.machineType}): ${plural(r.blocks.length, 'block')} (${mib(bytes)})\n`,
    );
    for (const b of r.blocks) {
      out.write(`  ${b.name}: ${b.pages} pages of ${b.pageSize} B, ${b.presentPages} present, ${b.zeroPages} zero\n`);
    }
    out.write(
      `  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s (${rate(bytes, r.seconds)}), ${plural(r.channels, 'channel')}\n`,
    );
  },
});
