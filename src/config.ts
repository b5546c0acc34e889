/**
 * Every setting, validated once with zod. Settings are environment variables (Function App settings,
 * `local.settings.json` locally, the agent's environment file on the VM). A missing or invalid setting
 * fails fast with a ConfigError naming each variable and what it expects.
 *
 * SETTINGS is the catalogue: the README's configuration reference and the infra checks read it, so a
 * setting added here without docs or without an app setting in infra/ fails a test.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigError } from './errors.js';
import { registerSecret } from './log.js';
import type { AgentAuthScheme, AgentConfig, EntraAgentConfig } from './agent/config.js';
import { CompressionSchema, parseKeyList } from './agent/protocol.js';
import { DATABASE_NAME_RE } from './catalog/layout.js';
import { credentialVariable, parseTargetList, type TargetSpec } from './targets/spec.js';
import { isLoopbackHost } from './util/net.js';
import { splitCommand } from './util/command.js';
import { parseDurationMs } from './util/duration.js';

export type Env = Record<string, string | undefined>;
/** The agent's settings are its own types (src/agent/config.ts); loadAgentConfig below reads them. */
export type { AgentAuthScheme, AgentConfig, EntraAgentConfig };

export interface SettingDoc {
  name: string;
  /** Who reads it: the function app / CLI ('backup') or the snapshot agent on the VM ('agent'). */
  side: 'backup' | 'agent';
  /** Must be set for the Function App to start (infra/ must set it). */
  requiredInAzure: boolean;
  secret: boolean;
  default?: string;
  description: string;
}

