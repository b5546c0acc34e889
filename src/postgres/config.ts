/**
 * Settings of the Postgres jobs (pg check, pg drill): PG_SETTINGS declares them (the catalogue in
 * src/settings.ts takes them from here), validated once with zod. Every problem names its variable; all
 * problems are reported together.
 */
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { registerSecret } from '../log.js';
import { isLoopbackHost } from '../util/net.js';
import { formatDuration } from '../util/duration.js';
import { booleanSetting, defineSettings, durationMs, NCRONTAB, Problems, settingsReader, type Env } from '../util/settings.js';
import { parseServerId, sameResourceId, type ServerRef } from './resource-id.js';

export const PG_SETTINGS = defineSettings([
  {
    name: 'TCAB_BACKUP_PG_SERVERS',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    description:
      'Postgres deployments: comma-separated ARM resource ids of the flexible servers to check and drill, /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.DBforPostgreSQL/flexibleServers/<name>. Unset: the pg jobs have nothing to do.',
  },
  {
    name: 'TCAB_BACKUP_ARM_ENDPOINT',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'https://management.azure.com',
    description: "Azure Resource Manager endpoint for the pg jobs (another cloud's, or a local stand-in for tests).",
  },
  {
    name: 'TCAB_BACKUP_PG_MIN_RETENTION_DAYS',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '7',
    description: 'pg check: the least backup retention, in days (7 to 35), each server must have.',
  },
  {
    name: 'TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'false',
    description: 'pg check: true to require geo-redundant backups (only settable when a server is created).',
  },
  {
    name: 'TCAB_BACKUP_PG_MAX_BACKUP_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '26h',
    description: 'pg check: the newest automatic (Full) backup of each server must be younger than this.',
  },
  {
    name: 'TCAB_BACKUP_PG_ENFORCE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'false',
    description:
      "pg check: true to raise a retention below TCAB_BACKUP_PG_MIN_RETENTION_DAYS to it (never lowers). Needs the Contributor role on the server's resource group.",
  },
  {
    name: 'TCAB_BACKUP_PG_CHECK_SCHEDULE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '0 15 * * * *',
    description: 'NCRONTAB (six fields, UTC) of the timer-triggered pg check. Default hourly.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_SCHEDULE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '0 */10 * * * *',
    description:
      'NCRONTAB (six fields, UTC) of the pg drill tick: each tick sweeps old drill servers and advances the current drill by one step, so a drill takes several ticks. Default every 10 minutes.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_INTERVAL',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '7d',
    description: 'pg drill: a new point-in-time restore drill starts when the last one was requested at least this long ago.',
  },
  {
    name: 'TCAB_BACKUP_PG_RESTORE_LAG',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '15m',
    description:
      'pg drill: the restore point is this long before the drill was requested (moved up to the earliest restore point if that is later).',
  },
  {
    name: 'TCAB_BACKUP_PG_VALIDATION_SQL',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'SELECT count(*) AS runs, max(published_at) AS newest_published_at FROM runs',
    description:
      'pg drill: SQL run on the restored server; it must return one row with columns runs (a count, at least 1) and newest_published_at (not after the restore point, and at most TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE before it).',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '3d',
    description: 'pg drill: the newest run found on the restored server may be at most this much older than the restore point.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_DATABASE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'tcab',
    description: 'pg drill: the database the validation SQL runs in.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_USER',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    description:
      "pg drill: the login used on the restored server (with Entra: the name of the managed identity's PostgreSQL role). Restored servers keep the source's logins.",
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_PASSWORD',
    side: 'backup',
    requiredInAzure: false,
    secret: true,
    description:
      'pg drill: the password of TCAB_BACKUP_PG_DRILL_USER when TCAB_BACKUP_PG_DRILL_AUTH=password. A Key Vault reference in Azure.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_AUTH',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'password',
    description:
      'pg drill: password, or entra to sign in with a token of the managed identity (scope https://ossrdbms-aad.database.windows.net/.default).',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_PORT',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '5432',
    description: 'pg drill: the PostgreSQL port of the restored server.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_TLS',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'verify',
    description:
      'pg drill: verify (TLS with a verified certificate), or disable, which is refused for any server not on loopback (local runs only).',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_MAX_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '6h',
    description:
      'pg drill sweeper: drill servers (tagged tcab-backup-drill=true, named tcab-drill-...) older than this are deleted. Must exceed TCAB_BACKUP_PG_DRILL_TIMEOUT by at least 1h.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_TIMEOUT',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '2h',
    description: 'pg drill: a restore not ready this long after it started fails the drill (its server is still deleted).',
  },
]);

