/**
 * Prune when a target's verify record cannot be read: that target's copies are unknown, neither good nor
 * damaged. Nothing is deleted on the strength of them, nothing is deleted on that target, and the run fails
 * naming the target and the record. Real folder targets and Azurite behind the fault proxy; the damage is
 * real bytes flipped in place and found by a real verify run.
 */
import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { verifyRecordKey } from '../../src/catalog/layout.js';
import { PruneFailedError, runPrune, type PruneResult } from '../../src/jobs/prune/index.js';
import { verifyStoredSnapshot } from '../../src/jobs/verify/check.js';
import { copyState, readVerifyRecord } from '../../src/catalog/verify-record.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import type { Target } from '../../src/targets/target.js';
import { startFaultProxy } from '../support/fault-proxy.js';
import { DATABASE, DAY, HOUR, history, idsOn, storeSnapshot, type TestSnapshot } from '../support/stored-snapshots.js';
import { blobTarget, testWorld } from '../support/world.js';

const world = testWorld();
const RECORD = verifyRecordKey(DATABASE);

/** Rails that keep nothing on their own, so only the policies and the cross-target rail decide. */
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

const ago = (ms: number) => new Date(Date.now() - ms);
const outcome = (result: PruneResult, name: string) => result.targets.find((t) => t.target === name)!;
const reasonsOf = (result: PruneResult, name: string, id: string) => outcome(result, name).kept.find((k) => k.id === id)?.reasons;

async function store(target: Target, snaps: TestSnapshot[]): Promise<void> {
  for (const s of snaps) await storeSnapshot(target, s);
}

/** Same size, other bytes (only a re-read notices), then a real verify run records the damage. */
async function damageAndVerify(target: Target, snap: TestSnapshot): Promise<void> {
  const bytes = Buffer.from(snap.data);
  bytes[100]! ^= 0xff;
  await target.put(snap.manifest.key, bytes);
  await expect(
    runVerifyRotation({ targets: [target], database: DATABASE }, { withinMs: 7 * DAY, intervalMs: DAY, all: true }),
  ).rejects.toThrow(snap.manifest.id);
  expect(copyState(await readVerifyRecord(target, DATABASE), snap.manifest.id).state).toBe('failed');
}

interface Unreadable {
  name: string;
  /** Target "b", and a function that makes its verify record unreadable from then on. */
  setup(): Promise<{ target: Target; breakRecord(): Promise<void>; healRecord(): void }>;
  /** What the error says about why the record could not be read, and what to check. */
  because: RegExp;
  check: RegExp;
}

const unreadable: Unreadable[] = [
  {
    name: 'the connection is reset while its body streams (Azurite behind the fault proxy)',
    async setup() {
      const proxy = await startFaultProxy(world.clouds.azurite.endpoint);
      world.cleanup(proxy.stop);
      const target = blobTarget(world.clouds, 'b', { proxy });
      return {
        target,
        breakRecord: async () =>
          proxy.inject({
            match: (m, url) => m === 'GET' && url.pathname.endsWith(`/${RECORD}`),
            fault: { cutAfterBytes: 64 },
            times: Infinity,
          }),
        healRecord: () => proxy.clear(),
      };
    },
    because: /get status\/tcab\.verify\.json failed: the answer broke off after 64 of \d+ bytes/,
    check: /Check: the reachability of target "b"/,
  },
  {
    name: 'it is not valid JSON (a folder target)',
    async setup() {
      const { target, dir } = await world.folder('b');
      return { target, breakRecord: () => appendFile(join(dir, ...RECORD.split('/')), '{ half a record'), healRecord: () => undefined };
    },
    because: /not valid JSON/,
    check: /Check: run "tcab-backup verify --target b"/,
  },
  {
    name: 'it is larger than the size cap (a folder target)',
    async setup() {
      const { target, dir } = await world.folder('b');
      // Trailing blanks: still valid JSON, so only the cap can refuse it.
      return {
        target,
        breakRecord: () => appendFile(join(dir, ...RECORD.split('/')), ' '.repeat(17 * 1024 * 1024)),
        healRecord: () => undefined,
      };
    },
    because: /larger than 16777216 bytes/,
    check: /Check: run "tcab-backup verify --target b"/,
  },
];