export const SETTINGS: SettingDoc[] = [
  { name: 'TCAB_BACKUP_TARGETS', side: 'backup', requiredInAzure: true, secret: false,
    description: 'Comma-separated name=url list of targets, e.g. blob=azblob://stbak/tcab,r2=r2://<account-id>/tcab. Schemes: file://, azblob://, r2://, s3://...?endpoint=&region=.' },
  { name: 'TCAB_BACKUP_TARGET_<NAME>_CONNECTION_STRING', side: 'backup', requiredInAzure: false, secret: true,
    description: 'azblob targets only, local runs only: a connection string (Azurite: UseDevelopmentStorage=true). In Azure leave it unset: the managed identity (AZURE_CLIENT_ID) is used.' },
  { name: 'TCAB_BACKUP_TARGET_<NAME>_ACCESS_KEY_ID', side: 'backup', requiredInAzure: false, secret: true,
    description: 'r2/s3 targets: the access key id (an R2 API token scoped to the bucket). A Key Vault reference in Azure.' },
  { name: 'TCAB_BACKUP_TARGET_<NAME>_SECRET_ACCESS_KEY', side: 'backup', requiredInAzure: false, secret: true,
    description: 'r2/s3 targets: the secret access key. A Key Vault reference in Azure.' },
  { name: 'TCAB_BACKUP_DATABASE', side: 'backup', requiredInAzure: false, secret: false, default: 'tcab',
    description: 'Database name used in storage keys (snapshots/<database>/...). Must match the agent\'s TCAB_AGENT_DATABASE_NAME.' },
  { name: 'TCAB_BACKUP_AGENT_URL', side: 'backup', requiredInAzure: true, secret: false,
    description: 'Base URL of the snapshot agent, e.g. https://10.0.1.4:8787. Plain http only for loopback.' },
  { name: 'TCAB_BACKUP_AGENT_AUTH', side: 'backup', requiredInAzure: false, secret: false, default: 'hmac',
    description: 'How the functions authenticate to the agent: hmac (TCAB-HMAC-SHA256 with TCAB_BACKUP_AGENT_KEY_ID and TCAB_BACKUP_AGENT_KEY), or entra (a Microsoft Entra ID token of the function app\'s managed identity for TCAB_BACKUP_AGENT_ENTRA_SCOPE; the agent must have entra in TCAB_AGENT_AUTH).' },
  { name: 'TCAB_BACKUP_AGENT_KEY_ID', side: 'backup', requiredInAzure: true, secret: false,
    description: 'Key id the functions sign agent requests with (one of the ids in the agent\'s TCAB_AGENT_KEYS). Not needed with TCAB_BACKUP_AGENT_AUTH=entra.' },
  { name: 'TCAB_BACKUP_AGENT_KEY', side: 'backup', requiredInAzure: true, secret: true,
    description: 'HMAC secret for that key id, at least 32 characters (64 hex characters recommended). A Key Vault reference in Azure. Not needed with TCAB_BACKUP_AGENT_AUTH=entra.' },
  { name: 'TCAB_BACKUP_AGENT_ENTRA_SCOPE', side: 'backup', requiredInAzure: false, secret: false,
    description: 'With TCAB_BACKUP_AGENT_AUTH=entra: the scope the managed identity asks a token for, the agent\'s application id URI (or client id) followed by /.default, e.g. api://tcab-backup-agent/.default. AZURE_CLIENT_ID names a user-assigned identity.' },
  { name: 'TCAB_BACKUP_AGENT_CA', side: 'backup', requiredInAzure: false, secret: false,
    description: 'PEM (inline or a file path) of the CA that signed the agent\'s TLS certificate, when it is not publicly trusted.' },
  { name: 'TCAB_BACKUP_AGENT_TIMEOUT', side: 'backup', requiredInAzure: false, secret: false, default: '10m',
    description: 'How long to wait for the agent to make one snapshot (VACUUM INTO, check, compress).' },
  { name: 'TCAB_BACKUP_COMPRESSION', side: 'backup', requiredInAzure: false, secret: false, default: 'auto',
    description: 'Compression asked of the agent: auto (the agent\'s best: zstd, else gzip), zstd, gzip or none.' },
  { name: 'TCAB_BACKUP_JOB_TIMEOUT', side: 'backup', requiredInAzure: false, secret: false, default: '25m',
    description: 'Functions: a job still running this long is aborted, and its invocation fails naming the job and its last step once the job has settled (at most a minute later). Keep it below functionTimeout in host.json (30 minutes), so that the job, not the host, says what was stuck.' },
  { name: 'TCAB_BACKUP_SNAPSHOT_SCHEDULE', side: 'backup', requiredInAzure: true, secret: false, default: '0 0 * * * *',
    description: 'NCRONTAB (six fields, UTC) of the timer-triggered snapshot. Default hourly.' },
  { name: 'TCAB_AGENT_DB', side: 'agent', requiredInAzure: false, secret: false,
    description: 'Path of the backend\'s SQLite database (read access is enough).' },
  { name: 'TCAB_AGENT_STAGING', side: 'agent', requiredInAzure: false, secret: false,
    description: 'Private staging folder on the same disk, writable by the agent only. Needs about 1.2 x the database size free.' },
  { name: 'TCAB_AGENT_LISTEN', side: 'agent', requiredInAzure: false, secret: false, default: '127.0.0.1:8787',
    description: 'host:port to listen on. A non-loopback address requires TLS (TCAB_AGENT_TLS_CERT and TCAB_AGENT_TLS_KEY).' },
  { name: 'TCAB_AGENT_AUTH', side: 'agent', requiredInAzure: false, secret: false, default: 'hmac',
    description: 'Accepted authentication schemes: hmac (TCAB-HMAC-SHA256 signatures with TCAB_AGENT_KEYS), entra (Bearer tokens from Microsoft Entra ID, see TCAB_AGENT_ENTRA_*), or hmac,entra for both (e.g. while switching).' },
  { name: 'TCAB_AGENT_KEYS', side: 'agent', requiredInAzure: false, secret: true,
    description: 'Accepted HMAC keys, id=secret,id2=secret2 (several during rotation). Each secret at least 32 characters. Required when TCAB_AGENT_AUTH includes hmac.' },
  { name: 'TCAB_AGENT_ENTRA_TENANT_ID', side: 'agent', requiredInAzure: false, secret: false,
    description: 'With entra in TCAB_AGENT_AUTH: the directory (tenant) id, a GUID. Tokens must be issued by this tenant (iss and tid).' },
  { name: 'TCAB_AGENT_ENTRA_AUDIENCE', side: 'agent', requiredInAzure: false, secret: false,
    description: 'With entra: the audience (aud) tokens must be for, the agent\'s application id URI (v1.0 tokens, e.g. api://tcab-backup-agent) or client id (v2.0 tokens); several comma-separated.' },
  { name: 'TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS', side: 'agent', requiredInAzure: false, secret: false,
    description: 'With entra: comma-separated object (principal) ids allowed to call the agent, the function app\'s managed identity. Tokens of any other identity are refused.' },
  { name: 'TCAB_AGENT_ENTRA_AUTHORITY', side: 'agent', requiredInAzure: false, secret: false, default: 'https://login.microsoftonline.com',
    description: 'With entra: the Entra ID authority (https) the signing keys are fetched from (<authority>/<tenant>/v2.0/.well-known/openid-configuration); another cloud\'s, or a local stand-in for tests.' },
  { name: 'TCAB_AGENT_ENTRA_CA', side: 'agent', requiredInAzure: false, secret: false,
    description: 'With entra: PEM (inline or a file path) of a CA to trust for TCAB_AGENT_ENTRA_AUTHORITY, for a private authority or tests. Not needed for Entra ID itself.' },
  { name: 'TCAB_AGENT_TLS_CERT', side: 'agent', requiredInAzure: false, secret: false,
    description: 'Path of the PEM certificate (chain) to serve HTTPS with.' },
  { name: 'TCAB_AGENT_TLS_KEY', side: 'agent', requiredInAzure: false, secret: false,
    description: 'Path of the PEM private key for TCAB_AGENT_TLS_CERT.' },
  { name: 'TCAB_AGENT_DATABASE_NAME', side: 'agent', requiredInAzure: false, secret: false, default: 'tcab',
    description: 'Database name reported in snapshot descriptions.' },
  { name: 'TCAB_AGENT_COMPRESSION', side: 'agent', requiredInAzure: false, secret: false, default: 'auto',
    description: 'Default compression when a request names none: auto (zstd when available, else gzip), zstd, gzip or none.' },
  { name: 'TCAB_AGENT_STAGING_TTL', side: 'agent', requiredInAzure: false, secret: false, default: '1h',
    description: 'Staged snapshots are removed after this long even when no DELETE comes.' },
  { name: 'TCAB_AGENT_DRILL_BACKEND_COMMAND', side: 'agent', requiredInAzure: false, secret: false,
    description: 'The backend command an application drill starts on the restored copy (POST /v1/drills), run without a shell: words separated by spaces, "..." or \'...\' to keep spaces in a word; {database_url} and {port} are replaced, and TCAB_BACKEND_DATABASE_URL=sqlite://<scratch file> and PORT=<free loopback port> are added to its environment (the agent\'s own TCAB_AGENT_* settings are not passed on). Unset: application drills are refused (501). E.g. /opt/tcab/bin/tcab-backend serve --port {port}.' },
  { name: 'TCAB_AGENT_DRILL_HEALTH_TIMEOUT', side: 'agent', requiredInAzure: false, secret: false, default: '2m',
    description: 'How long an application drill waits for the backend\'s GET /healthz to answer 200 (migrations on a large copy take time).' },
  { name: 'TCAB_AGENT_DRILL_STOP_GRACE', side: 'agent', requiredInAzure: false, secret: false, default: '10s',
    description: 'After an application drill, the backend gets SIGTERM and this long to exit before SIGKILL.' },
  { name: 'TCAB_BACKUP_RETENTION_<NAME>', side: 'backup', requiredInAzure: false, secret: false, default: 'hourly=48,daily=14,weekly=8,monthly=12,yearly=-1',
    description: 'Retention policy of one target (restic forget semantics, UTC), comma-separated rules: last, hourly, daily, weekly (ISO weeks), monthly, yearly = a count or -1 (unlimited); within, withinHourly, withinDaily, withinWeekly, withinMonthly, withinYearly = a duration in y, m (months), d, h like 1y2m3d4h, measured back from the newest snapshot; tags = tag lists separated by ";", tags of one list joined by "+" (pinned;release+v1 keeps snapshots tagged pinned, or tagged both release and v1). E.g. last=3,hourly=24,daily=14,weekly=8,monthly=12,yearly=-1.' },
  { name: 'TCAB_BACKUP_RETENTION_MIN_KEEP', side: 'backup', requiredInAzure: false, secret: false, default: '3',
    description: 'Safety rail: prune always keeps at least this many of the newest snapshots of each target, whatever the policy says.' },
  { name: 'TCAB_BACKUP_RETENTION_MIN_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '1h',
    description: 'Safety rail: prune never deletes a snapshot younger than this (e.g. 1h, 1d).' },
  { name: 'TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE', side: 'backup', requiredInAzure: false, secret: false, default: '0.5',
    description: 'Safety rail: a prune run that would delete more than this share (0 to 1) of a target\'s snapshots is refused unless forced (tcab-backup prune --force).' },
  { name: 'TCAB_BACKUP_REPLICATE_SCHEDULE', side: 'backup', requiredInAzure: true, secret: false, default: '0 20 * * * *',
    description: 'NCRONTAB (six fields, UTC) of the timer-triggered replicate: copies every snapshot a target lacks from a target that has it. Default hourly, 20 minutes past.' },
  { name: 'TCAB_BACKUP_PRUNE_SCHEDULE', side: 'backup', requiredInAzure: true, secret: false, default: '0 45 * * * *',
    description: 'NCRONTAB (six fields, UTC) of the timer-triggered prune: applies each target\'s retention policy behind the safety rails and removes garbage. Default hourly, 45 minutes past.' },
  { name: 'TCAB_BACKUP_PG_SERVERS', side: 'backup', requiredInAzure: false, secret: false,
    description: 'Postgres deployments: comma-separated ARM resource ids of the flexible servers to check and drill, /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.DBforPostgreSQL/flexibleServers/<name>. Unset: the pg jobs have nothing to do.' },
  { name: 'TCAB_BACKUP_ARM_ENDPOINT', side: 'backup', requiredInAzure: false, secret: false, default: 'https://management.azure.com',
    description: 'Azure Resource Manager endpoint for the pg jobs (another cloud\'s, or a local stand-in for tests).' },
  { name: 'TCAB_BACKUP_PG_MIN_RETENTION_DAYS', side: 'backup', requiredInAzure: false, secret: false, default: '7',
    description: 'pg check: the least backup retention, in days (7 to 35), each server must have.' },
  { name: 'TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT', side: 'backup', requiredInAzure: false, secret: false, default: 'false',
    description: 'pg check: true to require geo-redundant backups (only settable when a server is created).' },
  { name: 'TCAB_BACKUP_PG_MAX_BACKUP_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '26h',
    description: 'pg check: the newest automatic (Full) backup of each server must be younger than this.' },
  { name: 'TCAB_BACKUP_PG_ENFORCE', side: 'backup', requiredInAzure: false, secret: false, default: 'false',
    description: 'pg check: true to raise a retention below TCAB_BACKUP_PG_MIN_RETENTION_DAYS to it (never lowers). Needs the Contributor role on the server\'s resource group.' },
  { name: 'TCAB_BACKUP_PG_CHECK_SCHEDULE', side: 'backup', requiredInAzure: false, secret: false, default: '0 15 * * * *',
    description: 'NCRONTAB (six fields, UTC) of the timer-triggered pg check. Default hourly.' },
  { name: 'TCAB_BACKUP_PG_DRILL_SCHEDULE', side: 'backup', requiredInAzure: false, secret: false, default: '0 */10 * * * *',
    description: 'NCRONTAB (six fields, UTC) of the pg drill tick: each tick sweeps old drill servers and advances the current drill by one step, so a drill takes several ticks. Default every 10 minutes.' },
  { name: 'TCAB_BACKUP_PG_DRILL_INTERVAL', side: 'backup', requiredInAzure: false, secret: false, default: '7d',
    description: 'pg drill: a new point-in-time restore drill starts when the last one was requested at least this long ago.' },
  { name: 'TCAB_BACKUP_PG_RESTORE_LAG', side: 'backup', requiredInAzure: false, secret: false, default: '15m',
    description: 'pg drill: the restore point is this long before the drill was requested (moved up to the earliest restore point if that is later).' },
  { name: 'TCAB_BACKUP_PG_VALIDATION_SQL', side: 'backup', requiredInAzure: false, secret: false, default: 'SELECT count(*) AS runs, max(published_at) AS newest_published_at FROM runs',
    description: 'pg drill: SQL run on the restored server; it must return one row with columns runs (a count, at least 1) and newest_published_at (not after the restore point, and at most TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE before it).' },
  { name: 'TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '3d',
    description: 'pg drill: the newest run found on the restored server may be at most this much older than the restore point.' },
  { name: 'TCAB_BACKUP_PG_DRILL_DATABASE', side: 'backup', requiredInAzure: false, secret: false, default: 'tcab',
    description: 'pg drill: the database the validation SQL runs in.' },
  { name: 'TCAB_BACKUP_PG_DRILL_USER', side: 'backup', requiredInAzure: false, secret: false,
    description: 'pg drill: the login used on the restored server (with Entra: the name of the managed identity\'s PostgreSQL role). Restored servers keep the source\'s logins.' },
  { name: 'TCAB_BACKUP_PG_DRILL_PASSWORD', side: 'backup', requiredInAzure: false, secret: true,
    description: 'pg drill: the password of TCAB_BACKUP_PG_DRILL_USER when TCAB_BACKUP_PG_DRILL_AUTH=password. A Key Vault reference in Azure.' },
  { name: 'TCAB_BACKUP_PG_DRILL_AUTH', side: 'backup', requiredInAzure: false, secret: false, default: 'password',
    description: 'pg drill: password, or entra to sign in with a token of the managed identity (scope https://ossrdbms-aad.database.windows.net/.default).' },
  { name: 'TCAB_BACKUP_PG_DRILL_PORT', side: 'backup', requiredInAzure: false, secret: false, default: '5432',
    description: 'pg drill: the PostgreSQL port of the restored server.' },
  { name: 'TCAB_BACKUP_PG_DRILL_TLS', side: 'backup', requiredInAzure: false, secret: false, default: 'verify',
    description: 'pg drill: verify (TLS with a verified certificate), or disable, which is refused for any server not on loopback (local runs only).' },
  { name: 'TCAB_BACKUP_PG_DRILL_MAX_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '6h',
    description: 'pg drill sweeper: drill servers (tagged tcab-backup-drill=true, named tcab-drill-...) older than this are deleted. Must exceed TCAB_BACKUP_PG_DRILL_TIMEOUT by at least 1h.' },
  { name: 'TCAB_BACKUP_PG_DRILL_TIMEOUT', side: 'backup', requiredInAzure: false, secret: false, default: '2h',
    description: 'pg drill: a restore not ready this long after it started fails the drill (its server is still deleted).' },
  { name: 'TCAB_BACKUP_VERIFY_SCHEDULE', side: 'backup', requiredInAzure: true, secret: false, default: '0 0 5 * * *',
    description: 'NCRONTAB (six fields, UTC) of the timer-triggered verify. Default daily at 05:00. Each run re-reads the least recently verified snapshots, enough that every stored snapshot is re-read within TCAB_BACKUP_VERIFY_WITHIN given the longest gap between two runs of this schedule.' },
  { name: 'TCAB_BACKUP_VERIFY_WITHIN', side: 'backup', requiredInAzure: false, secret: false, default: '7d',
    description: 'Every stored snapshot is re-read and its sha256 checked at least this often (counted from when it was stored or last verified). Must be at least the longest gap between two verify runs.' },
  { name: 'TCAB_BACKUP_DRILL_SCHEDULE', side: 'backup', requiredInAzure: true, secret: false, default: '0 0 4 * * *',
    description: 'NCRONTAB (six fields, UTC) of the restore drill: the newest snapshot of every target is restored to a scratch file and checked. Default daily at 04:00.' },
  { name: 'TCAB_BACKUP_DRILL_WORK_DIR', side: 'backup', requiredInAzure: false, secret: false,
    description: 'Folder the restore drill restores into (deleted afterwards), e.g. the mount path of an Azure Files share (the template mounts one at /mounts/drill and sets this). A full restore needs free space for the uncompressed database; with less, the drill verifies by streaming (see TCAB_BACKUP_DRILL_METHOD). Default: the system temporary folder.' },
  { name: 'TCAB_BACKUP_DRILL_METHOD', side: 'backup', requiredInAzure: false, secret: false, default: 'auto',
    description: 'How the drill proves a snapshot: restore (write it to TCAB_BACKUP_DRILL_WORK_DIR, check both sha256 sums, PRAGMA integrity_check and row counts; fails when the folder lacks room), stream (decompress it as it downloads and check both sha256 sums without writing it: the database sha256 equal to the manifest\'s proves these are the bytes the agent checked with integrity_check and counted), or auto (restore when the folder has room, else stream). The drill record says which checks ran.' },
  { name: 'TCAB_BACKUP_DRILL_APP', side: 'backup', requiredInAzure: false, secret: false, default: 'false',
    description: 'true: after a target\'s snapshot passes the file checks, the drill also streams its artifact to the agent (POST /v1/drills), which restores it on the VM, starts the backend on the copy (the agent\'s TCAB_AGENT_DRILL_BACKEND_COMMAND) and checks /healthz and /runs against the file. A failed application drill, or an agent that cannot be asked, fails that target\'s drill; the recovery time then includes the backend\'s start to serving the runs. "tcab-backup drill --app" runs it once.' },
  { name: 'TCAB_BACKUP_MONITOR_SCHEDULE', side: 'backup', requiredInAzure: true, secret: false, default: '0 */5 * * * *',
    description: 'NCRONTAB (six fields, UTC) of the monitor that checks snapshot, drill and verify ages on every target, writes status/<database>.json and fails when the state is critical. Default every 5 minutes.' },
  { name: 'TCAB_BACKUP_SNAPSHOT_WARN_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '2h',
    description: 'The monitor warns when the newest snapshot on a target is older than this.' },
  { name: 'TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '4h',
    description: 'The monitor is critical (and fails, so the alert fires) when the newest snapshot on a target is older than this.' },
  { name: 'TCAB_BACKUP_DRILL_WARN_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '26h',
    description: 'The monitor warns when the newest successful restore drill of a target is older than this (or, before the first drill, when the target has held snapshots this long).' },
  { name: 'TCAB_BACKUP_DRILL_CRITICAL_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '50h',
    description: 'The monitor is critical when the newest successful restore drill of a target is older than this.' },
  { name: 'TCAB_BACKUP_VERIFY_WARN_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '26h',
    description: 'The monitor warns when the last verify run of a target that found no damage is older than this.' },
  { name: 'TCAB_BACKUP_VERIFY_CRITICAL_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '50h',
    description: 'The monitor is critical when the last verify run of a target that found no damage is older than this.' },
  { name: 'TCAB_BACKUP_PG_CHECK_WARN_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '2h',
    description: 'Postgres mode: the monitor warns when the last backup-policy check of a server is older than this.' },
  { name: 'TCAB_BACKUP_PG_CHECK_CRITICAL_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '4h',
    description: 'Postgres mode: the monitor is critical when the last backup-policy check of a server is older than this.' },
  { name: 'TCAB_BACKUP_PG_DRILL_WARN_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '8d',
    description: 'Postgres mode: the monitor warns when the last successful point-in-time restore drill of a server is older than this.' },
  { name: 'TCAB_BACKUP_PG_DRILL_CRITICAL_AGE', side: 'backup', requiredInAzure: false, secret: false, default: '15d',
    description: 'Postgres mode: the monitor is critical when the last successful point-in-time restore drill of a server is older than this.' },
];