const { read, fallback } = settingsReader(PG_SETTINGS);

export const DEFAULT_VALIDATION_SQL = fallback('TCAB_BACKUP_PG_VALIDATION_SQL');
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
    problems.add(
      'TCAB_BACKUP_PG_SERVERS',
      'is not set: expected comma-separated resource ids of flexible servers, /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.DBforPostgreSQL/flexibleServers/<name>',
    );
  } else {
    for (const entry of raw
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)) {
      try {
        const ref = parseServerId(entry);
        if (servers.some((s) => sameResourceId(s.id, ref.id)))
          problems.add('TCAB_BACKUP_PG_SERVERS', `server "${ref.name}" is listed twice`);
        else if (servers.some((s) => s.name === ref.name))
          problems.add('TCAB_BACKUP_PG_SERVERS', `two servers are named "${ref.name}"; drill records are kept per server name`);
        else servers.push(ref);
      } catch (e) {
        problems.add('TCAB_BACKUP_PG_SERVERS', (e as Error).message);
      }
    }
    if (servers.length === 0 && problems.list.length === 0) problems.add('TCAB_BACKUP_PG_SERVERS', 'holds no server id');
  }
  const endpoint = read(env, problems, 'TCAB_BACKUP_ARM_ENDPOINT', armEndpoint);
  return { servers, armEndpoint: endpoint };
}

/** True when Postgres servers are configured at all (the pg jobs have something to do). */
export function isPgConfigured(env: Env = process.env): boolean {
  return Boolean(env.TCAB_BACKUP_PG_SERVERS?.trim());
}

export function loadPgCheckConfig(env: Env = process.env): PgCheckConfig {
  const problems = new Problems();
  const common = readCommon(env, problems);
  const minRetentionDays = read(
    env,
    problems,
    'TCAB_BACKUP_PG_MIN_RETENTION_DAYS',
    z.coerce
      .number({ message: 'expected a whole number of days' })
      .int('expected a whole number of days')
      .min(7, 'Azure keeps 7 to 35 days')
      .max(35, 'Azure keeps 7 to 35 days'),
  );
  const requireGeoRedundant = read(env, problems, 'TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT', bool);
  const maxBackupAgeMs = read(env, problems, 'TCAB_BACKUP_PG_MAX_BACKUP_AGE', duration('26h'));
  const enforce = read(env, problems, 'TCAB_BACKUP_PG_ENFORCE', bool);
  const checkSchedule = read(env, problems, 'TCAB_BACKUP_PG_CHECK_SCHEDULE', ncrontab);
  if (problems.list.length) throw new ConfigError(problems.list);
  return {
    servers: common.servers!,
    armEndpoint: common.armEndpoint!,
    policy: { minRetentionDays: minRetentionDays!, requireGeoRedundant: requireGeoRedundant!, maxBackupAgeMs: maxBackupAgeMs! },
    enforce: enforce!,
    checkSchedule: checkSchedule!,
  };
}

