/**
 * The restore drill on a timer (TCAB_BACKUP_DRILL_SCHEDULE): restores the newest snapshot of every target
 * into a scratch folder, checks it, compares it with the live database and records recovery point and time;
 * with TCAB_BACKUP_DRILL_APP=true, also starts the backend on each target's copy through the agent.
 * A restore that fails throws, so the invocation fails and alerts.
 */
import functions from '@azure/functions';
import type { InvocationContext, Timer } from '@azure/functions';
import { backupConfig, invocation } from '../host/context.js';
import { runDrill } from '../jobs/drill/index.js';
import { drillAppSource } from '../jobs/deps.js';
import { loadDrillSettings } from '../jobs/settings.js';
import { openAgent, openTargets } from '../runtime.js';

const { app } = functions;

/** A drill restores the whole database to local disk: never two at once on one instance. */
let running = false;

export async function drillTimer(timer: Timer, context: InvocationContext): Promise<void> {
  const { logger, bounded } = invocation(context);
  if (timer.isPastDue) logger.warn('drill.timer_past_due', { note: 'the previous run was late or the app was stopped' });
  if (running)
    throw new Error(
      'A restore drill is still running on this instance; this timer run is skipped and counts as failed so a stuck drill is noticed',
    );
  running = true;
  try {
    const config = backupConfig();
    const settings = loadDrillSettings();
    await bounded('drill', (signal) =>
      runDrill(
        {
          targets: openTargets(config, logger),
          database: config.database,
          live: openAgent(config.agent, logger),
          workDir: settings.workDir,
          method: settings.method,
          logger,
          ...(settings.app ? { app: drillAppSource(process.env, logger) } : {}),
        },
        { signal },
      ),
    );
  } finally {
    running = false;
  }
}

app.timer('drillTimer', { schedule: '%TCAB_BACKUP_DRILL_SCHEDULE%', runOnStartup: false, useMonitor: true, handler: drillTimer });
