/** `tcab-backup drill [--target NAME] [--app] [--json]`: the restore drill, the same job as the drill timer, with the same settings. */
import { appDrillText, provenText, type DrillRecord } from '../../catalog/drill-record.js';
import { loadTargetsConfig } from '../../config.js';
import { drillAppSource, drillLiveSource } from '../../jobs/deps.js';
import { DrillFailedError, runDrill, type DrillResult } from '../../jobs/drill/index.js';
import { loadDrillSettings } from '../../jobs/settings.js';
import { openTargets } from '../../runtime.js';
import { shortMs } from '../../status/svg.js';
import { formatDuration } from '../../util/duration.js';
import { formatBytes } from '../../util/format.js';
import { interruptSignal as interruptible, parse, printJson, type Command } from '../command.js';

function drillLines(r: DrillRecord): string {
  if (!r.ok) {
    const lines = [`target ${r.target}: FAILED ${r.error}`];
    if (r.app && !r.app.passed) {
      lines.push(
        `  application drill: failed at step ${r.app.failedStep ?? 'unknown'}${r.app.checks.length ? ` after ${r.app.checks.map((c) => `${c.name} ${c.ok ? 'ok' : 'FAILED'} ${c.ms} ms`).join(', ')}` : ''}`,
      );
      if (r.app.backendLog?.length) lines.push("  backend's last log lines:", ...r.app.backendLog.slice(-10).map((l) => `    ${l}`));
    }
    return lines.join('\n') + '\n';
  }
  const rp = r.recoveryPoint!;
  const how = r.checks?.method === 'stream' ? 'verified while streaming' : 'restored and verified';
  // With the application drill, the recovery time is the file's plus the backend's start to serving.
  const fileMs = (r.recoveryTimeMs ?? 0) - (r.app?.startToServingMs ?? 0);
  const lines = [
    `target ${r.target}: snapshot ${r.snapshot!.id} ${how} in ${shortMs(fileMs)} ` +
      `(${formatBytes(r.snapshot!.artifactBytes)} ${r.snapshot!.compression} -> ${formatBytes(r.snapshot!.bytes)}); snapshot age ${formatDuration(rp.snapshotAgeMs)}`,
    `  proved: ${provenText(r.checks)}${r.checks?.reason ? ` (streamed because ${r.checks.reason})` : ''}`,
  ];
  if (r.app)
    lines.push(
      `  application: ${appDrillText(r.app)}`,
      `  recovery time ${shortMs(r.recoveryTimeMs ?? 0)}: the file ${shortMs(fileMs)}, then the backend to serving ${shortMs(r.app.startToServingMs ?? 0)}`,
    );
  if (r.live.available) {
    lines.push(
      `  runs published since the snapshot: ${rp.runsSince ?? 'unknown'}; newest published_at live ${rp.newestPublishedAt.live ?? '-'}, in the snapshot ${rp.newestPublishedAt.snapshot ?? '-'}`,
    );
    lines.push(
      `  tables (snapshot -> live): ${Object.entries(r.tables)
        .map(
          ([n, t]) =>
            `${n} ${t.snapshot ?? '-'} -> ${t.live ?? '-'}${t.difference !== null ? ` (${t.difference >= 0 ? '+' : ''}${t.difference})` : ''}`,
        )
        .join(', ')}`,
    );
  }
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  return lines.join('\n') + '\n';
}

/** tcab-backup drill [--target NAME] [--app] [--json]; --app runs the application drill whatever TCAB_BACKUP_DRILL_APP says. */
export const drillCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { target: { type: 'string' }, app: { type: 'boolean' }, json: { type: 'boolean' } });
  const config = loadTargetsConfig(ctx.env);
  const settings = loadDrillSettings(ctx.env);
  const live = drillLiveSource(ctx.env, ctx.logger);
  const app = values.app || settings.app ? drillAppSource(ctx.env, ctx.logger) : undefined;
  const print = (result: DrillResult) => {
    if (values.json) return printJson(ctx, result);
    ctx.io.stdout.write(`restore drill ${result.drillId} of "${result.database}":\n`);
    for (const r of result.targets) ctx.io.stdout.write(drillLines(r).replace(/^(?=.)/gm, '  '));
  };
  try {
    const result = await runDrill(
      {
        targets: openTargets(config, ctx.logger, values.target),
        database: config.database,
        live,
        workDir: settings.workDir,
        method: settings.method,
        logger: ctx.logger,
        ...(app ? { app } : {}),
      },
      { signal: interruptible() },
    );
    print(result);
    return 0;
  } catch (e) {
    if (e instanceof DrillFailedError) print(e.result);
    throw e;
  }
};
