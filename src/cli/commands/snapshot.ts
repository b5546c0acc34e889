/**
 * `tcab-backup snapshot [--reason TEXT] [--pin] [--format 1|2] [--json]`: a snapshot now, stored on every
 * target, in TCAB_BACKUP_FORMAT unless --format says otherwise. With --json
 * the result is printed on failure too ("ok": false), then the exit status says whether it succeeded.
 */
import { loadAgentClientConfig, loadSnapshotFormat, loadTargetsConfig } from '../../config.js';
import { loadChunkGrace } from '../../jobs/settings.js';
import { runSnapshot, SnapshotFailedError, type SnapshotResult, type SnapshotResultV2 } from '../../jobs/snapshot/index.js';
import { openAgent, openTargets } from '../../runtime.js';
import { formatBytes } from '../../util/format.js';
import { CliJobTimeoutError, parse, printJson, runBounded, UsageError, type Command } from '../command.js';

export const snapshotCommand: Command = async (args, ctx) => {
  const { values } = parse(args, {
    reason: { type: 'string' },
    pin: { type: 'boolean' },
    format: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (values.format !== undefined && values.format !== '1' && values.format !== '2') {
    throw new UsageError(`--format ${values.format}: expected 1 (one artifact per snapshot) or 2 (deduplicated chunks)`);
  }
  const format = values.format ? (Number(values.format) as 1 | 2) : loadSnapshotFormat(ctx.env);
  const targetsConfig = loadTargetsConfig(ctx.env);
  const agentConfig = loadAgentClientConfig(ctx.env);
  const deps = {
    agent: openAgent(agentConfig, ctx.logger),
    targets: openTargets(targetsConfig, ctx.logger),
    database: targetsConfig.database,
    logger: ctx.logger,
  };
  // Stopped at TCAB_BACKUP_JOB_TIMEOUT, as in the functions, whatever the format: one rule for every writer.
  const timing = loadChunkGrace(ctx.env);
  const request = {
    trigger: { kind: 'cli' as const, ...(values.reason ? { reason: values.reason } : {}) },
    pin: Boolean(values.pin),
    compression: agentConfig.compression,
  };
  try {
    const result = await runBounded(
      ctx,
      timing.jobTimeoutMs,
      (signal): Promise<SnapshotResult | SnapshotResultV2> =>
        format === 2
          ? runSnapshot({ ...deps, timing }, { ...request, signal, format: 2 })
          : runSnapshot(deps, { ...request, signal, format: 1 }),
      () => {
        const error = new CliJobTimeoutError(
          'snapshot',
          ctx.env,
          timing,
          'the snapshot is stored on a target only if its manifest was written there, which comes after all its chunks or its artifact (tcab-backup list shows where); nothing half-written is visible',
          'run it again for a new snapshot: a format-2 snapshot uploads only the chunks a target still lacks',
        );
        if (values.json) printJson(ctx, { ok: false, error: error.message });
        return error;
      },
    );
    if (values.json) printJson(ctx, { ok: true, manifest: result.manifest, targets: result.targets, totalMs: result.totalMs });
    else {
      const m = result.manifest;
      const stored =
        'artifact' in m
          ? `${formatBytes(m.artifact.bytes)} ${m.artifact.compression}`
          : `format 2, ${m.chunkList.count} chunks, uploaded ${result.targets.map((t) => `${t.target} ${formatBytes('uploadedBytes' in t ? (t.uploadedBytes ?? 0) : 0)}`).join(', ')}`;
      ctx.io.stdout.write(
        `snapshot ${m.id} of "${m.databaseName}" (${formatBytes(m.snapshot.bytes)} -> ${stored}) stored on ${result.targets.map((t) => t.target).join(', ')} in ${(result.totalMs / 1000).toFixed(1)} s\n`,
      );
    }
    return 0;
  } catch (e) {
    if (values.json && e instanceof SnapshotFailedError) printJson(ctx, { ok: false, error: e.message, ...e.result });
    throw e;
  }
};
