/**
 * `tcab-backup prune [--dry-run] [--force] [--json]`: ages snapshots out per each target's retention policy,
 * within its safety rails (--force overrides the ones that allow it). With --json the result is printed on
 * failure too ("ok": false), then the exit status says whether the run succeeded.
 */
import { loadTargetsConfig } from '../../config.js';
import { describeSweep } from '../../jobs/prune/chunks.js';
import { PruneFailedError, runPrune, type PruneResult } from '../../jobs/prune/index.js';
import { loadChunkGrace } from '../../jobs/settings.js';
import { loadRetentionConfig } from '../../retention/settings.js';
import { openTargets } from '../../runtime.js';
import { interruptSignal as interruptible, parse, printJson, type Command, type CommandContext } from '../command.js';
import { table } from '../output.js';

export const pruneCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { 'dry-run': { type: 'boolean' }, json: { type: 'boolean' }, force: { type: 'boolean' } });
  const options = { dryRun: Boolean(values['dry-run']), json: Boolean(values.json), force: Boolean(values.force) };
  const targets = loadTargetsConfig(ctx.env);
  const retention = loadRetentionConfig(
    ctx.env,
    targets.targets.map((t) => t.name),
  );
  const chunkGrace = loadChunkGrace(ctx.env);
  let result: PruneResult;
  try {
    result = await runPrune(
      { targets: openTargets(targets, ctx.logger), database: targets.database, logger: ctx.logger, retention, chunkGrace },
      { dryRun: options.dryRun, force: options.force, signal: interruptible() },
    );
  } catch (e) {
    if (e instanceof PruneFailedError) printPrune(ctx, e.result, options.json, false);
    throw e;
  }
  printPrune(ctx, result, options.json, true);
  return 0;
};

function printPrune(ctx: CommandContext, result: PruneResult, json: boolean, ok: boolean): void {
  const out = ctx.io.stdout;
  if (json) {
    printJson(ctx, { ok, ...result });
    return;
  }
  out.write(
    `prune "${result.database}"${result.dryRun ? ' (dry run: nothing removed)' : ''}${result.force ? ' (forced)' : ''}: ${result.dryRun ? 'would remove' : 'removed'} ${result.removed} snapshot(s)\n`,
  );
  const rows = [['TARGET', 'SNAPSHOTS', 'KEPT', result.dryRun ? 'TO REMOVE' : 'REMOVED', 'HELD', 'GARBAGE', 'POLICY']];
  for (const t of result.targets) {
    if (t.error) {
      rows.push([t.target, '-', '-', '-', '-', '-', `ERROR ${t.error}`]);
      continue;
    }
    rows.push([
      t.target,
      String(t.snapshots),
      String(t.kept.length),
      t.refused ? 'refused' : String(t.removed.length),
      String(t.held.length + t.garbage.held.length),
      String(t.garbage.removed.length),
      t.policy,
    ]);
  }
  out.write(table(rows).replace(/^/gm, '  ') + '\n');
  for (const t of result.targets) {
    for (const r of t.rails) out.write(`  ${t.target}: rail ${r.rail}: ${r.message}\n`);
    if (t.refused && !t.rails.includes(t.refused)) out.write(`  ${t.target}: REFUSED (${t.refused.rail}): ${t.refused.message}\n`);
    if (t.removed.length) out.write(`  ${t.target}: ${result.dryRun ? 'would remove' : 'removed'} ${t.removed.join(', ')}\n`);
    for (const h of t.held) out.write(`  ${t.target}: held ${h.id}: ${h.detail}\n`);
    if (t.chunks && (t.chunks.listed > 0 || t.chunks.error || t.chunks.skipped))
      out.write(`  ${t.target}: ${describeSweep(t.chunks, result.dryRun)}\n`);
    for (const l of t.left) out.write(`  ${t.target}: left ${l.id}: ${l.detail}\n`);
    for (const f of t.failures) out.write(`  ${t.target}: FAILED ${f}\n`);
  }
}
