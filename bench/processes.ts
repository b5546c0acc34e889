/**
 * Running the things being measured as separate processes, as an operator runs them: the built CLI
 * (`node <src/node-flags.ts> dist/src/cli/main.js ...`) and shell commands. Wall time is taken from spawn to exit; peak memory
 * comes from a ProcessTreeWatcher on the child. Output is kept only in bounded amounts (the client's --json
 * answer, the tail of stderr to explain a failure).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { TcabError } from '../src/errors.js';
import { redact } from '../src/log.js';
import { NODE_FLAGS } from '../src/node-flags.js';
import { ProcessTreeWatcher, type TreePeaks } from './memory.js';

const OUTPUT_LIMIT = 4 * 1024 * 1024;
const STDERR_TAIL = 4000;

/** The package root: the nearest folder above this module with tcab-backup's package.json. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'tcab-backup') return dir;
    const up = dirname(dir);
    if (up === dir)
      throw new TcabError('Cannot find the tcab-backup package root above the benchmark', {
        hint: 'run the benchmark with npm run bench from the repository',
      });
    dir = up;
  }
}

/** The built CLI that operators run; the benchmark measures it, not the TypeScript sources. */
export function cliPath(): string {
  const path = join(repoRoot(), 'dist', 'src', 'cli', 'main.js');
  if (!existsSync(path)) throw new TcabError(`The built CLI ${path} is missing`, { hint: 'npm run build (npm run bench builds first)' });
  return path;
}

/**
 * The arguments of `node` that run the built CLI with `args` as production runs it: with the Node options of
 * src/node-flags.ts, which the CLI's `#!` line, the agent's systemd unit and the function app also set.
 */
export function cliArgs(...args: string[]): string[] {
  return [...NODE_FLAGS, cliPath(), ...args];
}

/** A child must not outlive the benchmark, even when it is interrupted. */
export function killOnExit(child: ChildProcess): () => void {
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  return () => process.off('exit', kill);
}

export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  wallMs: number;
  stdout: string;
  /** stderr (its first 4 MB), for the log lines a caller reads its figures from. */
  stderr: string;
  /** The last few KB of stderr, with registered secrets masked, to explain a failure. */
  stderrTail: string;
  memory: TreePeaks;
}

/** Runs a command to completion, timing it and watching its memory (and its children's). */
export function runWatched(command: string, args: string[], options: { env: NodeJS.ProcessEnv; cwd?: string }): Promise<Finished> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(command, args, { env: options.env, cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    const forget = killOnExit(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (t: string) => {
      if (stdout.length < OUTPUT_LIMIT) stdout += t;
    });
    let tail = '';
    child.stderr!.setEncoding('utf8').on('data', (t: string) => {
      if (stderr.length < OUTPUT_LIMIT) stderr += t;
      tail = (tail + t).slice(-STDERR_TAIL);
    });
    if (child.pid === undefined) {
      child.once('error', (err) => {
        forget();
        reject(new TcabError(`Cannot start ${command}: ${err.message}`, { hint: `that ${command} is installed and on PATH`, cause: err }));
      });
      return;
    }
    const watcher = new ProcessTreeWatcher(child.pid);
    child.once('close', (code, signal) => {
      const wallMs = performance.now() - started;
      forget();
      resolve({ code, signal, wallMs, stdout, stderr, stderrTail: redact(tail.trim()), memory: watcher.stop() });
    });
  });
}

/** "exited with status 1" or "was killed by SIGKILL", for messages. */
export function describeExit(f: { code: number | null; signal: NodeJS.Signals | null }): string {
  return f.signal ? `was killed by ${f.signal}` : `exited with status ${f.code}`;
}
