/**
 * Stands in front of s3rver and answers what Cloudflare R2 answers where s3rver is more lenient:
 * - 501 NotImplemented to flexible-checksum headers (x-amz-checksum-*, x-amz-sdk-checksum-algorithm,
 *   x-amz-trailer), except on DeleteObjects, which must carry Content-MD5 or a checksum;
 * - 400 to aws-chunked bodies (Content-Encoding: aws-chunked, x-amz-content-sha256: STREAMING-*) and to
 *   bodies without a Content-Length;
 * - 501 to object-lock, tagging and SSE-KMS headers;
 * - 400 XAmzContentSHA256Mismatch when a PutObject or UploadPart body does not have the sha256 its
 *   x-amz-content-sha256 header gives (then the upstream never receives the whole body);
 * - 400 EntityTooSmall when a multipart upload's parts are not equal-sized (but the last) or under 5 MiB;
 * - conditional PUTs (If-None-Match: *, If-Match) honoured, which s3rver ignores: the current object is
 *   checked before the request is forwarded, one request per key at a time;
 * - listings in key order (s3rver lists in the order it walks its folders);
 * - ListMultipartUploads and AbortMultipartUpload, which s3rver lacks, for the uploads seen passing through;
 * - 404 NoSuchUpload to a part or completion of an upload already completed or aborted (s3rver answers 500).
 * Every refusal is recorded in `violations`; uploads in flight are counted.
 */
import { HeadObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { startForwardingProxy, type Exchange } from './http-proxy.js';

const MiB = 1024 * 1024;

export interface RecordedRequest {
  method: string;
  path: string;
  query: string;
  headers: Record<string, string | string[] | undefined>;
}

export interface R2Proxy {
  endpoint: string;
  violations: string[];
  requests: RecordedRequest[];
  /** Most part uploads and PutObjects in flight at once since the last reset. */
  maxConcurrentUploads: number;
  /** Holds each upload this long before forwarding it, so concurrency shows. */
  uploadDelayMs: number;
  resetCounters(): void;
  stop(): Promise<void>;
}

export async function startR2Proxy(options: { upstream: string; accessKeyId: string; secretAccessKey: string }): Promise<R2Proxy> {
  const upstream = new S3Client({
    region: 'auto',
    endpoint: options.upstream,
    forcePathStyle: true,
    maxAttempts: 1,
    credentials: { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const keyLocks = new Map<string, Promise<void>>();
  const partSizes = new Map<string, Map<number, number>>();
  /** Incomplete multipart uploads, known from their first part: s3rver can neither list nor abort them. */
  const uploads = new Map<string, { bucket: string; key: string; initiated: Date }>();
  /** Uploads completed or aborted: R2 and S3 answer NoSuchUpload for them, s3rver a 500. */
  const ended = new Set<string>();
  let inFlight = 0;

  const state = {
    violations: [] as string[],
    requests: [] as RecordedRequest[],
    maxConcurrentUploads: 0,
    uploadDelayMs: 0,
  };

  /** Runs `fn` after every earlier request for the same key has finished. */
  async function serialised(key: string, fn: () => Promise<void>): Promise<void> {
    const before = keyLocks.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const chain = before.then(() => mine);
    keyLocks.set(key, chain);
    await before;
    try {
      await fn();
    } finally {
      release();
      if (keyLocks.get(key) === chain) keyLocks.delete(key);
    }
  }

  async function refuse(x: Exchange, status: number, code: string, why: string): Promise<void> {
    state.violations.push(`${x.req.method} ${x.url.pathname}${x.url.search}: ${why}`);
    await x.reply(status, code, why);
  }

  const proxy = await startForwardingProxy(options.upstream, async (x) => {
    const { req, url } = x;
    const method = req.method ?? 'GET';
    const h = req.headers;
    const q = url.searchParams;
    state.requests.push({ method, path: url.pathname, query: url.search, headers: { ...h } });
    const [, bucket = '', ...rest] = url.pathname.split('/');
    const key = decodeURIComponent(rest.join('/'));
    const op =
      method === 'PUT' && q.has('partNumber') && q.has('uploadId')
        ? 'UploadPart'
        : method === 'PUT' && key && !h['x-amz-copy-source'] && [...q.keys()].every((k) => k === 'x-id')
          ? 'PutObject'
          : method === 'POST' && q.has('uploads')
            ? 'CreateMultipartUpload'
            : method === 'POST' && q.has('uploadId')
              ? 'CompleteMultipartUpload'
              : method === 'POST' && q.has('delete')
                ? 'DeleteObjects'
                : method === 'GET' && !key && q.get('list-type') === '2' && !q.has('delimiter')
                  ? 'ListObjectsV2'
                  : method === 'GET' && !key && q.has('uploads')
                    ? 'ListMultipartUploads'
                    : method === 'DELETE' && key && q.has('uploadId')
                      ? 'AbortMultipartUpload'
                      : `${method}`;

    const checksumHeaders = Object.keys(h).filter(
      (n) => n.startsWith('x-amz-checksum-') || n === 'x-amz-sdk-checksum-algorithm' || n === 'x-amz-trailer',
    );
    if (op === 'DeleteObjects') {
      if (!h['content-md5'] && !Object.keys(h).some((n) => n.startsWith('x-amz-checksum-'))) {
        return refuse(x, 400, 'MissingContentMD5', 'DeleteObjects without Content-MD5 or a checksum');
      }
    } else if (checksumHeaders.length > 0) {
      return refuse(x, 501, 'NotImplemented', `checksum headers are not implemented: ${checksumHeaders.join(', ')}`);
    }
    if (String(h['content-encoding'] ?? '').includes('aws-chunked') || String(h['x-amz-content-sha256'] ?? '').startsWith('STREAMING-')) {
      return refuse(x, 400, 'InvalidRequest', 'aws-chunked uploads are not supported');
    }
    if (String(h['transfer-encoding'] ?? '').includes('chunked')) {
      return refuse(x, 400, 'MissingContentLength', 'a body without Content-Length');
    }
    const lockHeaders = Object.keys(h).filter((n) => n.startsWith('x-amz-object-lock-'));
    if (lockHeaders.length > 0) return refuse(x, 501, 'NotImplemented', `object lock headers: ${lockHeaders.join(', ')}`);
    if (h['x-amz-tagging'] || q.has('tagging')) return refuse(x, 501, 'NotImplemented', 'object tagging');
    if (
      h['x-amz-server-side-encryption'] === 'aws:kms' ||
      h['x-amz-server-side-encryption-aws-kms-key-id'] ||
      h['x-amz-server-side-encryption-context']
    ) {
      return refuse(x, 501, 'NotImplemented', 'SSE-KMS');
    }

    if ((op === 'UploadPart' || op === 'CompleteMultipartUpload') && ended.has(q.get('uploadId')!)) {
      return x.reply(
        404,
        'NoSuchUpload',
        'The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.',
      );
    }
    if (op === 'CompleteMultipartUpload') {
      const id = q.get('uploadId')!;
      x.res.once('finish', () => x.res.statusCode < 300 && ended.add(id));
    }
    if (op === 'UploadPart' && !uploads.has(q.get('uploadId')!)) {
      uploads.set(q.get('uploadId')!, { bucket, key, initiated: new Date() });
    }
    if (op === 'CompleteMultipartUpload') uploads.delete(q.get('uploadId')!);
    if (op === 'UploadPart') {
      const sizes = partSizes.get(q.get('uploadId')!) ?? new Map<number, number>();
      sizes.set(Number(q.get('partNumber')), Number(h['content-length'] ?? 0));
      partSizes.set(q.get('uploadId')!, sizes);
    }
    if (op === 'CompleteMultipartUpload') {
      const sizes = [...(partSizes.get(q.get('uploadId')!) ?? new Map<number, number>()).entries()]
        .sort((a, b) => a[0] - b[0])
        .map((e) => e[1]);
      const first = sizes[0] ?? 0;
      if (sizes.slice(0, -1).some((s) => s !== first) || (sizes.length > 1 && first < 5 * MiB) || (sizes.at(-1) ?? 0) > first) {
        return refuse(x, 400, 'EntityTooSmall', `parts must be equal-sized and at least 5 MiB but the last: ${sizes.join(', ')}`);
      }
    }

    if (op === 'ListObjectsV2') return listInKeyOrder(x, bucket);
    if (op === 'ListMultipartUploads') return listUploads(x, bucket);
    if (op === 'AbortMultipartUpload') {
      uploads.delete(q.get('uploadId')!);
      ended.add(q.get('uploadId')!);
      x.res.writeHead(204).end();
      return;
    }
    if (op === 'UploadPart' || op === 'PutObject') {
      inFlight++;
      state.maxConcurrentUploads = Math.max(state.maxConcurrentUploads, inFlight);
      // An upload is in flight until the service has answered it, not until the answer has reached the client.
      let counted = true;
      const answered = () => {
        if (counted) inFlight--;
        counted = false;
      };
      try {
        if (state.uploadDelayMs > 0) await new Promise((r) => setTimeout(r, state.uploadDelayMs));
        return await conditional(x, op, bucket, key, answered);
      } finally {
        answered();
      }
    }
    return conditional(x, op, bucket, key);
  });

  /**
   * R2 lists in key (UTF-8 byte) order; s3rver lists in the order of its folder walk, so "a-b" can come after
   * "a/c" and a continuation then skips keys. Answer listings from s3rver's full listing, sorted.
   */
  async function listInKeyOrder(x: Exchange, bucket: string): Promise<void> {
    const q = x.url.searchParams;
    const prefix = q.get('prefix') ?? '';
    const maxKeys = Math.min(1000, Number(q.get('max-keys') ?? 1000));
    const token = q.get('continuation-token');
    const after = token ? Buffer.from(token, 'base64url').toString() : (q.get('start-after') ?? '');
    const all = await upstream.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, MaxKeys: 1000 }));
    if (all.IsTruncated) throw new Error('the R2 rules list at most 1000 keys per prefix; use a narrower prefix in tests');
    const sorted = (all.Contents ?? []).sort((a, b) => Buffer.compare(Buffer.from(a.Key!), Buffer.from(b.Key!)));
    const rest = sorted.filter((o) => Buffer.compare(Buffer.from(o.Key!), Buffer.from(after)) > 0);
    const page = rest.slice(0, maxKeys);
    const truncated = rest.length > page.length;
    const esc = (t: string) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
    const body = [
      '<?xml version="1.0" encoding="UTF-8"?>',
      '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
      `<Name>${esc(bucket)}</Name><Prefix>${esc(prefix)}</Prefix><KeyCount>${page.length}</KeyCount><MaxKeys>${maxKeys}</MaxKeys>`,
      `<IsTruncated>${truncated}</IsTruncated>`,
      token ? `<ContinuationToken>${token}</ContinuationToken>` : '',
      truncated ? `<NextContinuationToken>${Buffer.from(page.at(-1)!.Key!).toString('base64url')}</NextContinuationToken>` : '',
      ...page.map(
        (o) =>
          `<Contents><Key>${esc(o.Key!)}</Key><LastModified>${o.LastModified!.toISOString()}</LastModified>` +
          `<ETag>${esc(o.ETag ?? '')}</ETag><Size>${o.Size ?? 0}</Size><StorageClass>STANDARD</StorageClass></Contents>`,
      ),
      '</ListBucketResult>',
    ].join('');
    x.res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
    x.res.end(body);
  }

  async function listUploads(x: Exchange, bucket: string): Promise<void> {
    const prefix = x.url.searchParams.get('prefix') ?? '';
    const esc = (t: string) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
    const mine = [...uploads.entries()]
      .filter(([, u]) => u.bucket === bucket && u.key.startsWith(prefix))
      .sort((a, b) => Buffer.compare(Buffer.from(a[1].key), Buffer.from(b[1].key)));
    const body = [
      '<?xml version="1.0" encoding="UTF-8"?>',
      '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
      `<Bucket>${esc(bucket)}</Bucket><Prefix>${esc(prefix)}</Prefix><IsTruncated>false</IsTruncated>`,
      ...mine.map(
        ([id, u]) =>
          `<Upload><Key>${esc(u.key)}</Key><UploadId>${esc(id)}</UploadId><Initiated>${u.initiated.toISOString()}</Initiated></Upload>`,
      ),
      '</ListMultipartUploadsResult>',
    ].join('');
    x.res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
    x.res.end(body);
  }

  async function conditional(x: Exchange, op: string, bucket: string, key: string, answered?: () => void): Promise<void> {
    const ifNoneMatch = x.req.headers['if-none-match'];
    const ifMatch = x.req.headers['if-match'];
    // R2 checks a body against the sha256 it was signed with (UNSIGNED-PAYLOAD is not a sha256, and not checked).
    const signed = String(x.req.headers['x-amz-content-sha256'] ?? '');
    const forward = () =>
      x.forward({
        ...(/^[0-9a-f]{64}$/.test(signed) && (op === 'PutObject' || op === 'UploadPart') ? { sha256: signed } : {}),
        ...(answered ? { beforeAnswer: async () => answered() } : {}),
      });
    if ((op !== 'PutObject' && op !== 'CompleteMultipartUpload') || (!ifNoneMatch && !ifMatch)) return forward();
    return serialised(`${bucket}/${key}`, async () => {
      let etag: string | undefined;
      try {
        etag = (await upstream.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))).ETag;
      } catch (err) {
        if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode !== 404) throw err;
      }
      const bare = (t: string | undefined) => t?.replace(/^W\//, '').replace(/"/g, '');
      if (ifNoneMatch === '*' && etag !== undefined)
        return x.reply(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold');
      if (ifMatch && (etag === undefined || bare(etag) !== bare(String(ifMatch)))) {
        return x.reply(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold');
      }
      await forward();
    });
  }

  return Object.assign(state, {
    endpoint: proxy.endpoint,
    resetCounters() {
      state.maxConcurrentUploads = 0;
      state.violations.length = 0;
      state.requests.length = 0;
    },
    async stop() {
      upstream.destroy();
      await proxy.stop();
    },
  });
}
