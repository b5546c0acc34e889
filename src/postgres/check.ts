/**
 * The `pg check` job: reads each configured server's backup settings and backups from ARM, judges them
 * against the policy, optionally raises retention (never lowers it), writes status/pg-<server>.json, and
 * throws when any server violates the policy.
 */
import type { PostgreSQLManagementFlexibleServerClient, Server } from '@azure/arm-postgresql-flexible';
import type { TokenCredential } from '@azure/identity';
import { TcabError, errorMessage } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { Target } from '../targets/target.js';
import { armClientFactory, armHint, describeArmFailure, type ArmClientOptions } from './arm.js';
import type { PgBackupPolicy, PgCheckConfig } from './config.js';
import { evaluateBackupPolicy, type PgServerFacts, type PolicyViolation } from './policy.js';
import { PG_RECORD_FORMAT_VERSION, pgStatusKey, writeRecord, type PgCheckStatus } from './records.js';
import type { ServerRef } from './resource-id.js';

export interface PgCheckDeps {
  credential: TokenCredential;
  /** Where status/pg-<server>.json is written; without one, nothing is written. */
  target?: Target;
  logger?: Logger;
  now?: () => Date;
  arm?: ArmClientOptions;
  signal?: AbortSignal;
}

export interface RetentionAction {
  action: 'raise-retention';
  fromDays: number;
  toDays: number;
  /** done: Azure confirmed; in-progress: accepted, the next check sees the result; failed: see `error`. */
  status: 'done' | 'in-progress' | 'failed';
  error?: string;
}

export interface PgServerCheckResult {
  server: string;
  serverId: string;
  ok: boolean;
  facts: PgServerFacts | null;
  violations: PolicyViolation[];
  actions: RetentionAction[];
}

export interface PgCheckResult {
  checkedAt: string;
  ok: boolean;
  enforce: boolean;
  policy: PgBackupPolicy;
  servers: PgServerCheckResult[];
}

/** Thrown when any server violates the policy (or cannot be checked); carries the full result. */
export class PgPolicyViolationError extends TcabError {
  constructor(
    readonly result: PgCheckResult,
    problems: string[],
  ) {
    super(`Postgres backup policy check failed:\n  - ${problems.join('\n  - ')}`, {
      code: 'PG_POLICY_VIOLATION',
      hint: 'each line says what is wrong and how to fix it; tcab-backup pg check --json shows what Azure reported',
    });
    this.name = 'PgPolicyViolationError';
  }
}

export async function runPgCheck(config: PgCheckConfig, deps: PgCheckDeps): Promise<PgCheckResult> {
  const logger = deps.logger ?? silentLogger;
  const now = (deps.now ?? (() => new Date()))();
  const clientFor = armClientFactory(config, deps.credential, deps.arm);
  const servers: PgServerCheckResult[] = [];
  const problems: string[] = [];
  for (const ref of config.servers) {
    const result = await checkServer(ref, config, clientFor(ref.subscriptionId), now, deps.signal);
    servers.push(result);
    for (const v of result.violations) {
      problems.push(`${v.message}. Fix: ${v.hint}`);
      logger.warn('pg.check.violation', { server: ref.name, rule: v.rule, message: v.message });
    }
    for (const a of result.actions) logger.warn('pg.check.enforced', { server: ref.name, ...a });
    logger.info('pg.check.server', { server: ref.name, ok: result.ok, violations: result.violations.length, ...(result.facts ?? {}) });
    if (deps.target) {
      const status: PgCheckStatus = {
        formatVersion: PG_RECORD_FORMAT_VERSION,
        kind: 'pg-check',
        server: ref.name,
        serverId: ref.id,
        checkedAt: now.toISOString(),
        ok: result.ok,
        violations: result.violations.map(({ rule, message, hint }) => ({ rule, message, hint })),
        facts: result.facts ? { ...result.facts } : null,
        actions: result.actions.map((a) => ({ ...a })),
      };
      try {
        await writeRecord(deps.target, pgStatusKey(ref.name), status, {}, deps.signal);
      } catch (e) {
        problems.push(`writing ${pgStatusKey(ref.name)} to target "${deps.target.name}" failed: ${errorMessage(e)}`);
      }
    }
  }
  const result: PgCheckResult = {
    checkedAt: now.toISOString(),
    ok: problems.length === 0,
    enforce: config.enforce,
    policy: config.policy,
    servers,
  };
  if (problems.length) throw new PgPolicyViolationError(result, problems);
  // The absence alert on this event is how a check that silently stops running gets noticed.
  logger.info('pg.check.completed', { servers: servers.map((s) => s.server), enforce: config.enforce });
  return result;
}

