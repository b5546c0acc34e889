/**
 * CLI commands for the jobs that prove the backups: `verify` (the rotation, or --all), `drill` and `status`.
 * They run the same jobs as the timers, with the same settings.
 */
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { loadTargetsConfig } from '../config.js';
import { DrillFailedError, runDrill, type DrillResult } from '../jobs/drill/index.js';
import { provenText, type DrillRecord } from '../catalog/drill-record.js';
import { drillLiveSource, monitorPostgresSource } from '../jobs/deps.js';
import { loadDrillSettings, loadMonitorSettings, loadVerifySettings } from '../jobs/settings.js';
import { runMonitor } from '../jobs/monitor/index.js';
import type { State, StatusDocument } from '../status/document.js';
import { VerifyFailedError, runVerifyRotation, type VerifyRotationResult } from '../jobs/verify/index.js';
import { openTargets } from '../runtime.js';
import { renderStatusPage } from '../status/page.js';
import { shortMs } from '../status/svg.js';
import { formatDuration } from '../util/duration.js';
import { interruptSignal as interruptible, parse, printJson as printJsonTo, UsageError } from './args.js';
import type { Command, CommandContext } from './commands.js';

const printJson = (ctx: CommandContext, value: unknown) => printJsonTo(ctx.io, value);
import { formatBytes } from '../util/format.js';

/** tcab-backup verify [--all] [--target NAME] [--json] */
export const verifyCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { all: { type: 'boolean' }, target: { type: 'string' }, json: { type: 'boolean' } });
  const config = loadTargetsConfig(ctx.env);
  const settings = loadVerifySettings(ctx.env);
  const print = (result: VerifyRotationResult, ok: boolean) => {
    if (values.json) return printJson(ctx, { ok, withinMs: settings.withinMs, intervalMs: settings.intervalMs, ...result });
    for (const t of result.targets) {
      if (!t.reachable) {
        ctx.io.stdout.write(`target ${t.target} (${t.url}): ERROR ${t.error}\n`);
        continue;
      }
      const found = [...(t.failed ? [`${t.failed} DAMAGED`] : []), ...(t.unreadable ? [`${t.unreadable} UNREADABLE`] : [])];
      ctx.io.stdout.write(`target ${t.target}: read ${t.checked} of ${t.snapshots} snapshot(s), ${formatBytes(t.bytes)}, ${found.length ? found.join(', ') : 'all match their manifests'}; `
        + `longest any snapshot has gone unread: ${formatDuration(t.longestUnreadMs)} (window ${formatDuration(settings.withinMs)})\n`);
    }
    for (const o of result.outcomes.filter((x) => !x.ok)) {
      ctx.io.stdout.write(o.verdict === 'unreadable'
        ? `  UNREADABLE target ${o.target} snapshot ${o.id}: ${o.error}\n`
        : `  DAMAGED target ${o.target} snapshot ${o.id}: ${o.error}\n`);
    }
  };
  try {
    const result = await runVerifyRotation(
      { targets: openTargets(config, ctx.logger, values.target), database: config.database, logger: ctx.logger },
      { withinMs: settings.withinMs, intervalMs: settings.intervalMs, all: Boolean(values.all), signal: interruptible() },
    );
    print(result, true);
    return 0;
  } catch (e) {
    if (e instanceof VerifyFailedError) print(e.result, false);
    throw e;
  }
};

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

const WORD: Record<State, string> = { ok: 'OK', warn: 'WARNING', critical: 'CRITICAL' };

function statusText(doc: StatusDocument): string {
  const out = [`${doc.database}: ${WORD[doc.state]} (as of ${doc.generatedAt})`];
  for (const t of doc.targets) {
    if (!t.reachable) {
      out.push(`  target ${t.name} ${WORD[t.state]}: unreachable: ${t.error}`);
      continue;
    }
    const n = t.snapshots.newest;
    out.push(`  target ${t.name} ${WORD[t.state]}: newest snapshot ${n ? `${formatDuration(n.ageMs)} ago (${n.id})` : 'none'}, ${t.snapshots.count} snapshot(s) ${formatBytes(t.snapshots.totalArtifactBytes)}; `
      + `drill ${t.drill.lastSucceeded ? `${formatDuration(t.drill.ageMs!)} ago (${t.drill.lastSucceeded.checks?.method === 'stream' ? 'verified streaming' : 'restored'} in ${shortMs(t.drill.lastSucceeded.recoveryTimeMs ?? 0)})` : 'never'}; `
      + `verify ${t.verify.lastCleanRunAt ? `${formatDuration(t.verify.ageMs!)} ago` : 'never'}${t.verify.failing.length ? `, ${t.verify.failing.length} damaged` : ''}`
      + `${t.verify.unreadable?.length ? `, ${t.verify.unreadable.length} unreadable` : ''}`);
  }
  if (doc.postgres) {
    out.push(`  postgres ${WORD[doc.postgres.state]}${doc.postgres.error ? `: ${doc.postgres.error}` : ''}`);
    for (const s of doc.postgres.servers) {
      out.push(`    server ${s.server} ${WORD[s.state]}: check ${s.checkAgeMs === null ? 'never' : `${formatDuration(s.checkAgeMs)} ago`}, last successful drill ${s.drillAgeMs === null ? 'never' : `${formatDuration(s.drillAgeMs)} ago`}`);
    }
  }
  if (doc.problems.length) {
    out.push('problems:');
    for (const p of doc.problems) out.push(`  ${p.state}: ${p.message}\n    check: ${p.hint}`);
  }
  return out.join('\n') + '\n';
}

/**
 * tcab-backup status [--target NAME] [--json] [--html PATH]: the monitor's view, computed fresh. It writes
 * nothing to the targets (the monitor timer does). Exit status 1 when the state is critical, as the timer fails.
 */
export const statusCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { target: { type: 'string' }, json: { type: 'boolean' }, html: { type: 'string' } });
  const config = loadTargetsConfig(ctx.env);
  const settings = loadMonitorSettings(ctx.env);
  const targets = openTargets(config, ctx.logger, values.target);
  const doc = await runMonitor(
    { targets, database: config.database, thresholds: settings.thresholds, postgres: values.target ? undefined : monitorPostgresSource(ctx.env, targets), logger: ctx.logger },
    { write: false, throwOnCritical: false, signal: interruptible() },
  );
  if (values.html) await writeFile(resolve(values.html), renderStatusPage(doc));
  if (values.json) printJson(ctx, doc);
  else ctx.io.stdout.write(statusText(doc));
  return doc.state === 'critical' ? 1 : 0;
};
