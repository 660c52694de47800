/** `fixedram vm save`: a running QEMU over QMP. */
import type { VmSaveOptions, VmSaveResult, VmThen } from '../../vm/save';
import { defineCommand, given, withContext } from '../command';
import { noFsyncOption } from '../options';
import { jsonBlock, mib, plural, sum } from '../human';
import { blockTotals } from './totals';
import { Option } from 'commander';

interface Flags {
  qmp: string;
  output: string;
  update?: boolean;
  then: VmThen;
  fsync: boolean;
}

export const kQmpHelp =
  'QEMU QMP unix socket (-qmp unix:PATH,server=on,wait=off; it serves one client at a time: ' +
  'give fixedram its own, -qmp may be repeated)';

export default defineCommand<Flags, VmSaveOptions, VmSaveResult>({
  name: 'vm save',
  description: 'stop a running QEMU VM, save its RAM and device state into one snapshot, then resume it',
  globals: { channels: true },
  define: (cmd) => {
    cmd
      .requiredOption('--qmp <socket>', kQmpHelp)
      .requiredOption('-o, --output <file>', 'snapshot file to write')
      .option('--update', 'refresh an existing snapshot of the same VM in place (changed pages only)')
      .addOption(
        new Option('--then <what>', 'what the VM does afterwards')
          .choices(['resume', 'pause', 'quit'])
          .default('resume'),
      )
      .addOption(noFsyncOption('the snapshot'))
      .addHelpText(
        'after',
        `
Guest RAM in -object memory-backend-file,share=on files is saved by fixedram itself (QEMU migrates
the device state with x-ignore-shared); other RAM through QEMU's mapped-ram migration. A failed save
resumes a VM that it stopped, unless --then pause.`,
      );
  },
  options: (_args, o, ctx) => ({
    qmp: o.qmp,
    output: o.output,
    update: o.update ?? false,
    then: o.then,
    fsync: o.fsync,
    ...given(o, 'channels'),
    ...withContext(ctx),
  }),
  run: async (o) => (await import('../../vm/save')).vmSave(o),
  json: (r) => {
    const { command: _c, output, blocks, ...rest } = r;
    return {
      snapshot: output,
      format: 'fixedram',
      update: r.pagesWritten !== undefined,
      ...blockTotals(blocks),
      blocks: blocks.map(jsonBlock),
      ...rest,
    };
  },
  print: (r, out) => printVm(r, out),
});

/** The human summary of vm save and vm restore. */
export function printVm(
  r: VmSaveResult | import('../../vm/restore').VmRestoreResult,
  out: NodeJS.WritableStream,
): void {
  const bytes = sum(r.blocks, (b) => b.length);
  out.write(
    r.command === 'vm save'
      ? `saved the VM (QEMU ${r.qemuVersion}, ${r.mode} RAM) to ${r.output}\n`
      : `restored the VM (QEMU ${r.qemuVersion}, ${r.mode} RAM) from ${r.snapshot}\n`,
  );
  for (const b of r.blocks)
    out.write(
      `  ${b.name}: ${b.length / b.pageSize} pages of ${b.pageSize} B, ${b.presentPages} present, ${b.zeroPages} zero\n`,
    );
  const upd =
    'pagesWritten' in r && r.pagesWritten !== undefined
      ? `, ${r.pagesWritten} pages written, ${r.pagesPunched} punched, ${r.pagesUnchanged} unchanged`
      : '';
  out.write(
    `  ${mib(bytes)} of RAM, ${r.deviceStateBytes} bytes of device state${upd}, ${plural(r.channels, 'channel')}, ` +
      `${r.seconds.toFixed(2)} s; ${r.downtimeSeconds !== undefined ? `downtime ${r.downtimeSeconds.toFixed(3)} s, ` : ''}then: ${r.then}\n`,
  );
}
