/**
 * The object-storage bench (issue 15): fixedram to and from a real S3 endpoint (Ceph RGW from
 * .ci/ceph-up) against rclone copying the equivalent local snapshot file to the same bucket and
 * back, in one run, interleaved, medians. Not run in CI.
 *
 *   node dist/bench/s3.js [--size 2G] [--runs 3] [--dir DIR] [--endpoint URL]
 *
 * Needs: the RGW (S3 user of .ci/ceph-up, or AWS_* in the environment) and `rclone` (Debian package).
 * Untimed between runs: the run's objects are deleted (the store is small) and inputs evicted.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { kDefaultMix, makeImage, mutateImage } from './image';
import { evict, measure, median, run, type RunResult } from './measure';
import { fmt, GiB, MiB, plainTable } from './report';

const root = path.resolve(__dirname, '..', '..');
const bin = path.join(root, 'bin', 'fixedram.js');

function env(endpoint: string, tmp: string): NodeJS.ProcessEnv {
  // rclone's SDK refuses a custom CA bundle with its own HTTP transport; the endpoint is plain http
  const { AWS_CA_BUNDLE: _ca, ...rest } = process.env;
  return {
    ...rest,
    AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID ?? 'FXACCESSKEY',
    AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY ?? 'FXSECRETKEY',
    AWS_REGION: process.env.AWS_REGION ?? 'us-east-1',
    AWS_ENDPOINT_URL: endpoint,
    AWS_EC2_METADATA_DISABLED: 'true',
    TMPDIR: tmp,
    RCLONE_CONFIG_RGW_TYPE: 's3',
    RCLONE_CONFIG_RGW_PROVIDER: 'Ceph',
    RCLONE_CONFIG_RGW_ENDPOINT: endpoint,
    RCLONE_CONFIG_RGW_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID ?? 'FXACCESSKEY',
    RCLONE_CONFIG_RGW_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY ?? 'FXSECRETKEY',
    RCLONE_CONFIG_RGW_REGION: 'us-east-1',
    RCLONE_CONFIG_RGW_FORCE_PATH_STYLE: 'true',
  };
}

interface Case {
  key: string;
  label: string;
  argv: string[];
  prepare?: () => void;
}

export interface S3BenchResult {
  table: string;
  targets: string[];
}

export async function s3Bench(o: {
  size: number;
  runs: number;
  dir: string;
  endpoint: string;
  log: (s: string) => void;
}): Promise<S3BenchResult> {
  const work = fs.mkdtempSync(path.join(o.dir, 'fixedram-s3bench.'));
  const shm = fs.mkdtempSync('/dev/shm/fixedram-s3bench.');
  const e = env(o.endpoint, work);
  const sh = (argv: string[]): { status: number; stdout: string; stderr: string } => {
    const r = run(
      [
        'env',
        '-u',
        'AWS_CA_BUNDLE',
        ...Object.entries(e)
          .filter(([k]) => /^(AWS_|RCLONE_|TMPDIR)/.test(k))
          .map(([k, v]) => `${k}=${v}`),
        ...argv,
      ],
      { allowFail: true },
    );
    return r;
  };
  const must = (argv: string[]): { stdout: string } => {
    const r = sh(argv);
    if (r.status !== 0) throw new Error(`${argv.slice(1, 3).join(' ')} failed: ${r.stderr.trim()}`);
    return r;
  };
  const bucket = `fixedram-bench-${process.pid}`;
  try {
    if (sh(['rclone', 'mkdir', `rgw:${bucket}`]).status !== 0)
      throw new Error('rclone mkdir failed: is the RGW up and rclone installed?');
    const img = path.join(shm, 'ram');
    o.log(`s3 bench: making a ${fmt(o.size / GiB)} GiB image`);
    makeImage(img, o.size, kDefaultMix, 1);
    const snap = path.join(work, 'local.fxr');
    run([process.execPath, bin, 'save', '-o', snap, '-b', `ram=${img}`]);
    const purge = (prefix: string): void => {
      sh(['rclone', 'delete', `rgw:${bucket}/${prefix}`]);
      sh(['rclone', 'deletefile', `rgw:${bucket}/${prefix}`]);
    };
    const cephConf = path.join(process.env.FIXEDRAM_CEPH_DIR ?? '/var/tmp/fixedram-ceph', 'ceph.conf');
    const wipeAll = (): void => {
      sh(['rclone', 'delete', `rgw:${bucket}`]);
      // RGW frees the tails of deleted objects (rclone's multipart parts) only after hours; the
      // small store of .ci/ceph-up would fill up: collect them now (untimed)
      if (fs.existsSync(cephConf))
        run(['env', `CEPH_CONF=${cephConf}`, 'radosgw-admin', 'gc', 'process', '--include-all'], { allowFail: true });
    };
    const cases: Case[] = [];
    for (const j of [1, 2, 4]) {
      cases.push({
        key: `save-j${j}`,
        label: `fixedram save -o s3:// -j ${j}`,
        argv: [
          process.execPath,
          bin,
          'save',
          '-o',
          `s3://${bucket}/fx`,
          '-b',
          `ram=${img}`,
          '-j',
          String(j),
          '--json',
          '--progress',
          'none',
        ],
        prepare: () => {
          wipeAll();
          evict([img]);
        },
      });
    }
    cases.push({
      key: 'rclone-up',
      label: 'rclone copyto (upload the snapshot file)',
      argv: ['env', ...envArgs(e), 'rclone', 'copyto', snap, `rgw:${bucket}/rc`],
      prepare: () => {
        wipeAll();
        evict([snap]);
      },
    });
    const measured = new Map<string, { wall: number[]; extra: Record<string, number>[] }>();
    const runCases = async (list: Case[]): Promise<void> => {
      for (let r = 0; r < o.runs; r++) {
        for (const c of list) {
          c.prepare?.();
          const res: RunResult = await measure(c.argv, { env: e });
          if (res.status !== 0)
            throw new Error(`${c.label}: exit ${res.status}: ${res.stderr.trim().split('\n').slice(-2).join(' | ')}`);
          const m = measured.get(c.key) ?? { wall: [], extra: [] };
          let extra: Record<string, number> = {};
          try {
            const j = JSON.parse(res.stdout.trim().split('\n').pop() ?? '{}') as {
              s3?: { bytesUploaded?: number };
              bytesFetched?: number;
            };
            extra = { bytes: j.s3?.bytesUploaded ?? -1 };
          } catch {
            /* a peer */
          }
          m.wall.push(res.wall);
          m.extra.push(extra);
          measured.set(c.key, m);
          o.log(`${c.label}: run ${r + 1}/${o.runs}: ${res.wall.toFixed(2)} s`);
        }
      }
    };
    await runCases(cases);
    // downloads: both objects present
    wipeAll();
    must([process.execPath, bin, 'save', '-o', `s3://${bucket}/fx`, '-b', `ram=${img}`, '-j', '4']);
    sh(['rclone', 'copyto', snap, `rgw:${bucket}/rc`]);
    const loads: Case[] = [];
    const back = path.join(work, 'back.fxr');
    for (const j of [1, 2, 4]) {
      loads.push({
        key: `load-j${j}`,
        label: `fixedram load s3:// -j ${j}`,
        argv: [
          process.execPath,
          bin,
          'load',
          `s3://${bucket}/fx`,
          '-b',
          `ram=${img}`,
          '-j',
          String(j),
          '--progress',
          'none',
        ],
        prepare: () => {
          fs.rmSync(back, { force: true });
        },
      });
    }
    loads.push({
      key: 'rclone-down',
      label: 'rclone copyto (download the snapshot file)',
      argv: ['env', ...envArgs(e), 'rclone', 'copyto', `rgw:${bucket}/rc`, back],
      prepare: () => {
        fs.rmSync(back, { force: true });
      },
    });
    await runCases(loads);
    // --update of 5 % changed pages: bytes uploaded against a full save
    wipeAll();
    const full = JSON.parse(
      must([
        process.execPath,
        bin,
        'save',
        '-o',
        `s3://${bucket}/fx`,
        '-b',
        `ram=${img}`,
        '-j',
        '4',
        '--json',
      ]).stdout.trim(),
    ) as { s3: { bytesUploaded: number } };
    mutateImage(img, 0.05, 77);
    const upd = JSON.parse(
      must([
        process.execPath,
        bin,
        'save',
        '--update',
        '-o',
        `s3://${bucket}/fx`,
        '-b',
        `ram=${img}`,
        '-j',
        '4',
        '--json',
      ]).stdout.trim(),
    ) as { s3: { bytesUploaded: number; chunksUploaded: number; chunksPresent: number } };
    purge('fx');

    const med = (k: string): number => median(measured.get(k)!.wall);
    const rcUp = med('rclone-up');
    const rcDown = med('rclone-down');
    const snapBytes = fs.statSync(snap).size;
    const rows: string[][] = [];
    for (const j of [1, 2, 4]) {
      const bytes = median(measured.get(`save-j${j}`)!.extra.map((x) => x.bytes ?? -1));
      rows.push([
        `save -j ${j}`,
        fmt(med(`save-j${j}`)),
        fmt(rcUp),
        `${fmt(rcUp / med(`save-j${j}`))}×`,
        fmt(bytes / MiB, 0),
      ]);
    }
    rows.push(['rclone upload', fmt(rcUp), '', '', fmt(snapBytes / MiB, 0)]);
    for (const j of [1, 2, 4])
      rows.push([`load -j ${j}`, fmt(med(`load-j${j}`)), fmt(rcDown), `${fmt(rcDown / med(`load-j${j}`))}×`, '']);
    rows.push(['rclone download', fmt(rcDown), '', '', '']);
    const best = (p: string): number => Math.min(...[1, 2, 4].map((j) => med(`${p}-j${j}`)));
    const targets = [
      `save to S3 >= 1.5x faster than rclone upload: best ${fmt(rcUp / best('save'))}x ${rcUp / best('save') >= 1.5 ? 'PASS' : 'MISS'}`,
      `load from S3 >= 1x rclone download: best ${fmt(rcDown / best('load'))}x ${rcDown / best('load') >= 1 ? 'PASS' : 'MISS'}`,
      `--update of 5 % changed pages uploads <= 15 % of a full save: ${fmt((100 * upd.s3.bytesUploaded) / full.s3.bytesUploaded, 1)} % ` +
        `(${upd.s3.chunksUploaded} of ${upd.s3.chunksPresent} chunks) ${upd.s3.bytesUploaded <= 0.15 * full.s3.bytesUploaded ? 'PASS' : 'MISS'}`,
    ];
    const table = plainTable(
      `S3 (Ceph RGW on loopback), ${fmt(o.size / GiB)} GiB image, median of ${o.runs} runs, wall seconds`,
      ['case', 'fixedram s', 'rclone s', 'rclone/fixedram', 'MiB uploaded'],
      1,
      rows,
    );
    return { table, targets };
  } finally {
    sh(['rclone', 'purge', `rgw:${bucket}`]);
    fs.rmSync(work, { recursive: true, force: true });
    fs.rmSync(shm, { recursive: true, force: true });
  }
}

