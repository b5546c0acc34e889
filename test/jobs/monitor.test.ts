import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { statusKey } from '../../src/catalog/layout.js';
import type { ManifestV1 as Manifest } from '../../src/catalog/manifest.js';
import { runDrill } from '../../src/jobs/drill/index.js';
import { loadMonitorSettings } from '../../src/jobs/settings.js';
import { MonitorCriticalError, runMonitor } from '../../src/jobs/monitor/index.js';
import { runSnapshot } from '../../src/jobs/snapshot/index.js';
import type { MonitorThresholds, StatusDocument } from '../../src/status/document.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import {
  PG_RECORD_FORMAT_VERSION,
  pgCurrentDrillKey,
  pgStatusKey,
  writeRecord,
  type PgCheckStatus,
  type PgCurrentDrill,
} from '../../src/postgres/records.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { DATABASE, startFixture, type Fixture } from '../status/fixture.js';
import { captureLog } from '../support/world.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** Well inside the default snapshot warn age (30m: a snapshot every 5 minutes). */
const SOON = 10 * 60_000;
const defaults = loadMonitorSettings({}).thresholds;
let fx: Fixture;
let workDir: string;
let manifest: Manifest;
let created: number;

async function storedStatus(target: Target): Promise<StatusDocument> {
  const { body } = await target.get(statusKey(DATABASE));
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString('utf8')) as StatusDocument;
}

function monitor(now: number, options: { thresholds?: MonitorThresholds; targets?: Target[]; throwOnCritical?: boolean } = {}) {
  const { logger, records: events } = captureLog();
  const run = runMonitor(
    {
      targets: options.targets ?? fx.targets,
      database: DATABASE,
      thresholds: options.thresholds ?? defaults,
      logger,
      now: () => new Date(now),
    },
    { throwOnCritical: options.throwOnCritical ?? true, targetTimeoutMs: 20_000 },
  );
  return { run, events };
}

beforeAll(async () => {
  fx = await startFixture({ runs: 120, azurite: true });
  workDir = await mkdtemp(join(tmpdir(), 'tcab-monitor-work-'));
  ({ manifest } = await fx.snapshot());
  created = Date.parse(manifest.createdAt);
  await runDrill({ targets: fx.targets, database: DATABASE, live: fx.client, workDir });
  await runVerifyRotation({ targets: fx.targets, database: DATABASE }, { withinMs: 7 * DAY, intervalMs: DAY, all: true });
});

afterAll(async () => {
  await fx?.stop();
  await rm(workDir, { recursive: true, force: true });
});

