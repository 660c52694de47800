/**
 * The flag → core option mapping of every command, in process: commander parses with
 * exitOverride, and the program hands the mapped options to `capture` instead of running the core.
 * Usage errors are checked the same way (exit 2 without a process).
 */
import * as assert from 'node:assert/strict';
import * as os from 'node:os';
import { describe, it } from 'node:test';
import { commandsOf, makeProgram, runCli } from '../src/cli';

interface Captured {
  command: string;
  options: Record<string, unknown>;
}

class Sink {
  text = '';
  write(s: string): boolean {
    this.text += s;
    return true;
  }
  on(): this {
    return this;
  }
}

let lastContext: Record<string, unknown> = {};
let lastSignal: AbortSignal | undefined;

async function map(argv: string[]): Promise<Captured & { status: number }> {
  let captured: Captured | undefined;
  let status = -1;
  const out = new Sink();
  const err = new Sink();
  const signal = new AbortController().signal;
  await runCli(argv, {
    stdout: out as unknown as NodeJS.WritableStream,
    stderr: err as unknown as NodeJS.WriteStream,
    signal,
    setExitCode: (c) => {
      status = c;
    },
    capture: (command, options) => {
      captured = { command, options: options as Record<string, unknown> };
    },
  });
  assert.ok(captured, `nothing captured for ${argv.join(' ')} (exit ${status}): ${err.text}`);
  const strip = (x: Record<string, unknown>): Record<string, unknown> => {
    const { signal: _s, logger: _l, onProgress: _p, ...rest } = x;
    return rest;
  };
  const o = strip(captured.options);
  if (o.save) o.save = strip(o.save as Record<string, unknown>);
  lastContext = (captured.options.save ?? captured.options) as Record<string, unknown>;
  lastSignal = signal;
  return { command: captured.command, options: o, status };
}

async function usage(argv: string[]): Promise<string> {
  let status = -1;
  const err = new Sink();
  await runCli(argv, {
    stdout: new Sink() as unknown as NodeJS.WritableStream,
    stderr: err as unknown as NodeJS.WriteStream,
    setExitCode: (c) => {
      status = c;
    },
    capture: () => assert.fail(`${argv.join(' ')} reached the core`),
  });
  assert.equal(status, 2, `${argv.join(' ')}: ${err.text}`);
  assert.equal(err.text.split('\n').filter(Boolean).length, 1, `one line: ${err.text}`);
  return err.text;
}

const cpus = Math.min(256, os.availableParallelism());

/** argv → the core options it must map to, per command; every command of the CLI needs an entry. */
const cases: Record<string, [string[], Record<string, unknown>][]> = {
  save: [
    [
      ['save', '-o', 's.fxr', '-b', 'a=/x/a', '--block', 'b=/x/b'],
      {
        update: false,
        save: {
          output: 's.fxr',
          blocks: [
            { name: 'a', path: '/x/a' },
            { name: 'b', path: '/x/b' },
          ],
          fsync: true,
          followSymlinks: false,
          allowDevice: false,
        },
      },
    ],
    [
      [
        'save',
        '--output',
        's.fxr',
        '-b',
        'a=/x/a',
        '-j',
        '3',
        '--page-size',
        '2M',
        '--no-fsync',
        '--follow-symlinks',
        '--allow-device',
        '--direct-io',
      ],
      {
        update: false,
        save: {
          output: 's.fxr',
          blocks: [{ name: 'a', path: '/x/a' }],
          fsync: false,
          followSymlinks: true,
          allowDevice: true,
          channels: 3,
          pageSize: 2 << 20,
          directIo: true,
        },
      },
    ],
    [
      ['save', '--update', '-o', 's.fxr', '-b', 'a=/x/a', '-j', '0'],
      {
        update: true,
        save: {
          output: 's.fxr',
          blocks: [{ name: 'a', path: '/x/a' }],
          fsync: true,
          followSymlinks: false,
          allowDevice: false,
          channels: cpus,
        },
      },
    ],
  ],
  load: [
    [
      ['load', 's.fxr', '--dir', 'out'],
      { snapshot: 's.fxr', dir: 'out', verify: true, followSymlinks: false, allowDevice: false, directIo: false },
    ],
    [
      ['load', 's.fxr', '-b', 'a=/t/a', '--no-verify', '-j', '2', '--direct-io', '--allow-device', '--follow-symlinks'],
      {
        snapshot: 's.fxr',
        blocks: [{ name: 'a', path: '/t/a' }],
        verify: false,
        followSymlinks: true,
        allowDevice: true,
        directIo: true,
        channels: 2,
      },
    ],
  ],
  verify: [
    [['verify', 's.fxr'], { snapshot: 's.fxr', against: [], maxReported: 100, followSymlinks: false }],
    [
      ['verify', 's.fxr', '--against', 'a=/live/a', '--max-failures', '0', '-j', '4', '--follow-symlinks'],
      {
        snapshot: 's.fxr',
        against: [{ name: 'a', path: '/live/a' }],
        maxReported: 0,
        followSymlinks: true,
        channels: 4,
      },
    ],
  ],
  inspect: [[['inspect', 's.fxr'], { snapshot: 's.fxr' }]],
  convert: [
    [['convert', 'vm.mig', '-o', 's.fxr'], { input: 'vm.mig', output: 's.fxr', fsync: true, directIo: false }],
    [
      ['convert', 'vm.mig', '--output', 's.fxr', '--no-fsync', '--direct-io', '-j', '2'],
      { input: 'vm.mig', output: 's.fxr', fsync: false, directIo: true, channels: 2 },
    ],
  ],
  export: [
    [['export', 's.fxr', '-o', 'vm.mig'], { snapshot: 's.fxr', output: 'vm.mig', fsync: true }],
    [
      ['export', 's.fxr', '--output', 'vm.img', '--format', 'libvirt', '--no-fsync', '-j', '2'],
      { snapshot: 's.fxr', output: 'vm.img', fsync: false, format: 'libvirt', channels: 2 },
    ],
  ],
  push: [
    [['push', 's.fxr', 's3://b/k'], { file: 's.fxr', url: 's3://b/k' }],
    [
      ['push', 's.fxr', 's3://b/k', '--s3-endpoint', 'http://127.0.0.1:7480', '-j', '4'],
      { file: 's.fxr', url: 's3://b/k', s3Endpoint: 'http://127.0.0.1:7480', channels: 4 },
    ],
  ],
  pull: [
    [['pull', 's3://b/k', 's.fxr'], { url: 's3://b/k', file: 's.fxr', fsync: true }],
    [
      ['pull', 's3://b/k', 's.fxr', '--no-fsync', '--s3-endpoint', 'http://e', '-j', '2'],
      { url: 's3://b/k', file: 's.fxr', fsync: false, s3Endpoint: 'http://e', channels: 2 },
    ],
  ],
  'vm save': [
    [
      ['vm', 'save', '--qmp', '/run/q.sock', '-o', 'vm.fxr'],
      { qmp: '/run/q.sock', output: 'vm.fxr', update: false, then: 'resume', fsync: true },
    ],
    [
      ['vm', 'save', '--qmp', 'q', '--output', 'vm.fxr', '--update', '--then', 'quit', '--no-fsync', '-j', '2'],
      { qmp: 'q', output: 'vm.fxr', update: true, then: 'quit', fsync: false, channels: 2 },
    ],
  ],
  'vm restore': [
    [['vm', 'restore', 'vm.fxr', '--qmp', 'q'], { qmp: 'q', snapshot: 'vm.fxr', then: 'resume', verify: true }],
    [
      ['vm', 'restore', 'vm.fxr', '--qmp', 'q', '--then', 'pause', '--no-verify', '-j', '3'],
      { qmp: 'q', snapshot: 'vm.fxr', then: 'pause', verify: false, channels: 3 },
    ],
  ],
};

