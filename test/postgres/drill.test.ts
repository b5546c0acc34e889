import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openTarget } from '../../src/targets/index.js';
import type { GetOptions, Target } from '../../src/targets/target.js';
import { loadPgDrillConfig } from '../../src/postgres/config.js';
import { PgDrillError, runPgDrill, type PgDrillOptions, type PgDrillServerResult } from '../../src/postgres/drill.js';
import { PgDrillRecordSchema, pgDrillKey, readRecord, type PgDrillRecord } from '../../src/postgres/records.js';
import { pgStatusSummary } from '../../src/postgres/status.js';
import { FakeArm, type FakeServer } from '../support/fake-arm.js';
import { ARM_TOKEN, FixedCredential, SUBSCRIPTION, TestClock, bypassProxyForLoopback, pgEnv } from '../support/pg-harness.js';
import { type CapturedLog, captureLog, folderTarget, type FolderTarget } from '../support/world.js';
import { startPgServer, type PgTestServer } from '../support/pg-server.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const ENTRA_TOKEN = 'entra-token-for-the-drill-login-8c1f2a';
let arm: FakeArm;
let pg: PgTestServer;
let store: FolderTarget;
let source: FakeServer;
let clock: TestClock;
let log: CapturedLog;
const thrown: unknown[] = [];

beforeAll(async () => {
  bypassProxyForLoopback();
  [arm, pg] = await Promise.all([FakeArm.start({ token: ARM_TOKEN }), startPgServer()]);
  const now = Date.now();
  // The "restored" data: runs up to 20 minutes ago, so a restore point 15 minutes back finds the newest 5 minutes before it.
  await pg.createTcabDatabase('tcab', [new Date(now - 3 * HOUR), new Date(now - HOUR), new Date(now - 20 * MIN)]);
  await pg.createTcabDatabase('tcab_empty', []);
  await pg.query('postgres', `CREATE ROLE tcab_entra LOGIN PASSWORD '${ENTRA_TOKEN}'`);
  await pg.query('tcab', 'GRANT SELECT ON runs TO tcab_entra');
});
afterAll(async () => {
  await Promise.all([arm?.stop(), pg?.stop()]);
});
beforeEach(async () => {
  store = await folderTarget('primary');
  clock = new TestClock();
  log = captureLog();
  thrown.length = 0;
  arm.restoreScript = { pollsUntilDone: 1, outcome: 'succeed' };
  arm.deleteScript = { pollsUntilDone: 1, outcome: 'succeed' };
  source = arm.addServer({ subscriptionId: SUBSCRIPTION, resourceGroup: 'rg-tcab', name: 'tcab-prod', location: 'westeurope' });
});
afterEach(async () => {
  // Whatever a test did, nothing it stored, logged or raised may carry the drill password or the Entra token.
  const everything = [await store.allText(), ...log.lines, ...thrown.map((e) => `${(e as Error).message}`)].join('\n');
  expect(everything).not.toContain(pg.password);
  expect(everything).not.toContain(ENTRA_TOKEN);
  arm.servers.clear();
  arm.requests.length = 0;
  await store.remove();
});

function env(extra: Record<string, string> = {}) {
  return pgEnv(arm.endpoint, [FakeArm.id(source)], {
    TCAB_BACKUP_PG_DRILL_USER: pg.user,
    TCAB_BACKUP_PG_DRILL_PASSWORD: pg.password,
    TCAB_BACKUP_PG_DRILL_PORT: String(pg.port),
    TCAB_BACKUP_PG_DRILL_TLS: 'disable',
    ...extra,
  });
}

/** A fresh job instance each call, as after a restart: nothing but the target carries state between ticks. */
function job(
  extra: Record<string, string> = {},
  target: Target = store.target,
  credential = new FixedCredential({ arm: ARM_TOKEN, postgres: ENTRA_TOKEN }),
) {
  return async (options: PgDrillOptions = {}): Promise<PgDrillServerResult> => {
    const config = loadPgDrillConfig(env(extra));
    try {
      const result = await runPgDrill(
        config,
        { target, credential, logger: log.logger, now: clock.now, arm: { ca: arm.ca, maxRetries: 0 } },
        options,
      );
      return result.servers[0]!;
    } catch (e) {
      thrown.push(e);
      throw e;
    }
  };
}

async function failureOf(tick: () => Promise<unknown>): Promise<PgDrillError> {
  const err = await tick().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PgDrillError);
  return err as PgDrillError;
}

