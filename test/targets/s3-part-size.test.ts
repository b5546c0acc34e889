/**
 * Part sizes of streamed uploads to an r2:// target (s3rver behind the R2 rules), as the service sees them:
 * the 5 MiB minimum when the length is known, so an upload holds the least memory, and 8 MiB when it is
 * not, so that 10,000 parts still hold a large object.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3Server, type S3Server } from '../../src/dev/emulators.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl, type S3TargetSpec } from '../../src/targets/spec.js';
import { startR2Proxy, type R2Proxy } from '../support/r2-proxy.js';
import { MiB, randomStream, sha256Of } from './conformance.js';

const BUCKET = 'tcab';
let s3: S3Server;
let r2: R2Proxy;

beforeAll(async () => {
  s3 = await startS3Server({ buckets: [BUCKET] });
  r2 = await startR2Proxy({ upstream: s3.endpoint, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
});

afterAll(async () => {
  await r2?.stop();
  await s3?.stop();
});

function r2Target() {
  const spec = parseTargetUrl(
    'r2',
    `r2://0123456789abcdef0123456789abcdef/${BUCKET}/p-${randomBytes(4).toString('hex')}?endpoint=${r2.endpoint}&pathStyle=true`,
    {
      accessKeyId: s3.accessKeyId,
      secretAccessKey: s3.secretAccessKey,
    },
  ) as S3TargetSpec;
  return openTarget(spec);
}

/** The sizes of the parts the service received for uploads since the last reset. */
function partSizes(): number[] {
  return r2.requests.filter((r) => r.query.includes('partNumber=')).map((r) => Number(r.headers['content-length']));
}

describe('r2 part sizes', () => {
  it('sends a body of known length in 5 MiB parts, and stores it byte for byte', async () => {
    const t = r2Target();
    const size = 11 * MiB + 7;
    const { stream, sha256 } = randomStream(size);
    r2.resetCounters();
    await t.put('known.bin', stream, { contentLength: size });
    expect(partSizes()).toEqual([5 * MiB, 5 * MiB, MiB + 7]);
    expect(r2.violations).toEqual([]);
    expect(await sha256Of((await t.get('known.bin')).body)).toEqual({ sha256: sha256(), bytes: size });
  });

  it('sends a body of unknown length in 8 MiB parts', async () => {
    const t = r2Target();
    const size = 11 * MiB + 7;
    const { stream, sha256 } = randomStream(size);
    r2.resetCounters();
    await t.put('unknown.bin', stream);
    expect(partSizes()).toEqual([8 * MiB, 3 * MiB + 7]);
    expect(await sha256Of((await t.get('unknown.bin')).body)).toEqual({ sha256: sha256(), bytes: size });
  });

  it('reuses part buffers without mixing parts: many parts, two in flight, every byte where it belongs', async () => {
    const t = r2Target();
    const size = 41 * MiB + 3;
    const { stream, sha256 } = randomStream(size, { chunk: 100_000 });
    r2.resetCounters();
    r2.uploadDelayMs = 30;
    try {
      await t.put('many.bin', stream, { contentLength: size });
    } finally {
      r2.uploadDelayMs = 0;
    }
    expect(partSizes()).toHaveLength(9);
    expect(r2.maxConcurrentUploads).toBe(2);
    expect(await sha256Of((await t.get('many.bin')).body)).toEqual({ sha256: sha256(), bytes: size });
  });
});