const envArgs = (e: NodeJS.ProcessEnv): string[] =>
  Object.entries(e)
    .filter(([k]) => /^(AWS_|RCLONE_|TMPDIR)/.test(k))
    .map(([k, v]) => `${k}=${v ?? ''}`);

if (require.main === module) {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '2G' },
      runs: { type: 'string', default: '3' },
      dir: { type: 'string', default: path.join(root, 'bench-out') },
      endpoint: { type: 'string', default: process.env.AWS_ENDPOINT_URL ?? 'http://127.0.0.1:7480' },
    },
  });
  const m = /^(\d+)([MG])$/.exec(values.size!);
  if (!m) throw new Error('--size: e.g. 256M or 2G');
  const size = Number(m[1]) * (m[2] === 'G' ? GiB : MiB);
  fs.mkdirSync(values.dir!, { recursive: true });
  s3Bench({
    size,
    runs: Number(values.runs),
    dir: values.dir!,
    endpoint: values.endpoint!,
    log: (s) => process.stderr.write(`${s}\n`),
  })
    .then((r) => process.stdout.write(`${r.table}\n${r.targets.map((t) => `- ${t}`).join('\n')}\n`))
    .catch((err: unknown) => {
      process.stderr.write(`s3 bench: ${(err as Error).message}\n`);
      process.exitCode = 1;
    });
}
