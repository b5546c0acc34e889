import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyRecordKey } from '../../src/catalog/layout.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import { VerifyFailedError, runVerifyRotation } from '../../src/jobs/verify/index.js';
import { copyState, readVerifyRecord, recordVerifyResults } from '../../src/catalog/verify-record.js';
import { DATABASE, startFixture, type Fixture } from '../status/fixture.js';
import { captureLog } from '../support/world.js';

const DAY = 86_400_000;
let fx: Fixture;
let ids: string[] = [];
let keys: string[] = [];

beforeAll(async () => {
  fx = await startFixture({ runs: 150, azurite: true });
  for (let i = 0; i < 3; i++) {
    const { manifest } = await fx.snapshot();
    ids.push(manifest.id);
    keys.push(manifest.key);
    fx.publishRuns(5);
  }
  ids = ids.reverse();
  keys = keys.reverse();
});

afterAll(async () => {
  await fx?.stop();
});

const rotation = { withinMs: 7 * DAY, intervalMs: DAY };

describe('verify rotation on real targets', () => {
  it('re-reads every snapshot on every target within the window over a week of simulated daily runs, and records each read', async () => {
    const { logger, records: events } = captureLog();
    // Simulated days from now on: the reads are recorded at those (future) times.
    let clock = Date.now();
    const readAt = new Map<string, number[]>();
    for (let run = 0; run < 8; run++) {
      const result = await runVerifyRotation({ targets: fx.targets, database: DATABASE, logger, now: () => new Date(clock) }, rotation);
      expect(result.failed).toBe(0);
      for (const t of result.targets) {
        expect(t.reachable).toBe(true);
        expect(t.snapshots).toBe(3);
        expect(t.longestUnreadMs).toBeLessThanOrEqual(7 * DAY);
        for (const s of t.selected) readAt.set(`${t.target}/${s.id}`, [...(readAt.get(`${t.target}/${s.id}`) ?? []), run]);
      }
      clock += DAY;
    }
    for (const target of ['local', 'blob']) for (const id of ids) expect(readAt.get(`${target}/${id}`), `${target}/${id}`).toBeDefined();
    for (const target of fx.targets) {
      const record = await readVerifyRecord(target, DATABASE);
      expect(Object.keys(record!.snapshots).sort()).toEqual([...ids].sort());
      expect(Object.values(record!.snapshots).every((e) => e.ok)).toBe(true);
      expect(record!.lastCleanRun?.failed).toBe(0);
      expect(record!.target).toBe(target.name);
    }
    const completed = events.filter((e) => e.event === 'verify.completed');
    expect(completed).toHaveLength(8);
    expect(completed[0]).toMatchObject({ database: DATABASE, all: false });
  });

  it('fails loudly naming target and snapshot when a stored artifact is damaged, records it, and keeps re-reading it until it is repaired', async () => {
    const path = join(fx.work, 'backups', keys[1]!);
    const original = await readFile(path);
    const damaged = Buffer.from(original);
    damaged[Math.floor(damaged.length / 2)]! ^= 0xff;
    await writeFile(path, damaged);
    const { logger, records: events } = captureLog();
    try {
      const err = await runVerifyRotation({ targets: fx.targets, database: DATABASE, logger }, { ...rotation, all: true }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(VerifyFailedError);
      const message = (err as Error).message;
      expect(message).toContain(`target "local" snapshot ${ids[1]}`);
      expect(message).toMatch(/sha256 [0-9a-f]{64}, the manifest says/);
      expect(message).toContain('Check: restore from a target whose copy verifies');
      expect((err as VerifyFailedError).result.outcomes.filter((o) => !o.ok)).toEqual([
        expect.objectContaining({ target: 'local', id: ids[1] }),
      ]);
      expect(events).toContainEqual(expect.objectContaining({ event: 'verify.mismatch', level: 'error', target: 'local', id: ids[1] }));
      expect(events.some((e) => e.event === 'verify.completed')).toBe(false);

      // Prune reads this: the damaged copy does not count as verified; the intact copy on the other target does.
      const local = await readVerifyRecord(fx.local, DATABASE);
      expect(copyState(local, ids[1]!)).toMatchObject({ state: 'failed', error: expect.stringContaining('sha256') });
      expect(copyState(local, ids[0]!).state).toBe('ok');
      expect(copyState(await readVerifyRecord(fx.blob!, DATABASE), ids[1]!).state).toBe('ok');
      expect(local!.lastFailedRun?.failures).toEqual([expect.objectContaining({ id: ids[1] })]);

      // A rotating run that would not otherwise read it reads the failed copy again.
      const again = await runVerifyRotation({ targets: [fx.local], database: DATABASE }, rotation).catch((e: unknown) => e);
      expect(again).toBeInstanceOf(VerifyFailedError);
      expect((again as VerifyFailedError).result.targets[0]!.selected).toContainEqual({ id: ids[1], reason: 'failed-before' });
      const stillBad = await readVerifyRecord(fx.local, DATABASE);
      expect(stillBad!.snapshots[ids[1]!]!.failingSince).toBe(local!.snapshots[ids[1]!]!.checkedAt);
    } finally {
      await writeFile(path, original);
    }
    const repaired = await runVerifyRotation({ targets: [fx.local], database: DATABASE }, rotation);
    expect(repaired.outcomes).toContainEqual(expect.objectContaining({ id: ids[1], ok: true }));
    const record = await readVerifyRecord(fx.local, DATABASE);
    expect(copyState(record, ids[1]!).state).toBe('ok');
    expect(record!.snapshots[ids[1]!]!.failingSince).toBeUndefined();
  });

  it('replaces a damaged verify record after reading every snapshot, and says so', async () => {
    await fx.local.put(verifyRecordKey(DATABASE), Buffer.from('{"not": "a verify record"'));
    const { logger, records: events } = captureLog();
    const result = await runVerifyRotation({ targets: [fx.local], database: DATABASE, logger }, rotation);
    expect(result.targets[0]!.checked).toBe(3);
    expect(events).toContainEqual(expect.objectContaining({ event: 'verify.record_damaged', level: 'warn', target: 'local' }));
    const record = await readVerifyRecord(fx.local, DATABASE);
    expect(Object.keys(record!.snapshots)).toHaveLength(3);
    expect(record!.lastRun?.all).toBe(true);
  });

  it('keeps both results when two runs record at the same time', async () => {
    const at = new Date().toISOString();
    const run = { startedAt: at, finishedAt: at, all: false, snapshots: 3, checked: 1, failed: 0, bytes: 1, durationMs: 1, failures: [] };
    await Promise.all([
      recordVerifyResults(fx.local, DATABASE, { listed: ids, results: { [ids[0]!]: { checkedAt: at, ok: true, bytes: 1 } }, run }),
      recordVerifyResults(fx.local, DATABASE, {
        listed: ids,
        results: { [ids[2]!]: { checkedAt: at, ok: false, error: 'test mismatch' } },
        run: { ...run, failed: 1 },
      }),
    ]);
    const record = await readVerifyRecord(fx.local, DATABASE);
    expect(record!.snapshots[ids[0]!]).toMatchObject({ checkedAt: at, ok: true });
    expect(record!.snapshots[ids[2]!]).toMatchObject({ checkedAt: at, ok: false });
  });

  it('names an unreachable target and still records the others', async () => {
    const dead = openTarget(
      parseTargetUrl('offline', `azblob://${fx.azurite!.account}/backups?endpoint=http://127.0.0.1:9/${fx.azurite!.account}`, {
        connectionString: fx.azurite!.connectionString.replace(/BlobEndpoint=[^;]+;/, 'BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;'),
      }),
      {
        retry: { retries: 0 },
      },
    );
    const before = (await readVerifyRecord(fx.blob!, DATABASE))!.updatedAt;
    const err = await runVerifyRotation({ targets: [fx.blob!, dead], database: DATABASE }, rotation).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VerifyFailedError);
    expect((err as Error).message).toMatch(/target "offline" \(azblob:\/\/devstoreaccount1\/backups\): listing failed/);
    expect((await readVerifyRecord(fx.blob!, DATABASE))!.updatedAt > before).toBe(true);
  });
});