describe("prune: a verify record that cannot be read makes that target's copies unknown", () => {
  for (const u of unreadable) {
    it(`keeps the intact copies on "a" that "b" wants and may hold damaged, deletes nothing on "b", and fails naming its record, when ${u.name}`, async () => {
      const a = await world.folder('a');
      const b = await u.setup();
      const snaps = history(4, ago(HOUR), DAY);
      const ids = snaps.map((s) => s.manifest.id);
      await store(a.target, snaps);
      await store(b.target, snaps);
      // "b" holds snapshot 1 damaged, and its verify record says so; then the record cannot be read.
      await damageAndVerify(b.target, snaps[1]!);
      await b.breakRecord();

      // "a" keeps only the newest; "b" keeps the three newest. Counting b's copies as good would let "a"
      // delete 1 (and 2), leaving only b's damaged copy of 1.
      const err = await runPrune({
        targets: [a.target, b.target],
        database: DATABASE,
        retention: retention({ TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=3' }),
      }).catch((e: unknown) => e);

      // What an operator checks first: the intact copy of 1 on "a" is still there, the last good one.
      expect(await idsOn(a.target)).toEqual(ids.slice(1));
      expect(await verifyStoredSnapshot(a.target, DATABASE, ids[1]!)).toMatchObject({ ok: true });
      expect(err).toBeInstanceOf(PruneFailedError);
      const message = (err as Error).message;
      expect(message).toContain(`target "b"`);
      expect(message).toContain(RECORD);
      expect(message).toMatch(u.because);
      expect(message).toMatch(u.check);
      const result = (err as PruneFailedError).result;
      // "a" does the safe part: 0 is kept by no policy; 1 and 2 stay, since b's copies of them are unknown.
      expect(outcome(result, 'a').ok).toBe(true);
      expect(outcome(result, 'a').removed).toEqual([ids[0]]);
      expect(outcome(result, 'a').rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[2], ids[1]] })]);
      expect(reasonsOf(result, 'a', ids[1]!)).toEqual([
        expect.stringMatching(
          /^last good copy: target "b" keeps it but its verify record .* could not be read, so whether its copy is good is unknown/,
        ),
      ]);
      // "b" deletes nothing (its policy would remove 0) and says why.
      expect(outcome(result, 'b').ok).toBe(false);
      expect(outcome(result, 'b').refused).toMatchObject({ rail: 'verify-record', ids: [ids[0]] });
      expect(outcome(result, 'b').removed).toEqual([]);

      b.healRecord();
      expect(await idsOn(b.target)).toEqual(ids);
      expect(await verifyStoredSnapshot(b.target, DATABASE, ids[1]!)).toMatchObject({ ok: false });
    });
  }

  it('keeps the intact copy on "b" whose record cannot be read even where its policy drops it and the copy on "a" is known damaged', async () => {
    const a = await world.folder('a');
    const b = await world.folder('b');
    const snaps = history(3, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, snaps);
    await damageAndVerify(a.target, snaps[0]!);
    await b.target.put(RECORD, Buffer.from('{ "formatVersion": 1, half a record'));

    const err = await runPrune({
      targets: [a.target, b.target],
      database: DATABASE,
      retention: retention({ TCAB_BACKUP_RETENTION_A: 'last=3', TCAB_BACKUP_RETENTION_B: 'last=1' }),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PruneFailedError);
    expect((err as Error).message).toContain(`target "b"`);
    expect((err as Error).message).toContain(RECORD);
    const result = (err as PruneFailedError).result;
    expect(outcome(result, 'b').removed).toEqual([]);
    expect(outcome(result, 'b').refused).toMatchObject({ rail: 'verify-record', ids: [ids[1], ids[0]] });
    expect(await idsOn(b.target)).toEqual(ids);
    expect(await idsOn(a.target)).toEqual(ids);
    expect(await verifyStoredSnapshot(b.target, DATABASE, ids[0]!)).toMatchObject({ ok: true });
  });
  it('names both refusals when max-delete-share refuses the plan and the verify record cannot be read', async () => {
    const b = await world.folder('b');
    const snaps = history(4, ago(HOUR), DAY);
    await store(b.target, snaps);
    await b.target.put(RECORD, Buffer.from('{ "formatVersion": 1, half a record'));
    const err = await runPrune({
      targets: [b.target],
      database: DATABASE,
      retention: loadRetentionConfig(
        {
          TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
          TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
          TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '0.5',
          TCAB_BACKUP_RETENTION_B: 'last=1',
        },
        ['b'],
      ),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PruneFailedError);
    const message = (err as Error).message;
    expect(message).toContain(RECORD);
    expect(message).toMatch(/max-delete-share rail refused this run too: .*3 of 4/);
    expect(await idsOn(b.target)).toEqual(snaps.map((s) => s.manifest.id));
  });
});
