/** `tcab-backup drill [--target NAME] [--json]`: the restore drill, the same job as the drill timer, with the same settings. */
import { provenText, type DrillRecord } from '../../catalog/drill-record.js';
import { loadTargetsConfig } from '../../config.js';
import { drillLiveSource } from '../../jobs/deps.js';
import { DrillFailedError, runDrill, type DrillResult } from '../../jobs/drill/index.js';
import { loadDrillSettings } from '../../jobs/settings.js';
import { openTargets } from '../../runtime.js';
import { shortMs } from '../../status/svg.js';
import { formatDuration } from '../../util/duration.js';
import { formatBytes } from '../../util/format.js';
import { interruptSignal as interruptible, parse, printJson, type Command } from '../command.js';

function drillLines(r: DrillRecord): string {
  if (!r.ok) return `target ${r.target}: FAILED ${r.error}\n`;
  const rp = r.recoveryPoint!;
  const how = r.checks?.method === 'stream' ? 'verified while streaming' : 'restored and verified';
  const lines = [`target ${r.target}: snapshot ${r.snapshot!.id} ${how} in ${shortMs(r.recoveryTimeMs ?? 0)} `
    + `(${formatBytes(r.snapshot!.artifactBytes)} ${r.snapshot!.compression} -> ${formatBytes(r.snapshot!.bytes)}); snapshot age ${formatDuration(rp.snapshotAgeMs)}`,
  `  proved: ${provenText(r.checks)}${r.checks?.reason ? ` (streamed because ${r.checks.reason})` : ''}`];
  if (r.live.available) {
    lines.push(`  runs published since the snapshot: ${rp.runsSince ?? 'unknown'}; newest published_at live ${rp.newestPublishedAt.live ?? '-'}, in the snapshot ${rp.newestPublishedAt.snapshot ?? '-'}`);
    lines.push(`  tables (snapshot -> live): ${Object.entries(r.tables).map(([n, t]) => `${n} ${t.snapshot ?? '-'} -> ${t.live ?? '-'}${t.difference !== null ? ` (${t.difference >= 0 ? '+' : ''}${t.difference})` : ''}`).join(', ')}`);
  }
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  return lines.join('\n') + '\n';
}

/** tcab-backup drill [--target NAME] [--json] */
export const drillCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { target: { type: 'string' }, json: { type: 'boolean' } });
  const config = loadTargetsConfig(ctx.env);
  const settings = loadDrillSettings(ctx.env);
  const live = drillLiveSource(ctx.env, ctx.logger);
  const print = (result: DrillResult) => {
    if (values.json) return printJson(ctx, result);
    ctx.io.stdout.write(`restore drill ${result.drillId} of "${result.database}":\n`);
    for (const r of result.targets) ctx.io.stdout.write(drillLines(r).replace(/^/gm, '  '));
  };
  try {
    const result = await runDrill(
      { targets: openTargets(config, ctx.logger, values.target), database: config.database, live, workDir: settings.workDir, method: settings.method, logger: ctx.logger },
      { signal: interruptible() },
    );
    print(result);
    return 0;
  } catch (e) {
    if (e instanceof DrillFailedError) print(e.result);
    throw e;
  }
};
