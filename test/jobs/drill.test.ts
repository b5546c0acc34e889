import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { drillKey } from '../../src/catalog/layout.js';
import type { ManifestV1 as Manifest } from '../../src/catalog/manifest.js';
import { startWriter } from '../../src/dev/writer.js';
import { DrillFailedError, runDrill } from '../../src/jobs/drill/index.js';
import { DrillRecordSchema, readRecentDrills } from '../../src/catalog/drill-record.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import { DATABASE, startFixture, type Fixture } from '../status/fixture.js';
import { captureLog } from '../support/world.js';

let fx: Fixture;
let workDir: string;
let manifest: Manifest;
let published: { inserts: number };

beforeAll(async () => {
  fx = await startFixture({ runs: 150, azurite: true });
  workDir = await mkdtemp(join(tmpdir(), 'tcab-drill-work-'));
  ({ manifest } = await fx.snapshot());
  // The backend goes on publishing after the snapshot: the drill must count exactly these runs.
  const writer = startWriter(fx.dbPath, { intervalMs: 5, recordBytes: 500 });
  await writer.ready;
  await new Promise((r) => setTimeout(r, 400));
  const result = await writer.stop();
  expect(result.errors).toEqual([]);
  published = result;
});

afterAll(async () => {
  await fx?.stop();
  await rm(workDir, { recursive: true, force: true });
});

