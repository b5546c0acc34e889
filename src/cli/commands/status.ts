/**
 * `tcab-backup status [--target NAME] [--json] [--html PATH]`: the monitor's view, computed fresh. It writes
 * nothing to the targets (the monitor timer does). Exit status 1 when the state is critical, as the timer fails.
 */
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { loadTargetsConfig } from '../../config.js';
import { monitorPostgresSource } from '../../jobs/deps.js';
import { runMonitor } from '../../jobs/monitor/index.js';
import type { State, StatusDocument } from '../../status/document.js';
import { loadMonitorSettings } from '../../jobs/settings.js';
import { openTargets } from '../../runtime.js';
import { renderStatusPage, storedText } from '../../status/page.js';
import { shortMs } from '../../status/svg.js';
import { formatDuration } from '../../util/duration.js';
import { interruptSignal as interruptible, parse, printJson, type Command } from '../command.js';

const WORD: Record<State, string> = { ok: 'OK', warn: 'WARNING', critical: 'CRITICAL' };

function statusText(doc: StatusDocument): string {
  const out = [`${doc.database}: ${WORD[doc.state]} (as of ${doc.generatedAt})`];
  for (const t of doc.targets) {
    if (!t.reachable) {
      out.push(`  target ${t.name} ${WORD[t.state]}: unreachable: ${t.error}`);
      continue;
    }
    const n = t.snapshots.newest;
    out.push(
      `  target ${t.name} ${WORD[t.state]}: newest snapshot ${n ? `${formatDuration(n.ageMs)} ago (${n.id})` : 'none'}, ${t.snapshots.count} snapshot(s), ${storedText(t)}; ` +
        `drill ${t.drill.lastSucceeded ? `${formatDuration(t.drill.ageMs!)} ago (${t.drill.lastSucceeded.checks?.method === 'stream' ? 'verified streaming' : 'restored'}${t.drill.lastSucceeded.app ? `, backend served ${t.drill.lastSucceeded.app.runsServed ?? 0} runs,` : ''} in ${shortMs(t.drill.lastSucceeded.recoveryTimeMs ?? 0)})` : 'never'}; ` +
        `verify ${t.verify.lastCleanRunAt ? `${formatDuration(t.verify.ageMs!)} ago` : 'never'}${t.verify.failing.length ? `, ${t.verify.failing.length} damaged` : ''}` +
        `${t.verify.unreadable?.length ? `, ${t.verify.unreadable.length} unreadable` : ''}`,
    );
  }
  if (doc.postgres) {
    out.push(`  postgres ${WORD[doc.postgres.state]}${doc.postgres.error ? `: ${doc.postgres.error}` : ''}`);
    for (const s of doc.postgres.servers) {
      out.push(
        `    server ${s.server} ${WORD[s.state]}: check ${s.checkAgeMs === null ? 'never' : `${formatDuration(s.checkAgeMs)} ago`}, last successful drill ${s.drillAgeMs === null ? 'never' : `${formatDuration(s.drillAgeMs)} ago`}`,
      );
    }
  }
  if (doc.problems.length) {
    out.push('problems:');
    for (const p of doc.problems) out.push(`  ${p.state}: ${p.message}\n    check: ${p.hint}`);
  }
  return out.join('\n') + '\n';
}

export const statusCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { target: { type: 'string' }, json: { type: 'boolean' }, html: { type: 'string' } });
  const config = loadTargetsConfig(ctx.env);
  const settings = loadMonitorSettings(ctx.env);
  const targets = openTargets(config, ctx.logger, values.target);
  const doc = await runMonitor(
    {
      targets,
      database: config.database,
      thresholds: settings.thresholds,
      postgres: values.target ? undefined : monitorPostgresSource(ctx.env, targets),
      logger: ctx.logger,
    },
    { write: false, throwOnCritical: false, signal: interruptible() },
  );
  if (values.html) await writeFile(resolve(values.html), renderStatusPage(doc));
  if (values.json) printJson(ctx, doc);
  else ctx.io.stdout.write(statusText(doc));
  return doc.state === 'critical' ? 1 : 0;
};
