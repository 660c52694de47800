/** `fixedram vm restore`: into a QEMU started with -incoming defer. */
import { Option } from 'commander';
import type { VmRestoreOptions, VmRestoreResult } from '../../vm/restore';
import { defineCommand, given, withContext } from '../command';
import { jsonBlock } from '../human';
import { blockTotals } from './totals';
import { kQmpHelp, printVm } from './vm-save';

interface Flags {
  qmp: string;
  then: 'resume' | 'pause';
  verify: boolean;
}

export default defineCommand<Flags, VmRestoreOptions, VmRestoreResult>({
  name: 'vm restore',
  description: 'restore a VM snapshot into a QEMU started with -incoming defer and the same RAM backends',
  globals: { channels: true },
  define: (cmd) => {
    cmd
      .argument('<snapshot>', 'snapshot written by fixedram vm save')
      .requiredOption('--qmp <socket>', kQmpHelp)
      .addOption(
        new Option('--then <what>', 'what the VM does afterwards').choices(['resume', 'pause']).default('resume'),
      )
      .option('--no-verify', 'do not check page checksums while loading');
  },
  options: ([file], o, ctx) => ({
    qmp: o.qmp,
    snapshot: file!,
    then: o.then,
    verify: o.verify,
    ...given(o, 'channels'),
    ...withContext(ctx),
  }),
  run: async (o) => (await import('../../vm/restore')).vmRestore(o),
  json: (r) => {
    const { command: _c, snapshot, blocks, ...rest } = r;
    return { snapshot, format: 'fixedram', ...blockTotals(blocks), blocks: blocks.map(jsonBlock), ...rest };
  },
  print: (r, out) => printVm(r, out),
});