const MIN_SECRET_CHARS = 32;

/** Collects every problem instead of stopping at the first, so one run shows all that is wrong. */
export class Problems {
  readonly list: string[] = [];
  add(name: string, message: string): void {
    this.list.push(`${name}: ${message}`);
  }
  throwIfAny(): void {
    if (this.list.length) throw new ConfigError(this.list);
  }
}

/** Reads one variable through a zod schema; a problem names the variable and never shows a secret's value. */
export function read<T>(env: Env, problems: Problems, name: string, schema: z.ZodType<T>, fallback?: string, secret = false): T | undefined {
  const raw = env[name]?.trim() || fallback;
  const result = schema.safeParse(raw);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const what = raw === undefined ? 'is not set' : `"${secret ? '***' : redactIfSecret(name, raw)}" is invalid`;
  problems.add(name, `${what}: ${issue?.message ?? 'invalid'}`);
  return undefined;
}

function redactIfSecret(name: string, raw: string): string {
  return SETTINGS.find((s) => s.name === name)?.secret || /KEY|SECRET|CONNECTION/.test(name) ? '***' : raw;
}

/** A positive duration like 90s, 15m, 1h30m, 7d, in milliseconds. */
export const durationMs = (what: string) =>
  z.string({ message: `expected ${what}` }).transform((s, ctx) => {
    try {
      const ms = parseDurationMs(s);
      if (ms <= 0) throw new Error('must be longer than zero');
      return ms;
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
  });

export const booleanSetting = z.enum(['true', 'false'], { message: 'expected true or false' }).transform((s) => s === 'true');

export const NCRONTAB = z
  .string({ message: 'expected an NCRONTAB expression with six fields (second minute hour day month weekday)' })
  .refine((s) => s.trim().split(/\s+/).length === 6, 'expected six fields: second minute hour day month weekday (e.g. "0 0 * * * *")');

function httpUrl(requireTlsOffLoopback: boolean) {
  return z.string({ message: 'expected an http(s) URL' }).transform((s, ctx) => {
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      ctx.addIssue({ code: 'custom', message: 'expected an http(s) URL like https://10.0.1.4:8787' });
      return z.NEVER;
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') {
      ctx.addIssue({ code: 'custom', message: `expected http or https, got ${u.protocol}` });
      return z.NEVER;
    }
    if (requireTlsOffLoopback && u.protocol === 'http:' && !isLoopbackHost(u.hostname)) {
      ctx.addIssue({ code: 'custom', message: 'plain http is only allowed to a loopback agent; use https' });
      return z.NEVER;
    }
    if (u.username || u.password) {
      ctx.addIssue({ code: 'custom', message: 'credentials may not be written in the URL' });
      return z.NEVER;
    }
    return u;
  });
}

