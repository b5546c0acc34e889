import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { inspect } from 'node:util';
import {
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3Server, type S3Server } from '../../src/dev/emulators.js';
import { NotFoundError, ObjectHeldError, TargetError } from '../../src/errors.js';
import { createLogger, type Fields } from '../../src/log.js';
import { openTarget } from '../../src/targets/index.js';
import { S3Target, choosePartSize, multipartEtag } from '../../src/targets/s3.js';
import { parseTargetUrl, type S3TargetSpec } from '../../src/targets/spec.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { startR2Proxy, type R2Proxy } from '../support/r2-proxy.js';
import {
  bufferStream,
  describeTargetConformance,
  failureOf,
  listKeys,
  MiB,
  randomStream,
  readAll,
  sha256Hex,
  sha256Of,
} from './conformance.js';

const ACCOUNT = '0123456789abcdef0123456789abcdef';
const BUCKET = 'tcab';
let s3: S3Server;
let r2: R2Proxy;
let faults: FaultProxy;
/** Faults in front of the R2 rules, which answer a finished upload as R2 and S3 do (NoSuchUpload). */
let r2Faults: FaultProxy;

beforeAll(async () => {
  s3 = await startS3Server({ buckets: [BUCKET] });
  r2 = await startR2Proxy({ upstream: s3.endpoint, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
  faults = await startFaultProxy(s3.endpoint);
  r2Faults = await startFaultProxy(r2.endpoint);
});

afterAll(async () => {
  await r2Faults?.stop();
  await faults?.stop();
  await r2?.stop();
  await s3?.stop();
});

function prefix(): string {
  return `t-${randomBytes(4).toString('hex')}`;
}

function r2Spec(
  name = 'r2',
  endpoint = r2.endpoint,
  creds = { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
): S3TargetSpec {
  return parseTargetUrl(name, `r2://${ACCOUNT}/${BUCKET}/${prefix()}?endpoint=${endpoint}&pathStyle=true`, creds) as S3TargetSpec;
}

function s3Spec(endpoint: string): S3TargetSpec {
  return parseTargetUrl('s3', `s3://${BUCKET}/${prefix()}?endpoint=${endpoint}`, {
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
  }) as S3TargetSpec;
}

describeTargetConformance(
  'r2 (s3rver behind the R2 rules)',
  async () =>
    openTarget(r2Spec(), {
      tuning: { pageSize: 4, partSize: 5 * MiB },
      retry: { baseDelayMs: 20 },
    }),
  { pageSize: 4 },
);

describe('r2 target', () => {
  it('sent nothing R2 refuses during the conformance run (no checksum headers, no aws-chunked bodies)', () => {
    expect(r2.violations).toEqual([]);
    expect(r2.requests.length).toBeGreaterThan(100);
    const uploads = r2.requests.filter((r) => r.method === 'PUT');
    for (const u of uploads) expect(u.headers['content-length'], `${u.path}${u.query}`).toBeDefined();
  });

  it('the R2 rules refuse what the SDK sends by default, so they are not toothless', async () => {
    const defaults = new S3Client({
      region: 'auto',
      endpoint: r2.endpoint,
      forcePathStyle: true,
      maxAttempts: 1,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    try {
      const err = await failureOf(
        defaults.send(
          new PutObjectCommand({ Bucket: BUCKET, Key: 'defaults', Body: randomStream(100_000).stream, ContentLength: 100_000 }),
        ),
      );
      expect((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode).toBeGreaterThanOrEqual(400);
      expect(r2.violations.join('\n')).toMatch(/checksum|aws-chunked/);
    } finally {
      defaults.destroy();
      r2.resetCounters();
    }
  });

  it('uploads at most 2 parts at once to R2, in equal parts of at least 5 MiB', async () => {
    r2.resetCounters();
    r2.uploadDelayMs = 150;
    try {
      const t = openTarget(r2Spec(), { tuning: { partSize: 5 * MiB } });
      const { stream, sha256 } = randomStream(31 * MiB);
      await t.put('big.bin', stream);
      expect(r2.maxConcurrentUploads).toBe(2);
      const parts = r2.requests.filter((r) => r.query.includes('partNumber='));
      expect(parts).toHaveLength(7);
      expect(parts.slice(0, -1).every((p) => p.headers['content-length'] === String(5 * MiB))).toBe(true);
      expect(parts.at(-1)!.headers['content-length']).toBe(String(MiB));
      expect((await sha256Of((await t.get('big.bin')).body)).sha256).toBe(sha256());
      expect(r2.violations).toEqual([]);
    } finally {
      r2.uploadDelayMs = 0;
    }
  });

  it('sends a stream of known sha256 as one PutObject signed with it; R2 refuses other bytes, and nothing is stored', async () => {
    r2.resetCounters();
    const t = openTarget(r2Spec(), {});
    const data = randomBytes(9 * MiB);
    const sha256 = sha256Hex(data);
    await t.put('one.bin', bufferStream(data), { contentLength: data.length, sha256 });
    const puts = r2.requests.filter((r) => r.method === 'PUT');
    expect(puts.map((p) => `${p.path}${p.query}`)).toEqual([expect.stringMatching(/\/one\.bin(\?x-id=PutObject)?$/)]);
    expect(puts[0]!.headers['x-amz-content-sha256']).toBe(sha256);
    expect(puts[0]!.headers['content-length']).toBe(String(data.length));
    expect((await sha256Of((await t.get('one.bin')).body)).sha256).toBe(sha256);

    const other = Buffer.from(data);
    other[other.length - 1]! ^= 1;
    const err = await failureOf(t.put('two.bin', bufferStream(other), { contentLength: other.length, sha256 }));
    expect(err).toBeInstanceOf(TargetError);
    expect(err.message).toContain('XAmzContentSHA256Mismatch');
    expect(err.message).toContain('two.bin');
    expect(err.message).toContain('received other bytes than were sent and stored nothing');
    expect((err as TargetError).transient).toBe(true);
    await expect(t.head('two.bin')).rejects.toBeInstanceOf(NotFoundError);
    expect(r2.violations).toEqual([]);
  });

  it('sends a stream of known sha256 above the single-request limit in parts, each signed with its own sha256', async () => {
    r2.resetCounters();
    const t = openTarget(r2Spec(), { tuning: { singlePutMaxBytes: 8 * MiB, partSize: 5 * MiB } });
    const data = randomBytes(9 * MiB);
    await t.put('parts.bin', bufferStream(data), { contentLength: data.length, sha256: sha256Hex(data) });
    const parts = r2.requests.filter((r) => r.query.includes('partNumber='));
    expect(parts).toHaveLength(2);
    const signed = parts.map((p) => [/partNumber=(\d+)/.exec(p.query)![1], p.headers['x-amz-content-sha256']]).sort();
    expect(signed).toEqual([
      ['1', sha256Hex(data.subarray(0, 5 * MiB))],
      ['2', sha256Hex(data.subarray(5 * MiB))],
    ]);
    expect((await sha256Of((await t.get('parts.bin')).body)).sha256).toBe(sha256Hex(data));
    expect(r2.violations).toEqual([]);
  });

  it('uploads up to 4 parts at once to other S3 services', async () => {
    r2.resetCounters();
    r2.uploadDelayMs = 150;
    try {
      const t = openTarget(s3Spec(r2.endpoint), { tuning: { partSize: 5 * MiB } });
      await t.put('big.bin', randomStream(31 * MiB).stream);
      expect(r2.maxConcurrentUploads).toBeGreaterThan(2);
      expect(r2.maxConcurrentUploads).toBeLessThanOrEqual(4);
    } finally {
      r2.uploadDelayMs = 0;
    }
  });

  it('never asks an R2 target for more than 2 parts at once, whatever the tuning says', () => {
    expect(new S3Target(r2Spec(), { concurrency: 8 }).concurrency).toBe(2);
    expect(new S3Target(s3Spec('http://127.0.0.1:1'), {}).concurrency).toBe(4);
  });

  it('chooses parts so that a known length fits in 10,000 of them', () => {
    expect(choosePartSize(8 * MiB, undefined)).toBe(8 * MiB);
    expect(choosePartSize(8 * MiB, 50 * MiB)).toBe(8 * MiB);
    const size = choosePartSize(8 * MiB, 200 * 1024 * MiB);
    expect(size % MiB).toBe(0);
    expect(Math.ceil((200 * 1024 * MiB) / size)).toBeLessThanOrEqual(10_000);
  });

  it('deletes many keys with DeleteObjects carrying Content-MD5 and no checksum header', async () => {
    const target = new S3Target(r2Spec());
    for (const k of ['a', 'b', 'c']) await target.put(`many/${k}`, Buffer.from(k));
    r2.resetCounters();
    await target.deleteMany(['many/a', 'many/b', 'many/missing']);
    const del = r2.requests.filter((r) => r.method === 'POST' && r.query.includes('delete'));
    expect(del).toHaveLength(1);
    expect(del[0]!.headers['content-md5']).toMatch(/^[A-Za-z0-9+/]{22}==$/);
    expect(Object.keys(del[0]!.headers).filter((h) => h.startsWith('x-amz-checksum-') || h === 'x-amz-sdk-checksum-algorithm')).toEqual([]);
    expect(r2.violations).toEqual([]);
    expect(await listKeys(target, '')).toEqual(['many/c']);
  });

  it('aborts the multipart upload of a put that fails half-way', async () => {
    r2.resetCounters();
    const t = openTarget(r2Spec(), { tuning: { partSize: 5 * MiB } });
    await expect(t.put('broken.bin', randomStream(20 * MiB, { failAfter: 12 * MiB }).stream)).rejects.toThrow(/broke off/);
    const ids = new Set(
      r2.requests.filter((r) => r.query.includes('partNumber=')).map((r) => new URLSearchParams(r.query).get('uploadId')),
    );
    expect(ids.size).toBe(1);
    const aborts = r2.requests.filter((r) => r.method === 'DELETE' && r.query.includes('uploadId='));
    expect(aborts.map((r) => new URLSearchParams(r.query).get('uploadId'))).toEqual([...ids]);
    expect(await t.abortStaleUploads!(new Date(Date.now() + 60_000))).toBe(0);
  });

  it('aborts incomplete uploads older than the given time, under its own prefix only', async () => {
    const spec = r2Spec();
    const t = openTarget(spec);
    const raw = new S3Client({
      region: 'auto',
      endpoint: r2.endpoint,
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    try {
      // What a process that died mid-upload leaves behind: a started upload with a part, never completed.
      for (const key of [`${spec.prefix}crashed-1.bin`, `${spec.prefix}crashed-2.bin`, 'elsewhere/crashed.bin']) {
        const { UploadId } = await raw.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: key }));
        await raw.send(
          new UploadPartCommand({ Bucket: BUCKET, Key: key, UploadId, PartNumber: 1, Body: Buffer.alloc(1024), ContentLength: 1024 }),
        );
      }
      expect(await t.abortStaleUploads!(new Date(Date.now() - 3_600_000))).toBe(0);
      expect(await t.abortStaleUploads!(new Date(Date.now() + 1_000))).toBe(2);
      expect(await t.abortStaleUploads!(new Date(Date.now() + 1_000))).toBe(0);
      const left = await raw.send(new ListMultipartUploadsCommand({ Bucket: BUCKET }));
      expect((left.Uploads ?? []).map((u) => u.Key)).toContain('elsewhere/crashed.bin');
    } finally {
      raw.destroy();
    }
  });

  it('reports no stale uploads from a server that cannot list them, rather than failing', async () => {
    const t = openTarget(s3Spec(s3.endpoint));
    expect(await t.abortStaleUploads!(new Date())).toBe(0);
  });

  it('fails on an unreachable endpoint with an error naming the target and its URL, without secrets', async () => {
    const port = await closedPort();
    const secret = `secret-${randomBytes(16).toString('hex')}`;
    const spec = r2Spec('offsite', `http://127.0.0.1:${port}`, { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: secret });
    const t = openTarget(spec, { retry: { retries: 2, baseDelayMs: 10 } });
    const err = await failureOf(t.head('status/tcab.json'));
    expect(err).toBeInstanceOf(TargetError);
    expect(err.message).toContain('Target "offsite"');
    expect(err.message).toContain(spec.displayUrl);
    expect(err.message).toContain('ECONNREFUSED');
    expect(err.message).toContain('status/tcab.json');
    expect(err.message).toMatch(/Check: .*reachable/);
    expect(err.message).not.toContain(secret);
    expect(inspect(err, { depth: 10 })).not.toContain(secret);
    const put = await failureOf(t.put('x', Buffer.from('x')));
    expect(put.message).not.toContain(secret);
  });

  it('never shows the secret access key in an error, even when the service refuses the credentials', async () => {
    const secret = `wrong-${randomBytes(16).toString('hex')}`;
    const t = openTarget(r2Spec('badkey', r2.endpoint, { accessKeyId: 'AKIDNOTKNOWNHERE', secretAccessKey: secret }), {
      retry: { retries: 0 },
    });
    const err = await failureOf(t.put('x.json', Buffer.from('{}')));
    expect(err).toBeInstanceOf(TargetError);
    expect((err as TargetError).status).toBe(403);
    expect(err.message).toMatch(/credentials/);
    expect(err.message).not.toContain(secret);
    expect(inspect(err, { depth: 10 })).not.toContain(secret);
  });

  it('says so when the bucket does not exist, instead of reporting objects as missing', async () => {
    const spec = parseTargetUrl('nobucket', `s3://no-such-bucket/x?endpoint=${s3.endpoint}`, {
      accessKeyId: s3.accessKeyId,
      secretAccessKey: s3.secretAccessKey,
    });
    const t = openTarget(spec, { retry: { retries: 0 } });
    const err = await failureOf(t.get('a'));
    expect(err).not.toBeInstanceOf(NotFoundError);
    expect(err.message).toMatch(/NoSuchBucket/);
    expect(err.message).toMatch(/exists/);
  });
});

describe('retries (s3rver behind a fault-injecting proxy)', () => {
  function capture(): { events: Fields[]; logger: ReturnType<typeof createLogger> } {
    const events: Fields[] = [];
    return { events, logger: createLogger({ level: 'debug', sink: (_l, _line, record) => events.push(record) }) };
  }

  it('retries 503 SlowDown with backoff and succeeds, logging each retry', async () => {
    faults.clear();
    const { events, logger } = capture();
    const t = openTarget(s3Spec(faults.endpoint), { logger, retry: { baseDelayMs: 20 } });
    faults.inject({ fault: { status: 503, code: 'SlowDown' }, times: 2, match: (m) => m === 'PUT' });
    await t.put('status/tcab.json', Buffer.from('{"ok":true}'));
    expect(faults.seen.filter((s) => s.request.startsWith('PUT')).map((s) => s.fault)).toEqual(['503', '503', null]);
    const retries = events.filter((e) => e.event === 'target.retry');
    expect(retries).toHaveLength(2);
    expect(retries[0]).toMatchObject({ level: 'warn', target: 's3', operation: 'put', object: 'status/tcab.json', attempt: 1 });
    expect(String(retries[0]!.error)).toMatch(/503/);
    expect((await readAll((await t.get('status/tcab.json')).body)).toString()).toBe('{"ok":true}');
  });

  it('retries a connection reset', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { retry: { baseDelayMs: 20 } });
    await t.put('k', Buffer.from('v'));
    faults.inject({ fault: 'reset', match: (m) => m === 'HEAD' });
    expect((await t.head('k')).size).toBe(1);
    expect(faults.seen.filter((s) => s.request.startsWith('HEAD')).map((s) => s.fault)).toEqual(['reset', null]);
  });

  it('retries a failed part of a streamed upload without restarting the upload', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { tuning: { partSize: 5 * MiB }, retry: { baseDelayMs: 20 } });
    faults.inject({
      fault: { status: 500, code: 'InternalError' },
      match: (m, url) => m === 'PUT' && url.searchParams.get('partNumber') === '2',
    });
    const { stream, sha256 } = randomStream(12 * MiB);
    await t.put('big.bin', stream);
    expect((await sha256Of((await t.get('big.bin')).body)).sha256).toBe(sha256());
    const parts = faults.seen.filter((s) => s.request.includes('partNumber='));
    expect(parts).toHaveLength(4);
    expect(faults.seen.filter((s) => s.request.startsWith('POST') && s.request.includes('uploads'))).toHaveLength(1);
  });

  it('keeps the real error when the server cannot abort the failed multipart upload', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { tuning: { partSize: 5 * MiB } });
    const err = await failureOf(t.put('broken.bin', randomStream(20 * MiB, { failAfter: 12 * MiB }).stream));
    expect(err.message).toContain('the source broke off half-way');
    const abort = faults.seen.filter((s) => s.request.startsWith('DELETE') && s.request.includes('uploadId='));
    expect(abort).toHaveLength(1);
    await expect(t.head('broken.bin')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('does not retry a streamed put as a whole (a stream cannot be replayed)', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { retry: { baseDelayMs: 20 } });
    faults.inject({ fault: { status: 503, code: 'SlowDown' }, match: (m) => m === 'PUT' });
    const err = await failureOf(t.put('small.bin', randomStream(1000).stream));
    expect(err).toBeInstanceOf(TargetError);
    expect((err as TargetError).transient).toBe(true);
    expect(faults.seen.filter((s) => s.request.startsWith('PUT'))).toHaveLength(1);
  });

  it('does not retry a 404, or any other answer that waiting cannot change', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { retry: { baseDelayMs: 20 } });
    await expect(t.head('missing')).rejects.toBeInstanceOf(NotFoundError);
    expect(faults.seen).toHaveLength(1);
    faults.inject({ fault: { status: 400, code: 'InvalidArgument' } });
    await expect(t.head('missing')).rejects.toMatchObject({ status: 400, transient: false });
    expect(faults.seen).toHaveLength(2);
  });

  it('gives up after the configured retries, with the last error', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { retry: { retries: 2, baseDelayMs: 5 } });
    faults.inject({ fault: { status: 503, code: 'SlowDown' }, times: Infinity });
    const err = await failureOf(t.get('k'));
    expect(err).toBeInstanceOf(TargetError);
    expect(err.message).toMatch(/503 SlowDown/);
    expect(faults.seen).toHaveLength(3);
  });

  it('stops waiting as soon as the operation is aborted during backoff', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { retry: { baseDelayMs: 30_000, maxDelayMs: 30_000 } });
    faults.inject({ fault: { status: 503, code: 'SlowDown', retryAfter: '30' }, times: Infinity });
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(), 300);
    const err = await failureOf(t.head('k', { signal: controller.signal }));
    expect(err.name).toBe('AbortError');
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(faults.seen).toHaveLength(1);
  });

  it('reports an object under an R2 bucket lock as held', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { retry: { baseDelayMs: 20 } });
    await t.put('snapshots/tcab/2026/11/24/old.json', Buffer.from('{}'));
    faults.inject({ fault: { status: 409, code: 'ObjectLockedByBucketPolicy' }, match: (m) => m === 'DELETE' });
    const err = await failureOf(t.delete('snapshots/tcab/2026/11/24/old.json'));
    expect(err).toBeInstanceOf(ObjectHeldError);
    expect(err.message).toContain('snapshots/tcab/2026/11/24/old.json');
    expect(faults.seen.filter((s) => s.request.startsWith('DELETE'))).toHaveLength(1);
    expect((await t.head('snapshots/tcab/2026/11/24/old.json')).size).toBe(2);
  });

  it('resumes a listing that failed on a later page without repeating or losing keys', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { tuning: { pageSize: 2 }, retry: { baseDelayMs: 5 } });
    const keys = ['a', 'b', 'c', 'd', 'e', 'f', 'g'];
    for (const k of keys) await t.put(k, Buffer.from(k));
    faults.clear();
    faults.inject({
      fault: { status: 500, code: 'InternalError' },
      match: (m, url) => m === 'GET' && url.searchParams.has('continuation-token'),
    });
    expect(await listKeys(t, '')).toEqual(keys);
    expect(faults.seen.filter((s) => s.fault === '500')).toHaveLength(1);
  });
});

