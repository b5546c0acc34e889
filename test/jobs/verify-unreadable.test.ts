/**
 * "Could not read" is not "does not match": a copy whose bytes the target did not deliver (an answer that
 * broke off, 503s past the retries, connections reset) is neither damaged nor good. Verify fails naming it
 * and reads it again next run; prune keeps it where it may be the last good copy and never counts it as
 * good; replicate leaves it alone; the monitor warns instead of calling it damaged. Real targets: Azurite and
 * s3rver behind the fault proxy, folders, real verify runs.
 */
import { describe, expect, it } from 'vitest';
import { verifyRecordKey } from '../../src/catalog/layout.js';
import { loadMonitorSettings } from '../../src/jobs/settings.js';
import { runMonitor } from '../../src/jobs/monitor/index.js';
import { runPrune, type PruneResult } from '../../src/jobs/prune/index.js';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { verifyStoredSnapshot } from '../../src/jobs/verify/check.js';
import { copyState, readVerifyRecord } from '../../src/catalog/verify-record.js';
import { VerifyFailedError, runVerifyRotation } from '../../src/jobs/verify/index.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import { renderStatusPage } from '../../src/status/page.js';
import type { Target } from '../../src/targets/target.js';
import { startFaultProxy, type Fault, type FaultProxy } from '../support/fault-proxy.js';
import { DATABASE, DAY, HOUR, history, idsOn, storeSnapshot, type TestSnapshot } from '../support/stored-snapshots.js';
import { blobTarget, captureLog, s3Target, testWorld } from '../support/world.js';

const world = testWorld();
const ROTATION = { withinMs: 7 * DAY, intervalMs: DAY };
/** Several SDK read requests' worth, so an answer cut after 10,000 bytes breaks off even where it resumes. */
const BYTES = 256 * 1024;

const ago = (ms: number) => new Date(Date.now() - ms);

function retention(settings: Record<string, string>) {
  return loadRetentionConfig(
    {
      TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
      TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
      TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
      ...settings,
    },
    ['a', 'b'],
  );
}

const outcome = (result: PruneResult, name: string) => result.targets.find((t) => t.target === name)!;

async function store(target: Target, snaps: TestSnapshot[]): Promise<void> {
  for (const s of snaps) await storeSnapshot(target, s);
}

const readsOf = (snap: TestSnapshot) => (method: string, url: URL) => method === 'GET' && url.pathname.endsWith(`/${snap.manifest.key}`);

/** A cloud target "b" behind its own fault proxy. */
async function behindProxy(cloud: 'azurite' | 's3'): Promise<{ target: Target; proxy: FaultProxy }> {
  const proxy = await startFaultProxy(cloud === 'azurite' ? world.clouds.azurite.endpoint : world.clouds.s3.endpoint);
  world.cleanup(proxy.stop);
  return { target: cloud === 'azurite' ? blobTarget(world.clouds, 'b', { proxy }) : s3Target(world.clouds, 'b', { proxy }), proxy };
}

