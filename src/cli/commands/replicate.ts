/**
 * `tcab-backup replicate [--dry-run] [--json]`: copies the snapshots one target has and another lacks. With --json
 * the result is printed on failure too ("ok": false), then the exit status says whether the run succeeded.
 */
import { loadChunkGrace } from '../../jobs/settings.js';
import { loadTargetsConfig } from '../../config.js';
import { ReplicateFailedError, ReplicateStoppedError, runReplicate, type ReplicateResult } from '../../jobs/replicate/index.js';
import { loadRetentionConfig } from '../../retention/settings.js';
import { openTargets } from '../../runtime.js';
import { formatBytes } from '../../util/format.js';
import { CliJobTimeoutError, parse, printJson, runBounded, type Command, type CommandContext } from '../command.js';
import { table } from '../output.js';

export const replicateCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { 'dry-run': { type: 'boolean' }, json: { type: 'boolean' } });
  const options = { dryRun: Boolean(values['dry-run']), json: Boolean(values.json) };
  const targets = loadTargetsConfig(ctx.env);
  const retention = loadRetentionConfig(
    ctx.env,
    targets.targets.map((t) => t.name),
  );
  // The job stops at TCAB_BACKUP_JOB_TIMEOUT, as in the functions, whatever the format: one rule for every writer.
  const chunkGrace = loadChunkGrace(ctx.env);
  const targetList = openTargets(targets, ctx.logger);
  let result: ReplicateResult;
  try {
    result = await runBounded(
      ctx,
      chunkGrace.jobTimeoutMs,
      (signal) =>
        runReplicate(
          {
            targets: targetList,
            database: targets.database,
            logger: ctx.logger,
            retention,
            chunkGraceMs: chunkGrace.graceMs,
            chunkJobTimeoutMs: chunkGrace.jobTimeoutMs,
          },
          { dryRun: options.dryRun, signal },
        ),
      (cause) => {
        const done = cause instanceof ReplicateStoppedError ? cause.result : undefined;
        const copied = done?.copied ?? 0;
        const error = new CliJobTimeoutError(
          'replicate',
          ctx.env,
          chunkGrace,
          `${copied} snapshot cop${copied === 1 ? 'y' : 'ies'} completed and checked before it stopped${done && copied ? ` (${formatBytes(done.bytes)})` : ''}; nothing half-written is visible: a copy shows on its target only once its manifest is written, after all its chunks or its artifact`,
          'run it again to go on: it copies only what is still missing',
        );
        if (options.json) printJson(ctx, { ok: false, error: error.message, ...(done ?? {}) });
        else if (done) printReplicate(ctx, done, false, false);
        return error;
      },
    );
  } catch (e) {
    if (e instanceof ReplicateFailedError) printReplicate(ctx, e.result, options.json, false);
    throw e;
  }
  printReplicate(ctx, result, options.json, true);
  return 0;
};

function printReplicate(ctx: CommandContext, result: ReplicateResult, json: boolean, ok: boolean): void {
  const out = ctx.io.stdout;
  if (json) {
    printJson(ctx, { ok, ...result });
    return;
  }
  const planned = result.targets.reduce((n, t) => n + t.planned.length, 0);
  out.write(
    result.dryRun
      ? `replicate "${result.database}" (dry run): would copy ${planned} snapshot(s), ${formatBytes(result.targets.reduce((n, t) => n + t.planned.reduce((b, p) => b + p.bytes, 0), 0))}\n`
      : `replicate "${result.database}": copied ${result.copied} snapshot(s), ${formatBytes(result.bytes)}, ${result.failed} failed, in ${(result.durationMs / 1000).toFixed(1)} s\n`,
  );
  const rows = [['TARGET', 'HAD', result.dryRun ? 'TO COPY' : 'COPIED', 'BYTES', 'SKIPPED', 'FAILED']];
  for (const t of result.targets) {
    if (t.error) {
      rows.push([t.target, '-', '-', '-', '-', `ERROR ${t.error}`]);
      continue;
    }
    const copies = result.dryRun ? t.planned : t.copied;
    rows.push([
      t.target,
      String(t.present),
      String(copies.length),
      formatBytes(copies.reduce((b, c) => b + c.bytes, 0)),
      String(t.skipped.length),
      String(t.failed.length),
    ]);
  }
  out.write(table(rows).replace(/^/gm, '  ') + '\n');
  for (const t of result.targets) {
    if (result.dryRun)
      for (const p of t.planned)
        out.write(`  would copy ${p.id} to "${t.target}" from "${p.from}"${p.repairs ? ` (repairs: ${p.repairs})` : ''}\n`);
    for (const s of t.skipped) out.write(`  skipped ${s.id} for "${t.target}": ${s.reason}\n`);
    for (const f of t.failed) out.write(`  FAILED ${f.id} to "${t.target}" ${f.error}\n`);
  }
}
