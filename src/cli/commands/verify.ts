/** `fixedram verify`. */
import type { BlockArg } from '../../block-args';
import { ExitCode } from '../../errors';
import type { S3CommandOptions } from '../../s3/commands';
import type { VerifyOptions, VerifyResult } from '../../verify';
import { defineCommand, given, withContext } from '../command';
import { jsonBlock, mib, plural, rate, sum } from '../human';
import { collectBlock, parseCount, s3EndpointOption } from '../options';
import { blockTotals } from './totals';

interface Flags {
  against?: BlockArg[];
  maxFailures: number;
  s3Endpoint?: string;
}

export default defineCommand<Flags, VerifyOptions & S3CommandOptions, VerifyResult>({
  name: 'verify',
  description: 'check a snapshot: structure, every page checksum, optionally against live files',
  globals: { channels: true, followSymlinks: true },
  define: (cmd) => {
    cmd
      .argument('<file>', 'snapshot to verify')
      .option('--against <name=path>', 'compare block NAME with a live file byte for byte (repeat)', collectBlock)
      .option(
        '--max-failures <n>',
        'failures listed in detail (all are counted)',
        parseCount('--max-failures', 0, 1_000_000),
        100,
      )
      .addOption(s3EndpointOption(' for an s3://BUCKET/KEY snapshot', 'the AWS chain'));
  },
  options: ([file], o, ctx) => ({
    snapshot: file!,
    against: o.against ?? [],
    maxReported: o.maxFailures,
    followSymlinks: o.followSymlinks ?? false,
    ...given(o, 's3Endpoint', 'channels'),
    ...withContext(ctx),
  }),
  run: async (o) =>
    o.snapshot.startsWith('s3://')
      ? (await import('../../s3/commands')).verifyS3(o)
      : (await import('../../verify')).verify(o),
  json: (r) => {
    const { command: _c, ok: _ok, snapshot, format, blocks, ...rest } = r;
    return { snapshot, format, ...blockTotals(blocks), blocks: blocks.map(jsonBlock), ...rest };
  },
  print: (r, out) => {
    for (const f of r.failures) out.write(`FAIL ${f.message}\n`);
    if (r.failureCount > r.failures.length) out.write(`... and ${r.failureCount - r.failures.length} more\n`);
    const present = sum(r.blocks, (b) => b.presentPages);
    const zero = sum(r.blocks, (b) => b.zeroPages);
    const head = r.ok ? 'OK' : `FAILED: ${plural(r.failureCount, 'failure')}`;
    out.write(
      `${head}: ${r.snapshot} (${r.format}), ${plural(r.blocks.length, 'block')}, ` +
        `${present} pages present, ${zero} zero, ${mib(r.bytesChecked)} checked in ${r.seconds.toFixed(2)} s ` +
        `(${rate(r.bytesChecked, r.seconds)})${r.checksums ? '' : ', no page checksums in this format'}` +
        `${r.compared.length ? `, compared with live: ${r.compared.join(', ')}` : ''}\n`,
    );
  },
  status: (r) => (r.ok ? ExitCode.ok : ExitCode.integrity),
});
