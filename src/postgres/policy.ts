/**
 * The backup policy for flexible servers as a pure function: what ARM reports about a server in, the
 * violations out, each saying what is wrong, what the policy says and how to fix it.
 */
import { formatDuration } from '../util/duration.js';
import type { PgBackupPolicy } from './config.js';
import type { ServerRef } from './resource-id.js';

export interface PgServerFacts {
  state: string | undefined;
  location: string | undefined;
  backupRetentionDays: number | undefined;
  geoRedundantBackup: string | undefined;
  earliestRestorePoint: string | undefined;
  /** Completion time of the newest automatic (Full) backup, or undefined when the server lists none. */
  newestAutomaticBackupAt: string | undefined;
  automaticBackups: number;
}

export type PolicyRule = 'unreadable' | 'server-state' | 'retention' | 'geo-redundancy' | 'earliest-restore-point' | 'backup-age';

export interface PolicyViolation {
  server: string;
  rule: PolicyRule;
  message: string;
  hint: string;
}

// Maintenance and restarts pass; any other state means backups may not be happening.
const HEALTHY_STATES = new Set(['ready', 'updating', 'starting', 'restarting']);

export function evaluateBackupPolicy(server: ServerRef, facts: PgServerFacts, policy: PgBackupPolicy, now: Date): PolicyViolation[] {
  const out: PolicyViolation[] = [];
  const add = (rule: PolicyRule, message: string, hint: string) =>
    out.push({ server: server.name, rule, message: `PostgreSQL server "${server.name}": ${message}`, hint });

  if (!facts.state || !HEALTHY_STATES.has(facts.state.toLowerCase())) {
    add(
      'server-state',
      `state is ${facts.state ?? 'not reported'}; backups are only taken while it is Ready`,
      facts.state === 'Stopped'
        ? `start it (az postgres flexible-server start -g ${server.resourceGroup} -n ${server.name}) or remove it from TCAB_BACKUP_PG_SERVERS`
        : `the server's Resource health and Activity log in the Azure portal`,
    );
  }

  const days = facts.backupRetentionDays;
  if (days === undefined || days < policy.minRetentionDays) {
    add(
      'retention',
      `backup retention is ${days === undefined ? 'not reported' : `${days} days`}; policy requires at least ${policy.minRetentionDays} (TCAB_BACKUP_PG_MIN_RETENTION_DAYS)`,
      `raise it with az postgres flexible-server update -g ${server.resourceGroup} -n ${server.name} --backup-retention ${policy.minRetentionDays}, or set TCAB_BACKUP_PG_ENFORCE=true to let the check raise it`,
    );
  }

  if (policy.requireGeoRedundant && facts.geoRedundantBackup?.toLowerCase() !== 'enabled') {
    add(
      'geo-redundancy',
      `geo-redundant backup is ${facts.geoRedundantBackup ?? 'not reported'}; policy requires it (TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT=true)`,
      'geo-redundancy can only be chosen when a server is created: restore to a new server with --geo-redundant-backup Enabled and move the application to it, or set TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT=false if single-region backups are accepted',
    );
  }

  const earliest = facts.earliestRestorePoint ? new Date(facts.earliestRestorePoint) : undefined;
  if (!earliest || Number.isNaN(earliest.getTime())) {
    add(
      'earliest-restore-point',
      'reports no earliest restore point, so point-in-time restore is not possible',
      "the server's Backup and restore page in the Azure portal; a new server has one after its first backup",
    );
  } else if (earliest.getTime() > now.getTime()) {
    add(
      'earliest-restore-point',
      `earliest restore point ${earliest.toISOString()} is in the future`,
      'the clock of the machine running the check, then the server in the Azure portal',
    );
  }

  const newest = facts.newestAutomaticBackupAt ? new Date(facts.newestAutomaticBackupAt) : undefined;
  if (!newest) {
    add(
      'backup-age',
      'lists no automatic backup',
      "the server's Backup and restore page in the Azure portal; a new server has one within a day of its creation",
    );
  } else {
    const ageMs = now.getTime() - newest.getTime();
    if (ageMs > policy.maxBackupAgeMs) {
      add(
        'backup-age',
        `newest automatic backup completed ${formatDuration(ageMs)} ago (${newest.toISOString()}); policy allows at most ${formatDuration(policy.maxBackupAgeMs)} (TCAB_BACKUP_PG_MAX_BACKUP_AGE)`,
        "the server's state and Activity log; if backups stopped, open an Azure support request",
      );
    }
  }
  return out;
}
