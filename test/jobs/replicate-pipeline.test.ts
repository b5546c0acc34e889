/**
 * Replicate's pipeline against Azurite and s3rver: while the destination finishes one copy (answering its
 * PutObject or completing its multipart upload, then the manifest, the check), the next copy is already
 * reading from its source; yet no more than `concurrency` copies read from sources at once. Recording proxies in front of both servers show the
 * order of requests as the servers saw it.
 */
import { describe, expect, it } from 'vitest';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { startForwardingProxy, type ForwardingProxy } from '../support/http-proxy.js';
import { DATABASE, HOUR, history, idsOn, invalidSnapshots, storeSnapshot } from '../support/stored-snapshots.js';
import { BUCKET, CONTAINER, FAST_RETRY, testWorld } from '../support/world.js';

const MiB = 1024 * 1024;
/** Upper bound on how long a completion is held; a pipelined copier releases it much sooner. */
const COMPLETE_MS = 5000;
const completedIds = new Set<string>();
let expectedReads = Number.POSITIVE_INFINITY;
const readsStarted = () => events.filter((e) => e.what === 'read-start').length;

interface Event {
  at: number;
  what: 'read-start' | 'read-end' | 'complete-start' | 'complete-end';
  path: string;
}

const world = testWorld();
const proxies: ForwardingProxy[] = [];
const events: Event[] = [];
/** Method and path with query of every request the destination saw. */
const destinationRequests: string[] = [];

world.cleanup(async () => {
  for (const p of proxies) await p.stop();
});

function note(what: Event['what'], path: string): void {
  events.push({ at: performance.now(), what, path });
}

/** Azurite behind a proxy that notes when each artifact download starts and when its last byte has passed. */
async function recordedSource(): Promise<Target> {
  const proxy = await startForwardingProxy(world.clouds.azurite.endpoint, async (x) => {
    const artifact = x.req.method === 'GET' && /\.sqlite[^/]*$/.test(x.url.pathname);
    if (artifact) note('read-start', x.url.pathname);
    await x.forward();
    if (artifact) note('read-end', x.url.pathname);
  });
  proxies.push(proxy);
  const upstream = new URL(world.clouds.azurite.endpoint);
  const endpoint = `${proxy.endpoint}${upstream.pathname}`;
  const connectionString = world.clouds.azurite.connectionString.replace(/BlobEndpoint=[^;]+;/, `BlobEndpoint=${endpoint};`);
  const spec = parseTargetUrl('blob', `azblob://${world.clouds.azurite.account}/${CONTAINER}/pipeline-${Date.now()}?endpoint=${endpoint}`, {
    connectionString,
  });
  return openTarget(spec, { retry: FAST_RETRY });
}

/**
 * s3rver behind a proxy that holds the answer to every request that makes an artifact visible (a PutObject of
 * one, or a CompleteMultipartUpload) for up to COMPLETE_MS, as a slow service would.
 */
async function slowCompletingDestination(singlePutMaxBytes: number | undefined): Promise<Target> {
  const proxy = await startForwardingProxy(world.clouds.s3.endpoint, async (x) => {
    const q = x.url.searchParams;
    destinationRequests.push(`${x.req.method} ${x.url.pathname}${x.url.search}`);
    const complete =
      (x.req.method === 'POST' && q.has('uploadId')) ||
      (x.req.method === 'PUT' && /\.sqlite[^/]*$/.test(x.url.pathname) && !q.has('uploadId'));
    await x.forward({ beforeAnswer: () => (complete ? hold(x.url.pathname) : Promise.resolve()) });
    if (complete) note('complete-end', x.url.pathname);
  });
  proxies.push(proxy);
  const spec = parseTargetUrl('r2', `s3://${BUCKET}/pipeline-${Date.now()}?endpoint=${proxy.endpoint}`, {
    accessKeyId: world.clouds.s3.accessKeyId,
    secretAccessKey: world.clouds.s3.secretAccessKey,
  });
  return openTarget(spec, { retry: FAST_RETRY, ...(singlePutMaxBytes !== undefined ? { tuning: { singlePutMaxBytes } } : {}) });
}

async function hold(path: string): Promise<void> {
  note('complete-start', path);
  // Hold the completion until another snapshot's read has started (a pipelined copier starts it while
  // this one completes), or give up after COMPLETE_MS: a copier that waits for completion before
  // reading the next snapshot then shows up as a read after this completion.
  const completing = idOf(path);
  const deadline = Date.now() + COMPLETE_MS;
  const othersRead = () => events.some((e) => e.what === 'read-start' && idOf(e.path) !== completing && !completedIds.has(idOf(e.path)));
  while (Date.now() < deadline && !othersRead() && readsStarted() < expectedReads) await new Promise((r) => setTimeout(r, 10));
  completedIds.add(completing);
}

function idOf(path: string): string {
  return /(\d{8}T\d{6}Z-[0-9a-f]{8})/.exec(path)![1]!;
}

describe('replicate pipeline', () => {
  it.each([
    { upload: 'one PutObject per copy', singlePutMaxBytes: undefined },
    { upload: 'multipart uploads', singlePutMaxBytes: 5 * MiB },
  ])(
    '$upload: reads the next snapshot while the destination completes the previous one, never more than `concurrency` reads at once',
    async ({ upload, singlePutMaxBytes }) => {
      const source = await recordedSource();
      const destination = await slowCompletingDestination(singlePutMaxBytes);
      // Over 5 MiB each: with a 5 MiB cut-off every copy is a multipart upload with a completion step.
      const snaps = history(3, new Date(), HOUR, { bytes: 6 * MiB + 12_345 });
      for (const s of snaps) await storeSnapshot(source, s);
      events.length = 0;
      destinationRequests.length = 0;
      completedIds.clear();
      expectedReads = snaps.length;

      const result = await runReplicate({ targets: [source, destination], database: DATABASE }, { concurrency: 1 });

      expect(result.copied).toBe(3);
      const multipart = destinationRequests.filter((r) => r.includes('uploadId='));
      if (upload === 'multipart uploads') expect(multipart.length).toBeGreaterThanOrEqual(3 * 3);
      else expect(multipart, 'no part uploads when one PutObject takes the copy').toEqual([]);
      expect(await idsOn(destination)).toEqual(snaps.map((s) => s.manifest.id));
      expect(await invalidSnapshots([destination])).toEqual([]);

      const reads = events.filter((e) => e.what === 'read-start').map((e) => idOf(e.path));
      const newestFirst = snaps.map((s) => s.manifest.id).reverse();
      expect(reads).toEqual(newestFirst);

      // Each later read started before the completion of the copy before it was answered.
      for (let i = 1; i < newestFirst.length; i++) {
        const nextRead = events.find((e) => e.what === 'read-start' && idOf(e.path) === newestFirst[i])!;
        const previousComplete = events.find((e) => e.what === 'complete-end' && idOf(e.path) === newestFirst[i - 1])!;
        expect(nextRead.at, `read of ${newestFirst[i]} vs completion of ${newestFirst[i - 1]}`).toBeLessThan(previousComplete.at);
      }

      // Concurrency 1: a read starts only after the previous read has ended.
      let reading = 0;
      let most = 0;
      for (const e of events) {
        if (e.what === 'read-start') most = Math.max(most, ++reading);
        if (e.what === 'read-end') reading--;
      }
      expect(most).toBe(1);
    },
  );
});
