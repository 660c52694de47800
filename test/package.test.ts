/**
 * The package as users meet it: the library face without the CLI, README usage = --help, global
 * options in every command's help, man page and completions current, package.json and files.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { commandsOf, kCommands, makeProgram } from '../src/cli';
import { fixedram } from './support/cli';
import { requirePrereq } from './support/prereq';
import { tempDir } from './support/tmp';

const root = path.resolve(__dirname, '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as Record<string, unknown>;
const program = makeProgram({ stdout: process.stdout, stderr: process.stderr, setExitCode: () => undefined });
const commands = commandsOf(program).map((c) => c.name);

/** The flags a help text lists (`-j, --channels <n>` → -j, --channels). */
function helpFlags(help: string): Set<string> {
  const flags = new Set<string>();
  const section = help.slice(
    help.indexOf('Options:'),
    help.indexOf('Exit status:') >= 0 ? help.indexOf('Exit status:') : undefined,
  );
  for (const line of section.split('\n')) {
    const m = /^ {2}(-[A-Za-z], )?(--[a-z][\w-]*)/.exec(line);
    if (!m) continue;
    if (m[1]) flags.add(m[1].slice(0, 2));
    flags.add(m[2]!);
  }
  return flags;
}

/** README "Use": the usage block (command → flags) and the flags every command also takes. */
function readmeUsage(): { perCommand: Map<string, Set<string>>; global: Set<string> } {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const use = readme.slice(readme.indexOf('\n## Use'));
  const block = /```\n([\s\S]*?)```/.exec(use)![1]!;
  const perCommand = new Map<string, Set<string>>();
  let current: Set<string> | undefined;
  for (const line of block.split('\n')) {
    const m = /^fixedram ((?:vm )?[a-z]+)/.exec(line);
    if (m) perCommand.set(m[1]!, (current = new Set()));
    for (const f of line.match(/(?<![\w-])--?[a-zA-Z][\w-]*/g) ?? []) current?.add(f);
  }
  const sentence = /Every command also takes ([^\n]*(?:\n[^\n]+)*)/.exec(use)![1]!.split(';')[0]!;
  const global = new Set(sentence.match(/(?<![\w-])--?[a-zA-Z][\w-]*/g) ?? []);
  return { perCommand, global };
}

