/** `tcab-backup pg check` and `tcab-backup pg drill`: the Postgres jobs, with the function app's settings. */
import { parseArgs } from 'node:util';
import { loadTargetsConfig } from '../config.js';
import { errorMessage, TcabError } from '../errors.js';
import { loadPgCheckConfig, loadPgDrillConfig, runPgCheck, runPgDrill, type PgCheckResult, type PgDrillResult } from '../postgres/index.js';
import { managedIdentity, openTargets } from '../runtime.js';
import { interruptSignal, printJson, UsageError, type Command } from './command.js';

export const pgCommand: Command = async (args, ctx) => {
  const [sub, ...rest] = args;
  let values: { json?: boolean; force?: boolean };
  try {
    values = parseArgs({ args: rest, options: { json: { type: 'boolean' }, force: { type: 'boolean' } }, strict: true }).values;
  } catch (e) {
    throw new UsageError(errorMessage(e));
  }
  if (sub !== 'check' && sub !== 'drill') throw new UsageError('pg takes a subcommand: check or drill');
  if (sub === 'check' && values.force) throw new UsageError('--force belongs to pg drill');
  // Drill records (and check status records) live on the first target: the records are the drill's lock.
  const targetsConfig = loadTargetsConfig(ctx.env);
  const [target] = openTargets(targetsConfig, ctx.logger);
  const credential = managedIdentity();
  try {
    const result = sub === 'check'
      ? await runPgCheck(loadPgCheckConfig(ctx.env), { credential, target: target!, logger: ctx.logger, signal: interruptSignal() })
      : await runPgDrill(loadPgDrillConfig(ctx.env), { credential, target: target!, logger: ctx.logger, signal: interruptSignal() }, { force: Boolean(values.force) });
    if (values.json) printJson(ctx, result);
    else ctx.io.stdout.write(summary(sub, result) + '\n');
    return 0;
  } catch (e) {
    const partial = (e as { result?: unknown }).result;
    if (values.json && partial && e instanceof TcabError) printJson(ctx, { ...(partial as object), error: e.message });
    throw e;
  }
};

function summary(sub: 'check' | 'drill', result: PgCheckResult | PgDrillResult): string {
  // --json is the stable interface; this is one line per server for a terminal.
  const lines = 'enforce' in result
    ? result.servers.map((s) => `pg check ${s.server}: ${s.ok ? 'ok' : `PROBLEM ${s.violations.map((v) => v.message).join("; ")}`}`)
    : result.servers.map((s) => `pg drill ${s.server}: ${s.action}: ${s.detail}`);
  return lines.join('\n') || `pg ${sub}: no servers configured`;
}