describe('monitor', () => {
  it('is ok ten minutes after a snapshot with a fresh drill and verify, and writes the status document to every target', async () => {
    const { run, events } = monitor(created + SOON);
    const doc = await run;
    expect(doc.state).toBe('ok');
    expect(doc.problems).toEqual([]);
    expect(doc.targets.map((t) => [t.name, t.state])).toEqual([
      ['local', 'ok'],
      ['blob', 'ok'],
    ]);
    const local = doc.targets[0]!;
    expect(local.snapshots.newest).toMatchObject({
      id: manifest.id,
      ageMs: SOON,
      artifactBytes: manifest.artifact.bytes,
      bytes: manifest.snapshot.bytes,
    });
    expect(local.recoveryPointNowMs).toBe(SOON);
    expect(local.drill.lastSucceeded).toMatchObject({ ok: true, snapshotId: manifest.id, runsSince: 0 });
    expect(local.drill.recent).toHaveLength(1);
    expect(local.verify).toMatchObject({ state: 'ok', failing: [], reread: 1 });
    expect(doc.postgres).toBeUndefined();
    for (const target of fx.targets) expect(await storedStatus(target)).toEqual(doc);
    expect(events).toContainEqual(
      expect.objectContaining({ event: 'monitor.status', level: 'info', state: 'ok', targets: { local: 'ok', blob: 'ok' } }),
    );
  });

  it('warns when the newest snapshot passes the warn age, naming target and snapshot', async () => {
    const { run, events } = monitor(created + 45 * 60_000);
    const doc = await run;
    expect(doc.state).toBe('warn');
    expect(doc.problems).toHaveLength(2);
    expect(doc.problems[0]).toMatchObject({
      state: 'warn',
      check: 'snapshot',
      target: 'local',
      message: `target "local": the newest snapshot ${manifest.id} is 45m old (warn after 30m, critical after 1h)`,
      hint: expect.stringContaining('snapshotTimer'),
    });
    expect(events).toContainEqual(expect.objectContaining({ event: 'monitor.status', level: 'warn', state: 'warn' }));
  });

  it('is critical past the critical age: it writes the document, logs state critical and throws so the alert fires', async () => {
    const { run, events } = monitor(created + 5 * HOUR);
    const err = await run.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MonitorCriticalError);
    expect((err as Error).message).toContain(
      `Backups of database "tcab" are critical: target "local": the newest snapshot ${manifest.id} is 5h old`,
    );
    expect((err as Error).message).toContain('Check: that snapshotTimer runs');
    expect((err as MonitorCriticalError).status.state).toBe('critical');
    expect((await storedStatus(fx.local)).state).toBe('critical');
    expect(events).toContainEqual(expect.objectContaining({ event: 'monitor.status', level: 'error', state: 'critical' }));
  });

  it('judges drill and verify ages on their own thresholds', async () => {
    const relaxed = { ...defaults, snapshot: { warnMs: 100 * HOUR, criticalMs: 200 * HOUR } };
    const warn = await monitor(created + 30 * HOUR, { thresholds: relaxed }).run;
    expect(warn.state).toBe('warn');
    expect(warn.targets[0]!.drill.state).toBe('warn');
    expect(warn.targets[0]!.verify.state).toBe('warn');
    expect(warn.problems.map((p) => p.check).sort()).toEqual(['drill', 'drill', 'verify', 'verify']);
    const critical = await monitor(created + 60 * HOUR, { thresholds: relaxed, throwOnCritical: false }).run;
    expect(critical.state).toBe('critical');
    expect(critical.targets[0]!.snapshots.state).toBe('ok');
    expect(critical.targets[0]!.drill.state).toBe('critical');
    expect(critical.problems.find((p) => p.check === 'verify')!.message).toMatch(
      /^target "local": the last verify run without damage finished 2d1[12]h ago/,
    );
  });

  it('counts a missing drill and verify from the oldest snapshot, so timers that never ran are caught', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tcab-fresh-target-'));
    try {
      const fresh = openTarget(parseTargetUrl('fresh', `file://${dir}`));
      const { manifest: m } = await runSnapshot({ agent: fx.client, targets: [fresh], database: DATABASE }, { trigger: { kind: 'cli' } });
      const doc = await monitor(Date.parse(m.createdAt) + SOON, { targets: [fresh] }).run;
      expect(doc.state).toBe('ok');
      const later = await monitor(Date.parse(m.createdAt) + 27 * HOUR, {
        targets: [fresh],
        thresholds: { ...defaults, snapshot: { warnMs: 100 * HOUR, criticalMs: 200 * HOUR } },
      }).run;
      expect(later.state).toBe('warn');
      expect(later.problems.map((p) => p.message)).toEqual([
        'target "fresh": no restore drill has succeeded since the oldest snapshot, 1d3h ago (warn after 1d2h, critical after 2d2h)',
        'target "fresh": no verify run has finished without damage since the oldest snapshot, 1d3h ago (warn after 1d2h, critical after 2d2h)',
      ]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('is critical when a target cannot be reached, and still writes the document to the others', async () => {
    const offline = openTarget(
      parseTargetUrl('offline', `azblob://${fx.azurite!.account}/backups?endpoint=http://127.0.0.1:9/${fx.azurite!.account}`, {
        connectionString: fx.azurite!.connectionString.replace(/BlobEndpoint=[^;]+;/, 'BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;'),
      }),
      { retry: { retries: 0 } },
    );
    const doc = await monitor(created + SOON, { targets: [fx.local, offline], throwOnCritical: false }).run;
    expect(doc.state).toBe('critical');
    expect(doc.targets[0]!.state).toBe('ok');
    expect(doc.targets[1]).toMatchObject({
      name: 'offline',
      state: 'critical',
      reachable: false,
      error: expect.stringContaining('127.0.0.1:9'),
    });
    expect(doc.problems).toEqual([
      expect.objectContaining({
        state: 'critical',
        check: 'reachability',
        target: 'offline',
        message: expect.stringMatching(/^target "offline": cannot be read: /),
      }),
    ]);
    expect((await storedStatus(fx.local)).targets.map((t) => t.name)).toEqual(['local', 'offline']);
    await expect(monitor(created + SOON, { targets: [fx.local, offline] }).run).rejects.toThrow(/target "offline": cannot be read/);
  });

  it('includes the Postgres servers from their records, judged on their own thresholds', async () => {
    const server = {
      id: '/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/tcab-pg',
      name: 'tcab-pg',
    };
    const now = created + SOON;
    const check: PgCheckStatus = {
      formatVersion: PG_RECORD_FORMAT_VERSION,
      kind: 'pg-check',
      server: server.name,
      serverId: server.id,
      checkedAt: new Date(now - 30 * 60_000).toISOString(),
      ok: false,
      violations: [{ rule: 'retention', message: 'backup retention is 3 days, the policy asks for at least 7', hint: 'raise it' }],
      facts: null,
      actions: [],
    };
    const summary = {
      drillId: '20261120T040000Z-0a1b2c3d',
      outcome: 'succeeded' as const,
      requestedAt: new Date(now - 3 * DAY).toISOString(),
      finishedAt: new Date(now - 2 * DAY).toISOString(),
      recoveryTimeMs: 1_800_000,
    };
    const pointer: PgCurrentDrill = {
      formatVersion: PG_RECORD_FORMAT_VERSION,
      kind: 'pg-current-drill',
      sourceServerId: server.id,
      drillId: summary.drillId,
      requestedAt: summary.requestedAt,
      lastFinished: summary,
      lastSucceeded: summary,
    };
    await writeRecord(fx.local, pgStatusKey(server.name), check, {});
    await writeRecord(fx.local, pgCurrentDrillKey(server.name), pointer, {});
    const { logger } = captureLog();
    const doc = await runMonitor(
      {
        targets: fx.targets,
        database: DATABASE,
        thresholds: defaults,
        logger,
        now: () => new Date(now),
        postgres: { servers: [server], recordsTarget: fx.local },
      },
      { throwOnCritical: false, write: false },
    );
    expect(doc.postgres).toMatchObject({ state: 'critical', recordsTarget: 'local' });
    expect(doc.postgres!.servers[0]).toMatchObject({ server: 'tcab-pg', state: 'critical', checkAgeMs: 30 * 60_000, drillAgeMs: 2 * DAY });
    expect(doc.problems).toEqual([
      expect.objectContaining({
        check: 'pg-check',
        server: 'tcab-pg',
        message: 'Postgres server "tcab-pg": violates the backup policy: backup retention is 3 days, the policy asks for at least 7',
      }),
    ]);
    await writeRecord(fx.local, pgStatusKey(server.name), { ...check, ok: true, violations: [] }, {});
    const fine = await runMonitor(
      {
        targets: fx.targets,
        database: DATABASE,
        thresholds: defaults,
        now: () => new Date(now),
        postgres: { servers: [server], recordsTarget: fx.local },
      },
      { write: false },
    );
    expect(fine.state).toBe('ok');
    expect(fine.postgres!.servers[0]!.state).toBe('ok');
  });

  it('is critical after a failed drill and a failed verification, naming target and snapshot', async () => {
    const path = join(fx.work, 'backups', manifest.key);
    const original = await readFile(path);
    const damaged = Buffer.from(original);
    damaged[100]! ^= 0x01;
    await writeFile(path, damaged);
    try {
      await expect(runDrill({ targets: [fx.local], database: DATABASE, live: fx.client, workDir })).rejects.toThrow(/failed/);
      await expect(
        runVerifyRotation({ targets: [fx.local], database: DATABASE }, { withinMs: 7 * DAY, intervalMs: DAY, all: true }),
      ).rejects.toThrow(/failed/);
    } finally {
      await writeFile(path, original);
    }
    const doc = await monitor(Date.now() + 60_000, { throwOnCritical: false }).run;
    expect(doc.state).toBe('critical');
    const local = doc.targets[0]!;
    expect(local.drill.state).toBe('critical');
    expect(local.verify.state).toBe('critical');
    expect(local.verify.failing).toEqual([expect.objectContaining({ id: manifest.id, error: expect.stringContaining('sha256') })]);
    expect(doc.targets[1]!.state).toBe('ok');
    const messages = doc.problems.map((p) => p.message);
    expect(messages).toContainEqual(
      expect.stringMatching(new RegExp(`^target "local": the last restore drill \\S+ failed: target "local" .*snapshot ${manifest.id}`)),
    );
    expect(messages).toContainEqual(
      expect.stringMatching(new RegExp(`^target "local": snapshot ${manifest.id} failed verification at .*sha256`)),
    );
  });
});
