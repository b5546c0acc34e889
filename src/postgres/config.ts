/**
 * Settings of the Postgres jobs (pg check, pg drill), validated once with zod. Every problem names its
 * variable; all problems are reported together. The catalogue entries (docs, defaults) are in
 * src/config.ts SETTINGS, next to every other setting.
 */
import { z } from 'zod';
import { booleanSetting, durationMs, NCRONTAB, Problems, read, type Env } from '../config.js';
import { ConfigError } from '../errors.js';
import { registerSecret } from '../log.js';
import { isLoopbackHost } from '../util/net.js';
import { formatDuration } from '../util/duration.js';
import { parseServerId, sameResourceId, type ServerRef } from './resource-id.js';

export const DEFAULT_VALIDATION_SQL = 'SELECT count(*) AS runs, max(published_at) AS newest_published_at FROM runs';
/** After a drill server is ready, connection failures are retried on later ticks for this long. */
export const VALIDATION_WINDOW_MS = 30 * 60_000;

export interface PgCommonConfig {
  servers: ServerRef[];
  /** ARM endpoint, without a trailing '/'. */
  armEndpoint: string;
}

export interface PgBackupPolicy {
  minRetentionDays: number;
  requireGeoRedundant: boolean;
  maxBackupAgeMs: number;
}

export interface PgCheckConfig extends PgCommonConfig {
  policy: PgBackupPolicy;
  /** Raise retention below the minimum (never lower it). */
  enforce: boolean;
  checkSchedule: string;
}

export type PgDrillAuth = { kind: 'password'; password: string } | { kind: 'entra' };

export interface PgDrillConfig extends PgCommonConfig {
  drillSchedule: string;
  /** A new drill starts when the last one was requested at least this long ago. */
  intervalMs: number;
  /** The restore point is this long before the drill was requested. */
  restoreLagMs: number;
  validationSql: string;
  /** The newest run found may be at most this much older than the restore point. */
  maxDataAgeMs: number;
  database: string;
  user: string;
  auth: PgDrillAuth;
  port: number;
  tls: 'verify' | 'disable';
  /** The sweeper deletes drill servers older than this. */
  maxAgeMs: number;
  /** A restore not ready this long after it started fails the drill. */
  timeoutMs: number;
}

const duration = (example: string) => durationMs(`a duration like ${example}`);
const bool = booleanSetting;
const ncrontab = NCRONTAB;

const armEndpoint = z.string().transform((s, ctx) => {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'expected a URL like https://management.azure.com' });
    return z.NEVER;
  }
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) {
    ctx.addIssue({ code: 'custom', message: 'expected https (plain http only on loopback)' });
    return z.NEVER;
  }
  return u.origin;
});

function readCommon(env: Env, problems: Problems): Partial<PgCommonConfig> {
  const servers: ServerRef[] = [];
  const raw = env.TCAB_BACKUP_PG_SERVERS?.trim();
  if (!raw) {
    problems.add('TCAB_BACKUP_PG_SERVERS', 'is not set: expected comma-separated resource ids of flexible servers, /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.DBforPostgreSQL/flexibleServers/<name>');
  } else {
    for (const entry of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
      try {
        const ref = parseServerId(entry);
        if (servers.some((s) => sameResourceId(s.id, ref.id))) problems.add('TCAB_BACKUP_PG_SERVERS', `server "${ref.name}" is listed twice`);
        else if (servers.some((s) => s.name === ref.name)) problems.add('TCAB_BACKUP_PG_SERVERS', `two servers are named "${ref.name}"; drill records are kept per server name`);
        else servers.push(ref);
      } catch (e) {
        problems.add('TCAB_BACKUP_PG_SERVERS', (e as Error).message);
      }
    }
    if (servers.length === 0 && problems.list.length === 0) problems.add('TCAB_BACKUP_PG_SERVERS', 'holds no server id');
  }
  const endpoint = read(env, problems, 'TCAB_BACKUP_ARM_ENDPOINT', armEndpoint, 'https://management.azure.com');
  return { servers, armEndpoint: endpoint };
}

/** True when Postgres servers are configured at all (the pg jobs have something to do). */
export function isPgConfigured(env: Env = process.env): boolean {
  return Boolean(env.TCAB_BACKUP_PG_SERVERS?.trim());
}

