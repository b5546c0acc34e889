/**
 * Conditional writes (If-None-Match: *, If-Match) whose answer is lost on the way back: the service applied
 * the write, the client saw a reset and sent it again, and the retry lost its condition to that very write.
 * That must end as written, not as a lost race; a write that really lost must still say so. At the wire:
 * Azurite, and s3rver behind the R2 rules (which honour conditions), each behind the fault proxy.
 */
import { randomBytes } from 'node:crypto';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, startS3Server, type Azurite, type S3Server } from '../../src/dev/emulators.js';
import { PreconditionFailedError } from '../../src/errors.js';
import { createLogger, type Fields } from '../../src/log.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { startR2Proxy, type R2Proxy } from '../support/r2-proxy.js';
import { failureOf, readAll } from './conformance.js';

const CONTAINER = 'tcab';
const ACCOUNT = '0123456789abcdef0123456789abcdef';
let azurite: Azurite;
let s3: S3Server;
let r2: R2Proxy;
const proxies: Record<string, FaultProxy> = {};
const events: Fields[] = [];
const logger = createLogger({ level: 'debug', sink: (_l, _line, record) => events.push(record) });

beforeAll(async () => {
  [azurite, s3] = await Promise.all([startAzurite(), startS3Server({ buckets: ['tcab'] })]);
  await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER).create();
  r2 = await startR2Proxy({ upstream: s3.endpoint, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
  proxies.azblob = await startFaultProxy(new URL(azurite.endpoint).origin);
  proxies.r2 = await startFaultProxy(r2.endpoint);
});

afterAll(async () => {
  await Promise.all(Object.values(proxies).map((p) => p.stop()));
  await r2?.stop();
  await Promise.all([azurite?.stop(), s3?.stop()]);
});

const backends: Record<string, () => Target> = {
  azblob: () => {
    const faults = proxies.azblob!;
    const url = `azblob://${azurite.account}/${CONTAINER}/t-${randomBytes(4).toString('hex')}?endpoint=${azurite.endpoint}`;
    const connectionString = azurite.connectionString.replace(new URL(azurite.endpoint).origin, faults.endpoint);
    return openTarget(parseTargetUrl('blob', url, { connectionString }), { logger, retry: { baseDelayMs: 5, maxDelayMs: 20 } });
  },
  r2: () => {
    const url = `r2://${ACCOUNT}/tcab/t-${randomBytes(4).toString('hex')}?endpoint=${proxies.r2!.endpoint}&pathStyle=true`;
    return openTarget(parseTargetUrl('r2', url, { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey }), {
      logger,
      retry: { baseDelayMs: 5, maxDelayMs: 20 },
    });
  },
};

const isPut = (key: string) => (method: string, url: URL) => method === 'PUT' && url.pathname.endsWith(key);

for (const [backend, fresh] of Object.entries(backends)) {
  describe(`conditional writes with a lost answer (${backend} behind the fault proxy)`, () => {
    const puts = (key: string) =>
      proxies[backend]!.seen.filter((s) => s.request.startsWith('PUT') && s.request.includes(key)).map((s) => s.fault);

    it('If-None-Match: a create that landed but lost its answer ends as written, with the stored etag', async () => {
      const t = fresh();
      proxies[backend]!.clear();
      events.length = 0;
      proxies[backend]!.inject({ fault: 'lost-answer', match: isPut('drills/pg-a/current.json') });
      const body = Buffer.from('{"drillId":"mine"}\n');
      const written = await t.put('drills/pg-a/current.json', body, { ifNoneMatch: '*' });
      // The retry met the object the first attempt had stored, and read it back rather than report a lost race.
      expect(puts('current.json')).toEqual(['lost answer', null]);
      expect(written.etag).toBe((await t.head('drills/pg-a/current.json')).etag);
      expect(await readAll((await t.get('drills/pg-a/current.json')).body)).toEqual(body);
      expect(events.some((e) => e.event === 'target.conditional_write_landed')).toBe(true);
      // The etag returned guards the next write like any other.
      await t.put('drills/pg-a/current.json', Buffer.from('{"drillId":"next"}\n'), { ifMatch: written.etag });
    });

    it('If-Match: an update that landed but lost its answer ends as written, with the new etag', async () => {
      const t = fresh();
      const v1 = await t.put('drills/pg-a/x.json', Buffer.from('{"state":"requested"}\n'));
      proxies[backend]!.clear();
      proxies[backend]!.inject({ fault: 'lost-answer', match: isPut('drills/pg-a/x.json') });
      const v2 = await t.put('drills/pg-a/x.json', Buffer.from('{"state":"restoring"}\n'), { ifMatch: v1.etag });
      expect(puts('x.json')).toEqual(['lost answer', null]);
      expect(v2.etag).not.toBe(v1.etag);
      expect(v2.etag).toBe((await t.head('drills/pg-a/x.json')).etag);
      await t.put('drills/pg-a/x.json', Buffer.from('{"state":"validating"}\n'), { ifMatch: v2.etag });
      expect((await readAll((await t.get('drills/pg-a/x.json')).body)).toString()).toBe('{"state":"validating"}\n');
    });

    it('a retried write that finds other bytes there still lost the race', async () => {
      const t = fresh();
      await t.put('drills/pg-a/race.json', Buffer.from('{"drillId":"theirs"}\n'));
      proxies[backend]!.clear();
      // The first attempt never reaches the service; its retry meets the other writer's object.
      proxies[backend]!.inject({ fault: 'reset', match: isPut('drills/pg-a/race.json') });
      const err = await failureOf(t.put('drills/pg-a/race.json', Buffer.from('{"drillId":"mine"}\n'), { ifNoneMatch: '*' }));
      expect(err).toBeInstanceOf(PreconditionFailedError);
      expect(err.message).toContain('drills/pg-a/race.json');
      expect(puts('race.json')).toEqual(['reset', null]);
      expect((await readAll((await t.get('drills/pg-a/race.json')).body)).toString()).toBe('{"drillId":"theirs"}\n');

      // Lost on the first attempt, with nothing uncertain before it: no read-back, just the lost race.
      proxies[backend]!.clear();
      const plain = await failureOf(t.put('drills/pg-a/race.json', Buffer.from('{"drillId":"mine"}\n'), { ifNoneMatch: '*' }));
      expect(plain).toBeInstanceOf(PreconditionFailedError);
      expect(proxies[backend]!.seen.filter((s) => s.request.startsWith('GET'))).toEqual([]);
    });
  });
}
