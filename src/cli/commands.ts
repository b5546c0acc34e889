/**
 * The CLI's commands: parse flags, load the settings a command needs, run the job, print the result.
 * Modules only one command needs (the agent, SQLite for restore, the retention planner) load inside it, so
 * every run starts quickly and small.
 */
import { text } from 'node:stream/consumers';
import { listCatalog, readManifests } from '../catalog/catalog.js';
import { PIN_TAG } from '../catalog/manifest.js';
import { loadAgentConfig } from '../agent/config.js';
import { loadAgentClientConfig, loadTargetsConfig } from '../config.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { openAgent, openTargets } from '../runtime.js';
import { parseAtTime, type SnapshotSelector } from '../catalog/select.js';
import { runSnapshot, SnapshotFailedError } from '../jobs/snapshot/index.js';
import { interruptSignal as abortOnSignal, parse, printJson as printJsonTo, UsageError } from './args.js';
import { formatBytes } from '../util/format.js';
import { progressReporter, table } from './output.js';

const printJson = (ctx: CommandContext, value: unknown) => printJsonTo(ctx.io, value);

export interface CommandContext {
  io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WriteStream; stdin: NodeJS.ReadableStream; env: NodeJS.ProcessEnv };
  logger: Logger;
  env: NodeJS.ProcessEnv;
}

export type Command = (args: string[], ctx: CommandContext) => Promise<number>;

export { UsageError };

const agent: Command = async (args, ctx) => {
  parse(args, {});
  const { startAgent } = await import('../agent/run.js');
  const running = await startAgent(loadAgentConfig(ctx.env), { logger: ctx.logger });
  ctx.logger.info('agent.listening', { url: running.url });
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await running.close();
  return 0;
};

const snapshot: Command = async (args, ctx) => {
  const { values } = parse(args, { reason: { type: 'string' }, pin: { type: 'boolean' }, json: { type: 'boolean' } });
  const targetsConfig = loadTargetsConfig(ctx.env);
  const agentConfig = loadAgentClientConfig(ctx.env);
  try {
    const result = await runSnapshot(
      { agent: openAgent(agentConfig, ctx.logger), targets: openTargets(targetsConfig, ctx.logger), database: targetsConfig.database, logger: ctx.logger },
      { trigger: { kind: 'cli', ...(values.reason ? { reason: values.reason } : {}) }, pin: Boolean(values.pin), compression: agentConfig.compression, signal: abortOnSignal() },
    );
    if (values.json) printJson(ctx, { ok: true, manifest: result.manifest, targets: result.targets, totalMs: result.totalMs });
    else {
      const m = result.manifest;
      ctx.io.stdout.write(`snapshot ${m.id} of "${m.databaseName}" (${formatBytes(m.snapshot.bytes)} -> ${formatBytes(m.artifact.bytes)} ${m.artifact.compression}) stored on ${result.targets.map((t) => t.target).join(', ')} in ${(result.totalMs / 1000).toFixed(1)} s\n`);
    }
    return 0;
  } catch (e) {
    if (values.json && e instanceof SnapshotFailedError) printJson(ctx, { ok: false, error: e.message, ...e.result });
    throw e;
  }
};

