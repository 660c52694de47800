/** `fixedram push FILE s3://BUCKET/KEY`: a snapshot file up to object storage (docs/s3.md). */
import type { S3CommandOptions } from '../../s3/commands';
import type { PushResult } from '../../s3/transfer';
import { defineCommand, given } from '../command';
import { s3EndpointOption } from '../options';
import { s3PushLine } from '../human';

interface Flags {
  s3Endpoint?: string;
}
type Options = S3CommandOptions & { file: string; url: string; channels?: number; signal?: AbortSignal };
type Result = PushResult & { command: 'push'; file: string };

export default defineCommand<Flags, Options, Result>({
  name: 'push',
  description: 'upload a snapshot file to s3://BUCKET/KEY: only chunks with data, only those the bucket lacks',
  globals: { channels: true },
  define: (cmd) => {
    cmd.argument('<file>', 'snapshot file').argument('<url>', 's3://BUCKET/KEY').addOption(s3EndpointOption(''));
  },
  options: ([file, url], o, ctx) => ({
    file: file!,
    url: url!,
    ...given(o, 's3Endpoint', 'channels'),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
  }),
  run: async (o) => (await import('../../s3/commands')).pushCommand(o.file, o.url, o),
  json: (r) => {
    const { command: _c, url, file, ...rest } = r;
    return { snapshot: url, source: file, format: 'fixedram', ...rest };
  },
  print: (r, out) => {
    out.write(`pushed ${r.file} to ${r.url}\n${s3PushLine(r)}\n`);
  },
});
