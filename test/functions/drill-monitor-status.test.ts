import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { registration, registrations } from '../support/functions-host.js';
import { HttpRequest, InvocationContext } from '@azure/functions';
import { statusKey } from '../../src/catalog/layout.js';
import { resetBackupConfig } from '../../src/host/context.js';
import { readRecentDrills } from '../../src/catalog/drill-record.js';
import { readVerifyRecord } from '../../src/catalog/verify-record.js';
import { DATABASE, startFixture, type Fixture } from '../status/fixture.js';

let fx: Fixture;
const logs: string[] = [];
const SETTINGS = [
  'TCAB_BACKUP_TARGETS',
  'TCAB_BACKUP_AGENT_URL',
  'TCAB_BACKUP_AGENT_KEY_ID',
  'TCAB_BACKUP_AGENT_KEY',
  'TCAB_BACKUP_DRILL_WORK_DIR',
  'TCAB_BACKUP_SNAPSHOT_WARN_AGE',
  'TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE',
  'TCAB_BACKUP_VERIFY_WITHIN',
  'TCAB_BACKUP_DRILL_APP',
];

function context(name: string): InvocationContext {
  return new InvocationContext({
    functionName: name,
    invocationId: randomBytes(8).toString('hex'),
    logHandler: (_level, ...args) => logs.push(args.map(String).join(' ')),
  });
}

function events(name: string): Array<Record<string, unknown>> {
  return logs.filter((l) => l.includes(`"event":"${name}"`)).map((l) => JSON.parse(l) as Record<string, unknown>);
}

function setEnv(): void {
  for (const name of SETTINGS) delete process.env[name];
  process.env.TCAB_BACKUP_TARGETS = `local=file://${fx.work}/backups`;
  process.env.TCAB_BACKUP_AGENT_URL = fx.agent.url;
  process.env.TCAB_BACKUP_AGENT_KEY_ID = 'functions';
  process.env.TCAB_BACKUP_AGENT_KEY = fx.key;
  process.env.TCAB_BACKUP_DRILL_WORK_DIR = `${fx.work}/drills`;
  resetBackupConfig();
}

const timer = { isPastDue: false, schedule: { adjustForDST: false }, scheduleStatus: { last: '', next: '', lastUpdated: '' } };
type Answer = { status: number; headers: Record<string, string>; body: string };
const getStatus = (accept?: string) =>
  registration('statusHttp').handler(
    new HttpRequest({ method: 'GET', url: 'http://localhost/api/status', headers: accept ? { accept } : {} }),
    context('statusHttp'),
  ) as Promise<Answer>;

beforeAll(async () => {
  fx = await startFixture({ runs: 100 });
  setEnv();
  await import('../../src/functions/verify.js');
  await import('../../src/functions/drill.js');
  await import('../../src/functions/monitor.js');
  await import('../../src/functions/status.js');
  await fx.snapshot();
});

afterAll(async () => {
  for (const name of SETTINGS) delete process.env[name];
  resetBackupConfig();
  await fx?.stop();
});

beforeEach(() => {
  setEnv();
  logs.length = 0;
});

describe('registrations', () => {
  it('registers the verify, drill and monitor timers on their schedule settings, and GET /api/status with a function key', () => {
    const trigger = (name: string) => Object.values(registration(name).bindings).find((b) => b.direction === 'in')!;
    expect(trigger('verifyTimer')).toMatchObject({ type: 'timerTrigger', schedule: '%TCAB_BACKUP_VERIFY_SCHEDULE%' });
    expect(trigger('drillTimer')).toMatchObject({ type: 'timerTrigger', schedule: '%TCAB_BACKUP_DRILL_SCHEDULE%' });
    expect(trigger('monitorTimer')).toMatchObject({ type: 'timerTrigger', schedule: '%TCAB_BACKUP_MONITOR_SCHEDULE%' });
    expect(trigger('statusHttp')).toMatchObject({ type: 'httpTrigger', route: 'status', methods: ['GET'], authLevel: 'function' });
    expect(registrations.map((r) => r.name)).toEqual(expect.arrayContaining(['verifyTimer', 'drillTimer', 'monitorTimer', 'statusHttp']));
  });
});

