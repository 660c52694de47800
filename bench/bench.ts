/**
 * `npm run bench`: fixedram against its peers, every peer measured in the same run on the same
 * machine, medians of N runs, a table per section with ratios, and the targets of issues 2–7 with
 * PASS/MISS. See bench/README.md.
 *
 *   node dist/bench/bench.js [--size 2G] [--runs 3] [--only save,load,...] [--dir DIR] [--json FILE]
 *                            [--sparse-size 16G] [--keep]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { kDefaultMix, kDenseMix, kSparseMix, makeImage, mutateImage, type ImageStats } from './image';
import {
  ddWriteArgv,
  evict,
  killCurrent,
  measure,
  phasesOf,
  quiesce,
  run,
  type RunResult,
  type Usage,
} from './measure';
import { QemuPeer, qemuVersion, reportedAccelerator, stopAllQemu } from './qemu';
import {
  extraMedian,
  fmt,
  GiB,
  MiB,
  plainTable,
  summarize,
  table,
  type Measured,
  type Row,
  type Target,
} from './report';

const kSections = ['save', 'load', 'verify', 'qemu', 'scaling', 'update', 'sparse', 's3', 'vm'] as const;
/** Sections that need more than this machine: run only when named with --only (s3: an S3 endpoint and rclone). */
const kOptIn: readonly string[] = ['s3'];
type Section = (typeof kSections)[number];

const root = path.resolve(__dirname, '..', '..');
const fixedram = [process.execPath, path.join(root, 'bin', 'fixedram.js')];

function parseSize(v: string): number {
  const m = /^(\d+)([kKmMgG]?)(i?[bB])?$/.exec(v);
  if (!m) throw new Error(`bad size '${v}' (e.g. 256M, 2G)`);
  return Number(m[1]) * { '': 1, k: 1024, m: MiB, g: GiB }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
}

const usage = `usage: npm run bench -- [options]
  --size SIZE         RAM image size (default 2G)
  --runs N            runs per measurement, median reported (default 3)
  --only LIST         sections, comma separated: ${kSections.join(',')} (default: all but s3)
  --dir DIR           where the on-disk outputs go; must be a real disk, not tmpfs
                      (default: <repo>/bench-out)
  --sparse-size SIZE  size of the sparse/dense images of the 'sparse' section (default 16G)
  --json FILE         also write the results as JSON
  --keep              keep the work directories (for debugging)`;

interface Options {
  size: number;
  runs: number;
  only: Set<Section>;
  dir: string;
  sparseSize: number;
  json?: string;
  keep: boolean;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '2G' },
      runs: { type: 'string', default: '3' },
      only: { type: 'string' },
      dir: { type: 'string' },
      'sparse-size': { type: 'string', default: '16G' },
      json: { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${usage}\n`);
    process.exit(0);
  }
  const only = new Set<Section>();
  for (const s of (values.only ?? kSections.filter((x) => !kOptIn.includes(x)).join(','))
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)) {
    if (!(kSections as readonly string[]).includes(s))
      throw new Error(`unknown section '${s}' (${kSections.join(', ')})`);
    only.add(s as Section);
  }
  const size = parseSize(values.size!);
  const sparseSize = parseSize(values['sparse-size']!);
  for (const [n, v] of [
    ['--size', size],
    ['--sparse-size', sparseSize],
  ] as const) {
    if (v < 16 * MiB || v % (4 * MiB) !== 0) throw new Error(`${n} must be a multiple of 4 MiB, at least 16 MiB`);
  }
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
  return {
    size,
    runs,
    only,
    sparseSize,
    keep: values.keep!,
    dir: path.resolve(values.dir ?? path.join(root, 'bench-out')),
    ...(values.json ? { json: path.resolve(values.json) } : {}),
  };
}

const log = (s: string): void => {
  process.stderr.write(`[bench] ${s}\n`);
};

// ---------------------------------------------------------------------------------------------
// work directories and cleanup

let shmDir: string | undefined;
let diskDir: string | undefined;
let keepDirs = false;
let cleaned = false;

function cleanup(): void {
  if (cleaned) return;
  cleaned = true;
  killCurrent();
  if (shmDir) stopAllQemu(shmDir);
  if (keepDirs) {
    log(`kept ${shmDir} and ${diskDir}`);
    return;
  }
  for (const d of [shmDir, diskDir]) {
    if (!d) continue;
    try {
      fs.rmSync(d, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    } catch (err) {
      log(`could not remove ${d}: ${(err as Error).message}`);
    }
  }
}

process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`);
    cleanup();
    process.exit(130);
  });
}

