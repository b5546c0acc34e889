/**
 * Replicate through a fault-injecting proxy in front of Azurite and s3rver: throttling and 5xx storms,
 * connections reset, answers cut off mid-body, a destination that keeps failing. Each run either succeeds
 * through the retries or fails cleanly, naming what failed; after every one, no invalid snapshot is
 * visible and no good snapshot is gone.
 */
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicateFailedError, runReplicate } from '../../src/jobs/replicate/index.js';
import { createLogger, type Fields } from '../../src/log.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { startForwardingProxy, type ForwardingProxy } from '../support/http-proxy.js';
import { startR2Proxy, type R2Proxy } from '../support/r2-proxy.js';
import {
  DATABASE,
  HOUR,
  history,
  idsOn,
  invalidSnapshots,
  makeSnapshot,
  storeSnapshot,
  type TestSnapshot,
} from '../support/stored-snapshots.js';
import { blobTarget, BUCKET, s3Target, testWorld } from '../support/world.js';

const world = testWorld();
const FAST = { retry: { retries: 2, baseDelayMs: 5, maxDelayMs: 20 } };

async function folder(name: string): Promise<Target> {
  const f = await world.folder(name);
  return f.target;
}

const KINDS = [
  {
    kind: 'Azurite',
    upstream: () => world.clouds.azurite.endpoint,
    open: (proxy: FaultProxy) => blobTarget(world.clouds, 'cloud', { proxy }),
  },
  { kind: 's3rver', upstream: () => world.clouds.s3.endpoint, open: (proxy: FaultProxy) => s3Target(world.clouds, 'cloud', { proxy }) },
];

/** Two small snapshots and one of 9 MiB: more than one upload part or block. */
function snapshots(): TestSnapshot[] {
  return [
    ...history(2, new Date(Date.now() - 2 * HOUR), HOUR),
    makeSnapshot({ time: new Date(Date.now() - HOUR), bytes: 9 * 1024 * 1024 + 17 }),
  ];
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
    expect(
      result.targets
        .find((t) => t.target === 'cloud')!
        .copied.map((c) => c.id)
        .sort(),
    ).toEqual(ids);
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
    expect(result.targets.find((t) => t.target === 'local')!.copied).toEqual([
      expect.objectContaining({ id: big.manifest.id, from: 'cloud' }),
    ]);
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
    expect((err as Error).message).toContain(
      `snapshot ${big.manifest.id} to target "local" from "cloud": reading snapshot ${big.manifest.id} on target "cloud" broke off`,
    );
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

describe('replicate to R2 when bytes change on the way', () => {
  let r2: R2Proxy;
  let garbler: ForwardingProxy;
  let garble = 0;
  beforeAll(async () => {
    r2 = await startR2Proxy({
      upstream: world.clouds.s3.endpoint,
      accessKeyId: world.clouds.s3.accessKeyId,
      secretAccessKey: world.clouds.s3.secretAccessKey,
    });
    // Between us and "R2": flips one bit in the middle of the next `garble` artifact uploads, keeping the
    // length and the headers (and so the signature and the x-amz-content-sha256 it promises).
    const upstream = new URL(r2.endpoint);
    garbler = await startForwardingProxy(r2.endpoint, async (x) => {
      if (!(x.req.method === 'PUT' && /\.sqlite[^/]*$/.test(x.url.pathname) && garble > 0)) return x.forward();
      garble--;
      const middle = Math.floor(Number(x.req.headers['content-length']) / 2);
      let seen = 0;
      const out = httpRequest({
        host: upstream.hostname,
        port: upstream.port,
        method: 'PUT',
        path: x.req.url,
        headers: x.req.headers,
        agent: false,
      });
      await new Promise<void>((resolve) => {
        out.on('response', (answer) => {
          x.res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(x.res);
          answer.on('end', resolve);
        });
        out.on('error', () => {
          x.res.destroy();
          resolve();
        });
        x.req.on('data', (chunk: Buffer) => {
          if (seen <= middle && middle < seen + chunk.length) chunk[middle - seen]! ^= 0x01;
          seen += chunk.length;
          out.write(chunk);
        });
        x.req.on('end', () => out.end());
      });
    });
  });
  afterAll(async () => {
    await garbler?.stop();
    await r2?.stop();
  });

  it('R2 refuses the changed bytes, stores nothing of them, and the copy is sent again from the source', async () => {
    const local = await folder('local');
    const spec = parseTargetUrl('r2', `s3://${BUCKET}/garbled-${Date.now()}?endpoint=${garbler.endpoint}`, {
      accessKeyId: world.clouds.s3.accessKeyId,
      secretAccessKey: world.clouds.s3.secretAccessKey,
    });
    const cloud = openTarget(spec, { retry: FAST.retry });
    const big = makeSnapshot({ time: new Date(Date.now() - HOUR), bytes: 3 * 1024 * 1024 + 5 });
    await storeSnapshot(local, big);
    garble = 1;
    r2.resetCounters();

    const events: Fields[] = [];
    const logger = createLogger({ level: 'debug', sink: (_l, _line, record) => events.push(record) });
    const result = await runReplicate({ targets: [local, cloud], database: DATABASE, logger }, FAST);

    expect(garble).toBe(0);
    const retry = events.find((e) => e.event === 'replicate.copy_retry');
    expect(retry?.error).toMatch(/XAmzContentSHA256Mismatch/);
    const artifactPuts = r2.requests.filter((r) => r.method === 'PUT' && /\.sqlite/.test(r.path));
    expect(artifactPuts).toHaveLength(2);
    expect(artifactPuts.every((p) => p.headers['x-amz-content-sha256'] === big.manifest.artifact.sha256)).toBe(true);
    expect(result.targets.find((t) => t.target === 'r2')!.copied.map((c) => c.id)).toEqual([big.manifest.id]);
    expect(await idsOn(cloud)).toEqual([big.manifest.id]);
    expect(await invalidSnapshots([local, cloud])).toEqual([]);
  });
});
