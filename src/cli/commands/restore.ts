/**
 * `tcab-backup restore (--snapshot ID | --at ISO-TIME | --latest) -o PATH [--target NAME] [--force] [--json]`:
 * a stored snapshot written to a verified SQLite file; an existing file is replaced only with --force, and moved aside, not deleted.
 */
import { parseAtTime, type SnapshotSelector } from '../../catalog/select.js';
import { loadTargetsConfig } from '../../config.js';
import { runRestore } from '../../jobs/restore/index.js';
import { openTargets } from '../../runtime.js';
import { formatBytes } from '../../util/format.js';
import { interruptSignal as interruptible, parse, printJson, UsageError, type Command } from '../command.js';
import { progressReporter } from '../output.js';

export const restoreCommand: Command = async (args, ctx) => {
  const { values } = parse(args, {
    snapshot: { type: 'string' },
    at: { type: 'string' },
    latest: { type: 'boolean' },
    output: { type: 'string', short: 'o' },
    target: { type: 'string' },
    force: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  const chosen = [values.snapshot !== undefined, values.at !== undefined, Boolean(values.latest)].filter(Boolean).length;
  if (chosen !== 1) throw new UsageError('restore needs exactly one of --snapshot ID, --at ISO-TIME or --latest');
  if (!values.output) throw new UsageError('restore needs -o PATH (where to write the restored database)');
  const selector: SnapshotSelector =
    values.snapshot !== undefined ? { id: values.snapshot } : values.at !== undefined ? { at: parseAtTime(values.at) } : { latest: true };
  const config = loadTargetsConfig(ctx.env);
  const progress = progressReporter('restoring');
  const result = await runRestore(
    { targets: openTargets(config, ctx.logger, values.target), database: config.database, logger: ctx.logger },
    {
      selector,
      outPath: values.output,
      force: Boolean(values.force),
      signal: interruptible(),
      onProgress: values.json ? undefined : progress,
    },
  ).finally(() => progress.finish());
  if (values.json) printJson(ctx, result);
  else {
    ctx.io.stdout.write(`restored snapshot ${result.id} (created ${result.createdAt}) from target "${result.target}" to ${result.path}\n`);
    ctx.io.stdout.write(
      `  ${formatBytes(result.bytes)}, sha256 and integrity_check ok, ${Object.entries(result.tables)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')}, ${(result.durationMs / 1000).toFixed(1)} s\n`,
    );
    for (const s of result.skipped) ctx.io.stdout.write(`  skipped target "${s.target}": ${s.error}\n`);
    if (result.movedAside.length) {
      ctx.io.stdout.write(
        '  moved aside, kept as they were (opened under the new name they are the old database; delete them when no longer needed):\n',
      );
      for (const m of result.movedAside) ctx.io.stdout.write(`    ${m.from} -> ${m.to}\n`);
    }
  }
  return 0;
};