describe('timers', () => {
  it('drill, verify and monitor run against the configured target and leave their records and events', async () => {
    await registration('drillTimer').handler(timer, context('drillTimer'));
    const [drill] = await readRecentDrills(fx.local, DATABASE, 1);
    expect(drill!.record).toMatchObject({ ok: true, target: 'local', live: { available: true } });
    expect(events('drill.completed')).toEqual([expect.objectContaining({ target: 'local', liveAvailable: true, runsSince: 0 })]);

    await registration('verifyTimer').handler(timer, context('verifyTimer'));
    expect((await readVerifyRecord(fx.local, DATABASE))!.lastCleanRun).toBeDefined();
    expect(events('verify.completed')).toHaveLength(1);

    await registration('monitorTimer').handler(timer, context('monitorTimer'));
    expect(events('monitor.status')).toEqual([expect.objectContaining({ state: 'ok', level: 'info', database: DATABASE })]);
    await expect(fx.local.head(statusKey(DATABASE))).resolves.toBeDefined();
    expect(logs.join('\n')).not.toContain(fx.key);
  });

  it('the monitor fails the invocation when the newest snapshot is past the critical age, so the alert fires', async () => {
    process.env.TCAB_BACKUP_SNAPSHOT_WARN_AGE = '1s';
    process.env.TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE = '2s';
    await new Promise((r) => setTimeout(r, 2100));
    await expect(registration('monitorTimer').handler(timer, context('monitorTimer'))).rejects.toThrow(
      /Backups of database "tcab" are critical: target "local": the newest snapshot \S+ is \d+s old/,
    );
    expect(events('monitor.status')).toEqual([expect.objectContaining({ state: 'critical', level: 'error' })]);
  });

  it('verify fails the invocation naming a setting no rotation can meet', async () => {
    process.env.TCAB_BACKUP_VERIFY_WITHIN = '1h';
    await expect(registration('verifyTimer').handler(timer, context('verifyTimer'))).rejects.toThrow(
      /TCAB_BACKUP_VERIFY_WITHIN: 1h is shorter than the longest gap/,
    );
  });
});

describe('statusHttp', () => {
  it('answers the status computed fresh as JSON, without writing it', async () => {
    const before = await fx.local.head(statusKey(DATABASE));
    const res = await getStatus('application/json');
    expect(res.status).toBe(200);
    expect(res.headers['Content-Type']).toBe('application/json');
    expect(res.headers['Cache-Control']).toBe('no-store');
    const doc = JSON.parse(res.body);
    expect(doc).toMatchObject({ kind: 'tcab-backup-status', database: DATABASE, state: 'ok' });
    expect(res.headers['X-Tcab-Backup-State']).toBe('ok');
    expect(doc.targets[0].snapshots.count).toBe(1);
    expect(Date.now() - Date.parse(doc.generatedAt)).toBeLessThan(30_000);
    expect((await fx.local.head(statusKey(DATABASE))).etag).toBe(before.etag);
  });

  it('shows a critical state in a 200 answer instead of failing', async () => {
    process.env.TCAB_BACKUP_SNAPSHOT_WARN_AGE = '1s';
    process.env.TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE = '2s';
    const res = await getStatus();
    expect(res.status).toBe(200);
    expect(res.headers['X-Tcab-Backup-State']).toBe('critical');
    expect(JSON.parse(res.body).problems[0]).toMatchObject({ state: 'critical', check: 'snapshot', target: 'local' });
  });

  it('answers the status page to a browser, self-contained and locked down', async () => {
    const res = await getStatus('text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8');
    expect(res.status).toBe(200);
    expect(res.headers['Content-Type']).toBe('text/html; charset=utf-8');
    expect(res.headers['Content-Security-Policy']).toContain("default-src 'none'");
    expect(res.body).toMatch(/^<!DOCTYPE html>/);
    expect(res.body).toMatch(/<section class="card target" id="target-local" data-target="local" data-state="ok"/);
    expect(res.body).not.toMatch(/<script/i);
  });

  it('keeps JSON for clients that prefer it or accept anything', async () => {
    for (const accept of ['*/*', 'application/json, text/html;q=0.5', 'application/json']) {
      expect((await getStatus(accept)).headers['Content-Type'], accept).toBe('application/json');
    }
  });

  it('answers 500 problem+json naming an invalid setting', async () => {
    process.env.TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE = 'soon';
    const res = await getStatus();
    expect(res.status).toBe(500);
    expect(res.headers['Content-Type']).toBe('application/problem+json');
    expect(JSON.parse(res.body).detail).toMatch(/TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE: "soon" is invalid/);
  });
});

// Last: it leaves a failed drill as the newest record.
describe('the application drill setting', () => {
  it('with TCAB_BACKUP_DRILL_APP=true, the drill timer fails when the agent cannot run the application drill', async () => {
    // The fixture's agent has no backend command: it refuses the drill (501), and the drill fails, naming why.
    process.env.TCAB_BACKUP_DRILL_APP = 'true';
    const err = await (registration('drillTimer').handler(timer, context('drillTimer')) as Promise<unknown>).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(
      /failed at step agent: the agent did not run it: .*answered 501.*TCAB_AGENT_DRILL_BACKEND_COMMAND/,
    );
    const drill = (await readRecentDrills(fx.local, DATABASE, 50)).find((d) => d.record?.app);
    expect(drill!.record).toMatchObject({ ok: false, app: { passed: false, failedStep: 'agent' } });
    await (registration('monitorTimer').handler(timer, context('monitorTimer')) as Promise<unknown>).catch(() => undefined);
    expect(events('monitor.status').at(-1)).toMatchObject({ state: 'critical', appDrills: { local: 'failed at agent' } });
    delete process.env.TCAB_BACKUP_DRILL_APP;
  });
});