const program = makeProgram({ stdout: process.stdout, stderr: process.stderr, setExitCode: () => undefined });
const names = commandsOf(program)
  .map((c) => c.name)
  .filter((n) => n !== 'completion');

describe('flag → core option mapping (in process)', () => {
  for (const name of names) {
    it(`${name}: every flag reaches its core option`, async () => {
      const list = cases[name];
      assert.ok(list, `no mapping cases for '${name}': add them to test/cli-mapping.test.ts`);
      for (const [argv, expected] of list) {
        const m = await map(argv);
        assert.equal(m.command, name);
        const got = m.options;
        assert.deepEqual(got, expected, argv.join(' '));
      }
    });
  }

  it('bad values and unknown flags are usage errors before the core (exit 2, one line)', async () => {
    assert.match(
      await usage(['save', '-o', 's', '-b', 'a=/x', '-j', '257']),
      /--channels must be an integer from 0 to 64/,
    );
    assert.match(await usage(['save', '-o', 's', '-b', 'a=/x', '-j', 'many']), /--channels/);
    assert.match(await usage(['save', '-b', 'a=/x']), /required option '-o, --output <file>'/);
    assert.match(await usage(['save', '-o', 's', '-b', 'noequals']), /NAME=PATH|name/i);
    assert.match(await usage(['verify', 's', '--max-failures', '-1']), /fixedram: error: /);
    assert.match(await usage(['load', 's', '--progress', 'sometimes']), /sometimes/);
    assert.match(await usage(['inspect', 's', '--follow-symlinks']), /unknown option '--follow-symlinks'/);
    assert.match(await usage(['inspect']), /missing required argument 'file'/);
    assert.match(await usage(['frobnicate']), /unknown command 'frobnicate'/);
  });

  it("the run's signal, logger and progress sink reach the core of every page-moving command", async () => {
    for (const argv of [
      ['save', '-o', 's', '-b', 'a=/x'],
      ['save', '--update', '-o', 's', '-b', 'a=/x'],
      ['load', 's', '--dir', 'd'],
      ['verify', 's'],
      ['convert', 'q', '-o', 's'],
      ['export', 's', '-o', 'q'],
    ]) {
      await map(argv);
      assert.equal(lastContext.signal, lastSignal, `${argv[0]}: signal`);
      assert.equal(typeof (lastContext.logger as { warn?: unknown }).warn, 'function', `${argv[0]}: logger`);
      assert.equal(typeof lastContext.onProgress, 'function', `${argv[0]}: onProgress`);
    }
  });

  it('-j 0 means one channel per CPU, as zstd -T0 and xz -T0', async () => {
    const m = await map(['verify', 's.fxr', '-j', '0']);
    assert.equal(m.options.channels, cpus);
  });
});