const secretString = z.string({ message: 'is required' }).min(MIN_SECRET_CHARS, `must be at least ${MIN_SECRET_CHARS} characters (generate 64 hex characters)`);

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const guid = (what: string) => z.string({ message: `is required: ${what}` }).regex(GUID_RE, `expected ${what}, a GUID like 72f988bf-86f1-41af-91ab-2d7cd011db47`).transform((s) => s.toLowerCase());

/** A comma-separated list whose every entry passes `entry`; empty entries are dropped, at least one must remain. */
function commaList<T>(what: string, entry: z.ZodType<T>) {
  return z.string({ message: `is required: ${what}` }).transform((s, ctx) => {
    const out: T[] = [];
    for (const item of s.split(',').map((x) => x.trim()).filter(Boolean)) {
      const r = entry.safeParse(item);
      if (!r.success) {
        ctx.addIssue({ code: 'custom', message: `"${item}": ${r.error.issues[0]?.message ?? 'invalid'}` });
        return z.NEVER;
      }
      out.push(r.data);
    }
    if (out.length === 0) {
      ctx.addIssue({ code: 'custom', message: `expected ${what}` });
      return z.NEVER;
    }
    return out;
  });
}

/** A PEM given inline, or the path of a PEM file. */
function pemSetting(env: Env, problems: Problems, name: string): string | undefined {
  const raw = env[name]?.trim();
  if (!raw) return undefined;
  if (raw.includes('-----BEGIN')) return raw;
  try {
    const text = readFileSync(raw, 'utf8');
    if (text.includes('-----BEGIN')) return text;
    problems.add(name, `"${raw}" is not a PEM file (expected -----BEGIN CERTIFICATE-----)`);
  } catch (e) {
    problems.add(name, `cannot read "${raw}": ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return undefined;
}

const agentAuthSchemes = z.string().transform((s, ctx) => {
  const list = s.split(',').map((x) => x.trim().toLowerCase()).filter(Boolean);
  if (list.length === 0 || list.some((x) => x !== 'hmac' && x !== 'entra') || new Set(list).size !== list.length) {
    ctx.addIssue({ code: 'custom', message: 'expected hmac, entra, or hmac,entra for both' });
    return z.NEVER;
  }
  return list as AgentAuthScheme[];
});

/** The Entra ID authority: https only, since the signing keys fetched from it decide which tokens are genuine. */
const entraAuthority = z.string().transform((s, ctx) => {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'expected an https URL like https://login.microsoftonline.com' });
    return z.NEVER;
  }
  if (u.protocol !== 'https:' || u.username || u.password || u.search || u.hash) {
    ctx.addIssue({ code: 'custom', message: 'expected an https URL without credentials, query or fragment, like https://login.microsoftonline.com' });
    return z.NEVER;
  }
  return `${u.origin}${u.pathname.replace(/\/+$/, '')}`;
});

const entraScope = z
  .string({ message: 'is required with TCAB_BACKUP_AGENT_AUTH=entra: the agent\'s application id URI followed by /.default' })
  .regex(/^\S+\/\.default$/, 'expected the agent\'s application id URI (or client id) followed by /.default, e.g. api://tcab-backup-agent/.default');

export interface TargetsConfig {
  database: string;
  targets: TargetSpec[];
}

/** How the functions prove themselves to the agent: a signing key, or a managed identity token for a scope. */
export type AgentClientAuth = { scheme: 'hmac'; keyId: string; key: string } | { scheme: 'entra'; scope: string };

export interface AgentClientConfig {
  url: URL;
  auth: AgentClientAuth;
  ca: string | undefined;
  timeoutMs: number;
  compression: 'auto' | 'gzip' | 'zstd' | 'none';
}

export interface BackupConfig extends TargetsConfig {
  agent: AgentClientConfig;
  snapshotSchedule: string;
}

export function loadTargetsConfig(env: Env = process.env): TargetsConfig {
  const problems = new Problems();
  // App Service resolves Key Vault references before the app starts; one still in this form did not resolve.
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith('TCAB_BACKUP_') && value?.trim().startsWith('@Microsoft.KeyVault(')) {
      problems.add(name, 'is an unresolved Key Vault reference: check that the secret exists and that the function app\'s identity has the "Key Vault Secrets User" role on the vault (Azure portal: the setting shows its reference status)');
    }
  }
  const database = read(env, problems, 'TCAB_BACKUP_DATABASE', z.string().regex(DATABASE_NAME_RE, "lower-case letters, digits, '_' and '-'"), 'tcab');
  let targets: TargetSpec[] = [];
  const rawTargets = env.TCAB_BACKUP_TARGETS?.trim();
  if (!rawTargets) {
    problems.add('TCAB_BACKUP_TARGETS', 'is not set: expected name=url[,name=url...], e.g. local=file:///var/backups/tcab');
  } else {
    try {
      targets = parseTargetList(rawTargets, (name) => {
        const creds = {
          connectionString: env[credentialVariable(name, 'CONNECTION_STRING')]?.trim() || undefined,
          accessKeyId: env[credentialVariable(name, 'ACCESS_KEY_ID')]?.trim() || undefined,
          secretAccessKey: env[credentialVariable(name, 'SECRET_ACCESS_KEY')]?.trim() || undefined,
        };
        registerSecret(creds.connectionString);
        registerSecret(creds.secretAccessKey);
        return creds;
      });
    } catch (e) {
      problems.add('TCAB_BACKUP_TARGETS', (e as Error).message);
    }
    for (const t of targets) {
      if (t.kind === 's3' && Boolean(t.accessKeyId) !== Boolean(t.secretAccessKey)) {
        problems.add(credentialVariable(t.name, t.accessKeyId ? 'SECRET_ACCESS_KEY' : 'ACCESS_KEY_ID'),
          `is not set, but its pair is: target "${t.name}" needs both the access key id and the secret`);
      }
    }
  }
  problems.throwIfAny();
  return { database: database!, targets };
}

export function loadAgentClientConfig(env: Env = process.env): AgentClientConfig {
  const problems = new Problems();
  const url = read(env, problems, 'TCAB_BACKUP_AGENT_URL', httpUrl(true));
  const scheme = read(env, problems, 'TCAB_BACKUP_AGENT_AUTH', z.enum(['hmac', 'entra'], { message: 'expected hmac or entra' }), 'hmac');
  let auth: AgentClientAuth | undefined;
  if (scheme === 'entra') {
    // Unused with entra, yet a key left in the settings must still never reach a log.
    registerSecret(env.TCAB_BACKUP_AGENT_KEY?.trim());
    const scope = read(env, problems, 'TCAB_BACKUP_AGENT_ENTRA_SCOPE', entraScope);
    if (scope) auth = { scheme: 'entra', scope };
  } else if (scheme === 'hmac') {
    const keyId = read(env, problems, 'TCAB_BACKUP_AGENT_KEY_ID', z.string({ message: 'is required' }).regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, "_", "." and "-"'));
    const key = read(env, problems, 'TCAB_BACKUP_AGENT_KEY', secretString);
    registerSecret(key);
    if (keyId && key) auth = { scheme: 'hmac', keyId, key };
  }
  const ca = pemSetting(env, problems, 'TCAB_BACKUP_AGENT_CA');
  const timeoutMs = read(env, problems, 'TCAB_BACKUP_AGENT_TIMEOUT', durationMs('a duration like 10m'), '10m');
  const compression = read(env, problems, 'TCAB_BACKUP_COMPRESSION', z.enum(['auto', ...CompressionSchema.options], { message: 'expected auto, zstd, gzip or none' }), 'auto');
  problems.throwIfAny();
  return { url: url!, auth: auth!, ca, timeoutMs: timeoutMs!, compression: compression! };
}

/** Everything the Function App needs; validated at once so a bad deployment fails on its first invocation. */
export function loadBackupConfig(env: Env = process.env): BackupConfig {
  const problems: string[] = [];
  let targets: TargetsConfig | undefined;
  let agent: AgentClientConfig | undefined;
  try {
    targets = loadTargetsConfig(env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(...e.problems);
  }
  try {
    agent = loadAgentClientConfig(env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(...e.problems);
  }
  const p = new Problems();
  const snapshotSchedule = read(env, p, 'TCAB_BACKUP_SNAPSHOT_SCHEDULE', NCRONTAB, '0 0 * * * *');
  problems.push(...p.list);
  if (problems.length) throw new ConfigError(problems);
  return { ...targets!, agent: agent!, snapshotSchedule: snapshotSchedule! };
}

export function loadAgentConfig(env: Env = process.env): AgentConfig {
  const problems = new Problems();
  const dbPath = read(env, problems, 'TCAB_AGENT_DB', z.string({ message: 'is required: the path of the SQLite database' }).min(1));
  const stagingDir = read(env, problems, 'TCAB_AGENT_STAGING', z.string({ message: 'is required: a private staging folder' }).min(1));
  const listen = read(env, problems, 'TCAB_AGENT_LISTEN',
    z.string().regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected host:port, e.g. 127.0.0.1:8787 or [::1]:8787'), '127.0.0.1:8787');
  const auth = read(env, problems, 'TCAB_AGENT_AUTH', agentAuthSchemes, 'hmac');
  const hmac = auth?.includes('hmac') ?? true;
  let keys: Map<string, string> | undefined;
  const rawKeys = env.TCAB_AGENT_KEYS?.trim();
  if (!rawKeys) {
    if (hmac) problems.add('TCAB_AGENT_KEYS', 'is not set: expected id=secret[,id=secret...] (or TCAB_AGENT_AUTH=entra to accept Entra ID tokens only)');
    keys = new Map();
  } else {
    try {
      keys = parseKeyList(rawKeys);
      for (const [id, secret] of keys) {
        registerSecret(secret);
        if (!/^[A-Za-z0-9_.-]{1,64}$/.test(id)) problems.add('TCAB_AGENT_KEYS', `key id "${id}" must be letters, digits, "_", "." and "-"`);
        if (secret.length < MIN_SECRET_CHARS) problems.add('TCAB_AGENT_KEYS', `the secret of key "${id}" is shorter than ${MIN_SECRET_CHARS} characters`);
      }
      if (keys.size === 0) problems.add('TCAB_AGENT_KEYS', 'holds no key');
    } catch (e) {
      problems.add('TCAB_AGENT_KEYS', (e as Error).message);
    }
  }
  const certPath = env.TCAB_AGENT_TLS_CERT?.trim();
  const keyPath = env.TCAB_AGENT_TLS_KEY?.trim();
  let tls: AgentConfig['tls'];
  if (Boolean(certPath) !== Boolean(keyPath)) {
    problems.add(certPath ? 'TCAB_AGENT_TLS_KEY' : 'TCAB_AGENT_TLS_CERT', 'is not set, but its pair is: TLS needs both the certificate and the key');
  } else if (certPath && keyPath) {
    try {
      tls = { cert: readFileSync(certPath, 'utf8'), key: readFileSync(keyPath, 'utf8') };
    } catch (e) {
      problems.add('TCAB_AGENT_TLS_CERT', `cannot read the certificate or key: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  let host = '127.0.0.1';
  let port = 8787;
  if (listen) {
    const idx = listen.lastIndexOf(':');
    host = listen.slice(0, idx).replace(/^\[|\]$/g, '');
    port = Number(listen.slice(idx + 1));
    if (port > 65535) problems.add('TCAB_AGENT_LISTEN', `port ${port} is out of range`);
    if (!tls && !isLoopbackHost(host)) {
      problems.add('TCAB_AGENT_LISTEN', `"${listen}" is not a loopback address, and plain HTTP is only allowed on loopback: set TCAB_AGENT_TLS_CERT and TCAB_AGENT_TLS_KEY`);
    }
  }
  const databaseName = read(env, problems, 'TCAB_AGENT_DATABASE_NAME', z.string().regex(DATABASE_NAME_RE, "lower-case letters, digits, '_' and '-'"), 'tcab');
  const compression = read(env, problems, 'TCAB_AGENT_COMPRESSION', z.enum(['auto', ...CompressionSchema.options], { message: 'expected auto, zstd, gzip or none' }), 'auto');
  const stagingTtlMs = read(env, problems, 'TCAB_AGENT_STAGING_TTL', durationMs('a duration like 1h'), '1h');
  const entra = auth?.includes('entra') ? loadEntraAgentConfig(env, problems) : undefined;
  let drillCommand: string[] | undefined;
  const rawCommand = env.TCAB_AGENT_DRILL_BACKEND_COMMAND?.trim();
  if (rawCommand) {
    try {
      drillCommand = splitCommand(rawCommand);
    } catch (e) {
      problems.add('TCAB_AGENT_DRILL_BACKEND_COMMAND', (e as Error).message);
    }
  }
  const healthTimeoutMs = read(env, problems, 'TCAB_AGENT_DRILL_HEALTH_TIMEOUT', durationMs('a duration like 2m'), '2m');
  const stopGraceMs = read(env, problems, 'TCAB_AGENT_DRILL_STOP_GRACE', durationMs('a duration like 10s'), '10s');
  problems.throwIfAny();
  return {
    dbPath: dbPath!, stagingDir: stagingDir!, host, port, auth: auth!, keys: keys!, ...(entra ? { entra } : {}), tls,
    databaseName: databaseName!, compression: compression!, stagingTtlMs: stagingTtlMs!,
    drill: { command: drillCommand, healthTimeoutMs: healthTimeoutMs!, stopGraceMs: stopGraceMs! },
  };
}

function loadEntraAgentConfig(env: Env, problems: Problems): EntraAgentConfig | undefined {
  const tenantId = read(env, problems, 'TCAB_AGENT_ENTRA_TENANT_ID', guid('the directory (tenant) id'));
  const audiences = read(env, problems, 'TCAB_AGENT_ENTRA_AUDIENCE',
    commaList('the agent\'s application id URI or client id, e.g. api://tcab-backup-agent', z.string().regex(/^\S+$/, 'no spaces')));
  const allowedObjectIds = read(env, problems, 'TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS',
    commaList('the object (principal) id of the function app\'s managed identity', guid('an object id')));
  const authority = read(env, problems, 'TCAB_AGENT_ENTRA_AUTHORITY', entraAuthority, 'https://login.microsoftonline.com');
  const ca = pemSetting(env, problems, 'TCAB_AGENT_ENTRA_CA');
  if (!tenantId || !audiences || !allowedObjectIds || !authority) return undefined;
  return { tenantId, audiences, allowedObjectIds, authority, ca };
}
