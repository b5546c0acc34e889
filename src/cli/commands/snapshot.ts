/**
 * `tcab-backup snapshot [--reason TEXT] [--pin] [--json]`: a snapshot now, stored on every target. With --json
 * the result is printed on failure too ("ok": false), then the exit status says whether it succeeded.
 */
import { loadAgentClientConfig, loadTargetsConfig } from '../../config.js';
import { runSnapshot, SnapshotFailedError } from '../../jobs/snapshot/index.js';
import { openAgent, openTargets } from '../../runtime.js';
import { formatBytes } from '../../util/format.js';
import { interruptSignal as interruptible, parse, printJson, type Command } from '../command.js';

export const snapshotCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { reason: { type: 'string' }, pin: { type: 'boolean' }, json: { type: 'boolean' } });
  const targetsConfig = loadTargetsConfig(ctx.env);
  const agentConfig = loadAgentClientConfig(ctx.env);
  try {
    const result = await runSnapshot(
      {
        agent: openAgent(agentConfig, ctx.logger),
        targets: openTargets(targetsConfig, ctx.logger),
        database: targetsConfig.database,
        logger: ctx.logger,
      },
      {
        trigger: { kind: 'cli', ...(values.reason ? { reason: values.reason } : {}) },
        pin: Boolean(values.pin),
        compression: agentConfig.compression,
        signal: interruptible(),
      },
    );
    if (values.json) printJson(ctx, { ok: true, manifest: result.manifest, targets: result.targets, totalMs: result.totalMs });
    else {
      const m = result.manifest;
      ctx.io.stdout.write(
        `snapshot ${m.id} of "${m.databaseName}" (${formatBytes(m.snapshot.bytes)} -> ${formatBytes(m.artifact.bytes)} ${m.artifact.compression}) stored on ${result.targets.map((t) => t.target).join(', ')} in ${(result.totalMs / 1000).toFixed(1)} s\n`,
      );
    }
    return 0;
  } catch (e) {
    if (values.json && e instanceof SnapshotFailedError) printJson(ctx, { ok: false, error: e.message, ...e.result });
    throw e;
  }
};