async function record(drillId: string): Promise<PgDrillRecord> {
  return (await readRecord(store.target, pgDrillKey('tcab-prod', drillId), PgDrillRecordSchema))!.value;
}

async function drillFiles(): Promise<string[]> {
  return (await readdir(join(store.dir, 'drills', 'pg-tcab-prod'))).filter((f) => !f.startsWith('.')).sort();
}

describe('pg drill', () => {
  it('restores, validates, records recovery time and point, and deletes its server, one step per tick', async () => {
    const tick = job();
    const t1 = await tick();
    expect(t1).toMatchObject({ action: 'restore-started', newDrill: true, drill: { state: 'restoring' } });
    const id = t1.drill!.drillId;
    const drillName = t1.drill!.drillServer;
    expect(drillName).toBe(`tcab-drill-tcab-prod-${id.slice(-8)}`);
    const [put] = arm.requestsOf('PUT');
    const requestedAt = Date.parse(t1.drill!.requestedAt);
    expect(put!.path).toBe(
      `/subscriptions/${SUBSCRIPTION}/resourceGroups/rg-tcab/providers/Microsoft.DBforPostgreSQL/flexibleServers/${drillName}`,
    );
    expect(put!.body).toEqual({
      location: 'westeurope',
      tags: {
        'tcab-backup-drill': 'true',
        'tcab-backup-drill-source': FakeArm.id(source),
        'tcab-backup-drill-created': new Date(requestedAt).toISOString(),
        'tcab-backup-drill-id': id,
      },
      properties: {
        createMode: 'PointInTimeRestore',
        sourceServerResourceId: FakeArm.id(source),
        pointInTimeUTC: new Date(requestedAt - 15 * MIN).toISOString(),
      },
    });
    expect(arm.find('rg-tcab', drillName)?.state).toBe('Provisioning');

    clock.advance(10 * MIN);
    const t2 = await tick();
    expect(t2).toMatchObject({ action: 'ready', newDrill: false, drill: { state: 'validating', recoveryTimeMs: 10 * MIN } });

    clock.advance(10 * MIN);
    const t3 = await tick();
    expect(t3).toMatchObject({ action: 'validated', drill: { state: 'deleting', outcome: 'succeeded' } });
    const validated = await record(id);
    expect(validated.validation).toMatchObject({
      runs: 3,
      checks: [
        { name: 'has-runs', ok: true },
        { name: 'not-after-restore-point', ok: true },
        { name: 'recovery-point', ok: true },
      ],
    });
    // The newest run was published 20 minutes before the drill, the restore point is 15 minutes before it.
    expect(validated.recoveryPointMs).toBeGreaterThan(4 * MIN);
    expect(validated.recoveryPointMs).toBeLessThan(6 * MIN);

    const t4 = await tick();
    expect(t4).toMatchObject({ action: 'delete-started', drill: { state: 'deleting' } });
    expect(arm.find('rg-tcab', drillName)?.state).toBe('Dropping');
    const t5 = await tick();
    expect(t5).toMatchObject({ action: 'finished', drill: { state: 'done', outcome: 'succeeded' } });
    expect(arm.find('rg-tcab', drillName)).toBeUndefined();
    expect(arm.requestsOf('DELETE').map((r) => r.path)).toEqual([put!.path]);

    const done = await record(id);
    expect(done.history.map((h) => h.state)).toEqual(['requested', 'restoring', 'validating', 'deleting', 'done']);
    expect(done.recoveryTimeMs).toBe(10 * MIN);
    const t6 = await tick();
    expect(t6).toMatchObject({ action: 'not-due', nextDrillDueAt: new Date(requestedAt + 7 * 24 * HOUR).toISOString() });
    expect(arm.requestsOf('PUT')).toHaveLength(1);

    const [status] = await pgStatusSummary(store.target, [{ id: FakeArm.id(source), name: 'tcab-prod' }]);
    expect(status).toMatchObject({
      server: 'tcab-prod',
      drill: { drillId: id, state: 'done' },
      lastSucceededDrill: { drillId: id, outcome: 'succeeded', recoveryTimeMs: 10 * MIN },
    });
    expect(log.lines.some((l) => l.includes('"event":"pg.drill.completed"') && l.includes('"recoveryPointMs"'))).toBe(true);
  });

  it('a restore that Azure fails fails the drill, deletes the half-made server, then raises the ARM error', async () => {
    arm.restoreScript = {
      pollsUntilDone: 1,
      outcome: 'fail',
      error: { code: 'PointInTimeRestoreFailed', message: 'The restore could not read the source backup.' },
      keepServerOnFailure: true,
    };
    arm.deleteScript = { pollsUntilDone: 0, outcome: 'succeed' };
    const tick = job();
    const { drill } = await tick();
    const failing = await tick();
    expect(failing).toMatchObject({ action: 'failing', drill: { state: 'deleting', outcome: 'failed' } });
    expect(arm.find('rg-tcab', drill!.drillServer)?.state).toBe('Disabled');
    const err = await failureOf(tick);
    expect(err.message).toContain(
      `drill ${drill!.drillId} failed: the point-in-time restore of "tcab-prod" to drill server "${drill!.drillServer}"`,
    );
    expect(err.message).toContain('PointInTimeRestoreFailed');
    expect(err.message).toContain('The restore could not read the source backup.');
    expect(err.result.servers[0]!.drill).toMatchObject({ state: 'failed', outcome: 'failed' });
    expect(arm.find('rg-tcab', drill!.drillServer)).toBeUndefined();
  });

  it('a restore that Azure refuses fails the drill without any server to delete', async () => {
    arm.injectFailure({
      method: 'PUT',
      path: /tcab-drill-/,
      status: 400,
      code: 'InvalidParameterValue',
      message: 'Restore is not supported for this server.',
    });
    const tick = job();
    expect(await tick()).toMatchObject({ action: 'failing', newDrill: true });
    const err = await failureOf(tick);
    expect(err.message).toMatch(
      /Azure refused the point-in-time restore of "tcab-prod" at .* to drill server "tcab-drill-tcab-prod-[0-9a-f]{8}" .*: 400 InvalidParameterValue: Restore is not supported for this server\./,
    );
    expect(arm.requestsOf('DELETE')).toHaveLength(0);
  });

  it('a restore that never finishes times out, and its server is still deleted', async () => {
    arm.restoreScript = { pollsUntilDone: 0, outcome: 'never' };
    arm.deleteScript = { pollsUntilDone: 0, outcome: 'succeed' };
    const tick = job({ TCAB_BACKUP_PG_DRILL_TIMEOUT: '2h' });
    const { drill } = await tick();
    clock.advance(HOUR);
    expect(await tick()).toMatchObject({ action: 'restoring' });
    clock.advance(HOUR + MIN);
    expect(await tick()).toMatchObject({ action: 'failing', drill: { state: 'deleting' } });
    const err = await failureOf(tick);
    expect(err.message).toMatch(
      new RegExp(
        `drill server "${drill!.drillServer}" \\(drill ${drill!.drillId} of "tcab-prod"\\) was not ready 2h after its restore started`,
      ),
    );
    expect(err.message).toContain('TCAB_BACKUP_PG_DRILL_TIMEOUT');
    expect(arm.find('rg-tcab', drill!.drillServer)).toBeUndefined();
  });

  it('data that fails validation fails the drill and deletes its server', async () => {
    arm.deleteScript = { pollsUntilDone: 0, outcome: 'succeed' };
    const tick = job({ TCAB_BACKUP_PG_DRILL_DATABASE: 'tcab_empty' });
    const { drill } = await tick();
    await tick();
    expect(await tick()).toMatchObject({ action: 'failing', drill: { state: 'deleting', outcome: 'failed' } });
    const err = await failureOf(tick);
    expect(err.message).toContain(`the data restored to drill server "${drill!.drillServer}"`);
    expect(err.message).toContain('failed validation: the restored server holds 0 runs');
    expect(arm.find('rg-tcab', drill!.drillServer)).toBeUndefined();
    expect((await record(drill!.drillId)).validation.checks.map((c) => c.ok)).toEqual([false, false]);
  });

  it('validation SQL that does not answer the contract fails the drill with what it returned', async () => {
    arm.deleteScript = { pollsUntilDone: 0, outcome: 'succeed' };
    const tick = job({ TCAB_BACKUP_PG_VALIDATION_SQL: 'SELECT 1 AS ok' });
    await tick();
    await tick();
    await tick();
    const err = await failureOf(tick);
    expect(err.message).toMatch(
      /the validation SQL failed on drill server .*database "tcab": the validation SQL returned columns ok; it must return one row with columns runs and newest_published_at/,
    );
  });

  it('runs the validation SQL read-only, so a statement that writes fails and changes nothing', async () => {
    arm.deleteScript = { pollsUntilDone: 0, outcome: 'succeed' };
    const tick = job({ TCAB_BACKUP_PG_VALIDATION_SQL: 'DELETE FROM runs RETURNING 1 AS runs, now() AS newest_published_at' });
    await tick();
    await tick();
    expect(await tick()).toMatchObject({ action: 'failing' });
    const err = await failureOf(tick);
    expect(err.message).toMatch(/the validation SQL failed on drill server .*: cannot execute DELETE in a read-only transaction \(25006\)/);
    expect((await pg.query('tcab', 'SELECT count(*)::int AS n FROM runs')).rows[0].n).toBe(3);
  });

  it('a login the server refuses is retried for a while, then fails without showing the password', async () => {
    arm.deleteScript = { pollsUntilDone: 0, outcome: 'succeed' };
    const tick = job({ TCAB_BACKUP_PG_DRILL_PASSWORD: pg.password + '-wrong' });
    await tick();
    await tick();
    const retry = await tick();
    expect(retry.action).toBe('validation-retry');
    expect(retry.detail).toMatch(/password authentication failed for user "tcab_drill"/);
    clock.advance(31 * MIN);
    expect(await tick()).toMatchObject({ action: 'failing' });
    const err = await failureOf(tick);
    expect(err.message).toMatch(
      /cannot connect to drill server .* at 127\.0\.0\.1:\d+ as "tcab_drill" \(database "tcab"\) for 31m: password authentication failed/,
    );
    expect(err.message).not.toContain(pg.password);
  });

  it('signs in to the restored server with an Entra token when configured', async () => {
    const credential = new FixedCredential({ arm: ARM_TOKEN, postgres: ENTRA_TOKEN });
    const config = { TCAB_BACKUP_PG_DRILL_USER: 'tcab_entra', TCAB_BACKUP_PG_DRILL_PASSWORD: '', TCAB_BACKUP_PG_DRILL_AUTH: 'entra' };
    const tick = job(config, store.target, credential);
    await tick();
    await tick();
    expect(await tick()).toMatchObject({ action: 'validated' });
    expect(credential.scopes).toContain('https://ossrdbms-aad.database.windows.net/.default');
  });

  it('refuses to send the login unencrypted to a server that is not on loopback', async () => {
    arm.restoreScript = { pollsUntilDone: 0, outcome: 'succeed', fqdn: 'tcab-drill.postgres.database.azure.com' };
    arm.deleteScript = { pollsUntilDone: 0, outcome: 'succeed' };
    const tick = job();
    await tick();
    await tick();
    expect(await tick()).toMatchObject({ action: 'failing' });
    const err = await failureOf(tick);
    expect(err.message).toMatch(
      /TCAB_BACKUP_PG_DRILL_TLS=disable would send the drill login to tcab-drill\.postgres\.database\.azure\.com unencrypted/,
    );
  });

  it('moves a restore point older than the earliest one up to it, and says so', async () => {
    source.earliestRestoreDate = new Date(Date.now() - 5 * MIN);
    const t1 = await job()();
    expect(t1).toMatchObject({
      action: 'restore-started',
      drill: { restorePointClamped: true, restorePoint: source.earliestRestoreDate.toISOString() },
    });
    expect((arm.requestsOf('PUT')[0]!.body as { properties: { pointInTimeUTC: string } }).properties.pointInTimeUTC).toBe(
      source.earliestRestoreDate.toISOString(),
    );
    const r = await record(t1.drill!.drillId);
    expect(r.restorePoint).toMatchObject({ clamped: true, earliestRestorePoint: source.earliestRestoreDate.toISOString() });
    expect(Date.parse(r.restorePoint.requested)).toBeLessThan(source.earliestRestoreDate.getTime());
    expect(log.lines.some((l) => l.includes('"event":"pg.drill.restore-point-clamped"'))).toBe(true);
  });

  it('refuses a drill when the source has no restore point at all', async () => {
    source.earliestRestoreDate = undefined;
    const tick = job();
    expect(await tick()).toMatchObject({ action: 'failing' });
    const err = await failureOf(tick);
    expect(err.message).toContain('source server "tcab-prod" reports no earliest restore point, so there is nothing to restore');
    expect(arm.requestsOf('PUT')).toHaveLength(0);
  });

  it('resumes after the process died: a new instance takes over, even from a claim that never acted', async () => {
    // The restore request dies on the wire: the claim is recorded but Azure never saw a restore.
    arm.injectFailure({ method: 'PUT', path: /tcab-drill-/, status: 503, code: 'ServiceUnavailable', message: 'Try again later.' });
    const first = await failureOf(() => job()());
    expect(first.message).toMatch(/Sending the point-in-time restore for drill server .*: 503 ServiceUnavailable/);
    const id = (await drillFiles()).find((f) => f !== 'current.json')!.replace('.json', '');
    expect((await record(id)).state).toBe('restoring');
    // Too soon to tell a slow invocation from a dead one: wait.
    expect(await job()()).toMatchObject({ action: 'waiting' });
    clock.advance(6 * MIN);
    // Another process, with its own target handle and credential, picks up the record.
    const otherTarget = openTarget({ kind: 'file', name: 'primary', displayUrl: `file://${store.dir}`, path: store.dir });
    const other = job({}, otherTarget);
    expect(await other()).toMatchObject({ action: 'restore-started', drill: { drillId: id } });
    expect(await job()()).toMatchObject({ action: 'ready' });
    expect(await other()).toMatchObject({ action: 'validated' });
    expect(await job()()).toMatchObject({ action: 'delete-started' });
    expect(await other()).toMatchObject({ action: 'finished', drill: { drillId: id, state: 'done' } });
    expect(arm.requestsOf('PUT')).toHaveLength(2);
    expect(await drillFiles()).toEqual([`${id}.json`, 'current.json']);
  });

  it('of two ticks racing, only one acts; the other backs off cleanly', async () => {
    const gated = (key: string) => gate(store.target, key, 2);
    // Both read "no current drill" before either writes one.
    let g = gated('drills/pg-tcab-prod/current.json');
    const [a, b] = await Promise.all([job({}, g.target)(), job({}, g.target)()]);
    expect([a.action, b.action].sort()).toEqual(['backed-off', 'restore-started']);
    expect(arm.requestsOf('PUT')).toHaveLength(1);
    const id = (a.action === 'restore-started' ? a : b).drill!.drillId;
    expect(await drillFiles()).toEqual([`${id}.json`, 'current.json']);

    // Both read the restoring record and see the restore finish; only one moves the drill on.
    g = gated(pgDrillKey('tcab-prod', id));
    const [c, d] = await Promise.all([job({}, g.target)(), job({}, g.target)()]);
    expect([c.action, d.action].sort()).toEqual(['backed-off', 'ready']);
    await job()();
    // Both decide to delete the drill server; only one sends the delete.
    g = gated(pgDrillKey('tcab-prod', id));
    const [e, f] = await Promise.all([job({}, g.target)(), job({}, g.target)()]);
    expect([e.action, f.action].sort()).toEqual(['backed-off', 'delete-started']);
    expect(arm.requestsOf('DELETE')).toHaveLength(1);
    expect(await job()()).toMatchObject({ action: 'finished', drill: { state: 'done' } });
    expect(thrown).toEqual([]);
  });

  it('starts a drill before it is due only when forced, and never while one runs', async () => {
    arm.restoreScript = { pollsUntilDone: 0, outcome: 'succeed' };
    arm.deleteScript = { pollsUntilDone: 0, outcome: 'succeed' };
    const tick = job();
    const first = await tick();
    expect(await tick({ force: true })).toMatchObject({ action: 'ready', newDrill: false, drill: { drillId: first.drill!.drillId } });
    expect(await tick({ force: true })).toMatchObject({ action: 'validated', newDrill: false });
    expect(await tick()).toMatchObject({ action: 'finished' });
    expect(await tick()).toMatchObject({ action: 'not-due' });
    expect(await tick({ force: true })).toMatchObject({ action: 'restore-started', newDrill: true });
    expect(arm.requestsOf('PUT')).toHaveLength(2);
  });
});

/**
 * A view of `target` whose reads of `key` wait until `parties` readers have arrived, so that concurrent
 * ticks really overlap (each reads the same state before either writes).
 */
function gate(target: Target, key: string, parties: number): { target: Target } {
  let waiting = 0;
  let release!: () => void;
  const all = new Promise<void>((r) => (release = r));
  const gated: Target = Object.create(target) as Target;
  gated.get = async (k: string, options?: GetOptions) => {
    if (k === key && waiting < parties) {
      waiting++;
      if (waiting === parties) release();
      await all;
    }
    return target.get(k, options);
  };
  return { target: gated };
}