function fsType(dir: string): string {
  return run(['df', '--output=fstype', dir]).stdout.trim().split('\n').pop() ?? '?';
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

function memAvailable(): number {
  const m = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

// ---------------------------------------------------------------------------------------------
// cases and the result store

interface Case {
  key: string;
  label: string;
  ramBytes: number;
  /** Run before each measured run (not timed): remove outputs, evict inputs, flush the disk. */
  prepare?: () => void;
  argv?: string[];
  /** A measurement that is not one child process (QEMU). */
  custom?: () => Promise<Usage>;
  /** Parses numbers out of the command's output; throws if the result is not acceptable. */
  parse?: (r: RunResult) => Record<string, number>;
  /** Failures of a peer abort the bench; failures of fixedram are reported in the table. */
  peer?: boolean;
}

const results = new Map<string, Measured>();
const notes: string[] = [];
const get = (key: string): Measured | undefined => results.get(key);

function jsonOut(r: RunResult): Record<string, unknown> {
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return {};
  }
}

const fixedramJson = (r: RunResult): Record<string, number> => {
  const j = jsonOut(r);
  const out: Record<string, number> = {};
  for (const k of ['bytesWritten', 'bytesRead', 'bytesChecked', 'presentPages', 'zeroPages', 'seconds', 'fileSize']) {
    if (typeof j[k] === 'number') out[k] = j[k] as number;
  }
  return out;
};

/**
 * Measures every case `runs` times, interleaved (run 1 of every case, then run 2, ...) so slow
 * drifts of the machine spread over all cases. Cases measured before (same key) are reused.
 */
async function measureCases(cases: Case[], runs: number): Promise<void> {
  const todo = cases.filter((c) => !results.has(c.key));
  for (const c of todo) results.set(c.key, { key: c.key, label: c.label, ramBytes: c.ramBytes, runs: [], extra: [] });
  for (let r = 0; r < runs; r++) {
    for (const c of todo) {
      const m = results.get(c.key)!;
      if (m.error) continue;
      c.prepare?.();
      try {
        let usage: Usage;
        let extra: Record<string, number> = {};
        if (c.custom) {
          usage = await c.custom();
        } else {
          const res = await measure(c.argv!);
          if (res.status !== 0) {
            const msg = res.stderr.trim().split('\n').slice(-3).join(' | ') || `exit status ${res.status}`;
            throw new Error(`exit ${res.status}: ${msg}`);
          }
          extra = c.parse ? c.parse(res) : {};
          usage = res;
        }
        m.runs.push(usageOf(usage));
        m.extra.push(extra);
        log(
          `${c.label}: run ${r + 1}/${runs}: ${usage.wall.toFixed(3)} s, CPU ${(usage.user + usage.sys).toFixed(2)} s, ` +
            `RSS ${(usage.maxRss / MiB).toFixed(0)} MiB`,
        );
      } catch (err) {
        if (c.peer) throw new Error(`peer '${c.label}' failed: ${(err as Error).message}`, { cause: err });
        m.error = (err as Error).message;
        log(`${c.label}: FAILED: ${m.error}`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = options();
  keepDirs = o.keep;
  const started = performance.now();
  const ram = o.size;
  const ramGiB = ram / GiB;

  fs.mkdirSync(o.dir, { recursive: true });
  diskDir = fs.mkdtempSync(path.join(o.dir, 'fixedram-bench.'));
  shmDir = fs.mkdtempSync('/dev/shm/fixedram-bench.');
  const disk = diskDir;
  const shm = shmDir;
  const diskType = fsType(disk);
  if (['tmpfs', 'ramfs'].includes(diskType)) {
    log(`WARNING: --dir ${o.dir} is on ${diskType}; saves are meant to go to a real disk`);
    notes.push(`--dir is on ${diskType}, not a disk: save/load numbers do not measure a device`);
  }
  if (freeBytes(shm) < ram * 2.5)
    throw new Error(
      `/dev/shm has ${(freeBytes(shm) / GiB).toFixed(1)} GiB free; need about ${((ram * 2.5) / GiB).toFixed(1)}`,
    );
  if (freeBytes(disk) < ram * 5)
    throw new Error(
      `${o.dir} has ${(freeBytes(disk) / GiB).toFixed(1)} GiB free; need about ${((ram * 5) / GiB).toFixed(1)}`,
    );

  const has = (s: Section): boolean => o.only.has(s);
  const env = {
    date: new Date().toISOString(),
    host: os.hostname(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? '?',
    memGiB: +(os.totalmem() / GiB).toFixed(1),
    kernel: os.release(),
    node: process.version,
    disk: `${disk} (${diskType})`,
    qemu: qemuVersion()?.join('.') ?? 'not installed',
    fixedram: run([...fixedram, '--version']).stdout.trim(),
    git: run(['git', '-C', root, 'describe', '--always', '--dirty'], { allowFail: true }).stdout.trim(),
  };
  log(`work dirs: ${disk} (${diskType}), ${shm}`);

  // the image
  const img = path.join(shm, 'image.ram');
  let t = performance.now();
  const stats = makeImage(img, ram, kDefaultMix, 1);
  log(
    `image ${img}: ${sz(ram)} in ${((performance.now() - t) / 1000).toFixed(1)} s; ` +
      `${stats.holePages} hole + ${stats.zeroPages} zero + ${stats.randomPages} random + ${stats.textPages} text pages`,
  );
  const dataBytes = stats.dataBytes;
  const images: ImageStats[] = [stats];

  const out: string[] = [];
  const print = (s: string): void => {
    out.push(s);
    process.stdout.write(s);
  };
  print(
    `# fixedram benchmark\n\n${Object.entries(env)
      .map(([k, v]) => `- ${k}: ${v}`)
      .join('\n')}\n` +
      `- image: ${sz(ram)}, ${stats.pages} pages: ${pct(stats.holePages, stats.pages)} never-written holes, ` +
      `${pct(stats.zeroPages, stats.pages)} written zero pages, ${pct(stats.randomPages, stats.pages)} random, ` +
      `${pct(stats.textPages, stats.pages)} text-like; ${(dataBytes / 1e9).toFixed(2)} GB of data (seeded, deterministic)\n` +
      `- runs per measurement: ${o.runs} (median; runs of the cases in a section are interleaved)\n` +
      `- times include process start-up for child processes (node, cp, ...); QEMU is timed from its migrate command\n`,
  );

  const fx = (...args: string[]): string[] => [...fixedram, ...args, '--progress', 'none', '--json'];
  const flush = (): void => quiesce(disk);
  const rm = (...p: string[]): void => {
    for (const x of p) fs.rmSync(x, { recursive: true, force: true });
  };
  const saveOut = path.join(disk, 'save.fxr');
  const saveCase = (j: number): Case => ({
    key: `save-j${j}`,
    label: `fixedram save -j ${j}`,
    ramBytes: ram,
    prepare: () => {
      rm(saveOut);
      flush();
    },
    argv: fx('save', '-o', saveOut, '-b', `mem0=${img}`, '-j', String(j)),
    parse: fixedramJson,
  });

  // reference files on disk for load / verify / copy-back
  const refFxr = path.join(disk, 'ref.fxr');
  const refImg = path.join(disk, 'ref.img');
  const ensureRefs = (): void => {
    if (!fs.existsSync(refFxr)) {
      log('writing the reference snapshot ref.fxr (not timed)');
      run(fx('save', '-o', refFxr, '-b', `mem0=${img}`, '-j', '2'));
    }
    if (!fs.existsSync(refImg)) {
      run(['cp', '--sparse=always', img, refImg]);
      run(['sync', refImg]);
    }
  };
  const loaded = path.join(shm, 'loaded.ram');
  const loadCase = (j: number, verify = true): Case => ({
    key: `load-j${j}${verify ? '' : '-noverify'}`,
    label: `fixedram load -j ${j}${verify ? '' : ' --no-verify'}`,
    ramBytes: ram,
    prepare: () => {
      ensureRefs();
      rm(loaded);
      evict([refFxr]);
    },
    argv: fx('load', refFxr, '-b', `mem0=${loaded}`, '-j', String(j), ...(verify ? [] : ['--no-verify'])),
    parse: fixedramJson,
  });

  // ---- save (issue 2, 7)
  if (has('save')) {
    const cpOut = path.join(disk, 'cp.img');
    const ddOut = path.join(disk, 'dd.bin');
    await measureCases(
      [
        {
          key: 'cp',
          label: 'cp --sparse=always + fsync',
          ramBytes: ram,
          peer: true,
          prepare: () => {
            rm(cpOut);
            flush();
          },
          argv: ['sh', '-c', 'cp --sparse=always "$1" "$2" && sync "$2"', 'sh', img, cpOut],
        },
        {
          key: 'dd',
          label: `dd oflag=direct of all ${sz(ram)} + fsync`,
          ramBytes: ram,
          peer: true,
          prepare: () => {
            rm(ddOut);
            flush();
          },
          argv: ddWriteArgv(ddOut, ram),
        },
        saveCase(1),
        saveCase(2),
        saveCase(4),
        {
          key: 'hash',
          label: 'XXH3-64 of the data pages, 1 thread',
          ramBytes: ram,
          argv: [process.execPath, path.join(__dirname, 'hashcost.js'), img],
          parse: (r) => {
            const j = jsonOut(r);
            return { hashSeconds: Number(j.hashSeconds), dataBytes: Number(j.dataBytes) };
          },
        },
      ],
      o.runs,
    );
    rm(cpOut, ddOut, saveOut);
    const dd = summarize(get('dd')!);
    const ideal = dd ? dataBytes / (ram / dd.wall) : NaN;
    results.set('ideal', { key: 'ideal', label: 'ideal', ramBytes: ram, runs: [], extra: [{ seconds: ideal }] });
    const hashS = extraMedian(get('hash'), 'hashSeconds');
    print(
      table(
        `save: ${sz(ram)} image in /dev/shm → ${diskType} (fsync included)`,
        [
          { m: get('cp')!, peer: 'cp', note: 'peer' },
          { m: get('dd')!, peer: 'cp', note: 'device rate' },
          {
            label: `ideal: ${(dataBytes / 1e9).toFixed(2)} GB of data at the dd oflag=direct rate`,
            derivedSeconds: ideal,
            derivedRam: ram,
            peer: 'cp',
          },
          { m: get('save-j1')!, peer: 'cp' },
          { m: get('save-j2')!, peer: 'cp' },
          { m: get('save-j4')!, peer: 'cp' },
        ],
        get,
        'cp',
      ),
    );
    if (hashS !== undefined) {
      print(
        `\nchecksum cost: XXH3-64 over the ${(dataBytes / 1e9).toFixed(2)} GB of data pages takes ${hashS.toFixed(3)} s on one ` +
          `thread (the addon's hash64 over 4 MiB buffers, measured in a child; an estimate of the hashing share, not an A/B run)\n`,
      );
    }
  }

  // ---- load
  if (has('load')) {
    const back = path.join(shm, 'back.ram');
    await measureCases(
      [
        {
          key: 'copyback',
          label: 'cp --sparse=always back to /dev/shm',
          ramBytes: ram,
          peer: true,
          prepare: () => {
            ensureRefs();
            rm(back);
            evict([refImg]);
          },
          argv: ['cp', '--sparse=always', refImg, back],
        },
        loadCase(1),
        loadCase(2),
        loadCase(4),
        loadCase(2, false),
      ],
      o.runs,
    );
    const same = fs.existsSync(loaded) && run(['cmp', '-s', loaded, img], { allowFail: true }).status === 0;
    notes.push(`load: the loaded block is ${same ? 'identical to' : 'DIFFERENT FROM (or missing)'} the image (cmp)`);
    rm(back, loaded);
    print(
      table(
        `load: snapshot on ${diskType} (page cache dropped for the file) → fresh file in /dev/shm`,
        [
          { m: get('copyback')!, peer: 'copyback', note: 'peer' },
          { m: get('load-j1')!, peer: 'copyback' },
          { m: get('load-j2')!, peer: 'copyback' },
          { m: get('load-j4')!, peer: 'copyback' },
          { m: get('load-j2-noverify')!, peer: 'copyback' },
        ],
        get,
        'cp back',
      ),
    );
    print(`load output check: ${same ? 'identical to the image' : 'DIFFERENT from the image'}\n`);
  }

  // ---- verify (issue 3)
  if (has('verify')) {
    const vcase = (j: number): Case => ({
      key: `verify-j${j}`,
      label: `fixedram verify -j ${j}`,
      ramBytes: ram,
      prepare: () => {
        ensureRefs();
        evict([refFxr]);
      },
      argv: fx('verify', refFxr, '-j', String(j)),
      parse: (r) => {
        const j2 = jsonOut(r);
        if (j2.ok !== true) throw new Error('verify did not report ok');
        return fixedramJson(r);
      },
    });
    await measureCases(
      [
        {
          key: 'cat',
          label: 'cat SNAPSHOT > /dev/null',
          ramBytes: ram,
          peer: true,
          prepare: () => {
            ensureRefs();
            evict([refFxr]);
          },
          argv: ['sh', '-c', 'cat "$1" > /dev/null', 'sh', refFxr],
        },
        {
          key: 'dd-read',
          label: 'dd iflag=direct bs=4M of the snapshot',
          ramBytes: ram,
          peer: true,
          prepare: () => {
            ensureRefs();
            evict([refFxr]);
          },
          argv: ['dd', `if=${refFxr}`, 'of=/dev/null', 'bs=4M', 'iflag=direct', 'status=none'],
        },
        vcase(1),
        vcase(2),
        vcase(4),
      ],
      o.runs,
    );
    print(
      table(
        `verify: snapshot on ${diskType}, page cache dropped`,
        [
          { m: get('cat')!, peer: 'cat', note: 'peer' },
          { m: get('dd-read')!, peer: 'cat', note: 'device read rate' },
          { m: get('verify-j1')!, peer: 'cat' },
          { m: get('verify-j2')!, peer: 'cat' },
          { m: get('verify-j4')!, peer: 'cat' },
        ],
        get,
        'cat',
      ),
    );
  }

  // ---- qemu (issue 4, 7)
  const qemuChannels = has('scaling') ? [1, 2, 4, 8] : [1, 2, 4];
  let qemuFxLoad = false;
  if (has('qemu')) {
    const v = qemuVersion();
    if (!v || v[0] < 9) {
      notes.push(
        `qemu: skipped: ${v ? `QEMU ${v.join('.')} is older than 9.0 (no mapped-ram)` : `${process.env.QEMU ?? 'qemu-system-x86_64'} is not installed`}`,
      );
      print('\n## qemu\n\nskipped: QEMU >= 9 is not installed\n');
    } else {
      const peer = new QemuPeer(shm, ram);
      const backing = path.join(shm, 'qemu-src.ram');
      log("copying the image for QEMU's memory-backend-file (holes kept, not timed)");
      run(['cp', '--sparse=auto', img, backing]);
      const mig = (ch: number): string => path.join(disk, `qemu-ch${ch}.mig`);
      const saveCases: Case[] = qemuChannels.map((ch) => ({
        key: `qemu-save-${ch}`,
        label: `QEMU mapped-ram + multifd ${ch} ch save + fsync`,
        ramBytes: ram,
        peer: true,
        prepare: () => {
          rm(mig(ch));
          flush();
        },
        custom: () => peer.save(backing, mig(ch), ch),
      }));
      await measureCases([...saveCases, ...qemuChannels.filter((c) => c <= 4).map(saveCase)], o.runs);
      const keep = qemuChannels.includes(2) ? 2 : qemuChannels[0]!;
      const qmig = path.join(disk, 'qemu.mig');
      if (fs.existsSync(mig(keep))) fs.renameSync(mig(keep), qmig);
      for (const ch of qemuChannels) rm(mig(ch));
      rm(saveOut);

      const qdst = path.join(shm, 'qemu-dst.ram');
      const loadCases: Case[] = qemuChannels.map((ch) => ({
        key: `qemu-load-${ch}`,
        label: `QEMU multifd ${ch} ch load`,
        ramBytes: ram,
        peer: true,
        custom: () => peer.load(qmig, qdst, ch, () => evict([qmig])),
      }));
      // fixedram reading QEMU's file: only if its QEMU reader can open it
      const insp = run([...fixedram, 'inspect', qmig, '--json'], { allowFail: true });
      const fxq = path.join(shm, 'fx-qemu');
      const fxqCases: Case[] = [];
      if (insp.status === 0) {
        qemuFxLoad = true;
        for (const ch of qemuChannels.filter((c) => c <= 4)) {
          fxqCases.push({
            key: `fxload-qemu-${ch}`,
            label: `fixedram load -j ${ch} of QEMU's file (--dir)`,
            ramBytes: ram,
            prepare: () => {
              rm(fxq);
              fs.mkdirSync(fxq);
              evict([qmig]);
            },
            argv: fx('load', qmig, '--dir', fxq, '-j', String(ch)),
            parse: fixedramJson,
          });
        }
      } else {
        const why =
          (jsonOut({ stdout: insp.stdout } as RunResult).error as { message?: string } | undefined)?.message ??
          insp.stderr.trim().split('\n').pop();
        notes.push(`qemu: 'fixedram load' of QEMU's file skipped: inspect fails (${why})`);
      }
      await measureCases(
        [...loadCases, ...fxqCases, ...qemuChannels.filter((c) => c <= 4).map((j) => loadCase(j))],
        o.runs,
      );
      const qsame = fs.existsSync(qdst) && run(['cmp', '-s', qdst, img], { allowFail: true }).status === 0;
      notes.push(`qemu: QEMU's loaded mem0 is ${qsame ? 'identical to' : 'DIFFERENT FROM'} the image (cmp)`);
      rm(qdst, fxq, loaded, backing);

      const rows: Row[] = [];
      for (const ch of qemuChannels) {
        rows.push({ m: get(`qemu-save-${ch}`)!, peer: `qemu-save-${ch}`, note: 'peer' });
        if (get(`save-j${ch}`)) rows.push({ m: get(`save-j${ch}`)!, peer: `qemu-save-${ch}` });
      }
      print(
        table(
          `qemu: save vs QEMU ${v.join('.')} mapped-ram + multifd, accelerator ${qemuAccel()} (paused q35, memory-backend-file, max-bandwidth 0)`,
          rows,
          get,
          'QEMU same ch',
        ),
      );
      const lrows: Row[] = [];
      for (const ch of qemuChannels) {
        lrows.push({ m: get(`qemu-load-${ch}`)!, peer: `qemu-load-${ch}`, note: 'peer' });
        if (get(`load-j${ch}`)) lrows.push({ m: get(`load-j${ch}`)!, peer: `qemu-load-${ch}`, note: 'own snapshot' });
        if (get(`fxload-qemu-${ch}`)) lrows.push({ m: get(`fxload-qemu-${ch}`)!, peer: `qemu-load-${ch}` });
      }
      print(
        table(
          `qemu: load into a fresh file in /dev/shm vs QEMU's multifd load, accelerator ${qemuAccel()} (file on ${diskType}, page cache dropped)`,
          lrows,
          get,
          'QEMU same ch',
        ),
      );
      print(
        'QEMU rows: CPU = the QEMU process (all threads) during the migration; peak RSS = its VmHWM, which counts the guest RAM pages ' +
          'it touched through the shared mapping; disk write = /proc/PID/io write_bytes.\n' +
          `QEMU's loaded RAM check: ${qsame ? 'identical to the image' : 'DIFFERENT from the image'}\n`,
      );
    }
  }

  // ---- scaling (issue 7)
  if (has('scaling')) {
    const chans = [1, 2, 4, 8];
    await measureCases([...chans.map(saveCase), ...chans.map((j) => loadCase(j))], o.runs);
    rm(saveOut, loaded);
    const cell = (key: string): [string, string] => {
      const m = get(key);
      const s = m ? summarize(m) : undefined;
      return s ? [fmt(s.wall, 3), fmt(s.cpu / ramGiB, 2)] : ['-', '-'];
    };
    print(
      plainTable(
        `scaling: channels (median s, CPU s per GiB of RAM; QEMU accelerator: ${qemuAccel()})`,
        [
          'channels',
          'save s',
          'save CPU s/GiB',
          'QEMU save s',
          'QEMU save CPU s/GiB',
          'load s',
          'load CPU s/GiB',
          'QEMU load s',
          'QEMU load CPU s/GiB',
        ],
        0,
        chans.map((j) => [
          String(j),
          ...cell(`save-j${j}`),
          ...cell(`qemu-save-${j}`),
          ...cell(`load-j${j}`),
          ...cell(`qemu-load-${j}`),
        ]),
      ),
    );
  }

  // ---- update (issues 6, 13)
  // Per run: a full save -j 2 (the peer), then a share of the pages is changed, the snapshot is
  // dropped from the page cache (a snapshot taken earlier would be cold), `save --update -j 2`;
  // then `save --update -j 2` again with nothing changed. Every run is timed as a user runs it (no
  // debug logging); the update's phase breakdown comes from its --json result (`phases`).
  const updateSuite = async (
    tag: string,
    title: string,
    image: string,
    out: string,
    fraction: number,
    seed: number,
    ramBytes: number,
  ): Promise<number> => {
    const full: Measured = { key: `${tag}-full`, label: 'fixedram save -j 2 (full)', ramBytes, runs: [], extra: [] };
    const inc: Measured = {
      key: `${tag}-inc`,
      label: `fixedram save --update -j 2 (${fmt(fraction * 100, 0)}% of pages changed)`,
      ramBytes,
      runs: [],
      extra: [],
    };
    const none: Measured = {
      key: `${tag}-none`,
      label: 'fixedram save --update -j 2 (nothing changed)',
      ramBytes,
      runs: [],
      extra: [],
    };
    for (const m of [full, inc, none]) results.set(m.key, m);
    let changed = 0;
    for (let r = 0; r < o.runs && !full.error && !inc.error && !none.error; r++) {
      for (const [m, args] of [
        [full, []],
        [inc, ['--update']],
        [none, ['--update']],
      ] as const) {
        if (m === full) {
          rm(out);
        } else {
          if (m === inc) changed = mutateImage(image, fraction, seed + r);
          evict([out]);
        }
        flush();
        const res = await measure(fx('save', ...args, '-o', out, '-b', `mem0=${image}`, '-j', '2'));
        if (res.status !== 0) {
          m.error = `exit ${res.status}: ${res.stderr.trim().split('\n').slice(-2).join(' | ')}`;
          log(`${m.label}: FAILED: ${m.error}`);
          break;
        }
        m.runs.push(usageOf(res));
        m.extra.push({ ...fixedramJson(res), ...phasesOf(res.stdout) });
        log(
          `${m.label}: run ${r + 1}/${o.runs}: ${res.wall.toFixed(3)} s, ${((res.written ?? NaN) / MiB).toFixed(1)} MiB written, ` +
            `${(res.diskWrite / MiB).toFixed(0)} MiB accounted to disk`,
        );
      }
    }
    if (inc.runs.length) {
      const v2 = run(fx('verify', out, '--against', `mem0=${image}`, '-j', '2'), { allowFail: true });
      notes.push(
        `update ${tag}: verify --against the changed image after the last update: ${v2.status === 0 ? 'OK' : `FAILED (exit ${v2.status})`}`,
      );
    }
    print(
      table(
        `${title}: ${changed} pages (${fmt(fraction * 100, 0)}%) changed, --update vs a full save (fsync included)`,
        [
          { m: full, peer: full.key, note: 'peer' },
          { m: inc, peer: full.key },
          { m: none, peer: full.key },
        ],
        get,
        'full save',
      ),
    );
    const fb = extraMedian(full, 'bytesWritten');
    const ib = extraMedian(inc, 'bytesWritten');
    const nb = extraMedian(none, 'bytesWritten');
    if (fb !== undefined && ib !== undefined && nb !== undefined) {
      print(
        `bytes written as reported by --json: full ${(fb / MiB).toFixed(1)} MiB, update ${(ib / MiB).toFixed(1)} MiB ` +
          `(${fmt((ib / fb) * 100, 1)} %), nothing changed ${nb} bytes\n`,
      );
    }
    print(
      phaseTable(`${title}: where an update's time goes (median ms; ch* = summed over the channels, inside 'pages')`, [
        inc,
        none,
      ]),
    );
    if (changed > 0 && !full.error) await updateFloor(tag, title, image, out, changed, seed, full);
    return changed;
  };

  // What bounds an update on this machine, measured in the same run: the process start-up, reading
  // and hashing the source once (xxhsum -H3, one CPU; the channels share two), and the changed pages
  // alone written at scattered offsets + fdatasync (a copy of the snapshot, one thread, nothing read).
  const updateFloor = async (
    tag: string,
    title: string,
    image: string,
    out: string,
    changed: number,
    seed: number,
    full: Measured,
  ): Promise<void> => {
    const peerFile = `${out}.peer`;
    run(['cp', '--sparse=always', out, peerFile]);
    const cases: Case[] = [
      {
        key: `${tag}-floor-start`,
        label: 'start-up: fixedram --version',
        ramBytes: 0,
        peer: true,
        argv: [...fixedram, '--version'],
      },
      {
        key: `${tag}-floor-read`,
        label: 'read + hash the source once: xxhsum -H3 (one CPU)',
        ramBytes: fs.statSync(image).size,
        peer: true,
        argv: ['xxhsum', '-H3', image],
      },
      {
        key: `${tag}-floor-write`,
        label: `the ${changed} changed pages alone: scattered 4 KiB pwrites + fdatasync (one thread)`,
        ramBytes: changed * 4096,
        peer: true,
        prepare: () => {
          evict([peerFile]);
          flush();
        },
        argv: [process.execPath, path.join(__dirname, 'scattered-writes.js'), peerFile, String(changed), String(seed)],
      },
    ];
    await measureCases(cases, o.runs);
    rm(peerFile);
    const wall = (k: string): number => summarize(get(k)!)?.wall ?? NaN;
    const fullWall = summarize(full)?.wall ?? NaN;
    const [st, rd, wr] = [wall(`${tag}-floor-start`), wall(`${tag}-floor-read`), wall(`${tag}-floor-write`)];
    const rows = cases.map((c) => [c.label, fmt(wall(c.key), 3), fmt(wall(c.key) / fullWall, 2)]);
    rows.push([
      'start-up + reading on two CPUs (xxhsum ÷ 2): the floor of an update with nothing changed',
      fmt(st + rd / 2, 3),
      fmt((st + rd / 2) / fullWall, 2),
    ]);
    rows.push([
      '… + the changed pages written (not overlapped)',
      fmt(st + rd / 2 + wr, 3),
      fmt((st + rd / 2 + wr) / fullWall, 2),
    ]);
    print(
      plainTable(
        `${title}: what bounds an update here (median s; ÷ the full save -j 2 of this run)`,
        ['what', 'median s', '÷ full save'],
        1,
        rows,
      ),
    );
  };

  if (has('update')) {
    const help = run([...fixedram, 'save', '--help'], { allowFail: true }).stdout;
    if (!help.includes('--update')) {
      notes.push('update: skipped: `fixedram save --help` does not mention --update (not implemented yet)');
      print('\n## update\n\nskipped: `fixedram save --help` does not mention --update\n');
    } else {
      const uimg = path.join(shm, 'update.ram');
      const uout = path.join(disk, 'update.fxr');
      run(['cp', '--sparse=auto', img, uimg]);
      await updateSuite('update', `update: ${sz(ram)} image`, uimg, uout, 0.05, 100, ram);
      rm(uimg, uout);

      // 512 MiB, about 2/3 data (the default mix), 5 % changed: start-up and syncs weigh more
      const small = path.join(shm, 'update-512m.ram');
      const st = makeImage(small, 512 * MiB, kDefaultMix, 4);
      images.push(st);
      await updateSuite(
        'update512',
        `update: 512 MiB image (${pct(st.randomPages + st.textPages, st.pages)} data)`,
        small,
        path.join(disk, 'update-512m.fxr'),
        0.05,
        200,
        512 * MiB,
      );
      rm(small, path.join(disk, 'update-512m.fxr'));

      // hash and compare vs xxhsum -H3, on a dense image in /dev/shm: no-change updates with 1 and 2
      // channels. Throughput per channel = bytes read ÷ CPU time of the channels' threads in the
      // page mover (summed), against xxhsum's bytes ÷ its CPU time (user + sys): CPU time, because
      // on a shared machine wall time measures the neighbours; with nothing changed the mover only
      // reads, zero-scans, hashes and compares. The aggregate column is wall: bytes ÷ 'pages' phase.
      const dense = path.join(shm, 'hash-dense.ram');
      const hashBytes = Math.min(ram, GiB);
      images.push(makeImage(dense, hashBytes, kDenseMix, 5));
      const hout = path.join(disk, 'hash-dense.fxr');
      run(fx('save', '-o', hout, '-b', `mem0=${dense}`, '-j', '2'));
      const hashCase = (j: number): Case => ({
        key: `hash-update-j${j}`,
        label: `fixedram save --update -j ${j}, nothing changed`,
        ramBytes: hashBytes,
        argv: fx('save', '--update', '-o', hout, '-b', `mem0=${dense}`, '-j', String(j)),
        parse: (r) => ({ ...fixedramJson(r), ...phasesOf(r.stdout) }),
      });
      await measureCases(
        [
          {
            key: 'xxhsum',
            label: 'xxhsum -H3 of the image',
            ramBytes: hashBytes,
            peer: true,
            argv: ['xxhsum', '-H3', dense],
          },
          hashCase(1),
          hashCase(2),
        ],
        o.runs,
      );
      rm(dense, hout);
      const xs = get('xxhsum') ? summarize(get('xxhsum')!) : undefined;
      const xsRate = xs ? hashBytes / xs.cpu / 1e9 : NaN;
      const rows: string[][] = [
        [
          'xxhsum -H3 (peer, whole process, user + sys)',
          '1',
          fmt(xsRate, 2),
          xs ? fmt(hashBytes / xs.wall / 1e9, 2) : '-',
          '1.00',
        ],
      ];
      for (const j of [1, 2]) {
        const m = get(`hash-update-j${j}`);
        const perChannel = hashRate(m) ?? NaN;
        const aggregate = (extraMedian(m, 'bytesRead') ?? NaN) / ((extraMedian(m, 'pages') ?? NaN) / 1000) / 1e9;
        rows.push([
          `fixedram hash + compare phase, -j ${j}`,
          String(j),
          fmt(perChannel, 2),
          fmt(aggregate, 2),
          fmt(perChannel / xsRate, 2),
        ]);
      }
      print(
        plainTable(
          `hash and compare: ${sz(hashBytes)} dense image in /dev/shm (page cache), vs xxhsum -H3 on the same file ` +
            '(per channel: bytes ÷ CPU seconds)',
          ['what', 'channels', 'GB/s per channel (CPU)', 'GB/s all channels (wall)', '÷ xxhsum'],
          1,
          rows,
        ),
      );
    }
  }

  // ---- sparse (issue 7): cost follows data, not size
  if (has('sparse')) {
    // the last section: the main image is no longer needed, free its memory for the dense image
    rm(img);
    const S = o.sparseSize;
    const needMem = S + 3 * GiB;
    if (memAvailable() < needMem || freeBytes(shm) < S + GiB || freeBytes(disk) < S + 2 * GiB) {
      const msg =
        `sparse: skipped: a dense ${sz(S)} image needs about ${(needMem / GiB).toFixed(1)} GiB of available ` +
        `memory and ${sz(S)} free in /dev/shm and on the disk (available: ${(memAvailable() / GiB).toFixed(1)} GiB ` +
        `memory, ${(freeBytes(shm) / GiB).toFixed(1)} GiB shm, ${(freeBytes(disk) / GiB).toFixed(1)} GiB disk); try --sparse-size`;
      notes.push(msg);
      print(`\n## sparse\n\n${msg}\n`);
    } else {
      const sOut = path.join(disk, 'sparse.fxr');
      for (const [kind, mix] of [
        ['sparse', kSparseMix],
        ['dense', kDenseMix],
      ] as const) {
        const file = path.join(shm, `${kind}.ram`);
        t = performance.now();
        const st = makeImage(file, S, mix, kind === 'sparse' ? 2 : 3);
        images.push(st);
        log(
          `${kind} image: ${sz(S)}, ${pct(st.randomPages + st.textPages, st.pages)} data, ` +
            `made in ${((performance.now() - t) / 1000).toFixed(1)} s`,
        );
        await measureCases(
          [
            {
              key: `${kind}-save`,
              label: `fixedram save -j 2, ${sz(S)} ${kind} (${pct(st.randomPages + st.textPages, st.pages)} data)`,
              ramBytes: S,
              prepare: () => {
                rm(sOut);
                flush();
              },
              argv: fx('save', '-o', sOut, '-b', `mem0=${file}`, '-j', '2'),
              parse: fixedramJson,
            },
          ],
          o.runs,
        );
        if (kind === 'sparse' && fs.existsSync(sOut)) {
          // issue 13: an update of the sparse image with 1 % of its pages changed (most of them holes
          // that now hold data), against the dense full save below
          const upd: Case = {
            key: 'sparse-update',
            label: `fixedram save --update -j 2, ${sz(S)} sparse, 1% of pages changed`,
            ramBytes: S,
            prepare: () => {
              mutateImage(file, 0.01, 300 + (get('sparse-update')?.runs.length ?? 0));
              evict([sOut]);
              flush();
            },
            argv: fx('save', '--update', '-o', sOut, '-b', `mem0=${file}`, '-j', '2'),
            parse: (r) => ({ ...fixedramJson(r), ...phasesOf(r.stdout) }),
          };
          await measureCases([upd], o.runs);
        }
        rm(file, sOut);
      }
      print(
        table(
          `sparse: cost follows data, not size (${sz(S)}, save -j 2, fsync included; ` +
            'the two images are measured one after the other, not interleaved, to bound memory use)',
          [
            { m: get('dense-save')!, peer: 'dense-save', note: 'peer' },
            { m: get('sparse-save')!, peer: 'dense-save' },
            ...(get('sparse-update') ? [{ m: get('sparse-update')!, peer: 'dense-save' }] : []),
          ],
          get,
          'dense',
        ),
      );
      if (get('sparse-update'))
        print(phaseTable(`sparse update: where the time goes (median ms)`, [get('sparse-update')!]));
    }
  }

  // ---- s3 (issue 15, opt-in: --only s3): to and from a real S3 endpoint against rclone (bench/s3.ts)
  if (has('s3')) {
    const r = await (
      await import('./s3')
    ).s3Bench({
      size: ram,
      runs: o.runs,
      dir: o.dir,
      endpoint: process.env.AWS_ENDPOINT_URL ?? 'http://127.0.0.1:7480',
      log,
    });
    print(`${r.table}\n${r.targets.map((x) => `- ${x}`).join('\n')}\n`);
  }

  // ---- vm (issue 12): a running guest, vm save / vm restore vs QEMU's own (bench/vm.ts)
  const vmTargets: Target[] = [];
  if (has('vm')) {
    const v = qemuVersion();
    if (!v || v[0] < 9) {
      notes.push('vm: skipped: QEMU >= 9 is not installed');
    } else {
      const r = await (await import('./vm')).vmBench({ shm, disk, runs: o.runs, fixedram, log });
      print(r.text);
      vmTargets.push(...r.targets);
      notes.push(...r.notes);
    }
  }

  // ---- targets
  const targets = [...evaluateTargets(o, dataBytes, qemuFxLoad), ...vmTargets];
  print(
    plainTable(
      'targets',
      ['issue', 'what', 'target', 'measured', 'verdict'],
      2,
      targets.map((tg) => [tg.issue, tg.what, tg.target, tg.measured, tg.verdict + (tg.why ? ` (${tg.why})` : '')]),
    ),
  );
  if (notes.length) print(`\n## notes\n\n${notes.map((n) => `- ${n}`).join('\n')}\n`);
  print(`\ntotal bench time ${((performance.now() - started) / 1000).toFixed(0)} s\n`);

  if (o.json) {
    const doc = {
      env,
      options: { ...o, only: [...o.only] },
      images,
      results: [...results.values()].map((m) => ({ ...m, summary: summarize(m) ?? null })),
      targets,
      notes,
    };
    fs.writeFileSync(o.json, `${JSON.stringify(doc, null, 2)}\n`);
    log(`wrote ${o.json}`);
  }
}

/**
 * GB/s per channel of an update's page mover: bytes read ÷ the channels' CPU seconds (summed over
 * the channels, each byte is read by one of them).
 */
function hashRate(m: Measured | undefined): number | undefined {
  const cpu = extraMedian(m, 'chCpu');
  const bytes = extraMedian(m, 'bytesRead');
  return cpu && bytes ? bytes / (cpu / 1000) / 1e9 : undefined;
}

const kPhases = [
  'startup',
  'logger',
  'open',
  'tablesRead',
  'mark',
  'markSync',
  'scan',
  'pages',
  'tablesWrite',
  'syncData',
  'commit',
  'chRead',
  'chHash',
  'chWrite',
  'chPunch',
  'chCpu',
] as const;

/** Median of each phase over the runs of each case. */
function phaseTable(title: string, cases: Measured[]): string {
  const body = cases
    .filter((m) => m.extra.some((e) => e.pages !== undefined))
    .map((m) => [
      m.label,
      ...kPhases.map((k) => {
        const v = extraMedian(m, k);
        return v === undefined ? '-' : fmt(v, 0);
      }),
    ]);
  if (!body.length) return `\n## ${title}\n\nno phase breakdown in the --json result (an older fixedram)\n`;
  return plainTable(title, ['what', ...kPhases], 1, body);
}

/**
 * The accelerator the QEMU peers ran with, as QEMU reported it over QMP (`query-kvm`, asked by
 * every QEMU the bench starts): under TCG QEMU's file migration is several times slower than under
 * KVM, so every QEMU figure names it.
 */
function qemuAccel(): string {
  return reportedAccelerator() ?? 'not reported: no QEMU ran';
}

/** 2 GiB, 512 MiB, 1.5 GiB */
function sz(bytes: number): string {
  return bytes >= GiB ? `${+(bytes / GiB).toFixed(2)} GiB` : `${+(bytes / MiB).toFixed(1)} MiB`;
}

function usageOf(u: Usage): Usage {
  return {
    wall: u.wall,
    user: u.user,
    sys: u.sys,
    maxRss: u.maxRss,
    diskWrite: u.diskWrite,
    diskRead: u.diskRead,
    ...(u.written !== undefined ? { written: u.written } : {}),
  };
}

function pct(n: number, of: number): string {
  return `${((n / of) * 100).toFixed(1)}%`;
}

function evaluateTargets(o: Options, dataBytes: number, qemuFxLoad: boolean): Target[] {
  const T: Target[] = [];
  const s = (key: string): ReturnType<typeof summarize> => {
    const m = results.get(key);
    return m ? summarize(m) : undefined;
  };
  const add = (
    issue: string,
    what: string,
    target: string,
    value: number | undefined,
    ok: (v: number) => boolean,
    show: (v: number) => string,
    why?: string,
  ): void => {
    if (value === undefined || !Number.isFinite(value)) {
      T.push({ issue, what, target, measured: '-', verdict: 'n/a', ...(why ? { why } : { why: 'not measured' }) });
    } else {
      T.push({ issue, what, target, measured: show(value), verdict: ok(value) ? 'PASS' : 'MISS' });
    }
  };
  const ratio = (a?: ReturnType<typeof summarize>, b?: ReturnType<typeof summarize>): number | undefined =>
    a && b ? a.wall / b.wall : undefined;
  const x = (v: number): string => `${v.toFixed(2)}×`;
  const sec = (key: string): string => (o.only.has(key as Section) ? '' : `section '${key}' not run`);

  add(
    '2',
    'save -j 2 time ÷ cp --sparse=always + fsync',
    '≤ 0.80×',
    ratio(s('save-j2'), s('cp')),
    (v) => v <= 0.8,
    x,
    sec('save'),
  );
  add(
    '2',
    'save -j 2 peak RSS',
    '≤ 150 MiB',
    s('save-j2') ? s('save-j2')!.maxRss / MiB : undefined,
    (v) => v <= 150,
    (v) => `${v.toFixed(0)} MiB`,
  );
  add(
    '3',
    'verify -j 2 throughput ÷ cat > /dev/null',
    '≥ 0.80×',
    s('verify-j2') && s('cat') ? s('cat')!.wall / s('verify-j2')!.wall : undefined,
    (v) => v >= 0.8,
    x,
    sec('verify'),
  );
  const full = s('update-full');
  const inc = s('update-inc');
  const updWhy = results.has('update-inc')
    ? undefined
    : o.only.has('update')
      ? '--update not available'
      : sec('update');
  add(
    '6/13',
    '--update (5% changed) time ÷ full save (issue 13: ≤ 0.25×, stretch 0.15×)',
    '≤ 0.25×',
    ratio(inc, full),
    (v) => v <= 0.25,
    (v) => `${x(v)}${v <= 0.15 ? ' (stretch met)' : ''}`,
    updWhy,
  );
  add(
    '6',
    '--update bytes written (write syscalls) ÷ full save',
    '≤ 0.10×',
    inc?.written !== undefined && full?.written ? inc.written / full.written : undefined,
    (v) => v <= 0.1,
    x,
    updWhy,
  );
  add(
    '13',
    '512 MiB (2/3 data), 5% changed: --update time ÷ full save',
    '≤ 0.50×',
    ratio(s('update512-inc'), s('update512-full')),
    (v) => v <= 0.5,
    x,
    updWhy,
  );
  add(
    '13',
    `nothing changed: --update time ÷ full save, ${sz(o.size)}`,
    '≤ 0.20×',
    ratio(s('update-none'), full),
    (v) => v <= 0.2,
    x,
    updWhy,
  );
  const noneBytes = extraMedian(results.get('update-none'), 'bytesWritten');
  add(
    '13',
    'nothing changed: bytes written (--json; the header, twice)',
    '≤ 2 headers',
    noneBytes,
    (v) => v <= 2 * (64 + 320),
    (v) => `${v} B`,
    updWhy,
  );
  const perCh = (j: number): number | undefined => {
    const xs = s('xxhsum');
    const rate = hashRate(results.get(`hash-update-j${j}`));
    const bytes = results.get('xxhsum')?.ramBytes;
    return rate !== undefined && xs && bytes ? rate / (bytes / xs.cpu / 1e9) : undefined;
  };
  add(
    '13',
    'hash + compare throughput per channel ÷ xxhsum -H3, -j 1',
    '≥ 0.80×',
    perCh(1),
    (v) => v >= 0.8,
    x,
    updWhy,
  );
  add(
    '13',
    'hash + compare throughput per channel ÷ xxhsum -H3, -j 2 (scales with channels)',
    '≥ 0.80×',
    perCh(2),
    (v) => v >= 0.8,
    x,
    updWhy,
  );
  add(
    '13',
    `sparse ${sz(o.sparseSize)} (5% data), 1% changed: --update time ÷ dense full save`,
    '≤ 0.10×',
    ratio(s('sparse-update'), s('dense-save')),
    (v) => v <= 0.1,
    x,
    o.only.has('sparse') ? 'skipped (memory)' : sec('sparse'),
  );
  const qemuWhy = o.only.has('qemu') ? 'QEMU not available' : sec('qemu');
  add(
    '7',
    `QEMU (${qemuAccel()}) 2-ch save+fsync time ÷ save -j 2 (speed-up)`,
    '≥ 1.5×',
    s('qemu-save-2') && s('save-j2') ? s('qemu-save-2')!.wall / s('save-j2')!.wall : undefined,
    (v) => v >= 1.5,
    x,
    qemuWhy,
  );
  const ideal = results.get('ideal')?.extra[0]?.seconds;
  add(
    '7',
    `save -j 2 time ÷ ideal (${(dataBytes / 1e9).toFixed(2)} GB at the dd oflag=direct rate)`,
    '≤ 1.15×',
    s('save-j2') && ideal ? s('save-j2')!.wall / ideal : undefined,
    (v) => v <= 1.15,
    x,
    sec('save'),
  );
  add(
    '7',
    `QEMU (${qemuAccel()}) 2-ch load time ÷ load -j 2 (speed-up)`,
    '≥ 2×',
    s('qemu-load-2') && s('load-j2') ? s('qemu-load-2')!.wall / s('load-j2')!.wall : undefined,
    (v) => v >= 2,
    x,
    qemuWhy,
  );
  if (qemuFxLoad) {
    add(
      '4',
      `QEMU (${qemuAccel()}) 2-ch load ÷ fixedram load -j 2 of QEMU's file (speed-up)`,
      'report',
      s('qemu-load-2') && s('fxload-qemu-2') ? s('qemu-load-2')!.wall / s('fxload-qemu-2')!.wall : undefined,
      () => true,
      x,
    );
    T[T.length - 1]!.verdict = 'n/a';
    T[T.length - 1]!.why = 'no target; ratio reported';
  }
  add(
    '7',
    `sparse (5% data) save ÷ dense save, ${sz(o.sparseSize)}`,
    '< 0.10×',
    ratio(s('sparse-save'), s('dense-save')),
    (v) => v < 0.1,
    x,
    o.only.has('sparse') ? 'skipped (memory)' : sec('sparse'),
  );
  const hashS = extraMedian(results.get('hash'), 'hashSeconds');
  add(
    '7',
    'checksums (1-thread XXH3 of the data) ÷ save -j 1 time',
    '≤ 0.10×',
    hashS !== undefined && s('save-j1') ? hashS / s('save-j1')!.wall : undefined,
    (v) => v <= 0.1,
    x,
    sec('save'),
  );
  // peak RSS of every fixedram row, against 150 MiB + 0.5 % of that row's RAM size
  let worst: { key: string; rss: number; limit: number } | undefined;
  for (const m of results.values()) {
    if (!/^(save|load|verify|fxload|update|sparse|dense|hash-update)/.test(m.key)) continue;
    const sm = summarize(m);
    if (!sm) continue;
    const limit = 150 * MiB + 0.005 * m.ramBytes;
    if (!worst || sm.maxRss / limit > worst.rss / worst.limit) worst = { key: m.label, rss: sm.maxRss, limit };
  }
  add(
    '7',
    `peak RSS, worst fixedram row${worst ? ` (${worst.key})` : ''}`,
    '≤ 150 MiB + 0.5% of RAM',
    worst ? worst.rss / MiB : undefined,
    (v) => v * MiB <= worst!.limit,
    (v) => `${v.toFixed(0)} MiB (limit ${(worst!.limit / MiB).toFixed(0)})`,
  );
  return T;
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: error: ${err instanceof Error ? err.message : String(err)}\n`);
  if (err instanceof Error && process.env.BENCH_DEBUG) process.stderr.write(`${err.stack}\n`);
  process.exitCode = 1;
});