describe('the package', () => {
  it("require('fixedram') gives the typed core and loads neither commander nor the CLI", () => {
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `
      const api = require('fixedram');
      const loaded = Object.keys(require.cache);
      let blocked = '';
      try { require('fixedram/dist/src/cli'); } catch (e) { blocked = e.code; }
      console.log(JSON.stringify({
        exports: Object.keys(api).sort(),
        commander: loaded.filter((f) => f.includes('/node_modules/commander/')),
        cli: loaded.filter((f) => f.includes('/dist/src/cli/')),
        blocked,
      }));`,
      ],
      { cwd: root, encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stderr);
    const o = JSON.parse(r.stdout) as { exports: string[]; commander: string[]; cli: string[]; blocked: string };
    for (const f of ['save', 'update', 'load', 'verify', 'inspect', 'convert', 'ExitCode', 'FixedramError'])
      assert.ok(o.exports.includes(f), f);
    assert.ok(!o.exports.includes('runCli') && !o.exports.includes('main'), 'the CLI is not part of the library');
    assert.deepEqual(o.commander, [], 'commander was loaded by the library face');
    assert.deepEqual(o.cli, []);
    assert.equal(o.blocked, 'ERR_PACKAGE_PATH_NOT_EXPORTED', 'exports keep the internals private');
  });

  it('the premise of that check: the bin does load commander', () => {
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `
      require(${JSON.stringify(path.join(root, 'dist', 'src', 'cli'))});
      console.log(Object.keys(require.cache).some((f) => f.includes('/node_modules/commander/')))`,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.stdout.trim(), 'true');
  });

  it('the bin, running one command, loads that command alone (start-up counts in every run)', (t) => {
    // a preloaded hook that prints, at exit, which command modules the run loaded
    const dir = tempDir(t);
    const hook = path.join(dir, 'hook.js');
    fs.writeFileSync(
      hook,
      `const path = require('node:path');
      process.on('exit', () => require('node:fs').writeSync(2, 'LOADED ' + JSON.stringify(Object.keys(require.cache)
        .filter((f) => f.includes('/dist/src/cli/commands/')).map((f) => path.basename(f, '.js')).sort()) + '\\n'));`,
    );
    const loaded = (args: string[]): string[] => {
      const r = spawnSync(process.execPath, ['-r', hook, path.join(root, 'bin', 'fixedram.js'), ...args], {
        encoding: 'utf8',
        cwd: dir,
      });
      const line = /^LOADED (.*)$/m.exec(r.stderr);
      assert.ok(line, `no LOADED line: ${r.stderr}`);
      return JSON.parse(line[1]!) as string[];
    };
    // the command modules among them (helpers such as table and totals aside)
    const commandModules = (args: string[]): string[] =>
      loaded(args).filter((m) => commands.some((c) => c.replace(' ', '-') === m));
    // a run that fails early (no such snapshot) still shows what start-up loaded
    assert.deepEqual(
      commandModules(['save', '--update', '-o', path.join(dir, 'none.fxr'), '-b', `a=${path.join(dir, 'a')}`]),
      ['save'],
    );
    assert.deepEqual(commandModules(['verify', path.join(dir, 'none.fxr')]), ['verify']);
    assert.deepEqual(commandModules(['vm', 'save', '--help']), ['vm-save']);
    // the premise: --help builds every command
    const withModule = commands
      .map((c) => c.replace(' ', '-'))
      .filter((m) => fs.existsSync(path.join(root, 'dist', 'src', 'cli', 'commands', `${m}.js`)));
    assert.ok(withModule.length >= 10, `${withModule.join(' ')}`);
    assert.deepEqual(commandModules(['--help']), withModule.sort(), 'help loads every command');
  });

  it('README usage block, --help and the global options agree, command by command', () => {
    const { perCommand, global } = readmeUsage();
    assert.ok(
      global.has('--json') && global.has('--log-level'),
      `the 'Every command also takes' sentence: ${[...global].join(' ')}`,
    );
    assert.deepEqual(
      [...perCommand.keys()].sort(),
      [...commands].sort(),
      'commands in the README usage block vs the program',
    );
    for (const name of commands) {
      const h = fixedram([...name.split(' '), '--help']);
      assert.equal(h.status, 0);
      const inHelp = helpFlags(h.stdout);
      const inReadme = new Set([...perCommand.get(name)!, ...global]);
      if (name === 'completion') inReadme.clear();
      inReadme.add('-h').add('--help');
      if (name === 'completion') {
        assert.deepEqual([...inHelp].sort(), ['--help', '-h']);
        continue;
      }
      assert.deepEqual([...inHelp].sort(), [...inReadme].sort(), `${name}: --help vs README`);
    }
  });

  it("every global option is in each command's help", () => {
    for (const c of kCommands) {
      const help = helpFlags(fixedram([...c.name.split(' '), '--help']).stdout);
      const want = [
        '--json',
        '-q',
        '--quiet',
        '--log-level',
        '--log-format',
        ...(c.globals.channels ? ['-j', '--channels', '--progress'] : []),
        ...(c.globals.followSymlinks ? ['--follow-symlinks'] : []),
      ];
      for (const f of want) assert.ok(help.has(f), `${c.name} --help lacks ${f}`);
    }
  });

  it('no arguments: the usage on stderr, nothing on stdout, exit 2', () => {
    const r = fixedram([]);
    assert.equal(r.status, 2);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^Usage: fixedram <command> \[options\]/);
  });

  it('the man page and the completions are current (scripts/gen-docs.sh)', (t) => {
    if (
      !requirePrereq(
        t,
        spawnSync('help2man', ['--version']).status === 0,
        'help2man is not installed (.ci/install-system installs it)',
      )
    )
      return;
    const out = tempDir(t);
    const g = spawnSync('bash', [path.join(root, 'scripts', 'gen-docs.sh'), out], { cwd: root, encoding: 'utf8' });
    assert.equal(g.status, 0, g.stderr);
    const noDate = (s: string): string => s.replace(/^\.TH .*$/m, '.TH');
    assert.equal(
      noDate(fs.readFileSync(path.join(out, 'man', 'fixedram.1'), 'utf8')),
      noDate(fs.readFileSync(path.join(root, 'man', 'fixedram.1'), 'utf8')),
      'man/fixedram.1 is stale: run scripts/gen-docs.sh',
    );
    for (const f of ['fixedram.bash', '_fixedram']) {
      assert.equal(
        fs.readFileSync(path.join(out, 'completion', f), 'utf8'),
        fs.readFileSync(path.join(root, 'completion', f), 'utf8'),
        `completion/${f} is stale: run scripts/gen-docs.sh`,
      );
    }
    for (const name of commands)
      assert.match(
        fs.readFileSync(path.join(root, 'man', 'fixedram.1'), 'utf8'),
        new RegExp(`\\.SS "fixedram ${name}`),
      );
  });

  it("bash completion offers the commands and a command's flags", (t) => {
    const script = fixedram(['completion', 'bash']).stdout;
    const run = (words: string[]): string[] => {
      const r = spawnSync(
        'bash',
        [
          '-c',
          `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _fixedram; printf '%s\\n' "\${COMPREPLY[@]}"`,
        ],
        { encoding: 'utf8', cwd: tempDir(t) },
      );
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split('\n').filter(Boolean);
    };
    assert.deepEqual(run(['fixedram', 'ver']), ['verify']);
    assert.ok(run(['fixedram', 'save', '--pro']).includes('--progress'));
    assert.deepEqual(run(['fixedram', 'load', 'x', '--progress', 'j']), ['json']);
    const zsh = spawnSync('zsh', ['--version']);
    if (zsh.status === 0) {
      const r = spawnSync('zsh', ['-n', '-c', fixedram(['completion', 'zsh']).stdout]);
      assert.equal(r.status, 0, `zsh -n: ${r.stderr.toString()}`);
    }
  });

  it('package.json: licence file, repository, exports, os, files; the packed file list', () => {
    assert.equal(pkg.license, 'MIT');
    assert.match(fs.readFileSync(path.join(root, 'LICENSE'), 'utf8'), /^MIT License/);
    assert.ok((pkg.repository as { url?: string }).url);
    assert.deepEqual(pkg.os, ['linux']);
    assert.ok((pkg.exports as Record<string, unknown>)['.']);
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const files = new Set((JSON.parse(r.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path));
    for (const f of [
      'LICENSE',
      'README.md',
      'package.json',
      'bin/fixedram.js',
      'dist/src/index.js',
      'dist/src/cli/index.js',
      'native/binding.gyp',
      'native/vendor/xxhash/xxhash.h',
      'native/vendor/xxhash/LICENSE',
      'man/fixedram.1',
      'completion/fixedram.bash',
      'completion/_fixedram',
      'docs/json.md',
      'docs/json.schema.json',
      'docs/format-v1.md',
    ]) {
      assert.ok(files.has(f), `the package lacks ${f}`);
    }
    assert.ok(![...files].some((f) => f.startsWith('dist/test/') || f.startsWith('test/')), 'the package ships tests');
  });
});

describe('core errors speak of options, the CLI of flags', () => {
  it('a symbolic link: the library says option followSymlinks, the CLI --follow-symlinks', async (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    fs.writeFileSync(a, Buffer.alloc(8192, 1));
    fs.symlinkSync(a, path.join(dir, 'link'));
    const { save } = await import('../src/index');
    await assert.rejects(
      save({ output: path.join(dir, 's.fxr'), blocks: [{ name: 'a', path: path.join(dir, 'link') }] }),
      (err: Error) => /use option followSymlinks to accept it/.test(err.message) && !err.message.includes('--'),
    );
    await assert.rejects(
      save({ output: path.join(dir, 's.fxr'), blocks: [{ name: 'a', path: a }], channels: 999 }),
      (err: Error) => /^option channels must be/.test(err.message),
    );
    const r = fixedram(['save', '-o', path.join(dir, 's.fxr'), '-b', `a=${path.join(dir, 'link')}`]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /is a symbolic link; use --follow-symlinks to accept it/);
  });
});