export function loadPgCheckConfig(env: Env = process.env): PgCheckConfig {
  const problems = new Problems();
  const common = readCommon(env, problems);
  const minRetentionDays = read(env, problems, 'TCAB_BACKUP_PG_MIN_RETENTION_DAYS',
    z.coerce.number({ message: 'expected a whole number of days' }).int('expected a whole number of days').min(7, 'Azure keeps 7 to 35 days').max(35, 'Azure keeps 7 to 35 days'), '7');
  const requireGeoRedundant = read(env, problems, 'TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT', bool, 'false');
  const maxBackupAgeMs = read(env, problems, 'TCAB_BACKUP_PG_MAX_BACKUP_AGE', duration('26h'), '26h');
  const enforce = read(env, problems, 'TCAB_BACKUP_PG_ENFORCE', bool, 'false');
  const checkSchedule = read(env, problems, 'TCAB_BACKUP_PG_CHECK_SCHEDULE', ncrontab, '0 15 * * * *');
  if (problems.list.length) throw new ConfigError(problems.list);
  return {
    servers: common.servers!, armEndpoint: common.armEndpoint!,
    policy: { minRetentionDays: minRetentionDays!, requireGeoRedundant: requireGeoRedundant!, maxBackupAgeMs: maxBackupAgeMs! },
    enforce: enforce!, checkSchedule: checkSchedule!,
  };
}

export function loadPgDrillConfig(env: Env = process.env): PgDrillConfig {
  const problems = new Problems();
  const common = readCommon(env, problems);
  const drillSchedule = read(env, problems, 'TCAB_BACKUP_PG_DRILL_SCHEDULE', ncrontab, '0 */10 * * * *');
  const intervalMs = read(env, problems, 'TCAB_BACKUP_PG_DRILL_INTERVAL', duration('7d'), '7d');
  const restoreLagMs = read(env, problems, 'TCAB_BACKUP_PG_RESTORE_LAG', duration('15m'), '15m');
  const validationSql = read(env, problems, 'TCAB_BACKUP_PG_VALIDATION_SQL', z.string().min(1), DEFAULT_VALIDATION_SQL);
  const maxDataAgeMs = read(env, problems, 'TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE', duration('3d'), '3d');
  const database = read(env, problems, 'TCAB_BACKUP_PG_DRILL_DATABASE',
    z.string().regex(/^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/, 'expected a PostgreSQL database name'), 'tcab');
  const user = read(env, problems, 'TCAB_BACKUP_PG_DRILL_USER',
    z.string({ message: 'is required: the login the drill validates the restored server with' }).min(1).max(128));
  const authKind = read(env, problems, 'TCAB_BACKUP_PG_DRILL_AUTH', z.enum(['password', 'entra'], { message: 'expected password or entra' }), 'password');
  const password = env.TCAB_BACKUP_PG_DRILL_PASSWORD?.trim() || undefined;
  registerSecret(password);
  let auth: PgDrillAuth | undefined;
  if (authKind === 'password') {
    if (!password) problems.add('TCAB_BACKUP_PG_DRILL_PASSWORD', 'is not set: required when TCAB_BACKUP_PG_DRILL_AUTH is password (or set TCAB_BACKUP_PG_DRILL_AUTH=entra to sign in with the managed identity)');
    else auth = { kind: 'password', password };
  } else if (authKind === 'entra') {
    if (password) problems.add('TCAB_BACKUP_PG_DRILL_PASSWORD', 'is set, but TCAB_BACKUP_PG_DRILL_AUTH is entra: remove the password so that it is not kept where it is not used');
    else auth = { kind: 'entra' };
  }
  const port = read(env, problems, 'TCAB_BACKUP_PG_DRILL_PORT', z.coerce.number().int('expected a port number').min(1, 'expected a port number').max(65535, 'expected a port number'), '5432');
  const tls = read(env, problems, 'TCAB_BACKUP_PG_DRILL_TLS', z.enum(['verify', 'disable'], { message: 'expected verify or disable' }), 'verify');
  const maxAgeMs = read(env, problems, 'TCAB_BACKUP_PG_DRILL_MAX_AGE', duration('6h'), '6h');
  const timeoutMs = read(env, problems, 'TCAB_BACKUP_PG_DRILL_TIMEOUT', duration('2h'), '2h');
  // The sweeper must never take a drill server from under a drill that may still be restoring or validating.
  if (maxAgeMs !== undefined && timeoutMs !== undefined && maxAgeMs < timeoutMs + VALIDATION_WINDOW_MS + 30 * 60_000) {
    problems.add('TCAB_BACKUP_PG_DRILL_MAX_AGE', `${formatDuration(maxAgeMs)} is too short: it must exceed TCAB_BACKUP_PG_DRILL_TIMEOUT (${formatDuration(timeoutMs)}) by at least 1h, or the sweeper could delete a drill server while its drill is still running`);
  }
  if (problems.list.length) throw new ConfigError(problems.list);
  return {
    servers: common.servers!, armEndpoint: common.armEndpoint!, drillSchedule: drillSchedule!, intervalMs: intervalMs!,
    restoreLagMs: restoreLagMs!, validationSql: validationSql!, maxDataAgeMs: maxDataAgeMs!, database: database!, user: user!,
    auth: auth!, port: port!, tls: tls!, maxAgeMs: maxAgeMs!, timeoutMs: timeoutMs!,
  };
}
