/**
 * The last-good-copy rail: prune on one target never deletes a snapshot whose only good copy it holds while
 * another target wants that snapshot and holds it damaged, incomplete or not at all. Real folder targets
 * (and Azurite behind the fault proxy for a target that cannot be listed); verify records come from real
 * verify runs over really corrupted bytes.
 */
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PruneFailedError, runPrune, type PruneResult } from '../../src/jobs/prune/index.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import type { Target } from '../../src/targets/target.js';
import { listPage, startFaultProxy } from '../support/fault-proxy.js';
import { DATABASE, DAY, HOUR, history, idsOn, invalidSnapshots, storeSnapshot, type TestSnapshot } from '../support/stored-snapshots.js';
import { blobTarget, testWorld } from '../support/world.js';

const world = testWorld();

async function folder(name: string): Promise<{ target: Target; dir: string }> {
  const f = await world.folder(name);
  return f;
}

/** Rails that keep nothing on their own, so only the policies and the cross-target rail decide. */
function retention(names: string[], settings: Record<string, string>) {
  return loadRetentionConfig(
    {
      TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
      TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
      TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
      ...settings,
    },
    names,
  );
}

const ago = (ms: number) => new Date(Date.now() - ms);

async function store(target: Target, snaps: TestSnapshot[]): Promise<void> {
  for (const s of snaps) await storeSnapshot(target, s);
}

/** Flips a byte of the stored artifact (same size, so only a re-read notices) and lets verify find it. */
async function corruptAndVerify(target: Target, dir: string, snaps: TestSnapshot[]): Promise<void> {
  for (const s of snaps) {
    const file = join(dir, ...s.manifest.key.split('/'));
    const bytes = await readFile(file);
    bytes[100]! ^= 0xff;
    await writeFile(file, bytes);
  }
  await expect(
    runVerifyRotation({ targets: [target], database: DATABASE }, { withinMs: 7 * DAY, intervalMs: DAY, all: true }),
  ).rejects.toThrow(snaps[0]!.manifest.id);
}

const outcome = (result: PruneResult, name: string) => result.targets.find((t) => t.target === name)!;
const reasonsOf = (result: PruneResult, name: string, id: string) => outcome(result, name).kept.find((k) => k.id === id)?.reasons;

