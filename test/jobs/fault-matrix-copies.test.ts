/**
 * The fault matrix of the jobs that look after stored copies (test/support/fault-matrix.ts): replicate,
 * prune and verify, on folder targets one of which fails one operation at one point. Their snapshots are
 * synthetic (random bytes with a consistent manifest); the damaged copies are really damaged and found by
 * real verify runs.
 */
import { readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { artifactKey } from '../../src/catalog/layout.js';
import { runPrune } from '../../src/jobs/prune/index.js';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { copyState, readVerifyRecord } from '../../src/catalog/verify-record.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import type { Target } from '../../src/targets/target.js';
import {
  artifactBytes,
  casesOf,
  faultOf,
  PRUNE_TABLE,
  REPLICATE_TABLE,
  settleWithin,
  VERIFY_TABLE,
  type MatrixCase,
} from '../support/fault-matrix.js';
import { expectOutcome, goodIds, matrixFolder, visibleProblems, type MatrixFolder } from '../support/matrix-world.js';
import { DATABASE, DAY, HOUR, history, makeSnapshot, snapshotIdAt, storeSnapshot, type TestSnapshot } from '../support/stored-snapshots.js';

const ago = (ms: number) => new Date(Date.now() - ms);
/** Kinds no retry absorbs. */
const HARD = new Set(['error', 'transient', 'destroy']);
const VERIFY_WINDOW = { withinMs: 7 * DAY, intervalMs: DAY };

/** Stores the snapshot with one byte of its artifact flipped (same size: only a re-read notices). */
async function storeDamaged(world: MatrixFolder, name: string, s: TestSnapshot): Promise<void> {
  await storeSnapshot(world.plain(name), s);
  const file = join(world.dir(name), ...s.manifest.key.split('/'));
  const bytes = await readFile(file);
  bytes[Math.floor(bytes.length / 3)]! ^= 0xff;
  await writeFile(file, bytes);
}

/** A verify run over `target` as an operator's timer would make it; it fails when a copy is damaged. */
async function verifyAll(target: Target): Promise<void> {
  await runVerifyRotation({ targets: [target], database: DATABASE }, { ...VERIFY_WINDOW, all: true }).catch(() => undefined);
}

function cases(table: Parameters<typeof casesOf>[0]): Array<readonly [string, MatrixCase]> {
  return casesOf(table).map((c) => [c.title, c] as const);
}

describe.concurrent('fault matrix: replicate', () => {
  it.each(cases(REPLICATE_TABLE))('%s', async (_title, c) => {
    const world = await matrixFolder('replicate');
    try {
      const bytes = artifactBytes(c.size);
      const [older, newer] = [makeSnapshot({ time: ago(2 * HOUR), bytes }), makeSnapshot({ time: ago(HOUR), bytes })];
      const ids = [older.manifest.id, newer.manifest.id].sort();
      for (const s of [older, newer]) await storeSnapshot(world.plain('src'), s);
      // The destination lacks the newer one and holds the older one damaged, as its last verify found.
      await storeDamaged(world, 'dst', older);
      await verifyAll(world.plain('dst'));
      expect(copyState(await readVerifyRecord(world.plain('dst'), DATABASE), older.manifest.id).state).toBe('failed');

      const src = world.target('src');
      const dst = world.target('dst');
      const faults = c.row.on === 'src' ? src.faults : dst.faults;
      const controller = new AbortController();
      const fault = faultOf(c, bytes, () => controller.abort());
      faults.arm(fault);
      const settled = await settleWithin(`replicate (${c.title})`, controller, [src.faults, dst.faults], (signal) =>
        runReplicate(
          { targets: [src.target, dst.target], database: DATABASE },
          { signal, concurrency: 1, retry: { retries: 2, baseDelayMs: 1, maxDelayMs: 4 } },
        ),
      );
      expectOutcome(c, settled, faults, fault);

      const srcPlain = world.plain('src');
      const dstPlain = world.plain('dst');
      // The source is only read: both its copies are still whole.
      expect(await goodIds(srcPlain, DATABASE)).toEqual(ids);
      const dstGood = await goodIds(dstPlain, DATABASE);
      const stillDamaged = new Set(dstGood.includes(older.manifest.id) ? [] : [older.manifest.id]);
      expect(await visibleProblems(dstPlain, DATABASE, stillDamaged)).toEqual([]);
      const dstRecord = await readVerifyRecord(dstPlain, DATABASE);
      // A copy still damaged is still recorded as failed, never forgotten (a repaired one may still be, until
      // the record is written: the next run then copies it once more).
      if (stillDamaged.size)
        expect(copyState(dstRecord, older.manifest.id).state, 'the damaged copy is no longer recorded as failed').toBe('failed');
      if (settled.status === 'resolved') {
        expect(dstGood).toContain(newer.manifest.id);
        // Unless the row tolerates a run that skips repairs, the damaged copy was repaired and recorded as good
        // again, or prune would keep holding the source's copy forever.
        if (!(c.row.tolerated && HARD.has(c.kind))) expect(dstGood).toEqual(ids);
      }
    } finally {
      await world.remove();
    }
  });
});

/** Rails that keep nothing on their own, so only the policies and the cross-target rail decide. */
const PRUNE_RETENTION = loadRetentionConfig(
  {
    TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
    TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
    TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
    TCAB_BACKUP_RETENTION_KEEPER: 'last=1',
    TCAB_BACKUP_RETENTION_HOLDER: 'last=3',
  },
  ['keeper', 'holder'],
);

describe.concurrent('fault matrix: prune', () => {
  it.each(cases(PRUNE_TABLE))('%s', async (_title, c) => {
    const world = await matrixFolder('prune');
    try {
      const snaps = history(3, ago(HOUR), DAY, { bytes: artifactBytes(c.size) });
      const ids = snaps.map((s) => s.manifest.id).sort();
      const [oldest, middle] = [snaps[0]!.manifest.id, snaps[1]!.manifest.id];
      for (const s of snaps) await storeSnapshot(world.plain('keeper'), s);
      // "holder" keeps all three, but its copy of the middle one failed its last verify: keeper's is the last good one.
      for (const s of snaps) await (s === snaps[1] ? storeDamaged(world, 'holder', s) : storeSnapshot(world.plain('holder'), s));
      await verifyAll(world.plain('holder'));
      await verifyAll(world.plain('keeper'));
      // An upload that died two days ago left data without a manifest on "keeper": garbage.
      const orphanId = snapshotIdAt(ago(2 * DAY));
      const orphanKey = artifactKey(DATABASE, orphanId, 'none');
      await world.plain('keeper').put(orphanKey, Buffer.from('partial upload'));
      await utimes(join(world.dir('keeper'), ...orphanKey.split('/')), ago(2 * DAY), ago(2 * DAY));

      const keeper = world.target('keeper');
      const holder = world.target('holder');
      const faults = c.row.on === 'keeper' ? keeper.faults : holder.faults;
      const controller = new AbortController();
      const fault = faultOf(c, 0, () => controller.abort());
      faults.arm(fault);
      const settled = await settleWithin(`prune (${c.title})`, controller, [keeper.faults, holder.faults], (signal) =>
        runPrune({ targets: [keeper.target, holder.target], database: DATABASE, retention: PRUNE_RETENTION }, { signal }),
      );
      expectOutcome(c, settled, faults, fault);

      const onKeeper = await goodIds(world.plain('keeper'), DATABASE);
      const onHolder = await goodIds(world.plain('holder'), DATABASE);
      // "holder" keeps all three: each must still have a good copy somewhere.
      for (const id of ids) {
        expect(
          onKeeper.includes(id) || onHolder.includes(id),
          `snapshot ${id}${id === middle ? ' (whose only good copy was on "keeper")' : ''} has no good copy left`,
        ).toBe(true);
      }
      expect(await visibleProblems(world.plain('keeper'), DATABASE)).toEqual([]);
      expect(await visibleProblems(world.plain('holder'), DATABASE, new Set([middle]))).toEqual([]);
      if (settled.status === 'resolved') {
        expect(onKeeper).toEqual(ids.filter((id) => id !== oldest));
        expect(onHolder).toEqual(ids.filter((id) => id !== middle));
        await expect(world.plain('keeper').head(orphanKey)).rejects.toThrow(/Not found/);
      }
    } finally {
      await world.remove();
    }
  });
});

describe.concurrent('fault matrix: verify', () => {
  it.each(cases(VERIFY_TABLE))('%s', async (_title, c) => {
    const world = await matrixFolder('verify');
    try {
      const snaps = history(2, ago(HOUR), DAY, { bytes: artifactBytes(c.size) });
      const ids = snaps.map((s) => s.manifest.id).sort();
      for (const name of ['good', 'faulty']) {
        for (const s of snaps) await storeSnapshot(world.plain(name), s);
        await runVerifyRotation({ targets: [world.plain(name)], database: DATABASE }, { ...VERIFY_WINDOW, all: true });
      }
      const before = await readVerifyRecord(world.plain('faulty'), DATABASE);

      const good = world.target('good');
      const faulty = world.target('faulty');
      const controller = new AbortController();
      const fault = faultOf(c, artifactBytes(c.size), () => controller.abort());
      faulty.faults.arm(fault);
      const settled = await settleWithin(`verify (${c.title})`, controller, [faulty.faults], (signal) =>
        runVerifyRotation(
          { targets: [good.target, faulty.target], database: DATABASE },
          { ...VERIFY_WINDOW, all: true, signal, concurrency: 1 },
        ),
      );
      expectOutcome(c, settled, faulty.faults, fault);

      // Verify only reads the copies: they are all still whole.
      for (const name of ['good', 'faulty']) expect(await goodIds(world.plain(name), DATABASE)).toEqual(ids);
      // A copy that could not be read is not a copy that does not match: an intact copy is never recorded as damaged.
      const after = await readVerifyRecord(world.plain('faulty'), DATABASE);
      for (const id of ids) {
        const state = copyState(after, id);
        expect(state.state, `intact snapshot ${id} on "faulty" is recorded as failed verify (${state.error})`).not.toBe('failed');
      }
      if (settled.status === 'resolved') {
        for (const id of ids) expect(copyState(after, id).checkedAt! > before!.snapshots[id]!.checkedAt).toBe(true);
      }
    } finally {
      await world.remove();
    }
  });
});
