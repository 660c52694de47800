/**
 * What the CLI writes besides results: human warning/error lines, JSON logs only when asked,
 * -q, stdout failures (exit 4, one line) and closed pipes (quiet), and the progress display
 * (fits 50 columns, never NaN/NF, erased before messages, plain lines off a terminal, a real
 * pseudo-terminal through `script`).
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { StderrLines } from '../src/cli';
import { makeCliLogger } from '../src/log';
import { progressReporter, renderBar, renderPlain } from '../src/progress';
import { fixedram, kBin } from './support/cli';
import { requirePrereq } from './support/prereq';
import { makeBlock } from './support/stamp';
import { tempDir } from './support/tmp';

class Tty {
  text = '';
  isTTY = true;
  constructor(public columns: number) {}
  write(s: string): boolean {
    this.text += s;
    return true;
  }
}

const kClear = '\r\x1b[K';
const frames = (s: string): string[] =>
  s
    .split(kClear)
    .map((f) => f.replace(/\n[\s\S]*$/, ''))
    .filter(Boolean);

describe('stderr: human lines, logs when asked', () => {
  it('warnings and errors are `fixedram: warning|error: …` lines; JSON only from --log-level info or --log-format json', () => {
    const lines: string[] = [];
    const human = makeCliLogger('warn', 'auto', (l) => lines.push(l));
    human.warn({ path: '/x/snap.tmp' }, 'the file system refuses O_DIRECT; using buffered I/O');
    human.warn('channel 2: short write');
    human.info('not shown at warn');
    human.debug({ a: 1 }, 'not shown');
    human.error('bad');
    assert.deepEqual(lines, [
      'fixedram: warning: the file system refuses O_DIRECT; using buffered I/O ("/x/snap.tmp")',
      'fixedram: warning: channel 2: short write',
      'fixedram: error: bad',
    ]);
    const json: string[] = [];
    makeCliLogger('info', 'auto', (l) => json.push(l)).info({ a: 1 }, 'hello');
    makeCliLogger('warn', 'json', (l) => json.push(l)).warn('w');
    assert.equal(json.length, 2);
    assert.deepEqual(
      json.map((l) => (JSON.parse(l) as { msg: string }).msg),
      ['hello', 'w'],
    );
  });

  it('a real run: no JSON on stderr by default; --log-level debug gives JSON lines; -q prints nothing on success', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 20);
    const s = fixedram(['save', '-o', path.join(dir, 's.fxr'), '-b', `a=${a}`]);
    assert.equal(s.status, 0, s.stderr);
    assert.equal(s.stderr, '');
    const d = fixedram([
      'save',
      '-o',
      path.join(dir, 's.fxr'),
      '-b',
      `a=${a}`,
      '--log-level',
      'debug',
      '--progress',
      'none',
    ]);
    assert.equal(d.status, 0, d.stderr);
    const logLines = d.stderr.split('\n').filter(Boolean);
    assert.ok(logLines.length > 0, 'debug logged something');
    for (const l of logLines) assert.equal((JSON.parse(l) as { name: string }).name, 'fixedram');
    const q = fixedram(['verify', path.join(dir, 's.fxr'), '-q']);
    assert.equal(q.status, 0);
    assert.equal(q.stdout + q.stderr, '');
    const e = fixedram(['verify', path.join(dir, 'missing.fxr'), '-q']);
    assert.equal(e.status, 4);
    assert.match(e.stderr, /^fixedram: error: ENOENT: no such file or directory, open '.*missing\.fxr'\n$/);
  });

  it("stdout that fails (/dev/full): one line, exit 4; a closed pipe: quiet, the command's own status", (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 20);
    assert.equal(fixedram(['save', '-o', path.join(dir, 's.fxr'), '-b', `a=${a}`]).status, 0);
    for (const args of [
      ['inspect', path.join(dir, 's.fxr'), '--json'],
      ['verify', path.join(dir, 's.fxr')],
    ]) {
      const r = spawnSync('sh', ['-c', `"${process.execPath}" "${kBin}" "$@" > /dev/full`, 'sh', ...args], {
        encoding: 'utf8',
      });
      assert.equal(r.status, 4, r.stderr);
      assert.equal(
        r.stderr,
        'fixedram: error: cannot write to standard output: ENOSPC: no space left on device, write\n',
      );
    }
    const p = spawnSync(
      'bash',
      [
        '-c',
        `"${process.execPath}" "${kBin}" inspect "$1" --json | head -c1 >/dev/null; exit \${PIPESTATUS[0]}`,
        'bash',
        path.join(dir, 's.fxr'),
      ],
      { encoding: 'utf8' },
    );
    assert.equal(p.status, 0);
    assert.equal(p.stderr, '');
  });
});

describe('progress', () => {
  const ev = (done: number, total: number) => ({ command: 'save', bytesDone: done, bytesTotal: total });

  it('the bar fits the width, shows rate, elapsed and ETA, and never NaN/NF/Infinity', () => {
    for (const width of [20, 50, 80, 200]) {
      for (const [done, total, ms] of [
        [0, 0, 0],
        [0, 1 << 30, 0],
        [1, 1 << 30, 1],
        [512 << 20, 1 << 30, 2500],
        [1 << 30, 1 << 30, 9000],
      ] as const) {
        const line = renderBar(ev(done, total), ms, width);
        assert.ok(line.length <= width - 1, `${width}: ${JSON.stringify(line)} is ${line.length} columns`);
        assert.doesNotMatch(line, /NaN|NF|Infinity|undefined/);
      }
    }
    const mid = renderBar(ev(512 << 20, 1 << 30), 2500, 80);
    assert.match(mid, /^save {2}50% \[=+>? *\] {2}512\.0 MiB\/1\.00 GiB {2}204\.8 MiB\/s {2}0:02 {2}ETA 0:02$/);
    assert.match(renderBar(ev(0, 1 << 30), 0, 80), /--\/s {2}0:00 {2}ETA --:--$/);
    assert.match(
      renderPlain(ev(1 << 20, 4 << 20), 1000),
      /^fixedram: save: 25% 1\.0 MiB\/4\.0 MiB, 1\.0 MiB\/s, 0:01 elapsed$/,
    );
  });

  it('the bar is erased before any message and at the end (what main() does on SIGINT)', () => {
    const tty = new Tty(50);
    const lines = new StderrLines(tty as unknown as NodeJS.WriteStream);
    let now = 0;
    const rep = progressReporter('bar', tty, () => now);
    lines.attach(rep);
    rep.sink(ev(0, 100 << 20));
    now = 500;
    rep.sink(ev(10 << 20, 100 << 20));
    assert.ok(tty.text.includes('save'), 'the premise: a bar was drawn');
    lines.clearProgress();
    lines.line('fixedram: SIGINT: stopping (again to exit at once)');
    assert.ok(
      tty.text.endsWith(`${kClear}fixedram: SIGINT: stopping (again to exit at once)\n`),
      JSON.stringify(tty.text),
    );
    now = 700;
    rep.sink(ev(20 << 20, 100 << 20));
    lines.warning('something');
    assert.ok(tty.text.endsWith(`${kClear}fixedram: warning: something\n`));
    rep.sink(ev(100 << 20, 100 << 20));
    rep.stop();
    assert.ok(tty.text.endsWith(kClear), 'erased at the end');
    const bars = frames(tty.text).filter((f) => f.startsWith('save'));
    assert.ok(bars.length >= 3);
    for (const f of bars) assert.ok(f.length <= 49, JSON.stringify(f));
  });

  it('--progress bar on a non-terminal prints plain lines; auto prints nothing there', (t) => {
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 64);
    const bar = fixedram(['save', '-o', path.join(dir, 's.fxr'), '-b', `a=${a}`, '--progress', 'bar']);
    assert.equal(bar.status, 0, bar.stderr);
    const ls = bar.stderr.split('\n').filter(Boolean);
    assert.ok(ls.length >= 1);
    for (const l of ls) assert.match(l, /^fixedram: save: \d+% .* elapsed$/);
    assert.match(ls.at(-1)!, /^fixedram: save: 100% /);
    const auto = fixedram(['save', '-o', path.join(dir, 's2.fxr'), '-b', `a=${a}`]);
    assert.equal(auto.stderr, '');
  });

  it('in a real 50-column pseudo-terminal (script): every frame fits, the bar is erased before the summary', (t) => {
    const script = spawnSync('script', ['--version'], { encoding: 'utf8' });
    if (!requirePrereq(t, script.status === 0, 'script (util-linux) is not installed')) return;
    const dir = tempDir(t);
    const a = path.join(dir, 'a.ram');
    makeBlock(a, 1, 4096);
    const cmd = `stty cols 50 rows 24; "${process.execPath}" "${kBin}" save -o "${path.join(dir, 's.fxr')}" -b a="${a}" -j 1`;
    const r = spawnSync('script', ['-qec', cmd, '/dev/null'], {
      encoding: 'utf8',
      env: { ...process.env, TERM: 'xterm' },
    });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const out = r.stdout.replace(/\r\n/g, '\n');
    assert.ok(out.includes(kClear), `the premise: a bar was drawn on the terminal: ${JSON.stringify(out)}`);
    for (const f of frames(out)) {
      if (f.startsWith('saved') || f.startsWith('  ')) continue;
      assert.ok(f.length <= 49, `frame of ${f.length} columns: ${JSON.stringify(f)}`);
      assert.doesNotMatch(f, /NaN|NF|Infinity/);
    }
    const summary = out.indexOf('saved 1 block');
    assert.ok(summary > 0);
    assert.ok(
      out.lastIndexOf(kClear) < summary && out.slice(out.lastIndexOf(kClear) + kClear.length, summary) === '',
      `the bar is erased right before the summary: ${JSON.stringify(out.slice(Math.max(0, summary - 120), summary + 20))}`,
    );
  });
});
