/**
 * Replicate repairs a copy whose last verify failed: real folder targets, bytes corrupted in place (same size,
 * so only a re-read notices), and a real verify run to record the failure, as an operator would meet it.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readManifest } from '../../src/catalog/catalog.js';
import { runPrune } from '../../src/jobs/prune/index.js';
import { ReplicateFailedError, runReplicate } from '../../src/jobs/replicate/index.js';
import { copyState, readVerifyRecord } from '../../src/catalog/verify-record.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import type { Target } from '../../src/targets/target.js';
import { DATABASE, DAY, HOUR, history, idsOn, invalidSnapshots, storeSnapshot, type TestSnapshot } from '../support/stored-snapshots.js';
import { testWorld } from '../support/world.js';

const world = testWorld({ clouds: false });

interface Folder {
  target: Target;
  dir: string;
}

async function folder(name: string): Promise<Folder> {
  return world.folder(name);
}

async function store(target: Target, snaps: TestSnapshot[]): Promise<void> {
  for (const s of snaps) await storeSnapshot(target, s);
}

const artifactPath = (f: Folder, s: TestSnapshot) => join(f.dir, ...s.manifest.key.split('/'));

/** Flips a byte of the stored artifact, then lets a real verify run find and record it. */
async function corruptAndVerify(f: Folder, snap: TestSnapshot): Promise<void> {
  const bytes = await readFile(artifactPath(f, snap));
  bytes[100]! ^= 0xff;
  await writeFile(artifactPath(f, snap), bytes);
  await expect(
    runVerifyRotation({ targets: [f.target], database: DATABASE }, { withinMs: 7 * DAY, intervalMs: DAY, all: true }),
  ).rejects.toThrow(snap.manifest.id);
  expect(copyState(await readVerifyRecord(f.target, DATABASE), snap.manifest.id).state).toBe('failed');
}

/** Everything an operator could look at on a folder target for one snapshot. */
async function stateOf(f: Folder, snap: TestSnapshot) {
  return {
    artifact: await readFile(artifactPath(f, snap)),
    manifest: await readManifest(f.target, DATABASE, snap.manifest.id),
    record: await readVerifyRecord(f.target, DATABASE),
  };
}

const ago = (ms: number) => new Date(Date.now() - ms);