describe('restore drill', () => {
  it('restores the newest snapshot of every target, measures recovery point and time, counts the runs published since, and records it all', async () => {
    const { logger, records: events } = captureLog();
    const started = Date.now();
    const result = await runDrill({ targets: fx.targets, database: DATABASE, live: fx.client, workDir, logger });
    expect(result.ok).toBe(true);
    expect(result.targets.map((r) => r.target)).toEqual(['local', 'blob']);
    expect(published.inserts).toBeGreaterThan(5);
    for (const r of result.targets) {
      expect(r.ok).toBe(true);
      expect(r.snapshot).toMatchObject({
        id: manifest.id,
        createdAt: manifest.createdAt,
        artifactBytes: manifest.artifact.bytes,
        bytes: manifest.snapshot.bytes,
      });
      expect(r.recoveryTimeMs).toBeGreaterThan(0);
      expect(r.recoveryTimeMs).toBeLessThan(Date.now() - started);
      const rp = r.recoveryPoint!;
      expect(rp.snapshotAgeMs).toBeGreaterThan(400);
      expect(rp.snapshotAgeMs).toBeLessThan(Date.now() - Date.parse(manifest.createdAt));
      expect(rp.runsSince).toBe(published.inserts);
      expect(r.tables.runs).toEqual({ snapshot: 150, live: 150 + published.inserts, difference: published.inserts });
      expect(r.tables.reviews!.difference).toBe(Math.ceil(published.inserts / 2));
      expect(r.tables.reviews!.snapshot).toBe(manifest.database.tables.reviews);
      expect(Date.parse(rp.newestPublishedAt.live!)).toBeGreaterThan(Date.parse(rp.newestPublishedAt.snapshot!));
      expect(rp.publishedGapMs).toBe(Date.parse(rp.newestPublishedAt.live!) - Date.parse(rp.newestPublishedAt.snapshot!));
      expect(r.live).toMatchObject({ available: true, agent: fx.client.agent });
      expect(r.warnings).toEqual([]);
      expect(r.checks).toEqual({
        method: 'restore',
        ran: ['artifact-sha256', 'snapshot-sha256', 'integrity-check', 'row-counts'],
        fromSnapshot: [],
      });
    }
    for (const target of fx.targets) {
      const [latest] = await readRecentDrills(target, DATABASE, 5);
      expect(latest!.drillId).toBe(result.drillId);
      expect(DrillRecordSchema.parse(latest!.record)).toEqual(result.targets.find((r) => r.target === target.name));
      await expect(target.head(drillKey(DATABASE, result.drillId))).resolves.toBeDefined();
    }
    const completed = events.filter((e) => e.event === 'drill.completed');
    expect(completed.map((e) => e.target)).toEqual(['local', 'blob']);
    expect(completed[0]).toMatchObject({ database: DATABASE, snapshot: manifest.id, runsSince: published.inserts, liveAvailable: true });
    expect(await readdir(workDir)).toEqual([]);
  });

  it('still proves the restore when the agent cannot be reached, and warns that the live comparison is unavailable', async () => {
    const { logger, records: events } = captureLog();
    const offline = new AgentClient({ url: 'http://127.0.0.1:9', keyId: 'functions', key: fx.key, timeoutMs: 5000 });
    const result = await runDrill({ targets: [fx.local], database: DATABASE, live: offline, workDir, logger });
    const r = result.targets[0]!;
    expect(r.ok).toBe(true);
    expect(r.recoveryTimeMs).toBeGreaterThan(0);
    expect(r.live).toMatchObject({ available: false, agent: '127.0.0.1:9', error: expect.stringContaining('127.0.0.1:9') });
    expect(r.warnings).toEqual([
      expect.stringMatching(/^live comparison unavailable: Snapshot agent at 127\.0\.0\.1:9: GET \/v1\/status failed: ECONNREFUSED/),
    ]);
    expect(r.recoveryPoint!.runsSince).toBeNull();
    expect(r.tables.runs).toEqual({ snapshot: 150, live: null, difference: null });
    expect(events).toContainEqual(expect.objectContaining({ event: 'drill.live_unavailable', level: 'warn' }));
    expect(events).toContainEqual(expect.objectContaining({ event: 'drill.completed', liveAvailable: false }));
    expect(JSON.stringify(events)).not.toContain(fx.key);
  });

  it('fails naming the target and the snapshot when a stored artifact is damaged, records the failure, and still drills the other targets', async () => {
    const path = join(fx.work, 'backups', manifest.key);
    const original = await readFile(path);
    const damaged = Buffer.from(original);
    damaged[damaged.length - 20]! ^= 0x55;
    await writeFile(path, damaged);
    const { logger, records: events } = captureLog();
    try {
      const err = await runDrill({ targets: fx.targets, database: DATABASE, live: fx.client, workDir, logger }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DrillFailedError);
      const message = (err as Error).message;
      expect(message).toContain(`failed on 1 of 2 target(s): target "local" (file://`);
      expect(message).toContain(`snapshot ${manifest.id}`);
      expect(message).toMatch(/sha256|decompress/);
      expect(message).toContain('Check: the stored copy named is damaged');
      const { result } = err as DrillFailedError;
      expect(result.targets.map((r) => [r.target, r.ok])).toEqual([
        ['local', false],
        ['blob', true],
      ]);
      const stored = (await readRecentDrills(fx.local, DATABASE, 10)).find((d) => d.drillId === result.drillId);
      expect(stored!.record).toMatchObject({
        drillId: result.drillId,
        ok: false,
        error: expect.stringContaining(manifest.id),
        recoveryTimeMs: null,
      });
      expect(events).toContainEqual(
        expect.objectContaining({ event: 'drill.failed', level: 'error', target: 'local', snapshot: manifest.id }),
      );
      expect(events).toContainEqual(expect.objectContaining({ event: 'drill.completed', target: 'blob' }));
      expect(await readdir(workDir)).toEqual([]);
    } finally {
      await writeFile(path, original);
    }
  });

  it("verifies by streaming when told to: both sha256 sums, nothing written, the agent's checks of the same bytes, and the record says so", async () => {
    const { logger, records: events } = captureLog();
    const result = await runDrill({ targets: fx.targets, database: DATABASE, live: fx.client, workDir, method: 'stream', logger });
    expect(result.ok).toBe(true);
    for (const r of result.targets) {
      expect(r.checks).toEqual({
        method: 'stream',
        ran: ['artifact-sha256', 'snapshot-sha256'],
        fromSnapshot: ['integrity-check', 'row-counts'],
        reason: 'TCAB_BACKUP_DRILL_METHOD=stream',
      });
      expect(r.recoveryTimeMs).toBeGreaterThan(0);
      expect(r.recoveryPoint!.runsSince).toBe(published.inserts);
      expect(r.tables.runs).toEqual({ snapshot: 150, live: 150 + published.inserts, difference: published.inserts });
      // The newest published run needs the file opened; streaming does not open it.
      expect(r.recoveryPoint!.newestPublishedAt.snapshot).toBeNull();
      expect(r.recoveryPoint!.publishedGapMs).toBeNull();
    }
    expect(events.filter((e) => e.event === 'drill.completed').map((e) => e.method)).toEqual(['stream', 'stream']);
    expect(await readdir(workDir)).toEqual([]);
  });

  it('fails a streamed drill of a damaged artifact, naming what differs', async () => {
    const path = join(fx.work, 'backups', manifest.key);
    const original = await readFile(path);
    const damaged = Buffer.from(original);
    damaged[damaged.length - 20]! ^= 0x55;
    await writeFile(path, damaged);
    try {
      const err = await runDrill({ targets: [fx.local], database: DATABASE, live: fx.client, workDir, method: 'stream' }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DrillFailedError);
      expect((err as Error).message).toMatch(
        new RegExp(
          `target "local" .* snapshot ${manifest.id}: (artifact sha256 [0-9a-f]{64} does not match|the gzip artifact does not decompress)`,
        ),
      );
      expect((err as DrillFailedError).result.targets[0]!.checks).toBeUndefined();
    } finally {
      await writeFile(path, original);
    }
  });

  it('fails naming a target that holds no snapshot', async () => {
    const emptyDir = await mkdtemp(join(tmpdir(), 'tcab-empty-target-'));
    try {
      const empty = openTarget(parseTargetUrl('empty', `file://${emptyDir}`));
      const err = await runDrill({ targets: [empty], database: DATABASE, live: fx.client, workDir }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DrillFailedError);
      expect((err as Error).message).toMatch(/target "empty" \(file:\/\/.*\) holds no snapshot of "tcab" to drill/);
    } finally {
      await rm(emptyDir, { recursive: true, force: true });
    }
  });
});
