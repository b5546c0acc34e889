/**
 * Builds what the verify, drill and monitor jobs need beyond the targets, from validated settings; shared
 * by the functions and the CLI so both run the jobs the same way.
 */
import { loadAgentClientConfig, type Env } from '../config.js';
import { ConfigError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { isPgConfigured } from '../postgres/config.js';
import { parseServerId, type ServerRef } from '../postgres/resource-id.js';
import { openAgent } from '../runtime.js';
import type { Target } from '../targets/target.js';
import type { DrillDeps } from './drill/index.js';
import type { MonitorDeps } from './monitor/index.js';

/**
 * The Postgres servers the monitor reports on, and the target holding their records: the first target of
 * TCAB_BACKUP_TARGETS, where the pg jobs keep them. Undefined when Postgres mode is off.
 */
export function monitorPostgresSource(env: Env, targets: Target[]): MonitorDeps['postgres'] {
  if (!isPgConfigured(env)) return undefined;
  const recordsTarget = targets[0];
  if (!recordsTarget) return { error: 'no target to read the Postgres records from' };
  const servers: ServerRef[] = [];
  for (const entry of (env.TCAB_BACKUP_PG_SERVERS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    try {
      servers.push(parseServerId(entry));
    } catch (e) {
      return { error: `TCAB_BACKUP_PG_SERVERS: ${errorMessage(e)}`, recordsTarget: recordsTarget.name };
    }
  }
  return { servers, recordsTarget };
}

/**
 * The agent for the drill's live comparison. Without TCAB_BACKUP_AGENT_URL (a local drill against backups
 * only) the drill runs and says why it could not compare; a set but invalid agent setting is an error.
 */
export function drillLiveSource(env: Env, logger: Logger): DrillDeps['live'] {
  if (!env.TCAB_BACKUP_AGENT_URL?.trim()) return { unavailable: 'TCAB_BACKUP_AGENT_URL is not set, so the live database cannot be asked' };
  try {
    return openAgent(loadAgentClientConfig(env), logger);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    return { unavailable: errorMessage(e) };
  }
}

/**
 * The agent for the application drill (TCAB_BACKUP_DRILL_APP=true or `tcab-backup drill --app`): the same
 * agent settings as the live comparison, but an agent that cannot be asked makes the drill fail, not warn.
 */
export function drillAppSource(env: Env, logger: Logger): NonNullable<DrillDeps['app']> {
  if (!env.TCAB_BACKUP_AGENT_URL?.trim()) return { unavailable: 'TCAB_BACKUP_AGENT_URL is not set' };
  try {
    return openAgent(loadAgentClientConfig(env), logger);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    return { unavailable: errorMessage(e) };
  }
}