describe('prune: last good copy across targets', () => {
  it('keeps the only good copy on "a" when "b" keeps the snapshot but its copy failed verify or is incomplete', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const snaps = history(4, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, snaps);
    await corruptAndVerify(b.target, b.dir, [snaps[1]!]);
    await truncate(join(b.dir, ...snaps[2]!.manifest.key.split('/')), 10);

    const result = await runPrune({
      targets: [a.target, b.target],
      database: DATABASE,
      retention: retention(['a', 'b'], { TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=4' }),
    });
    const onA = outcome(result, 'a');
    expect(onA.ok).toBe(true);
    expect(onA.removed).toEqual([ids[0]]);
    expect(onA.rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[2], ids[1]] })]);
    expect(onA.rails[0]!.message).toContain('tcab-backup replicate');
    expect(reasonsOf(result, 'a', ids[1]!)).toEqual([
      expect.stringMatching(/^last good copy: target "b" keeps it but its copy failed verify \(.*sha256/),
    ]);
    expect(reasonsOf(result, 'a', ids[2]!)).toEqual([
      expect.stringMatching(/^last good copy: target "b" keeps it but its copy is damaged \(artifact .* is 10 bytes/),
    ]);
    expect(outcome(result, 'b').rails).toEqual([]);
    expect(await idsOn(a.target)).toEqual(ids.slice(1));
    expect(await idsOn(b.target)).toEqual(ids);
    expect(await invalidSnapshots([a.target])).toEqual([]);
  });

  it('keeps the only copy on "a" when "b" wants the snapshot but has none', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const snaps = history(3, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, [snaps[0]!, snaps[2]!]);

    const result = await runPrune({
      targets: [a.target, b.target],
      database: DATABASE,
      retention: retention(['a', 'b'], { TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=3' }),
    });
    expect(outcome(result, 'a').removed).toEqual([ids[0]]);
    expect(outcome(result, 'a').rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[1]] })]);
    expect(reasonsOf(result, 'a', ids[1]!)).toEqual(['last good copy: target "b" keeps it but has no copy']);
    expect(await idsOn(a.target)).toEqual(ids.slice(1));
    expect(await idsOn(b.target)).toEqual([ids[0], ids[2]]);
  });

  it('deletes normally what "b" holds damaged but its policy does not keep either', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const snaps = history(3, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, snaps);
    // Both damaged on "b": its policy drops the oldest, keeps the middle one.
    await corruptAndVerify(b.target, b.dir, [snaps[0]!, snaps[1]!]);

    const result = await runPrune({
      targets: [a.target, b.target],
      database: DATABASE,
      retention: retention(['a', 'b'], { TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=2' }),
    });
    expect(outcome(result, 'a').removed).toEqual([ids[0]]);
    expect(outcome(result, 'a').rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[1]] })]);
    expect(outcome(result, 'b').removed).toEqual([ids[0]]);
    expect(await idsOn(a.target)).toEqual(ids.slice(1));
    expect(await idsOn(b.target)).toEqual(ids.slice(1));
  });

  it('deletes normally what "b" keeps with a good copy, keeping only what "b" lacks', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const snaps = history(4, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, [snaps[0]!, snaps[2]!, snaps[3]!]);

    const result = await runPrune({
      targets: [a.target, b.target],
      database: DATABASE,
      retention: retention(['a', 'b'], { TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=4' }),
    });
    // "b" keeps 0 and 2 with good copies: "a" may drop its own; 1 exists on "a" alone.
    expect(outcome(result, 'a').removed).toEqual([ids[2], ids[0]]);
    expect(outcome(result, 'a').rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[1]] })]);
    expect(await idsOn(a.target)).toEqual([ids[1], ids[3]]);
    expect(await idsOn(b.target)).toEqual([ids[0], ids[2], ids[3]]);
  });

  it('deletes on "a" a snapshot that "b" lacks when "c" keeps a good copy to restore it from', async () => {
    const [a, b, c] = [await folder('a'), await folder('b'), await folder('c')];
    const snaps = history(4, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, [snaps[0]!, snaps[3]!]);
    await store(c.target, [snaps[0]!, snaps[1]!, snaps[3]!]);

    const result = await runPrune({
      targets: [a.target, b.target, c.target],
      database: DATABASE,
      retention: retention(['a', 'b', 'c'], {
        TCAB_BACKUP_RETENTION_A: 'last=1',
        TCAB_BACKUP_RETENTION_B: 'last=4',
        TCAB_BACKUP_RETENTION_C: 'last=4',
      }),
    });
    expect(outcome(result, 'a').removed).toEqual([ids[1], ids[0]]);
    expect(outcome(result, 'a').rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[2]] })]);
    expect(reasonsOf(result, 'a', ids[2]!)).toEqual([
      'last good copy: target "b" keeps it but has no copy; target "c" keeps it but has no copy',
    ]);
    expect(await idsOn(a.target)).toEqual(ids.slice(2));
  });

  it('shows the rail in --dry-run and removes nothing', async () => {
    const a = await folder('a');
    const b = await folder('b');
    const snaps = history(3, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(b.target, snaps);
    await corruptAndVerify(b.target, b.dir, [snaps[1]!]);

    const result = await runPrune(
      {
        targets: [a.target, b.target],
        database: DATABASE,
        retention: retention(['a', 'b'], { TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=3' }),
      },
      { dryRun: true },
    );
    expect(result.dryRun).toBe(true);
    expect(outcome(result, 'a').removed).toEqual([ids[0]]);
    expect(outcome(result, 'a').rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[1]] })]);
    expect(reasonsOf(result, 'a', ids[1]!)).toEqual([
      expect.stringMatching(/^last good copy: target "b" keeps it but its copy failed verify/),
    ]);
    expect(await idsOn(a.target)).toEqual(ids);
  });

  it('while "b" cannot be listed, keeps on "a" what the policy of "b" would keep', async () => {
    const proxy = await startFaultProxy(world.clouds.azurite.endpoint);
    world.cleanup(proxy.stop);
    const unreachable = blobTarget(world.clouds, 'b', { proxy, pageSize: 2 });
    const a = await folder('a');
    const snaps = history(5, ago(HOUR), DAY);
    const ids = snaps.map((s) => s.manifest.id);
    await store(a.target, snaps);
    await store(unreachable, snaps);
    proxy.inject({ match: listPage(2), fault: { status: 500, code: 'InternalError' }, times: Infinity });

    const err = await runPrune({
      targets: [a.target, unreachable],
      database: DATABASE,
      retention: retention(['a', 'b'], { TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=3' }),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PruneFailedError);
    const result = (err as PruneFailedError).result;
    expect(outcome(result, 'b').refused!.rail).toBe('listing-complete');
    expect(outcome(result, 'a').removed).toEqual([ids[1], ids[0]]);
    expect(outcome(result, 'a').rails).toEqual([expect.objectContaining({ rail: 'last-good-copy', ids: [ids[3], ids[2]] })]);
    expect(reasonsOf(result, 'a', ids[2]!)).toEqual([
      'last good copy: target "b" would keep it but could not be listed, so its copy is unknown',
    ]);
    expect(await idsOn(a.target)).toEqual(ids.slice(2));
    proxy.clear();
    expect(await idsOn(unreachable)).toEqual(ids);
  });
});
