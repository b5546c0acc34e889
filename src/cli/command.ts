/**
 * What every CLI command is and shares: the `Command` signature and its context, strict flag parsing
 * (a bad flag is a `UsageError`: exit 2 with the usage), JSON output, and Ctrl-C as an abort signal.
 * One file per command lives in ./commands/; main.ts maps each name to its file.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { errorMessage, TcabError } from '../errors.js';
import { formatDuration } from '../util/duration.js';
import type { Logger } from '../log.js';

export interface CommandContext {
  io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WriteStream; stdin: NodeJS.ReadableStream; env: NodeJS.ProcessEnv };
  logger: Logger;
  env: NodeJS.ProcessEnv;
}

/** Runs with the arguments after the command's name; resolves to the exit status, throws on failure. */
export type Command = (args: string[], ctx: CommandContext) => Promise<number>;

export class UsageError extends Error {}

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T, allowPositionals = false) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals });
  } catch (e) {
    throw new UsageError(errorMessage(e));
  }
}

/** The `--json` output: one document, indented, on stdout. */
export function printJson(ctx: Pick<CommandContext, 'io'>, value: unknown): void {
  ctx.io.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

let interrupt: AbortController | undefined;

/** Aborts when the operator presses Ctrl-C or the service manager stops us; one listener pair per process. */
export function interruptSignal(): AbortSignal {
  if (!interrupt) {
    const controller = new AbortController();
    const stop = () => controller.abort(new Error('interrupted'));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    interrupt = controller;
  }
  return interrupt.signal;
}

/** How long a job stopped at its timeout gets to settle (close its streams, remove what it staged): as the functions'. */
const SETTLE_GRACE_MS = 60_000;

/**
 * Runs a writing job (snapshot, replicate) as the functions do: its signal aborts on an interrupt, as
 * `interruptSignal`, and at `timeoutMs` (TCAB_BACKUP_JOB_TIMEOUT, J of docs/format-2.md), so that no writer
 * runs longer than the J the chunk protocol counts on, wherever it runs. At J the job is aborted and given
 * up to a minute to settle; then `stopped` makes the command's error from the job's own (undefined when it
 * settled without one, or not in that minute). An interrupt, or a failure before J, is thrown as the job threw it.
 */
export async function runBounded<T>(
  ctx: Pick<CommandContext, 'logger'>,
  timeoutMs: number,
  run: (signal: AbortSignal) => Promise<T>,
  stopped: (cause: unknown) => Error,
): Promise<T> {
  const timeout = new AbortController();
  const signal = AbortSignal.any([interruptSignal(), timeout.signal]);
  const outcome = Promise.resolve()
    .then(() => run(signal))
    .then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error }),
    );
  let timer: NodeJS.Timeout | undefined;
  const reached = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  const first = await Promise.race([outcome, reached]);
  clearTimeout(timer);
  if (first !== 'timeout') {
    if (first.ok) return first.value;
    throw first.error;
  }
  ctx.logger.error('job.timed_out', { timeoutMs });
  timeout.abort(new Error(`stopped at TCAB_BACKUP_JOB_TIMEOUT (${timeoutMs} ms)`));
  let wait: NodeJS.Timeout | undefined;
  const settled = await Promise.race([
    outcome,
    new Promise<undefined>((resolve) => {
      wait = setTimeout(() => resolve(undefined), Math.min(timeoutMs, SETTLE_GRACE_MS));
    }),
  ]);
  clearTimeout(wait);
  if (!settled) ctx.logger.error('job.not_settled', { note: 'the stopped job did not settle; the process ends it when it exits' });
  throw stopped(settled && !settled.ok ? settled.error : undefined);
}

/**
 * A CLI job stopped at TCAB_BACKUP_JOB_TIMEOUT: names the command, the setting and its value, what was done
 * (`done`) and what to do (`next`), and keeps the chunk grace's rule in view for a longer timeout.
 */
export class CliJobTimeoutError extends TcabError {
  constructor(command: string, env: NodeJS.ProcessEnv, limits: { jobTimeoutMs: number; graceMs: number }, done: string, next: string) {
    const set = env.TCAB_BACKUP_JOB_TIMEOUT?.trim();
    const value = set ? `TCAB_BACKUP_JOB_TIMEOUT=${set}` : `TCAB_BACKUP_JOB_TIMEOUT (${formatDuration(limits.jobTimeoutMs)}, the default)`;
    super(
      `The ${command} command was stopped at ${value}, the longest a snapshot or replicate job may run, on the CLI as in the functions (docs/format-2.md counts on it): ${done}`,
      {
        code: 'JOB_TIMEOUT',
        hint: `${next}; or raise TCAB_BACKUP_JOB_TIMEOUT, keeping TCAB_BACKUP_CHUNK_GRACE (${formatDuration(limits.graceMs)}) above 4 x it`,
      },
    );
    this.name = 'CliJobTimeoutError';
  }
}