const list: Command = async (args, ctx) => {
  const { values } = parse(args, { target: { type: 'string' }, json: { type: 'boolean' } });
  const config = loadTargetsConfig(ctx.env);
  const targets = openTargets(config, ctx.logger, values.target);
  const signal = abortOnSignal();
  const out = await Promise.all(targets.map(async (target) => {
    try {
      const listing = await listCatalog(target, config.database, { signal });
      const manifests = await readManifests(target, config.database, listing.snapshots.map((s) => s.id), { signal });
      return {
        name: target.name, url: target.url, ok: true,
        snapshots: manifests.map(({ id, manifest, error }) => manifest ? {
          id, createdAt: manifest.createdAt, trigger: manifest.trigger, tags: manifest.tags, pinned: manifest.tags.includes(PIN_TAG),
          bytes: manifest.snapshot.bytes, artifactBytes: manifest.artifact.bytes, compression: manifest.artifact.compression,
          sha256: manifest.artifact.sha256, tables: manifest.database.tables, key: manifest.key,
        } : { id, error: error?.message ?? 'unreadable manifest' }),
        orphans: listing.orphans.map((o) => ({ key: o.key, bytes: o.size, lastModified: o.lastModified.toISOString() })),
      };
    } catch (e) {
      return { name: target.name, url: target.url, ok: false, error: errorMessage(e), snapshots: [], orphans: [] };
    }
  }));
  if (values.json) printJson(ctx, { database: config.database, targets: out });
  else {
    for (const t of out) {
      ctx.io.stdout.write(`target ${t.name} (${t.url}): ${t.ok ? `${t.snapshots.length} snapshot(s)` : `ERROR ${t.error}`}${t.orphans.length ? `, ${t.orphans.length} object(s) without manifest` : ''}\n`);
      const rows = [['ID', 'CREATED (UTC)', 'SIZE', 'STORED', 'TRIGGER', 'TAGS']];
      for (const s of t.snapshots) {
        if ('error' in s) rows.push([s.id, '-', '-', '-', '-', `ERROR ${s.error}`]);
        else rows.push([s.id, s.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z'), formatBytes(s.bytes), `${formatBytes(s.artifactBytes)} ${s.compression}`, s.trigger.kind + (s.trigger.reason ? `: ${s.trigger.reason}` : ''), s.tags.join(',')]);
      }
      if (t.snapshots.length) ctx.io.stdout.write(table(rows).replace(/^/gm, '  ') + '\n');
    }
  }
  return out.every((t) => t.ok) ? 0 : 1;
};

const restore: Command = async (args, ctx) => {
  const { values } = parse(args, {
    snapshot: { type: 'string' }, at: { type: 'string' }, latest: { type: 'boolean' }, output: { type: 'string', short: 'o' },
    target: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' },
  });
  const chosen = [values.snapshot !== undefined, values.at !== undefined, Boolean(values.latest)].filter(Boolean).length;
  if (chosen !== 1) throw new UsageError('restore needs exactly one of --snapshot ID, --at ISO-TIME or --latest');
  if (!values.output) throw new UsageError('restore needs -o PATH (where to write the restored database)');
  const selector: SnapshotSelector = values.snapshot !== undefined ? { id: values.snapshot } : values.at !== undefined ? { at: parseAtTime(values.at) } : { latest: true };
  const config = loadTargetsConfig(ctx.env);
  const progress = progressReporter('restoring');
  const { runRestore } = await import('../jobs/restore/index.js');
  const result = await runRestore(
    { targets: openTargets(config, ctx.logger, values.target), database: config.database, logger: ctx.logger },
    { selector, outPath: values.output, force: Boolean(values.force), signal: abortOnSignal(), onProgress: values.json ? undefined : progress },
  ).finally(() => progress.finish());
  if (values.json) printJson(ctx, result);
  else {
    ctx.io.stdout.write(`restored snapshot ${result.id} (created ${result.createdAt}) from target "${result.target}" to ${result.path}\n`);
    ctx.io.stdout.write(`  ${formatBytes(result.bytes)}, sha256 and integrity_check ok, ${Object.entries(result.tables).map(([k, v]) => `${k}=${v}`).join(' ')}, ${(result.durationMs / 1000).toFixed(1)} s\n`);
    for (const s of result.skipped) ctx.io.stdout.write(`  skipped target "${s.target}": ${s.error}\n`);
    if (result.movedAside.length) {
      ctx.io.stdout.write('  moved aside, kept as they were (opened under the new name they are the old database; delete them when no longer needed):\n');
      for (const m of result.movedAside) ctx.io.stdout.write(`    ${m.from} -> ${m.to}\n`);
    }
  }
  return 0;
};

const retention: Command = async (args, ctx) => {
  const { positionals } = parse(args, {}, true);
  if (positionals.join(' ') !== 'plan') throw new UsageError('retention takes one subcommand: plan (reads JSON on stdin)');
  const { runRetentionPlanCommand } = await import('../retention/plan-command.js');
  ctx.io.stdout.write(runRetentionPlanCommand(await text(ctx.io.stdin)) + '\n');
  return 0;
};

/** A command whose module (and its SDKs) is imported only when it runs: `--help` and `list` stay light. */
function lazy(load: () => Promise<Command>): Command {
  return async (args, ctx) => (await load())(args, ctx);
}

export const COMMANDS: Record<string, Command> = {
  agent, snapshot, list, restore, retention,
  verify: lazy(async () => (await import('./drill-status-commands.js')).verifyCommand),
  drill: lazy(async () => (await import('./drill-status-commands.js')).drillCommand),
  status: lazy(async () => (await import('./drill-status-commands.js')).statusCommand),
  replicate: lazy(async () => (await import('./replicate-prune-commands.js')).replicateCommand),
  prune: lazy(async () => (await import('./replicate-prune-commands.js')).pruneCommand),
  pg: lazy(async () => (await import('./pg-commands.js')).pgCommand),
};
