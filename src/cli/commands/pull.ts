/** `fixedram pull s3://BUCKET/KEY FILE`: a snapshot from object storage into a file (docs/s3.md). */
import type { S3CommandOptions } from '../../s3/commands';
import type { PullResult } from '../../s3/transfer';
import { defineCommand, given } from '../command';
import { noFsyncOption, s3EndpointOption } from '../options';
import { mib, plural, rate } from '../human';

interface Flags {
  s3Endpoint?: string;
  fsync: boolean;
}
type Options = S3CommandOptions & {
  url: string;
  file: string;
  channels?: number;
  signal?: AbortSignal;
  fsync: boolean;
};
type Result = PullResult & { command: 'pull'; file: string };

export default defineCommand<Flags, Options, Result>({
  name: 'pull',
  description: 'download s3://BUCKET/KEY into a snapshot file (byte-exact, written atomically; zero pages stay holes)',
  globals: { channels: true },
  define: (cmd) => {
    cmd
      .argument('<url>', 's3://BUCKET/KEY')
      .argument('<file>', 'snapshot file to write')
      .addOption(noFsyncOption('the file'))
      .addOption(s3EndpointOption(''));
  },
  options: ([url, file], o, ctx) => ({
    url: url!,
    file: file!,
    fsync: o.fsync,
    ...given(o, 's3Endpoint', 'channels'),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
  }),
  run: async (o) => (await import('../../s3/commands')).pullCommand(o.url, o.file, o),
  json: (r) => {
    const { command: _c, url, file, ...rest } = r;
    return { snapshot: file, source: url, format: 'fixedram', ...rest };
  },
  print: (r, out) => {
    out.write(
      `pulled ${r.url} to ${r.file}: ${mib(r.size)}, ${plural(r.chunksFetched, 'object')} (${mib(r.bytesFetched)}) ` +
        `in ${r.seconds.toFixed(2)} s (${rate(r.bytesFetched, r.seconds)}), ${plural(r.channels, 'channel')}\n`,
    );
  },
});
