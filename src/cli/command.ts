/**
 * What every CLI command is and shares: the `Command` signature and its context, strict flag parsing
 * (a bad flag is a `UsageError`: exit 2 with the usage), JSON output, and Ctrl-C as an abort signal.
 * One file per command lives in ./commands/; main.ts maps each name to its file.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { errorMessage } from '../errors.js';
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
