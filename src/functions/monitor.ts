/**
 * The monitor on a timer (TCAB_BACKUP_MONITOR_SCHEDULE, every 5 minutes by default): the dead-man's switch.
 * It writes the status document to every target and throws when the state is critical, so the invocation
 * fails and the alert fires even when the job that should have run never did.
 */
import functions from '@azure/functions';
import type { InvocationContext, Timer } from '@azure/functions';
import { backupConfig, invocation } from '../host/context.js';
import { monitorPostgresSource } from '../jobs/deps.js';
import { loadMonitorSettings } from '../jobs/settings.js';
import { runMonitor } from '../jobs/monitor/index.js';
import { openTargets } from '../runtime.js';

const { app } = functions;

export async function monitorTimer(_timer: Timer, context: InvocationContext): Promise<void> {
  const { logger, bounded } = invocation(context);
  const config = backupConfig();
  const settings = loadMonitorSettings();
  const targets = openTargets(config, logger);
  await bounded('monitor', (signal) =>
    runMonitor(
      {
        targets,
        database: config.database,
        thresholds: settings.thresholds,
        postgres: monitorPostgresSource(process.env, targets),
        logger,
      },
      { signal },
    ),
  );
}

app.timer('monitorTimer', { schedule: '%TCAB_BACKUP_MONITOR_SCHEDULE%', runOnStartup: false, useMonitor: true, handler: monitorTimer });
