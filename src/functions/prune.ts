/**
 * Prune on a timer (TCAB_BACKUP_PRUNE_SCHEDULE): apply each target's retention policy behind the safety
 * rails, and remove garbage. Never forced: a run the max-delete-share rail refuses fails, so an operator
 * looks at it and runs `tcab-backup prune --force` if the deletion is intended.
 */
import functions from '@azure/functions';
import type { InvocationContext, Timer } from '@azure/functions';
import { errorMessage } from '../errors.js';
import { backupConfig, invocation } from '../host/context.js';
import { runPrune } from '../jobs/prune/index.js';
import { loadChunkGrace } from '../jobs/settings.js';
import { loadRetentionConfig } from '../retention/settings.js';
import { openTargets } from '../runtime.js';

const { app } = functions;

export async function pruneTimer(timer: Timer, context: InvocationContext): Promise<void> {
  const { logger, bounded } = invocation(context);
  if (timer.isPastDue) logger.warn('prune.timer_past_due', { note: 'the previous run was late or the app was stopped' });
  try {
    const config = backupConfig();
    const retention = loadRetentionConfig(
      process.env,
      config.targets.map((t) => t.name),
    );
    const chunkGrace = loadChunkGrace(process.env);
    await bounded('prune', (signal) =>
      runPrune({ targets: openTargets(config, logger), database: config.database, logger, retention, chunkGrace }, { signal }),
    );
  } catch (e) {
    logger.error('prune.failed', { error: errorMessage(e) });
    throw e;
  }
}

app.timer('pruneTimer', { schedule: '%TCAB_BACKUP_PRUNE_SCHEDULE%', runOnStartup: false, useMonitor: true, handler: pruneTimer });
