import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadPgCheckConfig } from '../../src/postgres/config.js';
import { PgPolicyViolationError, runPgCheck, type PgCheckResult } from '../../src/postgres/check.js';
import { PgCheckStatusSchema, pgStatusKey, readRecord } from '../../src/postgres/records.js';
import { pgStatusSummary } from '../../src/postgres/status.js';
import { FakeArm, type FakeServer } from '../support/fake-arm.js';
import { ARM_TOKEN, FixedCredential, SUBSCRIPTION, bypassProxyForLoopback, pgEnv } from '../support/pg-harness.js';
import { captureLog, folderTarget, type FolderTarget } from '../support/world.js';

const HOUR = 3_600_000;
let arm: FakeArm;
let store: FolderTarget;

beforeAll(async () => {
  bypassProxyForLoopback();
  arm = await FakeArm.start({ token: ARM_TOKEN });
});
afterAll(async () => {
  await arm?.stop();
});
afterEach(async () => {
  arm.servers.clear();
  arm.backups.clear();
  arm.requests.length = 0;
  await store?.remove();
});

function healthy(name: string, over: Partial<FakeServer> = {}): FakeServer {
  const s = arm.addServer({ subscriptionId: SUBSCRIPTION, resourceGroup: 'rg-tcab', name, backupRetentionDays: 14, ...over });
  arm.addBackup(s, { name: 'auto-1', backupType: 'Full', completedTime: new Date(Date.now() - 30 * HOUR) });
  arm.addBackup(s, { name: 'auto-2', backupType: 'Full', completedTime: new Date(Date.now() - 6 * HOUR) });
  return s;
}

async function check(servers: FakeServer[], extra: Record<string, string> = {}, token = ARM_TOKEN) {
  store = await folderTarget('primary');
  const log = captureLog();
  const config = loadPgCheckConfig(
    pgEnv(
      arm.endpoint,
      servers.map((s) => FakeArm.id(s)),
      extra,
    ),
  );
  const run = () =>
    runPgCheck(config, {
      credential: new FixedCredential({ arm: token }),
      target: store.target,
      logger: log.logger,
      arm: { ca: arm.ca, maxRetries: 0 },
    });
  return { run, log };
}

async function violationOf(run: () => Promise<PgCheckResult>): Promise<PgPolicyViolationError> {
  const err = await run().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PgPolicyViolationError);
  return err as PgPolicyViolationError;
}

