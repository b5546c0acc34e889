/**
 * `tcab-backup verify [--all] [--target NAME] [--json]`: re-reads stored snapshots (the rotating share the verify
 * timer reads, or --all) and checks each against its manifest's sha256, with the timer's settings.
 */
import { loadTargetsConfig } from '../../config.js';
import { loadChunkGrace, loadVerifySettings } from '../../jobs/settings.js';
import { VerifyFailedError, runVerifyRotation, type VerifyRotationResult } from '../../jobs/verify/index.js';
import { openTargets } from '../../runtime.js';
import { formatDuration } from '../../util/duration.js';
import { formatBytes } from '../../util/format.js';
import { interruptSignal as interruptible, parse, printJson, type Command } from '../command.js';

export const verifyCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { all: { type: 'boolean' }, target: { type: 'string' }, json: { type: 'boolean' } });
  const config = loadTargetsConfig(ctx.env);
  const settings = loadVerifySettings(ctx.env);
  const { graceMs } = loadChunkGrace(ctx.env);
  const print = (result: VerifyRotationResult, ok: boolean) => {
    if (values.json) return printJson(ctx, { ok, withinMs: settings.withinMs, intervalMs: settings.intervalMs, ...result });
    for (const t of result.targets) {
      if (!t.reachable) {
        ctx.io.stdout.write(`target ${t.target} (${t.url}): ERROR ${t.error}\n`);
        continue;
      }
      const found = [...(t.failed ? [`${t.failed} DAMAGED`] : []), ...(t.unreadable ? [`${t.unreadable} UNREADABLE`] : [])];
      ctx.io.stdout.write(
        `target ${t.target}: read ${t.checked} of ${t.snapshots} snapshot(s), ${formatBytes(t.bytes)}, ${found.length ? found.join(', ') : 'all match their manifests'}; ` +
          `longest any snapshot has gone unread: ${formatDuration(t.longestUnreadMs)} (window ${formatDuration(settings.withinMs)})\n`,
      );
      if (t.renewals) {
        const age = Date.now() - Date.parse(t.renewals.oldest);
        ctx.io.stdout.write(
          `  ${age > graceMs ? 'WARNING ' : ''}${t.renewals.pending} renewal record(s) waiting for their check, the oldest ${formatDuration(age)} old` +
            `${age > graceMs ? ` (longer than TCAB_BACKUP_CHUNK_GRACE: run a snapshot or replicate against target ${t.target})` : ' (the next snapshot or replicate run J after each checks it)'}\n`,
        );
      }
    }
    for (const o of result.outcomes.filter((x) => !x.ok)) {
      ctx.io.stdout.write(
        o.verdict === 'unreadable'
          ? `  UNREADABLE target ${o.target} snapshot ${o.id}: ${o.error}\n`
          : `  DAMAGED target ${o.target} snapshot ${o.id}: ${o.error}\n`,
      );
    }
  };
  try {
    const result = await runVerifyRotation(
      { targets: openTargets(config, ctx.logger, values.target), database: config.database, logger: ctx.logger, chunkGraceMs: graceMs },
      { withinMs: settings.withinMs, intervalMs: settings.intervalMs, all: Boolean(values.all), signal: interruptible() },
    );
    print(result, true);
    return 0;
  } catch (e) {
    if (e instanceof VerifyFailedError) print(e.result, false);
    throw e;
  }
};