async function checkServer(
  ref: ServerRef,
  config: PgCheckConfig,
  client: PostgreSQLManagementFlexibleServerClient,
  now: Date,
  signal: AbortSignal | undefined,
): Promise<PgServerCheckResult> {
  const base = { server: ref.name, serverId: ref.id };
  const unreadable = (what: string, e: unknown): PolicyViolation => ({
    server: ref.name,
    rule: 'unreadable',
    message: `PostgreSQL server "${ref.name}": ${what} failed: ${describeArmFailure(e)}`,
    hint: armHint(e, { resourceGroup: ref.resourceGroup, role: 'Reader' }),
  });
  let server: Server;
  try {
    server = await client.servers.get(ref.resourceGroup, ref.name, { abortSignal: signal });
  } catch (e) {
    return { ...base, ok: false, facts: null, violations: [unreadable('reading the server from Azure', e)], actions: [] };
  }
  const violations: PolicyViolation[] = [];
  let newest: Date | undefined;
  let automaticBackups = 0;
  let backupsListed = true;
  try {
    for await (const b of client.backupsAutomaticAndOnDemand.listByServer(ref.resourceGroup, ref.name, { abortSignal: signal })) {
      // Only the service's own backups count: an on-demand backup says nothing about the schedule running.
      if (b.backupType !== 'Full' || !b.completedTime) continue;
      automaticBackups++;
      const t = new Date(b.completedTime);
      if (!newest || t > newest) newest = t;
    }
  } catch (e) {
    backupsListed = false;
    violations.push(unreadable('listing its backups', e));
  }
  const facts: PgServerFacts = {
    state: server.state,
    location: server.location,
    backupRetentionDays: server.backup?.backupRetentionDays,
    geoRedundantBackup: server.backup?.geoRedundantBackup,
    earliestRestorePoint: server.backup?.earliestRestoreDate ? new Date(server.backup.earliestRestoreDate).toISOString() : undefined,
    newestAutomaticBackupAt: newest?.toISOString(),
    automaticBackups,
  };
  violations.push(...evaluateBackupPolicy(ref, facts, config.policy, now).filter((v) => backupsListed || v.rule !== 'backup-age'));

  const actions: RetentionAction[] = [];
  const current = facts.backupRetentionDays;
  const target = config.policy.minRetentionDays;
  // Enforcement only ever raises: an unknown current value is left alone, since raising "to" the minimum could lower it.
  if (config.enforce && current !== undefined && current < target) {
    const action: RetentionAction = { action: 'raise-retention', fromDays: current, toDays: target, status: 'in-progress' };
    try {
      const poller = await client.servers.beginUpdate(
        ref.resourceGroup,
        ref.name,
        { backup: { backupRetentionDays: target } },
        { abortSignal: signal },
      );
      action.status = poller.isDone() ? 'done' : 'in-progress';
      const i = violations.findIndex((v) => v.rule === 'retention');
      if (i >= 0) violations.splice(i, 1);
    } catch (e) {
      action.status = 'failed';
      action.error = describeArmFailure(e);
      const v = violations.find((x) => x.rule === 'retention');
      if (v) {
        v.message += `; raising it to ${target} days failed: ${action.error}`;
        v.hint = armHint(e, { resourceGroup: ref.resourceGroup, role: 'Contributor' });
      }
    }
    actions.push(action);
  }
  return { ...base, ok: violations.length === 0, facts, violations, actions };
}
