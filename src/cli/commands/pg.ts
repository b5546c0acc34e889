/**
 * `tcab-backup pg check [--json]` and `tcab-backup pg drill [--force] [--json]`: the Postgres jobs, with the
 * function app's settings. This is the `pg` group: flags, the target that keeps the records, the identity, and
 * --json on failure; each subcommand's job and summary line are in pg-check.ts and pg-drill.ts.
 */
import { loadTargetsConfig } from '../../config.js';
import { TcabError } from '../../errors.js';
import type { PgJobDeps } from '../../postgres/index.js';
import { managedIdentity, openTargets } from '../../runtime.js';
import { interruptSignal, parse, printJson, UsageError, type Command } from '../command.js';

/** One `pg` subcommand: its job run with the settings in `env`; `lines` is one line per server for a terminal. */
export type PgSubcommand = (
  env: NodeJS.ProcessEnv,
  deps: PgJobDeps,
  options: { force: boolean },
) => Promise<{ result: object; lines: string[] }>;

export const pgCommand: Command = async (args, ctx) => {
  const [sub, ...rest] = args;
  const { values } = parse(rest, { json: { type: 'boolean' }, force: { type: 'boolean' } });
  if (sub !== 'check' && sub !== 'drill') throw new UsageError('pg takes a subcommand: check or drill');
  if (sub === 'check' && values.force) throw new UsageError('--force belongs to pg drill');
  const run: PgSubcommand = sub === 'check' ? (await import('./pg-check.js')).pgCheck : (await import('./pg-drill.js')).pgDrill;
  // Drill records (and check status records) live on the first target: the records are the drill's lock.
  const targetsConfig = loadTargetsConfig(ctx.env);
  const [target] = openTargets(targetsConfig, ctx.logger);
  const credential = managedIdentity();
  try {
    const { result, lines } = await run(
      ctx.env,
      { credential, target: target!, logger: ctx.logger, signal: interruptSignal() },
      { force: Boolean(values.force) },
    );
    // --json is the stable interface; the summary is one line per server for a terminal.
    if (values.json) printJson(ctx, result);
    else ctx.io.stdout.write((lines.join('\n') || `pg ${sub}: no servers configured`) + '\n');
    return 0;
  } catch (e) {
    const partial = (e as { result?: unknown }).result;
    if (values.json && partial && e instanceof TcabError) printJson(ctx, { ...(partial as object), error: e.message });
    throw e;
  }
};