describe('replicate repairs copies whose last verify failed', () => {
  it('copies the artifact again from the good target, rewrites the manifest and marks the copy ok in the verify record', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const snaps = history(2, ago(HOUR), DAY);
    await store(a.target, snaps);
    await store(b.target, snaps);
    const damaged = snaps[0]!;
    await corruptAndVerify(b, damaged);
    const started = new Date().toISOString();

    const result = await runReplicate({ targets: [a.target, b.target], database: DATABASE });

    const onB = result.targets.find((t) => t.target === 'b')!;
    expect(onB.copied).toEqual([
      expect.objectContaining({
        id: damaged.manifest.id,
        from: 'a',
        repaired: expect.stringMatching(/^its last verify failed \(.*sha256/),
      }),
    ]);
    expect(onB.copied[0]!.refusedSources).toBeUndefined();
    expect(result.targets.find((t) => t.target === 'a')!.copied).toEqual([]);
    expect(await readFile(artifactPath(b, damaged))).toEqual(damaged.data);
    expect(await invalidSnapshots([a.target, b.target])).toEqual([]);
    expect((await readManifest(b.target, DATABASE, damaged.manifest.id)).replicatedFrom).toBe('a');

    const record = (await readVerifyRecord(b.target, DATABASE))!;
    const entry = record.snapshots[damaged.manifest.id]!;
    expect(entry).toEqual({ checkedAt: expect.any(String), ok: true, bytes: damaged.data.length });
    expect(entry.checkedAt >= started).toBe(true);
    // No verify run happened: the record's runs still show the one that found the damage.
    expect(record.lastFailedRun?.failures.map((f) => f.id)).toEqual([damaged.manifest.id]);

    // Repaired for good: nothing left to do, and the next verify of every copy passes.
    const again = await runReplicate({ targets: [a.target, b.target], database: DATABASE });
    expect(again.copied).toBe(0);
    expect(again.targets.every((t) => t.present === 2 && t.planned.length === 0)).toBe(true);
    const verified = await runVerifyRotation(
      { targets: [a.target, b.target], database: DATABASE },
      { withinMs: 7 * DAY, intervalMs: DAY, all: true },
    );
    expect(verified.failed).toBe(0);
  });

  it('never repairs from another copy whose last verify failed, only from a good one', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const c = await folder('c');
    const [snap] = history(1, ago(HOUR), DAY);
    for (const f of [a, b, c]) await store(f.target, [snap!]);
    await corruptAndVerify(a, snap!);
    await corruptAndVerify(b, snap!);

    const result = await runReplicate({ targets: [a.target, b.target, c.target], database: DATABASE });

    for (const name of ['a', 'b']) {
      const copied = result.targets.find((t) => t.target === name)!.copied;
      expect(copied).toEqual([
        expect.objectContaining({ id: snap!.manifest.id, from: 'c', repaired: expect.stringMatching(/last verify failed/) }),
      ]);
      // Had the other damaged copy been tried first, it would show as a refused source.
      expect(copied[0]!.refusedSources).toBeUndefined();
    }
    expect(await invalidSnapshots([a.target, b.target, c.target])).toEqual([]);
    for (const f of [a, b]) expect(copyState(await readVerifyRecord(f.target, DATABASE), snap!.manifest.id).state).toBe('ok');
  });

  it('refuses, naming both targets, when the only other copy failed verify too, and changes nothing', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const [snap] = history(1, ago(HOUR), DAY);
    await store(a.target, [snap!]);
    await store(b.target, [snap!]);
    await corruptAndVerify(a, snap!);
    await corruptAndVerify(b, snap!);
    const before = [await stateOf(a, snap!), await stateOf(b, snap!)];

    const err = await runReplicate({ targets: [a.target, b.target], database: DATABASE }).catch((e: unknown) => e);

    expect(err).toBeInstanceOf(ReplicateFailedError);
    const message = (err as Error).message;
    expect(message).toContain(`snapshot ${snap!.manifest.id} to target "b" cannot be repaired`);
    expect(message).toContain(`snapshot ${snap!.manifest.id} to target "a" cannot be repaired`);
    expect(message).toMatch(/target "a" has a copy whose last verify failed too \(.*sha256/);
    expect(message).toMatch(/target "b" has a copy whose last verify failed too \(.*sha256/);
    expect((err as Error).message).toContain('Check:');
    const result = (err as ReplicateFailedError).result;
    expect(result.copied).toBe(0);
    expect(result.targets.every((t) => !t.ok && t.failed.length === 1)).toBe(true);
    expect([await stateOf(a, snap!), await stateOf(b, snap!)]).toEqual(before);
  });

  it('lists the repair with --dry-run, and changes nothing', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const snaps = history(2, ago(HOUR), DAY);
    await store(a.target, snaps);
    await store(b.target, snaps);
    const damaged = snaps[1]!;
    await corruptAndVerify(b, damaged);
    const before = await stateOf(b, damaged);

    const result = await runReplicate({ targets: [a.target, b.target], database: DATABASE }, { dryRun: true });

    const onB = result.targets.find((t) => t.target === 'b')!;
    expect(onB.planned).toEqual([
      { id: damaged.manifest.id, from: 'a', bytes: damaged.data.length, repairs: expect.stringMatching(/^its last verify failed/) },
    ]);
    expect(onB.present).toBe(1);
    expect(result.targets.find((t) => t.target === 'a')!.planned).toEqual([]);
    expect(result.copied).toBe(0);
    expect(await stateOf(b, damaged)).toEqual(before);
  });

  it('lets prune delete what the last-good-copy rail held for the damaged target, once replicate repaired it', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const snaps = history(3, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, snaps);
    await corruptAndVerify(b, snaps[1]!);
    const retention = loadRetentionConfig(
      {
        TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
        TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
        TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
        TCAB_BACKUP_RETENTION_A: 'last=1',
        TCAB_BACKUP_RETENTION_B: 'last=3',
      },
      ['a', 'b'],
    );
    const deps = { targets: [a.target, b.target], database: DATABASE, retention };

    // Before the repair, "a" must hold its good copy of the snapshot "b" keeps damaged.
    const held = await runPrune(deps, { dryRun: true });
    expect(held.targets.find((t) => t.target === 'a')!.rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[1]] })]);

    const repaired = await runReplicate(deps);
    expect(repaired.targets.find((t) => t.target === 'b')!.copied.map((c) => c.id)).toEqual([ids[1]]);

    const pruned = await runPrune(deps);
    const onA = pruned.targets.find((t) => t.target === 'a')!;
    expect(onA.rails.filter((r) => r.rail === 'last-good-copy')).toEqual([]);
    expect(onA.removed.sort()).toEqual([ids[0], ids[1]].sort());
    expect(await idsOn(a.target)).toEqual([ids[2]]);
    expect(await idsOn(b.target)).toEqual(ids);
    expect(await invalidSnapshots([a.target, b.target])).toEqual([]);
  });
});
