/**
 * Replicate through a fault-injecting proxy in front of Azurite and s3rver: throttling and 5xx storms,
 * connections reset, answers cut off mid-body, a destination that keeps failing. Each run either succeeds
 * through the retries or fails cleanly, naming what failed; after every one, no invalid snapshot is
 * visible and no good snapshot is gone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicateFailedError, runReplicate } from '../../src/jobs/replicate.js';
import type { Target } from '../../src/targets/target.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import {
  DATABASE, HOUR, blobTarget, history, idsOn, invalidSnapshots, makeSnapshot, s3Target, storeSnapshot, testWorld, type TestSnapshot,
} from '../support/stored-snapshots.js';

const world = testWorld();
const FAST = { retry: { retries: 2, baseDelayMs: 5, maxDelayMs: 20 } };

async function folder(name: string): Promise<Target> {
  const f = await world.folder(name);
  return f.target;
}

const KINDS = [
  { kind: 'Azurite', upstream: () => world.clouds.azurite.endpoint, open: (proxy: FaultProxy) => blobTarget(world.clouds, 'cloud', { proxy }) },
  { kind: 's3rver', upstream: () => world.clouds.s3.endpoint, open: (proxy: FaultProxy) => s3Target(world.clouds, 'cloud', { proxy }) },
];

/** Two small snapshots and one of 9 MiB: more than one upload part or block. */
function snapshots(): TestSnapshot[] {
  return [...history(2, new Date(Date.now() - 2 * HOUR), HOUR), makeSnapshot({ time: new Date(Date.now() - HOUR), bytes: 9 * 1024 * 1024 + 17 })];
}

async function seeded(target: Target, snaps: TestSnapshot[]): Promise<string[]> {
  for (const s of snaps) await storeSnapshot(target, s);
  return snaps.map((s) => s.manifest.id);
}

describe.each(KINDS)('replicate through faults in front of $kind', ({ upstream, open }) => {
  let proxy: FaultProxy;
  beforeAll(async () => {
    proxy = await startFaultProxy(upstream());
  });
  afterAll(async () => {
    await proxy?.stop();
  });

  it('copies through a storm of 503s and 429s', async () => {
    proxy.clear();
    const local = await folder('local');
    const cloud = open(proxy);
    const ids = await seeded(local, snapshots());
    // Five in a row: as many as the retry wrapper retries one operation.
    proxy.inject({ fault: { status: 503, code: 'SlowDown' }, times: 3 });
    proxy.inject({ fault: { status: 429, code: 'TooManyRequests', retryAfter: '0' }, times: 2 });

    const result = await runReplicate({ targets: [local, cloud], database: DATABASE }, FAST);

    expect(proxy.seen.filter((s) => s.fault).map((s) => s.fault)).toEqual(['503', '503', '503', '429', '429']);
    expect(result.targets.find((t) => t.target === 'cloud')!.copied.map((c) => c.id).sort()).toEqual(ids);
    expect(await idsOn(cloud)).toEqual(ids);
    expect(await invalidSnapshots([local, cloud])).toEqual([]);
  });

  it('copies through connections reset on uploads', async () => {
    proxy.clear();
    const local = await folder('local');
    const cloud = open(proxy);
    const ids = await seeded(local, snapshots());
    proxy.inject({ match: (m) => m === 'PUT', fault: 'reset', times: 2 });

    await runReplicate({ targets: [local, cloud], database: DATABASE }, FAST);

    expect(proxy.seen.filter((s) => s.fault === 'reset')).toHaveLength(2);
    expect(await idsOn(cloud)).toEqual(ids);
    expect(await invalidSnapshots([local, cloud])).toEqual([]);
  });

  it('starts a copy again when the download from the source breaks off mid-way', async () => {
    proxy.clear();
    const cloud = open(proxy);
    const local = await folder('local');
    const big = makeSnapshot({ time: new Date(Date.now() - HOUR), bytes: 3 * 1024 * 1024 });
    await storeSnapshot(cloud, big);
    proxy.inject({ match: (m, u) => m === 'GET' && u.pathname.endsWith('.sqlite'), fault: { cutAfterBytes: 200_000 }, times: 1 });

    const result = await runReplicate({ targets: [cloud, local], database: DATABASE }, FAST);

    expect(proxy.seen.filter((s) => s.fault?.startsWith('cut'))).toHaveLength(1);
    expect(result.targets.find((t) => t.target === 'local')!.copied).toEqual([expect.objectContaining({ id: big.manifest.id, from: 'cloud' })]);
    expect(await invalidSnapshots([local, cloud])).toEqual([]);
  });

  it('fails cleanly naming the source when every download breaks off, and leaves no partial copy', async () => {
    proxy.clear();
    const cloud = open(proxy);
    const local = await folder('local');
    const big = makeSnapshot({ time: new Date(Date.now() - HOUR), bytes: 3 * 1024 * 1024 });
    await storeSnapshot(cloud, big);
    proxy.inject({ match: (m, u) => m === 'GET' && u.pathname.endsWith('.sqlite'), fault: { cutAfterBytes: 200_000 }, times: Infinity });

    const err = await runReplicate({ targets: [cloud, local], database: DATABASE }, FAST).catch((e: Error) => e);

    expect(err).toBeInstanceOf(ReplicateFailedError);
    expect((err as Error).message).toContain(`snapshot ${big.manifest.id} to target "local" from "cloud": reading snapshot ${big.manifest.id} on target "cloud" broke off`);
    expect(proxy.seen.filter((s) => s.fault?.startsWith('cut'))).toHaveLength(3); // the first try and two retries
    expect(await idsOn(local)).toEqual([]);
    await expect(local.head(big.manifest.key)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    proxy.clear();
    expect(await invalidSnapshots([local, cloud])).toEqual([]);
    expect(await idsOn(cloud)).toEqual([big.manifest.id]);
  });

  it('fails cleanly naming the destination that keeps failing, and catches up once it recovers', async () => {
    proxy.clear();
    const local = await folder('local');
    const cloud = open(proxy);
    const ids = await seeded(local, snapshots());
    proxy.inject({ match: (m) => m === 'PUT', fault: { status: 500, code: 'InternalError' }, times: Infinity });

    const err = await runReplicate({ targets: [local, cloud], database: DATABASE }, FAST).catch((e: Error) => e);

    expect(err).toBeInstanceOf(ReplicateFailedError);
    expect((err as Error).message).toMatch(/to target "cloud" from "local": storing .* on target "cloud" failed: .*HTTP 500/);
    const outcome = (err as ReplicateFailedError).result.targets.find((t) => t.target === 'cloud')!;
    expect(outcome.failed.length + outcome.skipped.length).toBe(3);
    proxy.clear();
    expect(await idsOn(cloud)).toEqual([]);
    expect(await invalidSnapshots([local, cloud])).toEqual([]);

    await runReplicate({ targets: [local, cloud], database: DATABASE }, FAST);
    expect(await idsOn(cloud)).toEqual(ids);
    expect(await invalidSnapshots([local, cloud])).toEqual([]);
  });
});
