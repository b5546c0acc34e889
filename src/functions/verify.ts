/**
 * Verify on a timer (TCAB_BACKUP_VERIFY_SCHEDULE): re-reads the rotating subset of stored snapshots that
 * keeps every one within TCAB_BACKUP_VERIFY_WITHIN. A mismatch throws, so the invocation fails and alerts.
 */
import functions from '@azure/functions';
import type { InvocationContext, Timer } from '@azure/functions';
import { backupConfig, invocation } from '../host/context.js';
import { loadChunkGrace, loadVerifySettings } from '../jobs/settings.js';
import { runVerifyRotation } from '../jobs/verify/index.js';
import { openTargets } from '../runtime.js';

const { app } = functions;

export async function verifyTimer(timer: Timer, context: InvocationContext): Promise<void> {
  const { logger, bounded } = invocation(context);
  if (timer.isPastDue) logger.warn('verify.timer_past_due', { note: 'the previous run was late or the app was stopped' });
  const config = backupConfig();
  const settings = loadVerifySettings();
  await bounded('verify', (signal) =>
    runVerifyRotation(
      { targets: openTargets(config, logger), database: config.database, logger, chunkGraceMs: loadChunkGrace().graceMs },
      { withinMs: settings.withinMs, intervalMs: settings.intervalMs, signal },
    ),
  );
}

app.timer('verifyTimer', { schedule: '%TCAB_BACKUP_VERIFY_SCHEDULE%', runOnStartup: false, useMonitor: true, handler: verifyTimer });
