/**
 * Prune against real targets (folders, and Azurite where the wire matters), one safety rail at a time.
 * Snapshots are synthetic artifacts with consistent manifests; times are relative to now.
 */
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { manifestKey } from '../../src/catalog/layout.js';
import { PruneFailedError, runPrune } from '../../src/jobs/prune/index.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import type { Target } from '../../src/targets/target.js';
import { listPage, startFaultProxy } from '../support/fault-proxy.js';
import {
  DATABASE,
  DAY,
  HOUR,
  history,
  idsOn,
  invalidSnapshots,
  makeSnapshot,
  storeSnapshot,
  type TestSnapshot,
} from '../support/stored-snapshots.js';
import { blobTarget, s3Target, testWorld } from '../support/world.js';

const world = testWorld();

async function folder(name = 'local'): Promise<{ target: Target; dir: string }> {
  const f = await world.folder(name);
  return f;
}

/** Settings as an operator writes them; rails default to permissive so each test turns on the one it checks. */
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

async function stored(target: Target, snaps: TestSnapshot[]): Promise<string[]> {
  for (const s of snaps) await storeSnapshot(target, s);
  return snaps.map((s) => s.manifest.id);
}

const ago = (ms: number) => new Date(Date.now() - ms);

describe('prune', () => {
  it('removes what the policy removes, manifest and data, and says why each kept snapshot stays', async () => {
    const { target } = await folder();
    const ids = await stored(target, history(6, ago(HOUR), DAY));
    const result = await runPrune({
      targets: [target],
      database: DATABASE,
      retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'daily=3' }),
    });
    const t = result.targets[0]!;
    expect(t.removed).toEqual(ids.slice(0, 3).reverse());
    expect(t.kept).toEqual(
      ids
        .slice(3)
        .reverse()
        .map((id) => ({ id, reasons: ['daily snapshot'] })),
    );
    expect(t.policy).toBe('TCAB_BACKUP_RETENTION_LOCAL');
    expect(t.rails).toEqual([]);
    expect(await idsOn(target)).toEqual(ids.slice(3));
    // The data went too: nothing is left behind as garbage.
    const left: string[] = [];
    for await (const o of target.list('snapshots/')) left.push(o.key);
    expect(left).toHaveLength(6);
    expect(await invalidSnapshots([target])).toEqual([]);
  });

  it('lists what it would remove with --dry-run and removes nothing', async () => {
    const { target } = await folder();
    const ids = await stored(target, history(4, ago(HOUR), DAY));
    const result = await runPrune(
      { targets: [target], database: DATABASE, retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'last=1' }) },
      { dryRun: true },
    );
    expect(result.dryRun).toBe(true);
    expect(result.targets[0]!.removed).toEqual(ids.slice(0, 3).reverse());
    expect(await idsOn(target)).toEqual(ids);
  });

  it('keeps pinned snapshots whatever the policy says', async () => {
    const { target } = await folder();
    const pinned = makeSnapshot({ time: ago(40 * DAY), tags: ['pinned'] });
    const ids = await stored(target, [pinned, ...history(3, ago(HOUR), DAY)]);
    const t = (
      await runPrune({ targets: [target], database: DATABASE, retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'last=1' }) })
    ).targets[0]!;
    expect(t.rails).toEqual([expect.objectContaining({ rail: 'pinned', ids: [pinned.manifest.id] })]);
    expect(await idsOn(target)).toEqual([pinned.manifest.id, ids[3]]);
  });

  it('never removes the newest verified snapshot, even when newer ones are damaged', async () => {
    const { target } = await folder();
    const snaps = history(3, ago(HOUR), DAY);
    const ids = await stored(target, snaps);
    await target.delete(snaps[2]!.manifest.key); // the newest has lost its data: not verified
    const t = (
      await runPrune({ targets: [target], database: DATABASE, retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'last=1' }) })
    ).targets[0]!;
    expect(t.rails).toEqual([expect.objectContaining({ rail: 'newest-verified', ids: [ids[1]] })]);
    expect(t.removed).toEqual([ids[0]]);
    expect(await idsOn(target)).toEqual(ids.slice(1));
  });

  it('does not count a copy whose last verify failed as the newest verified snapshot', async () => {
    const { target, dir } = await folder();
    const snaps = history(3, ago(HOUR), DAY);
    const ids = await stored(target, snaps);
    const damaged = join(dir, ...snaps[2]!.manifest.key.split('/'));
    const bytes = await readFile(damaged);
    bytes[0]! ^= 0xff;
    await writeFile(damaged, bytes);
    await expect(
      runVerifyRotation({ targets: [target], database: DATABASE }, { withinMs: 7 * DAY, intervalMs: DAY, all: true }),
    ).rejects.toThrow(ids[2]!);
    const t = (
      await runPrune({ targets: [target], database: DATABASE, retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'last=1' }) })
    ).targets[0]!;
    expect(t.rails).toEqual([expect.objectContaining({ rail: 'newest-verified', ids: [ids[1]] })]);
    expect(await idsOn(target)).toEqual(ids.slice(1));
  });

  it('keeps the minimum count and nothing younger than the minimum age', async () => {
    const { target } = await folder();
    const young = history(2, ago(10 * 60_000), 15 * 60_000);
    const old = history(4, ago(2 * DAY), DAY);
    const ids = await stored(target, [...old, ...young]);
    const t = (
      await runPrune({
        targets: [target],
        database: DATABASE,
        retention: retention(['local'], {
          TCAB_BACKUP_RETENTION_LOCAL: 'last=1',
          TCAB_BACKUP_RETENTION_MIN_KEEP: '3',
          TCAB_BACKUP_RETENTION_MIN_AGE: '1h',
        }),
      })
    ).targets[0]!;
    expect(t.rails.map((r) => [r.rail, r.ids])).toEqual([['min-keep', [ids[4], ids[3]]]]);
    expect(t.kept.find((k) => k.id === ids[4])!.reasons).toEqual(['one of the 3 newest (min keep)']);
    expect(await idsOn(target)).toEqual(ids.slice(3));

    // With fewer to keep by count, the age rail holds the young ones.
    const again = (
      await runPrune({
        targets: [target],
        database: DATABASE,
        retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'last=1', TCAB_BACKUP_RETENTION_MIN_AGE: '1h' }),
      })
    ).targets[0]!;
    expect(again.rails.map((r) => [r.rail, r.ids])).toEqual([['min-age', [ids[4]]]]);
    expect(await idsOn(target)).toEqual(ids.slice(4));
  });

  it('keeps a future-dated snapshot and measures "within" from the newest snapshot that is not in the future', async () => {
    const { target } = await folder();
    const future = makeSnapshot({ time: new Date(Date.now() + 2 * DAY) });
    const recent = [makeSnapshot({ time: ago(5 * HOUR) }), makeSnapshot({ time: ago(HOUR) })];
    const stale = makeSnapshot({ time: ago(3 * DAY) });
    await stored(target, [stale, ...recent, future]);
    const t = (
      await runPrune({
        targets: [target],
        database: DATABASE,
        retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'within=1d' }),
      })
    ).targets[0]!;
    expect(t.removed).toEqual([stale.manifest.id]);
    expect(await idsOn(target)).toEqual([recent[0]!.manifest.id, recent[1]!.manifest.id, future.manifest.id]);
  });

  it('refuses a policy that would delete (almost) everything, and deletes as asked with --force', async () => {
    const { target } = await folder();
    const ids = await stored(target, history(5, ago(HOUR), DAY));
    const deps = {
      targets: [target],
      database: DATABASE,
      retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'tags=release', TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '0.5' }),
    };

    const err = await runPrune(deps).catch((e: Error) => e);
    expect(err).toBeInstanceOf(PruneFailedError);
    expect((err as PruneFailedError).code).toBe('PRUNE_REFUSED');
    expect((err as Error).message).toContain(
      'would delete 4 of 5 snapshots on target "local" (80%), more than TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE allows (50%)',
    );
    expect((err as Error).message).toContain('--force');
    expect((err as PruneFailedError).result.targets[0]!.refused!.rail).toBe('max-delete-share');
    expect(await idsOn(target)).toEqual(ids);

    const forced = await runPrune(deps, { force: true });
    expect(forced.targets[0]!.rails.map((r) => r.rail)).toEqual(['newest-verified', 'max-delete-share']);
    expect(forced.targets[0]!.removed).toHaveLength(4);
    expect(await idsOn(target)).toEqual([ids[4]]);
  });

  it('removes data without a manifest once it is a day old, and stale partial uploads', async () => {
    const { target, dir } = await folder();
    const ids = await stored(target, history(2, ago(HOUR), HOUR));
    const old = makeSnapshot({ time: ago(3 * DAY) });
    const young = makeSnapshot({ time: ago(2 * HOUR) });
    await target.put(old.manifest.key, old.data);
    await target.put(young.manifest.key, young.data);
    const twoDaysAgo = ago(2 * DAY);
    await utimes(join(dir, ...old.manifest.key.split('/')), twoDaysAgo, twoDaysAgo);
    const partial = join(dir, 'snapshots', DATABASE, '.tcab-partial.0a0b0c.x.sqlite');
    await writeFile(partial, 'an upload that never finished');
    await utimes(partial, twoDaysAgo, twoDaysAgo);

    const t = (
      await runPrune({ targets: [target], database: DATABASE, retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'last=5' }) })
    ).targets[0]!;
    expect(t.garbage).toEqual({ removed: [old.manifest.key], held: [], staleUploads: 1 });
    await expect(target.head(old.manifest.key)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect((await target.head(young.manifest.key)).size).toBe(young.data.length);
    expect(await idsOn(target)).toEqual(ids);
  });

  it('keeps a snapshot whose manifest cannot be read, removes the rest as planned, and fails naming it', async () => {
    const { target, dir } = await folder();
    const snaps = history(4, ago(HOUR), DAY);
    const ids = await stored(target, snaps);
    const broken = join(dir, ...manifestKey(DATABASE, ids[0]!).split('/'));
    await mkdir(dirname(broken), { recursive: true });
    await writeFile(broken, '{"formatVersion": 1, "id": "truncated');
    const err = await runPrune({
      targets: [target],
      database: DATABASE,
      retention: retention(['local'], { TCAB_BACKUP_RETENTION_LOCAL: 'last=1' }),
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(PruneFailedError);
    expect((err as Error).message).toContain(`snapshot ${ids[0]}`);
    expect((err as Error).message).toContain('not valid JSON');
    const t = (err as PruneFailedError).result.targets[0]!;
    expect(t.removed).toEqual([ids[2], ids[1]]);
    expect(t.kept.find((k) => k.id === ids[0])!.reasons).toEqual(['manifest unreadable: kept until repaired']);
    expect(await idsOn(target)).toEqual([ids[0], ids[3]]);
  });

  it('reports snapshots under an immutability lock as held, not as failures (Azure answers 409 BlobImmutableDueToPolicy)', async () => {
    const proxy = await startFaultProxy(world.clouds.azurite.endpoint);
    world.cleanup(proxy.stop);
    const target = blobTarget(world.clouds, 'blob', { proxy });
    const snaps = history(4, ago(HOUR), DAY);
    const ids = await stored(target, snaps);
    const immutable = { status: 409, code: 'BlobImmutableDueToPolicy' };
    // The oldest is locked whole; the second has a hold on its data only.
    proxy.inject({ match: (m, u) => m === 'DELETE' && u.pathname.endsWith(`${ids[0]}.json`), fault: immutable, times: Infinity });
    proxy.inject({ match: (m, u) => m === 'DELETE' && u.pathname.endsWith(`${ids[1]}.sqlite`), fault: immutable, times: Infinity });

    const result = await runPrune({
      targets: [target],
      database: DATABASE,
      retention: retention(['blob'], { TCAB_BACKUP_RETENTION_BLOB: 'last=2' }),
    });
    const t = result.targets[0]!;
    expect(t.ok).toBe(true);
    expect(t.removed).toEqual([]);
    expect(t.held).toEqual([
      { id: ids[1], detail: expect.stringMatching(/manifest was removed, but .*\.sqlite is under an immutability lock/) },
      { id: ids[0], detail: expect.stringMatching(/nothing was removed/) },
    ]);
    expect(await idsOn(target)).toEqual([ids[0], ids[2], ids[3]]);
    expect(await invalidSnapshots([target])).toEqual([]);
  });

  it('deletes nothing on a target whose listing fails on page 3, prunes the healthy one, and says why', async () => {
    const proxy = await startFaultProxy(world.clouds.azurite.endpoint);
    world.cleanup(proxy.stop);
    const flaky = blobTarget(world.clouds, 'blob', { proxy, pageSize: 2 });
    const healthy = (await folder()).target;
    const snaps = history(6, ago(HOUR), DAY);
    const onFlaky = await stored(flaky, snaps);
    const onHealthy = await stored(healthy, snaps);
    proxy.inject({ match: listPage(3), fault: { status: 500, code: 'InternalError' }, times: Infinity });

    const deps = {
      targets: [flaky, healthy],
      database: DATABASE,
      retention: retention(['blob', 'local'], { TCAB_BACKUP_RETENTION_BLOB: 'last=1', TCAB_BACKUP_RETENTION_LOCAL: 'last=1' }),
    };
    const err = await runPrune(deps).catch((e: Error) => e);
    expect(err).toBeInstanceOf(PruneFailedError);
    expect((err as Error).message).toMatch(/target "blob": listing failed: .*HTTP 500/);
    expect((err as Error).message).toContain('the snapshot listing is incomplete');
    expect(proxy.seen.filter((s) => s.fault === '500').length).toBeGreaterThan(1);
    expect((err as PruneFailedError).result.targets[0]!.refused!.rail).toBe('listing-complete');
    expect((err as PruneFailedError).result.targets[0]!.removed).toEqual([]);
    proxy.clear();
    expect(await idsOn(flaky)).toEqual(onFlaky);
    expect(await idsOn(healthy)).toEqual([onHealthy[5]]);
  });

  it('prunes as if nothing happened when a listing page fails once (the retry wrapper resumes it)', async () => {
    const proxy = await startFaultProxy(world.clouds.azurite.endpoint);
    world.cleanup(proxy.stop);
    const target = blobTarget(world.clouds, 'blob', { proxy, pageSize: 2 });
    const ids = await stored(target, history(6, ago(HOUR), DAY));
    proxy.inject({ match: listPage(3), fault: { status: 503, code: 'ServerBusy' }, times: 1 });
    const t = (
      await runPrune({ targets: [target], database: DATABASE, retention: retention(['blob'], { TCAB_BACKUP_RETENTION_BLOB: 'last=2' }) })
    ).targets[0]!;
    expect(proxy.seen.some((s) => s.fault === '503')).toBe(true);
    expect(t.removed).toEqual(ids.slice(0, 4).reverse());
    expect(await idsOn(target)).toEqual(ids.slice(4));
    expect(await invalidSnapshots([target])).toEqual([]);
  });

  it('prunes through throttling, server errors and connection resets on s3rver, or not at all', async () => {
    const proxy = await startFaultProxy(world.clouds.s3.endpoint);
    world.cleanup(proxy.stop);
    const target = s3Target(world.clouds, 's3', { proxy, pageSize: 3 });
    const ids = await stored(target, history(8, ago(HOUR), DAY));
    proxy.inject({ match: (m) => m === 'DELETE', fault: { status: 503, code: 'SlowDown' }, times: 3 });
    proxy.inject({ match: (m) => m === 'DELETE', fault: 'reset', times: 2 });
    proxy.inject({ match: (m) => m === 'GET', fault: { status: 429, code: 'SlowDown', retryAfter: '0' }, times: 2 });

    const t = (
      await runPrune({ targets: [target], database: DATABASE, retention: retention(['s3'], { TCAB_BACKUP_RETENTION_S3: 'last=3' }) })
    ).targets[0]!;

    expect(
      proxy.seen
        .filter((s) => s.fault)
        .map((s) => s.fault)
        .sort(),
    ).toEqual(['429', '429', '503', '503', '503', 'reset', 'reset']);
    expect(t.removed).toEqual(ids.slice(0, 5).reverse());
    expect(await idsOn(target)).toEqual(ids.slice(5));
    expect(await invalidSnapshots([target])).toEqual([]);

    // A delete that keeps failing: the run fails naming it, and what it could not finish is still consistent.
    await stored(target, history(2, ago(30 * DAY), DAY));
    proxy.clear();
    proxy.inject({ match: (m) => m === 'DELETE', fault: { status: 500, code: 'InternalError' }, times: Infinity });
    const err = await runPrune({
      targets: [target],
      database: DATABASE,
      retention: retention(['s3'], { TCAB_BACKUP_RETENTION_S3: 'last=3' }),
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(PruneFailedError);
    expect((err as Error).message).toMatch(/target "s3": removing snapshot .* failed: .*HTTP 500/);
    proxy.clear();
    expect(await invalidSnapshots([target])).toEqual([]);
    expect(await idsOn(target)).toEqual(expect.arrayContaining(ids.slice(5)));
  });
});
