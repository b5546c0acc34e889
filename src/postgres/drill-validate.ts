/**
 * Validation of a restored drill server: connect with `pg`, run the validation SQL, and judge what it
 * returned against the restore point. Connecting is kept apart from judging so that a server that is not
 * yet accepting connections is retried, while data that is wrong fails the drill at once.
 */
import type { TokenCredential } from '@azure/identity';
import pg from 'pg';
import { errorMessage } from '../errors.js';
import { redact } from '../log.js';
import { isLoopbackHost } from '../util/net.js';
import { formatDuration } from '../util/duration.js';
import type { PgDrillConfig } from './config.js';
import type { ValidationCheck } from './records.js';

/** Token audience of Azure Database for PostgreSQL for Microsoft Entra sign-in. */
export const PG_ENTRA_SCOPE = 'https://ossrdbms-aad.database.windows.net/.default';
/** Clocks of Azure and of the backend differ a little; data this much after the restore point still passes. */
const CLOCK_SKEW_MS = 5 * 60_000;

export type QueryOutcome =
  | { kind: 'unreachable'; error: string }
  | { kind: 'refused'; error: string; hint: string }
  | { kind: 'query-failed'; error: string }
  | { kind: 'ran'; runs: number; newestPublishedAt: Date | null };

export async function queryDrillServer(config: PgDrillConfig, host: string, credential: TokenCredential): Promise<QueryOutcome> {
  if (config.tls === 'disable' && !isLoopbackHost(host)) {
    return {
      kind: 'refused',
      error: `TCAB_BACKUP_PG_DRILL_TLS=disable would send the drill login to ${host} unencrypted`,
      hint: 'set TCAB_BACKUP_PG_DRILL_TLS=verify; disable is only for a PostgreSQL on loopback (local runs and tests)',
    };
  }
  let password: string;
  try {
    password = config.auth.kind === 'password' ? config.auth.password : ((await credential.getToken(PG_ENTRA_SCOPE))?.token ?? '');
  } catch (e) {
    return { kind: 'unreachable', error: `cannot get a Microsoft Entra token for ${PG_ENTRA_SCOPE}: ${redact(errorMessage(e))}` };
  }
  const client = new pg.Client({
    host,
    port: config.port,
    database: config.database,
    user: config.user,
    password,
    ssl: config.tls === 'verify' ? { rejectUnauthorized: true, servername: host } : false,
    connectionTimeoutMillis: 30_000,
    query_timeout: 120_000,
    statement_timeout: 120_000,
    application_name: 'tcab-backup-drill',
    // The validation SQL is the operator's; it only ever needs to read.
    options: '-c default_transaction_read_only=on',
  });
  // A connection error after connect (server going away) must not crash the process as an unhandled 'error'.
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (e) {
    await client.end().catch(() => {});
    return { kind: 'unreachable', error: describePgError(e) };
  }
  try {
    const result = await client.query(config.validationSql);
    const row = result.rows[0] as Record<string, unknown> | undefined;
    if (!row || !('runs' in row) || !('newest_published_at' in row)) {
      return {
        kind: 'query-failed',
        error: `the validation SQL returned ${row ? `columns ${Object.keys(row).join(', ')}` : 'no row'}; it must return one row with columns runs and newest_published_at`,
      };
    }
    const runs = Number(row.runs);
    if (!Number.isFinite(runs))
      return { kind: 'query-failed', error: `the validation SQL returned runs = ${String(row.runs)}, not a number` };
    const newest = toDate(row.newest_published_at);
    if (newest === undefined)
      return {
        kind: 'query-failed',
        error: `the validation SQL returned newest_published_at = ${String(row.newest_published_at)}, not a time`,
      };
    return { kind: 'ran', runs, newestPublishedAt: newest };
  } catch (e) {
    return { kind: 'query-failed', error: describePgError(e) };
  } finally {
    await client.end().catch(() => {});
  }
}

function toDate(v: unknown): Date | null | undefined {
  if (v === null) return null;
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? undefined : v;
  if (typeof v === 'string') {
    // A time without a zone is taken as UTC, as the backend writes it.
    const d = new Date(/[zZ]|[+-]\d{2}:?\d{2}$/.test(v) ? v : v.replace(' ', 'T') + 'Z');
    return Number.isNaN(d.getTime()) ? undefined : d;
  }
  return undefined;
}

function describePgError(e: unknown): string {
  const err = e as { code?: string; message?: string } | null;
  const code = typeof err?.code === 'string' ? ` (${err.code})` : '';
  return redact(`${errorMessage(e)}${code}`);
}

/** The checks a drill's data must pass; each says what it found. */
export function judgeRestoredData(
  runs: number,
  newest: Date | null,
  restorePoint: Date,
  maxDataAgeMs: number,
): { checks: ValidationCheck[]; recoveryPointMs: number | undefined } {
  const checks: ValidationCheck[] = [];
  checks.push({ name: 'has-runs', ok: runs >= 1, detail: `the restored server holds ${runs} runs` });
  if (!newest) {
    checks.push({ name: 'newest-run', ok: false, detail: 'the restored server has no newest published_at' });
    return { checks, recoveryPointMs: undefined };
  }
  const recoveryPointMs = restorePoint.getTime() - newest.getTime();
  checks.push({
    name: 'not-after-restore-point',
    ok: recoveryPointMs >= -CLOCK_SKEW_MS,
    detail:
      recoveryPointMs >= -CLOCK_SKEW_MS
        ? `the newest run (${newest.toISOString()}) is not after the restore point (${restorePoint.toISOString()})`
        : `the newest run (${newest.toISOString()}) is ${formatDuration(-recoveryPointMs)} after the restore point (${restorePoint.toISOString()}): the restore did not stop at the requested point`,
  });
  checks.push({
    name: 'recovery-point',
    ok: recoveryPointMs <= maxDataAgeMs,
    detail: `the newest run is ${formatDuration(Math.max(0, recoveryPointMs))} older than the restore point; at most ${formatDuration(maxDataAgeMs)} is allowed (TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE)`,
  });
  return { checks, recoveryPointMs };
}
