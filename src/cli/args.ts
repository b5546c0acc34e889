/** What every CLI command shares: strict flag parsing, JSON output, and Ctrl-C as an abort signal. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { errorMessage } from '../errors.js';

export class UsageError extends Error {}

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T, allowPositionals = false) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals });
  } catch (e) {
    throw new UsageError(errorMessage(e));
  }
}

export function printJson(io: { stdout: NodeJS.WritableStream }, value: unknown): void {
  io.stdout.write(JSON.stringify(value, null, 2) + '\n');
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
