/**
 * `tcab-backup replicate [--dry-run] [--json]` and `tcab-backup prune [--dry-run] [--force] [--json]`.
 * With --json the result object is printed, on failure too (with "ok": false), then the exit status says
 * whether the run succeeded.
 */
import { parseArgs } from 'node:util';
import { loadTargetsConfig } from '../config.js';
import { errorMessage } from '../errors.js';
import { PruneFailedError, runPrune, type PruneResult } from '../jobs/prune/index.js';
import { ReplicateFailedError, runReplicate, type ReplicateResult } from '../jobs/replicate/index.js';
import { loadRetentionConfig } from '../retention/settings.js';
import { openTargets } from '../runtime.js';
import { interruptSignal as interruptible, UsageError } from './args.js';
import type { Command, CommandContext } from './commands.js';
import { formatBytes } from '../util/format.js';
import { table } from './output.js';

function flags(args: string[], withForce: boolean): { dryRun: boolean; json: boolean; force: boolean } {
  try {
    const { values } = parseArgs({
      args, strict: true, allowPositionals: false,
      options: { 'dry-run': { type: 'boolean' }, json: { type: 'boolean' }, ...(withForce ? { force: { type: 'boolean' } } : {}) },
    });
    return { dryRun: Boolean(values['dry-run']), json: Boolean(values.json), force: Boolean((values as { force?: boolean }).force) };
  } catch (e) {
    throw new UsageError(errorMessage(e));
  }
}


function settings(ctx: CommandContext) {
  const targets = loadTargetsConfig(ctx.env);
  const retention = loadRetentionConfig(ctx.env, targets.targets.map((t) => t.name));
  return { targets, retention };
}

export const replicateCommand: Command = async (args, ctx) => {
  const options = flags(args, false);
  const { targets, retention } = settings(ctx);
  let result: ReplicateResult;
  try {
    result = await runReplicate(
      { targets: openTargets(targets, ctx.logger), database: targets.database, logger: ctx.logger, retention },
      { dryRun: options.dryRun, signal: interruptible() },
    );
  } catch (e) {
    if (e instanceof ReplicateFailedError) printReplicate(ctx, e.result, options.json, false);
    throw e;
  }
  printReplicate(ctx, result, options.json, true);
  return 0;
};

export const pruneCommand: Command = async (args, ctx) => {
  const options = flags(args, true);
  const { targets, retention } = settings(ctx);
  let result: PruneResult;
  try {
    result = await runPrune(
      { targets: openTargets(targets, ctx.logger), database: targets.database, logger: ctx.logger, retention },
      { dryRun: options.dryRun, force: options.force, signal: interruptible() },
    );
  } catch (e) {
    if (e instanceof PruneFailedError) printPrune(ctx, e.result, options.json, false);
    throw e;
  }
  printPrune(ctx, result, options.json, true);
  return 0;
};

function printReplicate(ctx: CommandContext, result: ReplicateResult, json: boolean, ok: boolean): void {
  const out = ctx.io.stdout;
  if (json) {
    out.write(JSON.stringify({ ok, ...result }, null, 2) + '\n');
    return;
  }
  const planned = result.targets.reduce((n, t) => n + t.planned.length, 0);
  out.write(result.dryRun
    ? `replicate "${result.database}" (dry run): would copy ${planned} snapshot(s), ${formatBytes(result.targets.reduce((n, t) => n + t.planned.reduce((b, p) => b + p.bytes, 0), 0))}\n`
    : `replicate "${result.database}": copied ${result.copied} snapshot(s), ${formatBytes(result.bytes)}, ${result.failed} failed, in ${(result.durationMs / 1000).toFixed(1)} s\n`);
  const rows = [['TARGET', 'HAD', result.dryRun ? 'TO COPY' : 'COPIED', 'BYTES', 'SKIPPED', 'FAILED']];
  for (const t of result.targets) {
    if (t.error) {
      rows.push([t.target, '-', '-', '-', '-', `ERROR ${t.error}`]);
      continue;
    }
    const copies = result.dryRun ? t.planned : t.copied;
    rows.push([t.target, String(t.present), String(copies.length), formatBytes(copies.reduce((b, c) => b + c.bytes, 0)), String(t.skipped.length), String(t.failed.length)]);
  }
  out.write(table(rows).replace(/^/gm, '  ') + '\n');
  for (const t of result.targets) {
    if (result.dryRun) for (const p of t.planned) out.write(`  would copy ${p.id} to "${t.target}" from "${p.from}"${p.repairs ? ` (repairs: ${p.repairs})` : ''}\n`);
    for (const s of t.skipped) out.write(`  skipped ${s.id} for "${t.target}": ${s.reason}\n`);
    for (const f of t.failed) out.write(`  FAILED ${f.id} to "${t.target}" ${f.error}\n`);
  }
}

function printPrune(ctx: CommandContext, result: PruneResult, json: boolean, ok: boolean): void {
  const out = ctx.io.stdout;
  if (json) {
    out.write(JSON.stringify({ ok, ...result }, null, 2) + '\n');
    return;
  }
  out.write(`prune "${result.database}"${result.dryRun ? ' (dry run: nothing removed)' : ''}${result.force ? ' (forced)' : ''}: ${result.dryRun ? 'would remove' : 'removed'} ${result.removed} snapshot(s)\n`);
  const rows = [['TARGET', 'SNAPSHOTS', 'KEPT', result.dryRun ? 'TO REMOVE' : 'REMOVED', 'HELD', 'GARBAGE', 'POLICY']];
  for (const t of result.targets) {
    if (t.error) {
      rows.push([t.target, '-', '-', '-', '-', '-', `ERROR ${t.error}`]);
      continue;
    }
    rows.push([t.target, String(t.snapshots), String(t.kept.length), t.refused ? 'refused' : String(t.removed.length),
      String(t.held.length + t.garbage.held.length), String(t.garbage.removed.length), t.policy]);
  }
  out.write(table(rows).replace(/^/gm, '  ') + '\n');
  for (const t of result.targets) {
    for (const r of t.rails) out.write(`  ${t.target}: rail ${r.rail}: ${r.message}\n`);
    if (t.refused && !t.rails.includes(t.refused)) out.write(`  ${t.target}: REFUSED (${t.refused.rail}): ${t.refused.message}\n`);
    if (t.removed.length) out.write(`  ${t.target}: ${result.dryRun ? 'would remove' : 'removed'} ${t.removed.join(', ')}\n`);
    for (const h of t.held) out.write(`  ${t.target}: held ${h.id}: ${h.detail}\n`);
    for (const l of t.left) out.write(`  ${t.target}: left ${l.id}: ${l.detail}\n`);
    for (const f of t.failures) out.write(`  ${t.target}: FAILED ${f}\n`);
  }
}