describe('pg check', () => {
  it('passes a server that meets the policy, reports what Azure said, and writes its status record', async () => {
    const s = healthy('tcab-prod', { geoRedundantBackup: 'Enabled' });
    arm.addBackup(s, { name: 'on-demand', backupType: 'Customer On-Demand', completedTime: new Date(Date.now() - HOUR) });
    const { run, log } = await check([s], { TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT: 'true' });
    const result = await run();
    expect(result.ok).toBe(true);
    // The absence alert counts these events: a passing run must emit one.
    expect(log.lines.some((l) => l.includes('"event":"pg.check.completed"'))).toBe(true);
    const facts = result.servers[0]!.facts!;
    expect(facts).toMatchObject({
      state: 'Ready',
      location: 'westeurope',
      backupRetentionDays: 14,
      geoRedundantBackup: 'Enabled',
      automaticBackups: 2,
    });
    // The on-demand backup is newer but does not count as the schedule running.
    expect(Date.now() - Date.parse(facts.newestAutomaticBackupAt!)).toBeGreaterThan(5.9 * HOUR);
    expect(facts.earliestRestorePoint).toBe(s.earliestRestoreDate!.toISOString());
    const status = await readRecord(store.target, pgStatusKey('tcab-prod'), PgCheckStatusSchema);
    expect(status?.value).toMatchObject({ server: 'tcab-prod', serverId: FakeArm.id(s), ok: true, violations: [] });
    expect(await pgStatusSummary(store.target, [{ id: FakeArm.id(s), name: 'tcab-prod' }])).toEqual([
      {
        server: 'tcab-prod',
        serverId: FakeArm.id(s),
        check: { checkedAt: result.checkedAt, ok: true, violations: [] },
        drill: null,
        lastFinishedDrill: null,
        lastSucceededDrill: null,
      },
    ]);
    // Every ARM call carried the managed identity's bearer token (the fake refuses others).
    expect(arm.requests.length).toBeGreaterThanOrEqual(2);
  });

  it('fails on retention too low, naming the server, the policy and the fix, and records the violation', async () => {
    const s = healthy('tcab-prod', { backupRetentionDays: 7 });
    const { run, log } = await check([s], { TCAB_BACKUP_PG_MIN_RETENTION_DAYS: '14' });
    const err = await violationOf(run);
    expect(err.message).toContain(
      'PostgreSQL server "tcab-prod": backup retention is 7 days; policy requires at least 14 (TCAB_BACKUP_PG_MIN_RETENTION_DAYS). Fix: raise it with az postgres flexible-server update -g rg-tcab -n tcab-prod --backup-retention 14, or set TCAB_BACKUP_PG_ENFORCE=true',
    );
    expect(err.result.servers[0]!.violations.map((v) => v.rule)).toEqual(['retention']);
    expect(arm.requestsOf('PATCH')).toHaveLength(0);
    const status = await readRecord(store.target, pgStatusKey('tcab-prod'), PgCheckStatusSchema);
    expect(status?.value.ok).toBe(false);
    expect(status?.value.violations[0]?.rule).toBe('retention');
    expect(log.lines.some((l) => l.includes('"event":"pg.check.violation"'))).toBe(true);
  });

  it('fails when geo-redundancy is required and missing, and says it can only be set at creation', async () => {
    const { run } = await check([healthy('tcab-prod')], { TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT: 'true' });
    const err = await violationOf(run);
    expect(err.message).toMatch(
      /"tcab-prod": geo-redundant backup is Disabled; policy requires it \(TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT=true\)\. Fix: geo-redundancy can only be chosen when a server is created/,
    );
  });

  it('fails on a stale newest automatic backup, and on a server with no automatic backup at all', async () => {
    const stale = arm.addServer({ subscriptionId: SUBSCRIPTION, resourceGroup: 'rg-tcab', name: 'tcab-stale' });
    arm.addBackup(stale, { name: 'auto-old', backupType: 'Full', completedTime: new Date(Date.now() - 50 * HOUR) });
    const none = arm.addServer({ subscriptionId: SUBSCRIPTION, resourceGroup: 'rg-tcab', name: 'tcab-none' });
    arm.addBackup(none, { name: 'manual', backupType: 'Customer On-Demand', completedTime: new Date(Date.now() - HOUR) });
    const { run } = await check([stale, none]);
    const err = await violationOf(run);
    expect(err.message).toMatch(
      /"tcab-stale": newest automatic backup completed 2d2h ago \(.*\); policy allows at most 1d2h \(TCAB_BACKUP_PG_MAX_BACKUP_AGE\)/,
    );
    expect(err.message).toMatch(/"tcab-none": lists no automatic backup/);
    expect(err.result.servers.map((r) => r.ok)).toEqual([false, false]);
  });

  it('fails on a stopped server and a server without an earliest restore point', async () => {
    const s = healthy('tcab-prod', { state: 'Stopped', earliestRestoreDate: undefined });
    const { run } = await check([s]);
    const err = await violationOf(run);
    expect(err.result.servers[0]!.violations.map((v) => v.rule)).toEqual(['server-state', 'earliest-restore-point']);
    expect(err.message).toMatch(
      /state is Stopped; backups are only taken while it is Ready\. Fix: start it \(az postgres flexible-server start -g rg-tcab -n tcab-prod\)/,
    );
    expect(err.message).toMatch(/reports no earliest restore point, so point-in-time restore is not possible/);
  });

  it('reports a server it cannot read, with what to check, and still checks the others', async () => {
    const good = healthy('tcab-prod');
    const gone = { subscriptionId: SUBSCRIPTION, resourceGroup: 'rg-tcab', name: 'tcab-gone' } as FakeServer;
    const { run } = await check([gone, good]);
    const err = await violationOf(run);
    expect(err.message).toMatch(
      /"tcab-gone": reading the server from Azure failed: 404 ResourceNotFound: .*\. Fix: the resource id in TCAB_BACKUP_PG_SERVERS/,
    );
    expect(err.result.servers.map((r) => [r.server, r.ok])).toEqual([
      ['tcab-gone', false],
      ['tcab-prod', true],
    ]);
  });

  it('names the role to grant when the identity is refused', async () => {
    const { run } = await check([healthy('tcab-prod')], {}, 'a-token-arm-does-not-accept');
    const err = await violationOf(run);
    expect(err.message).toMatch(
      /"tcab-prod": reading the server from Azure failed: 401 AuthenticationFailed: .*Fix: the function app's managed identity \(AZURE_CLIENT_ID\) needs the Reader role on resource group "rg-tcab"/,
    );
    expect(err.message).not.toContain('a-token-arm-does-not-accept');
  });

  it('enforce raises a retention below the minimum and passes', async () => {
    const s = healthy('tcab-prod', { backupRetentionDays: 7 });
    const { run, log } = await check([s], { TCAB_BACKUP_PG_MIN_RETENTION_DAYS: '21', TCAB_BACKUP_PG_ENFORCE: 'true' });
    const result = await run();
    expect(result.ok).toBe(true);
    expect(result.servers[0]!.actions).toEqual([{ action: 'raise-retention', fromDays: 7, toDays: 21, status: 'done' }]);
    expect(s.backupRetentionDays).toBe(21);
    expect(arm.requestsOf('PATCH').map((r) => r.body)).toEqual([{ properties: { backup: { backupRetentionDays: 21 } } }]);
    expect(log.lines.some((l) => l.includes('"event":"pg.check.enforced"'))).toBe(true);
  });

  it('enforce never lowers a retention above the minimum', async () => {
    const s = healthy('tcab-prod', { backupRetentionDays: 35 });
    const { run } = await check([s], { TCAB_BACKUP_PG_MIN_RETENTION_DAYS: '7', TCAB_BACKUP_PG_ENFORCE: 'true' });
    const result = await run();
    expect(result.servers[0]!.actions).toEqual([]);
    expect(arm.requestsOf('PATCH')).toHaveLength(0);
    expect(s.backupRetentionDays).toBe(35);
  });

  it('enforce that Azure refuses keeps the violation, with the ARM error and the role to grant', async () => {
    const s = healthy('tcab-prod', { backupRetentionDays: 7 });
    arm.injectFailure({
      method: 'PATCH',
      path: /flexibleServers\/tcab-prod$/,
      status: 403,
      code: 'AuthorizationFailed',
      message: 'The client does not have authorization to perform action Microsoft.DBforPostgreSQL/flexibleServers/write.',
    });
    const { run } = await check([s], { TCAB_BACKUP_PG_MIN_RETENTION_DAYS: '14', TCAB_BACKUP_PG_ENFORCE: 'true' });
    const err = await violationOf(run);
    expect(err.result.servers[0]!.actions[0]).toMatchObject({ status: 'failed', fromDays: 7, toDays: 14 });
    expect(err.message).toMatch(
      /backup retention is 7 days; .*; raising it to 14 days failed: 403 AuthorizationFailed: .*Fix: the function app's managed identity \(AZURE_CLIENT_ID\) needs the Contributor role on resource group "rg-tcab"/,
    );
    expect(s.backupRetentionDays).toBe(7);
  });
});