/** A verify run over "b" during which every read of the snapshot's artifact fails with `fault`. */
async function verifyWhileUnreadable(
  b: { target: Target; proxy: FaultProxy },
  snap: TestSnapshot,
  fault: Fault,
): Promise<VerifyFailedError> {
  b.proxy.inject({ match: readsOf(snap), fault, times: Infinity });
  try {
    const err = await runVerifyRotation({ targets: [b.target], database: DATABASE }, { ...ROTATION, all: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VerifyFailedError);
    return err as VerifyFailedError;
  } finally {
    b.proxy.clear();
  }
}

/** Same size, other bytes (only a re-read notices); a real verify run records the damage. */
async function damageAndVerify(target: Target, snap: TestSnapshot): Promise<void> {
  const bytes = Buffer.from(snap.data);
  bytes[100]! ^= 0xff;
  await target.put(snap.manifest.key, bytes);
  await expect(runVerifyRotation({ targets: [target], database: DATABASE }, { ...ROTATION, all: true })).rejects.toThrow(snap.manifest.id);
  expect(copyState(await readVerifyRecord(target, DATABASE), snap.manifest.id).state).toBe('failed');
}

const faults: Array<{ name: string; cloud: 'azurite' | 's3'; fault: Fault; says: RegExp }> = [
  { name: 'the answer breaks off mid-body (Azurite)', cloud: 'azurite', fault: { cutAfterBytes: 10_000 }, says: /could not be read/ },
  {
    name: 'the target answers 503 past the retries (s3rver)',
    cloud: 's3',
    fault: { status: 503, code: 'SlowDown' },
    says: /could not be read.*503|could not be read.*SlowDown/,
  },
  { name: 'every connection is reset (s3rver)', cloud: 's3', fault: 'reset', says: /could not be read/ },
];

describe('verify: a copy that could not be read is not a damaged copy', () => {
  for (const f of faults) {
    it(`records it as unreadable, fails naming it, and reads it again next run, when ${f.name}`, async () => {
      const b = await behindProxy(f.cloud);
      const snaps = history(2, ago(HOUR), HOUR, { bytes: BYTES });
      const ids = snaps.map((s) => s.manifest.id);
      await store(b.target, snaps);
      const { logger, records: events } = captureLog();
      b.proxy.inject({ match: readsOf(snaps[0]!), fault: f.fault, times: Infinity });
      const err = await runVerifyRotation({ targets: [b.target], database: DATABASE, logger }, { ...ROTATION, all: true }).catch(
        (e: unknown) => e,
      );
      b.proxy.clear();

      expect(err).toBeInstanceOf(VerifyFailedError);
      const message = (err as Error).message;
      expect(message).toContain(`target "b" snapshot ${ids[0]} could not be read, so whether it matches is unknown`);
      expect(message).toMatch(f.says);
      expect(message).toContain('it counts as neither good nor damaged');
      expect(message).not.toContain('copies a good one over the damaged copy');
      const result = (err as VerifyFailedError).result;
      expect(result).toMatchObject({ checked: 2, failed: 0, unreadable: 1 });
      expect(result.outcomes).toContainEqual(expect.objectContaining({ id: ids[0], ok: false, verdict: 'unreadable' }));
      expect(events).toContainEqual(expect.objectContaining({ event: 'verify.unreadable', level: 'error', target: 'b', id: ids[0] }));
      expect(events.some((e) => e.event === 'verify.mismatch')).toBe(false);

      const record = await readVerifyRecord(b.target, DATABASE);
      expect(copyState(record, ids[0]!).state).toBe('unreadable');
      expect(record!.snapshots[ids[0]!]).toMatchObject({ ok: false, verdict: 'unreadable' });
      expect(copyState(record, ids[1]!).state).toBe('ok');
      expect(record!.lastCleanRun).toBeUndefined();
      expect(record!.lastFailedRun).toMatchObject({
        failed: 0,
        unreadable: 1,
        failures: [expect.objectContaining({ id: ids[0], verdict: 'unreadable' })],
      });

      // The next rotating run, which would read nothing else, reads it again; the target answers now.
      const again = await runVerifyRotation({ targets: [b.target], database: DATABASE }, ROTATION);
      expect(again.targets[0]!.selected).toEqual([{ id: ids[0], reason: 'unreadable-before' }]);
      expect(copyState(await readVerifyRecord(b.target, DATABASE), ids[0]!).state).toBe('ok');
    });
  }

  it('keeps a damaged copy damaged when a later run cannot read it, so replicate still repairs it', async () => {
    const a = await world.folder('a');
    const b = await behindProxy('azurite');
    const snaps = history(2, ago(HOUR), HOUR, { bytes: BYTES });
    await store(a.target, snaps);
    await store(b.target, snaps);
    await damageAndVerify(b.target, snaps[0]!);
    const before = (await readVerifyRecord(b.target, DATABASE))!.snapshots[snaps[0]!.manifest.id]!;

    await verifyWhileUnreadable(b, snaps[0]!, { cutAfterBytes: 10_000 });
    const after = await readVerifyRecord(b.target, DATABASE);
    expect(copyState(after, snaps[0]!.manifest.id).state).toBe('failed');
    expect(after!.snapshots[snaps[0]!.manifest.id]).toEqual(before);

    const plan = await runReplicate({ targets: [a.target, b.target], database: DATABASE }, { dryRun: true });
    expect(plan.targets.find((t) => t.target === 'b')!.planned).toEqual([
      expect.objectContaining({ id: snaps[0]!.manifest.id, from: 'a', repairs: expect.stringContaining('its last verify failed') }),
    ]);
  });

  it('does not let replicate copy over an intact copy that verify could not read', async () => {
    const a = await world.folder('a');
    const b = await behindProxy('s3');
    const snaps = history(2, ago(HOUR), HOUR, { bytes: BYTES });
    await store(a.target, snaps);
    await store(b.target, snaps);
    await verifyWhileUnreadable(b, snaps[0]!, { status: 503, code: 'SlowDown' });
    const stored = await b.target.head(snaps[0]!.manifest.key);

    const result = await runReplicate({ targets: [a.target, b.target], database: DATABASE });
    expect(result.copied).toBe(0);
    expect(result.targets.find((t) => t.target === 'b')!.present).toBe(2);
    expect((await b.target.head(snaps[0]!.manifest.key)).etag).toBe(stored.etag);
    expect(copyState(await readVerifyRecord(b.target, DATABASE), snaps[0]!.manifest.id).state).toBe('unreadable');
  });
});

describe('verify: a verify record that could not be read is not a damaged record', () => {
  it('fails naming the record and leaves it as it was, instead of replacing it', async () => {
    const b = await behindProxy('s3');
    const snaps = history(2, ago(HOUR), HOUR);
    await store(b.target, snaps);
    await damageAndVerify(b.target, snaps[0]!);
    const key = verifyRecordKey(DATABASE);
    const stored = await b.target.head(key);

    const { logger, records: events } = captureLog();
    b.proxy.inject({ match: (m, url) => m === 'GET' && url.pathname.endsWith(`/${key}`), fault: { cutAfterBytes: 100 }, times: Infinity });
    const err = await runVerifyRotation({ targets: [b.target], database: DATABASE, logger }, ROTATION).catch((e: unknown) => e);
    b.proxy.clear();

    // What an operator checks first: the record still holds what it held.
    expect((await b.target.head(key)).etag).toBe(stored.etag);
    expect(events.some((e) => e.event === 'verify.record_damaged')).toBe(false);
    expect(err).toBeInstanceOf(VerifyFailedError);
    expect((err as Error).message).toMatch(
      new RegExp(
        `target "b" \\(.*\\): reading the verify record failed: .*get ${key.replace(/\./g, '\\.')} failed: the answer broke off after 100 of \\d+ bytes`,
      ),
    );
    expect(copyState(await readVerifyRecord(b.target, DATABASE), snaps[0]!.manifest.id).state).toBe('failed');
  });
});

describe('prune: a copy that verify could not read', () => {
  it('is not deleted where its policy drops it while the only other copy is damaged, and the run is ok', async () => {
    const a = await world.folder('a');
    const b = await behindProxy('azurite');
    const snaps = history(3, ago(HOUR), DAY, { bytes: BYTES });
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, snaps);
    await damageAndVerify(a.target, snaps[0]!);
    await verifyWhileUnreadable(b, snaps[0]!, { cutAfterBytes: 10_000 });

    // "a" keeps all three, "b" only the newest: b's intact copy of 0 is the last good one.
    const result = await runPrune({
      targets: [a.target, b.target],
      database: DATABASE,
      retention: retention({ TCAB_BACKUP_RETENTION_A: 'last=3', TCAB_BACKUP_RETENTION_B: 'last=1' }),
    });
    expect(await idsOn(b.target)).toEqual([ids[0], ids[2]]);
    expect((await verifyStoredSnapshot(b.target, DATABASE, ids[0]!)).ok).toBe(true);
    expect(outcome(result, 'b').removed).toEqual([ids[1]]);
    expect(outcome(result, 'b').kept.find((k) => k.id === ids[0])?.reasons).toEqual([
      expect.stringMatching(/^last good copy: target "a" keeps it but its copy failed verify \(.*sha256/),
    ]);
    expect(await idsOn(a.target)).toEqual(ids);
  });

  it('does not count as good, so the other target keeps its own copy', async () => {
    const a = await world.folder('a');
    const b = await behindProxy('s3');
    const snaps = history(3, ago(HOUR), DAY, { bytes: BYTES });
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, snaps);
    await verifyWhileUnreadable(b, snaps[0]!, 'reset');

    const result = await runPrune({
      targets: [a.target, b.target],
      database: DATABASE,
      retention: retention({ TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=3' }),
    });
    expect(outcome(result, 'a').removed).toEqual([ids[1]]);
    expect(outcome(result, 'a').kept.find((k) => k.id === ids[0])?.reasons).toEqual([
      expect.stringMatching(
        /^last good copy: target "b" keeps it but verify could not read its copy, so whether it is good is unknown \(could not be read/,
      ),
    ]);
    expect(await idsOn(a.target)).toEqual([ids[0], ids[2]]);
  });
});

describe('monitor: a copy that verify could not read', () => {
  it('warns naming it and does not list it as damaged, on the status page too', async () => {
    const b = await behindProxy('azurite');
    const snaps = history(2, ago(HOUR), HOUR, { bytes: BYTES });
    await store(b.target, snaps);
    await verifyWhileUnreadable(b, snaps[0]!, { cutAfterBytes: 10_000 });

    const doc = await runMonitor(
      { targets: [b.target], database: DATABASE, thresholds: loadMonitorSettings({}).thresholds },
      { write: false, throwOnCritical: false },
    );
    const verify = doc.targets[0]!.verify;
    expect(verify.failing).toEqual([]);
    expect(verify.unreadable).toEqual([
      expect.objectContaining({ id: snaps[0]!.manifest.id, error: expect.stringContaining('could not be read') }),
    ]);
    expect(verify.state).toBe('warn');
    expect(doc.problems.filter((p) => p.check === 'verify')).toContainEqual(
      expect.objectContaining({
        state: 'warn',
        message: expect.stringMatching(
          new RegExp(
            `^target "b": snapshot ${snaps[0]!.manifest.id} could not be read by verify at .*, so whether it is intact is unknown`,
          ),
        ),
      }),
    );
    const page = renderStatusPage(doc);
    expect(page).toContain('1 unreadable');
    expect(page).toContain('Snapshots that verify could not read (not proven damaged)');
    expect(page).not.toContain('Snapshots that failed verification');
  });
});

describe('verify records written before verdicts', () => {
  it('still read ok: false as damaged: replicate repairs it and the monitor calls it damaged', async () => {
    const a = await world.folder('a');
    const b = await world.folder('b');
    const snaps = history(2, ago(HOUR), HOUR);
    const id = snaps[0]!.manifest.id;
    await store(a.target, snaps);
    await store(b.target, snaps);
    const at = new Date().toISOString();
    const run = {
      startedAt: at,
      finishedAt: at,
      all: true,
      snapshots: 2,
      checked: 2,
      failed: 1,
      bytes: 1,
      durationMs: 1,
      failures: [{ id, error: 'a read error of old' }],
    };
    await b.target.put(
      verifyRecordKey(DATABASE),
      Buffer.from(
        JSON.stringify({
          formatVersion: 1,
          kind: 'verify-record',
          database: DATABASE,
          target: 'b',
          updatedAt: at,
          snapshots: {
            [id]: { checkedAt: at, ok: false, error: 'a read error of old', failingSince: at },
            [snaps[1]!.manifest.id]: { checkedAt: at, ok: true, bytes: 1 },
          },
          lastRun: run,
          lastFailedRun: run,
        }),
      ),
    );

    expect(copyState(await readVerifyRecord(b.target, DATABASE), id).state).toBe('failed');
    const plan = await runReplicate({ targets: [a.target, b.target], database: DATABASE }, { dryRun: true });
    expect(plan.targets.find((t) => t.target === 'b')!.planned).toEqual([
      expect.objectContaining({ id, repairs: expect.stringContaining('a read error of old') }),
    ]);
    const doc = await runMonitor(
      { targets: [b.target], database: DATABASE, thresholds: loadMonitorSettings({}).thresholds },
      { write: false, throwOnCritical: false },
    );
    expect(doc.targets[0]!.verify.failing).toEqual([expect.objectContaining({ id })]);
    expect(doc.targets[0]!.verify.state).toBe('critical');
  });
});
