/**
 * Postgres timers: the backup-policy check (TCAB_BACKUP_PG_CHECK_SCHEDULE) and the point-in-time-restore
 * drill (TCAB_BACKUP_PG_DRILL_SCHEDULE: each tick advances the drill one step; no invocation waits for a
 * restore). Without TCAB_BACKUP_PG_SERVERS (Postgres mode off) both return at once.
 */
import functions from '@azure/functions';
import type { InvocationContext, Timer } from '@azure/functions';
import { loadTargetsConfig } from '../config.js';
import { invocation } from '../host/context.js';
import { isPgConfigured, loadPgCheckConfig, loadPgDrillConfig, runPgCheck, runPgDrill } from '../postgres/index.js';
import type { Logger } from '../log.js';
import { managedIdentity, openTargets } from '../runtime.js';

const { app } = functions;

function recordsTarget(logger: Logger) {
  // The first target holds the Postgres records; they are the drill's lock, so every invocation uses the same one.
  return openTargets(loadTargetsConfig(), logger)[0]!;
}

export async function pgCheckTimer(_timer: Timer, context: InvocationContext): Promise<void> {
  const { logger, bounded } = invocation(context);
  if (!isPgConfigured()) {
    logger.info('pg.check.skipped', { reason: 'TCAB_BACKUP_PG_SERVERS is not set (Postgres mode off)' });
    return;
  }
  const config = loadPgCheckConfig();
  await bounded('pg check', (signal) =>
    runPgCheck(config, { credential: managedIdentity(), target: recordsTarget(logger), logger, signal }),
  );
}

export async function pgDrillTimer(_timer: Timer, context: InvocationContext): Promise<void> {
  const { logger, bounded } = invocation(context);
  if (!isPgConfigured()) {
    logger.info('pg.drill.skipped', { reason: 'TCAB_BACKUP_PG_SERVERS is not set (Postgres mode off)' });
    return;
  }
  const config = loadPgDrillConfig();
  await bounded('pg drill', (signal) =>
    runPgDrill(config, { credential: managedIdentity(), target: recordsTarget(logger), logger, signal }),
  );
}

app.timer('pgCheckTimer', { schedule: '%TCAB_BACKUP_PG_CHECK_SCHEDULE%', handler: pgCheckTimer });
app.timer('pgDrillTimer', { schedule: '%TCAB_BACKUP_PG_DRILL_SCHEDULE%', handler: pgDrillTimer });