describe('s3 multipart upload start and completion (s3rver behind a fault-injecting proxy)', () => {
  const isCreate = (m: string, url: URL) => m === 'POST' && url.searchParams.has('uploads');
  const isComplete = (m: string, url: URL) => m === 'POST' && url.searchParams.has('uploadId');
  const faultsOf = (proxy: FaultProxy, which: (m: string, url: URL) => boolean) =>
    proxy.seen.filter((s) => which(s.request.split(' ')[0]!, new URL(s.request.split(' ')[1]!, 'http://x'))).map((s) => s.fault);

  it('retries a 503 on CreateMultipartUpload and on CompleteMultipartUpload', async () => {
    faults.clear();
    const t = openTarget(s3Spec(faults.endpoint), { tuning: { partSize: 5 * MiB }, retry: { baseDelayMs: 5, maxDelayMs: 20 } });
    faults.inject({ fault: { status: 503, code: 'SlowDown' }, match: isCreate });
    faults.inject({ fault: { status: 503, code: 'SlowDown' }, match: isComplete });
    const { stream, sha256 } = randomStream(11 * MiB);
    await t.put('big.bin', stream);
    expect(faultsOf(faults, isCreate)).toEqual(['503', null]);
    expect(faultsOf(faults, isComplete)).toEqual(['503', null]);
    expect(await sha256Of((await t.get('big.bin')).body)).toEqual({ sha256: sha256(), bytes: 11 * MiB });
  });

  it('ends well when CompleteMultipartUpload was applied but its answer lost, once the object proves to be the upload', async () => {
    r2Faults.clear();
    const events: Fields[] = [];
    const logger = createLogger({ level: 'debug', sink: (_l, _line, record) => events.push(record) });
    const t = openTarget(s3Spec(r2Faults.endpoint), { logger, tuning: { partSize: 5 * MiB }, retry: { baseDelayMs: 5, maxDelayMs: 20 } });
    r2Faults.inject({ fault: 'lost-answer', match: isComplete });
    const { stream, sha256 } = randomStream(11 * MiB);
    const stored = await t.put('big.bin', stream, { contentLength: 11 * MiB });
    // The retry found the upload gone (NoSuchUpload), and the object there holding exactly its parts.
    expect(faultsOf(r2Faults, isComplete)).toEqual(['lost answer', null]);
    expect(events.filter((e) => e.event === 'target.upload_completed_unanswered')).toMatchObject([
      { object: 'big.bin', parts: 3, bytes: 11 * MiB },
    ]);
    expect(stored).toEqual({ etag: (await t.head('big.bin')).etag, size: 11 * MiB });
    expect(await sha256Of((await t.get('big.bin')).body)).toEqual({ sha256: sha256(), bytes: 11 * MiB });
  });

  it('fails naming the key when the upload is gone and the object there, though of the same size, is not it', async () => {
    r2Faults.clear();
    const t = openTarget(s3Spec(r2Faults.endpoint), { tuning: { partSize: 5 * MiB }, retry: { baseDelayMs: 5, maxDelayMs: 20 } });
    // Another writer's object of exactly the size this upload will have.
    const theirs = randomStream(11 * MiB);
    await t.put('big.bin', theirs.stream, { contentLength: 11 * MiB });
    const theirSha256 = theirs.sha256();
    r2Faults.clear();
    // The first completion never arrives; by its retry the upload is gone (aborted by a clean-up, say).
    r2Faults.inject({ fault: 'reset', match: isComplete });
    r2Faults.inject({ fault: { status: 404, code: 'NoSuchUpload' }, match: isComplete });
    const err = await failureOf(t.put('big.bin', randomStream(11 * MiB).stream, { contentLength: 11 * MiB }));
    expect(err).toBeInstanceOf(TargetError);
    expect(err.message).toContain('big.bin');
    expect(err.message).toMatch(/upload was gone.*does not hold its 3 parts/);
    expect(faultsOf(r2Faults, isComplete)).toEqual(['reset', '404']);
    expect((await sha256Of((await t.get('big.bin')).body)).sha256).toBe(theirSha256);
  });

  it('computes the etag S3 and R2 give a multipart object (the example in the R2 documentation)', () => {
    expect(multipartEtag(['"bce6bf66aeb76c7040fdd5f4eccb78e6"', '8165449fc15bbf43d3b674595cbcc406'])).toBe(
      'f77dc0eecdebcd774a2a22cb393ad2ff-2',
    );
    expect(multipartEtag(['not-an-md5'])).toBeUndefined();
  });
});

/** A port nothing listens on: bound, noted, and released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}