export function loadPgDrillConfig(env: Env = process.env): PgDrillConfig {
  const problems = new Problems();
  const common = readCommon(env, problems);
  const drillSchedule = read(env, problems, 'TCAB_BACKUP_PG_DRILL_SCHEDULE', ncrontab);
  const intervalMs = read(env, problems, 'TCAB_BACKUP_PG_DRILL_INTERVAL', duration('7d'));
  const restoreLagMs = read(env, problems, 'TCAB_BACKUP_PG_RESTORE_LAG', duration('15m'));
  const validationSql = read(env, problems, 'TCAB_BACKUP_PG_VALIDATION_SQL', z.string().min(1));
  const maxDataAgeMs = read(env, problems, 'TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE', duration('3d'));
  const database = read(
    env,
    problems,
    'TCAB_BACKUP_PG_DRILL_DATABASE',
    z.string().regex(/^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/, 'expected a PostgreSQL database name'),
  );
  const user = read(
    env,
    problems,
    'TCAB_BACKUP_PG_DRILL_USER',
    z.string({ message: 'is required: the login the drill validates the restored server with' }).min(1).max(128),
  );
  const authKind = read(
    env,
    problems,
    'TCAB_BACKUP_PG_DRILL_AUTH',
    z.enum(['password', 'entra'], { message: 'expected password or entra' }),
  );
  const password = env.TCAB_BACKUP_PG_DRILL_PASSWORD?.trim() || undefined;
  registerSecret(password);
  let auth: PgDrillAuth | undefined;
  if (authKind === 'password') {
    if (!password)
      problems.add(
        'TCAB_BACKUP_PG_DRILL_PASSWORD',
        'is not set: required when TCAB_BACKUP_PG_DRILL_AUTH is password (or set TCAB_BACKUP_PG_DRILL_AUTH=entra to sign in with the managed identity)',
      );
    else auth = { kind: 'password', password };
  } else if (authKind === 'entra') {
    if (password)
      problems.add(
        'TCAB_BACKUP_PG_DRILL_PASSWORD',
        'is set, but TCAB_BACKUP_PG_DRILL_AUTH is entra: remove the password so that it is not kept where it is not used',
      );
    else auth = { kind: 'entra' };
  }
  const port = read(
    env,
    problems,
    'TCAB_BACKUP_PG_DRILL_PORT',
    z.coerce.number().int('expected a port number').min(1, 'expected a port number').max(65535, 'expected a port number'),
  );
  const tls = read(env, problems, 'TCAB_BACKUP_PG_DRILL_TLS', z.enum(['verify', 'disable'], { message: 'expected verify or disable' }));
  const maxAgeMs = read(env, problems, 'TCAB_BACKUP_PG_DRILL_MAX_AGE', duration('6h'));
  const timeoutMs = read(env, problems, 'TCAB_BACKUP_PG_DRILL_TIMEOUT', duration('2h'));
  // The sweeper must never take a drill server from under a drill that may still be restoring or validating.
  if (maxAgeMs !== undefined && timeoutMs !== undefined && maxAgeMs < timeoutMs + VALIDATION_WINDOW_MS + 30 * 60_000) {
    problems.add(
      'TCAB_BACKUP_PG_DRILL_MAX_AGE',
      `${formatDuration(maxAgeMs)} is too short: it must exceed TCAB_BACKUP_PG_DRILL_TIMEOUT (${formatDuration(timeoutMs)}) by at least 1h, or the sweeper could delete a drill server while its drill is still running`,
    );
  }
  if (problems.list.length) throw new ConfigError(problems.list);
  return {
    servers: common.servers!,
    armEndpoint: common.armEndpoint!,
    drillSchedule: drillSchedule!,
    intervalMs: intervalMs!,
    restoreLagMs: restoreLagMs!,
    validationSql: validationSql!,
    maxDataAgeMs: maxDataAgeMs!,
    database: database!,
    user: user!,
    auth: auth!,
    port: port!,
    tls: tls!,
    maxAgeMs: maxAgeMs!,
    timeoutMs: timeoutMs!,
  };
}
