/**
 * Replicate on a timer (TCAB_BACKUP_REPLICATE_SCHEDULE): copy every snapshot a target lacks from a target
 * that has it. A failure throws, so the invocation fails and the alert rules fire; a target that was down
 * catches up on the next run.
 */
import functions from '@azure/functions';
import type { InvocationContext, Timer } from '@azure/functions';
import { errorMessage } from '../errors.js';
import { backupConfig, invocation } from '../host/context.js';
import { runReplicate } from '../jobs/replicate/index.js';
import { loadChunkGrace } from '../jobs/settings.js';
import { loadRetentionConfig } from '../retention/settings.js';
import { openTargets } from '../runtime.js';

const { app } = functions;

export async function replicateTimer(timer: Timer, context: InvocationContext): Promise<void> {
  const { logger, bounded } = invocation(context);
  if (timer.isPastDue) logger.warn('replicate.timer_past_due', { note: 'the previous run was late or the app was stopped' });
  try {
    const config = backupConfig();
    const retention = loadRetentionConfig(
      process.env,
      config.targets.map((t) => t.name),
    );
    const chunkGrace = loadChunkGrace();
    await bounded('replicate', (signal) =>
      runReplicate(
        {
          targets: openTargets(config, logger),
          database: config.database,
          logger,
          retention,
          chunkGraceMs: chunkGrace.graceMs,
          chunkJobTimeoutMs: chunkGrace.jobTimeoutMs,
        },
        { signal },
      ),
    );
  } catch (e) {
    logger.error('replicate.failed', { error: errorMessage(e) });
    throw e;
  }
}

app.timer('replicateTimer', {
  schedule: '%TCAB_BACKUP_REPLICATE_SCHEDULE%',
  runOnStartup: false,
  useMonitor: true,
  handler: replicateTimer,
});
