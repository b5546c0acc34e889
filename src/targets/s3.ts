/**
 * r2:// and s3:// targets, through @aws-sdk/client-s3, configured for what Cloudflare R2 accepts:
 * - no flexible checksums (R2 answers 501 to x-amz-checksum-*), so checksums only WHEN_REQUIRED;
 * - DeleteObjects, which the SDK always checksums with CRC32, sends Content-MD5 instead;
 * - no aws-chunked bodies: every request body has a Content-Length. A stream whose sha256 the caller knows
 *   (a copy checked against its manifest) goes as one PutObject carrying that sha256 as x-amz-content-sha256,
 *   which the service checks against the bytes it received, up to SINGLE_REQUEST_MAX_BYTES; other streams go as
 *   multipart uploads of equal-sized Buffer parts (at least 5 MiB, at most 10,000 of them), each signed with
 *   its own sha256 and retried on its own, or, when small, one PutObject;
 * - no object-lock, tagging or SSE-KMS headers;
 * - at most 2 concurrent part uploads on R2 (its limit), 4 elsewhere.
 */
import { createHash } from 'node:crypto';
import { addAbortSignal, type Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
} from '@aws-sdk/client-s3';
import { isAbortError, NotFoundError, ObjectHeldError, PreconditionFailedError, TargetError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import {
  abandonBody,
  abortError,
  checkKey,
  checkPutCondition,
  compareKeys,
  describeStatus,
  hintFor,
  isTransientNetworkError,
  isTransientStatus,
  networkDetail,
  parseRetryAfterMs,
  scrub,
  sourceFailure,
  SourceError,
  type TargetIdentity,
} from './failure.js';
import { putInParts, putWhole, wholeBodyLength } from './parts.js';
import { isRetryable, retrying, type RetryContext, type RetryOptions } from './retry.js';
import type { S3TargetSpec } from './spec.js';
import type { DeleteOptions, GetOptions, GetResult, ObjectInfo, PutOptions, PutResult, Target } from './target.js';

const MiB = 1024 * 1024;
const MIN_PART_SIZE = 5 * MiB;
const MAX_PARTS = 10_000;
/** For a body of unknown length: 10,000 parts of 8 MiB hold objects up to 78 GiB. */
const DEFAULT_PART_SIZE = 8 * MiB;
/** Cloudflare R2 throttles more concurrent uploads than this (Litestream keeps R2 at 2 as well). */
const R2_CONCURRENCY = 2;
const DEFAULT_CONCURRENCY = 4;

export interface S3TargetOptions {
  /** Keys per ListObjectsV2 page. Default 1000 (the maximum). */
  pageSize?: number;
  /**
   * Part size for streamed uploads; at least 5 MiB. Default 5 MiB when the length is known (grown to fit
   * 10,000 parts), 8 MiB when it is not.
   */
  partSize?: number;
  /** Parts uploaded at once. Default 4, and never more than 2 on R2. */
  concurrency?: number;
  /** Connection set-up timeout. Default 10 s. */
  connectTimeoutMs?: number;
  /** A socket idle for this long is given up. Default 120 s. */
  idleTimeoutMs?: number;
  /** The largest streamed body with a known sha256 sent as one PutObject. Default SINGLE_REQUEST_MAX_BYTES (1 GiB). */
  singlePutMaxBytes?: number;
  /** Retries of each part of a multipart upload. */
  retry?: RetryOptions;
  logger?: Logger;
}

interface S3Failure {
  name?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $response?: { headers?: Record<string, string | undefined> };
}

/** The part size for a body: the configured one, grown so that `contentLength` fits in 10,000 parts. */
export function choosePartSize(configured: number, contentLength: number | undefined): number {
  if (contentLength === undefined || contentLength <= configured * MAX_PARTS) return configured;
  return Math.ceil(contentLength / MAX_PARTS / MiB) * MiB;
}

export class S3Target implements Target {
  readonly name: string;
  readonly url: string;
  private readonly spec: S3TargetSpec;
  private readonly id: TargetIdentity;
  private readonly options: S3TargetOptions;
  private readonly logger: Logger;
  private readonly pageSize: number;
  private readonly partSize: number | undefined;
  readonly concurrency: number;
  private clientInstance: S3Client | undefined;

  constructor(spec: S3TargetSpec, options: S3TargetOptions = {}) {
    this.name = spec.name;
    this.url = spec.displayUrl;
    this.spec = spec;
    this.id = { name: spec.name, url: spec.displayUrl, secrets: [spec.secretAccessKey ?? ''].filter(Boolean) };
    this.options = options;
    this.logger = options.logger ?? silentLogger;
    this.pageSize = Math.max(1, Math.min(1000, options.pageSize ?? 1000));
    this.partSize = options.partSize === undefined ? undefined : Math.max(MIN_PART_SIZE, options.partSize);
    const wanted = options.concurrency ?? (spec.r2 ? R2_CONCURRENCY : DEFAULT_CONCURRENCY);
    this.concurrency = Math.max(1, spec.r2 ? Math.min(wanted, R2_CONCURRENCY) : wanted);
  }

  /** Created on first use, so opening a target never touches the network. */
  private sdkNotice(content: unknown[]): void {
    this.logger.debug('target.sdk_notice', {
      target: this.name,
      message: scrub(this.id, content.map((c) => (c instanceof Error ? c.message : String(c))).join(' ')).slice(0, 500),
    });
  }

  get client(): S3Client {
    if (!this.clientInstance) {
      const { spec } = this;
      const client = new S3Client({
        region: spec.region,
        ...(spec.endpoint ? { endpoint: spec.endpoint } : {}),
        forcePathStyle: spec.forcePathStyle,
        ...(spec.accessKeyId && spec.secretAccessKey
          ? { credentials: { accessKeyId: spec.accessKeyId, secretAccessKey: spec.secretAccessKey } }
          : {}),
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
        // Retries happen in retry.ts; SDK retries on top would multiply attempts.
        maxAttempts: 1,
        // Without a logger the SDK writes notices straight to the console (an upload that failed prints "An
        // error was encountered in a non-retryable streaming request." on stderr, outside the JSON log). The
        // failure itself is reported by this target; the SDK's words go to the debug log only. Its info and
        // debug output (request inputs) are not wanted at all.
        logger: {
          debug: () => undefined,
          info: () => undefined,
          warn: (...content: unknown[]) => this.sdkNotice(content),
          error: (...content: unknown[]) => this.sdkNotice(content),
        },
        requestHandler: {
          connectionTimeout: this.options.connectTimeoutMs ?? 10_000,
          socketTimeout: this.options.idleTimeoutMs ?? 120_000,
          httpAgent: { keepAlive: true, maxSockets: 16 },
          httpsAgent: { keepAlive: true, maxSockets: 16 },
        },
      });
      // Low priority in the build step: after the SDK's checksum middleware has added its headers, before signing.
      client.middlewareStack.add(contentMd5ForDeleteObjects, { step: 'build', priority: 'low', name: 'tcabContentMd5ForDeleteObjects' });
      this.clientInstance = client;
    }
    return this.clientInstance;
  }

  private objectKey(key: string): string {
    return this.spec.prefix + key;
  }

  private where(): string {
    return `bucket "${this.spec.bucket}"`;
  }

  /** Converts an SDK failure to NotFound / PreconditionFailed / Held / a TargetError, at the edge. */
  private fail(operation: string, key: string | undefined, err: unknown, conditional = false): Error {
    if (isAbortError(err) || err instanceof TargetError || err instanceof NotFoundError || err instanceof PreconditionFailedError) {
      return err as Error;
    }
    const e = (err ?? {}) as S3Failure;
    const status = e.$metadata?.httpStatusCode;
    const code = e.Code ?? (e.name && e.name !== 'Error' ? e.name : undefined);
    const what = `${key ?? ''} on target "${this.name}" (${this.url})`;
    if (err instanceof SourceError) return sourceFailure(this.id, operation, key, err);
    if (code === 'NoSuchBucket') {
      return this.targetError(operation, key, err, status, code, false, hintFor('missing-container', this.where()));
    }
    if (code === 'ObjectLockedByBucketPolicy' || code === 'ObjectLocked') return new ObjectHeldError(what, { cause: err });
    if (
      conditional &&
      (status === 412 || status === 409 || status === 404 || code === 'PreconditionFailed' || code === 'ConditionalRequestConflict')
    ) {
      return new PreconditionFailedError(what, { cause: err });
    }
    if (status === 404 || code === 'NoSuchKey' || code === 'NotFound') return new NotFoundError(what, { cause: err });
    if (status === undefined && isTransientNetworkError(err)) {
      return this.targetError(operation, key, err, status, code, true, hintFor('network', `${this.spec.endpoint ?? 'the S3 endpoint'}`));
    }
    if (code === 'InvalidRange' || status === 416) {
      return this.targetError(operation, key, err, status, 'INVALID_RANGE', false, 'the requested range against the object size');
    }
    // The service received other bytes than the sha256 they were sent with: changed on the way (a proxy
    // rewriting bodies, a faulty network card). Sending them again from the source may well succeed.
    const garbled = code === 'XAmzContentSHA256Mismatch' || code === 'BadDigest';
    // S3 may answer CompleteMultipartUpload 200 with an InternalError body: as retryable as a 500.
    const transient = isTransientStatus(status) || code === 'SlowDown' || code === 'InternalError' || garbled;
    const hint = garbled
      ? `what lies between here and ${this.where()} (a proxy that rewrites request bodies?): the service received other bytes than were sent and stored nothing; they are sent again (a part on its own, a whole copy from its source)`
      : status === 401 || status === 403
        ? hintFor('auth', this.where())
        : status === 429 || code === 'SlowDown'
          ? hintFor('throttled', this.where())
          : status === 501
            ? `that the server supports this operation (${code ?? 'NotImplemented'})`
            : status !== undefined && status >= 500
              ? hintFor('server', this.where())
              : hintFor('other', this.where());
    return this.targetError(operation, key, err, status, code, transient, hint);
  }

  private targetError(
    operation: string,
    key: string | undefined,
    err: unknown,
    status: number | undefined,
    code: string | undefined,
    transient: boolean,
    hint: string,
  ): TargetError {
    const e = (err ?? {}) as S3Failure;
    const detail = status === undefined ? (networkDetail(err) ?? e.message ?? String(err)) : describeStatus(status, code, e.message);
    const retryAfterMs = parseRetryAfterMs(e.$response?.headers?.['retry-after']);
    return new TargetError({
      target: this.name,
      url: this.url,
      operation,
      ...(key !== undefined ? { key } : {}),
      detail: scrub(this.id, detail),
      hint,
      cause: err,
      transient,
      ...(status !== undefined ? { status } : {}),
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
    });
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<PutResult> {
    checkKey(this.id, 'put', key);
    const { signal } = options;
    try {
      if (Buffer.isBuffer(body)) return await this.putObject(key, body, options);
      const whole = wholeBodyLength(options, this.options.singlePutMaxBytes);
      if (whole !== undefined) return await this.putStreamed(key, body, { ...options, sha256: options.sha256!, contentLength: whole });
      return await putInParts(body, this.multipart(key, options), {
        // Each upload holds `concurrency + 1` parts in memory: the smallest part R2 and S3 accept keeps
        // that least, and a known length lets choosePartSize grow it should the object need more parts.
        partSize: choosePartSize(
          this.partSize ?? (options.contentLength === undefined ? DEFAULT_PART_SIZE : MIN_PART_SIZE),
          options.contentLength,
        ),
        concurrency: this.concurrency,
        signal,
      });
    } catch (err) {
      const failure = signal?.aborted ? abortError(signal) : this.fail('put', key, err, Boolean(options.ifMatch || options.ifNoneMatch));
      // A failure before the body was read (a refused condition, a bad sha256) must not leave it waiting.
      if (!Buffer.isBuffer(body)) abandonBody(body, failure);
      throw failure;
    }
  }

  private async putObject(key: string, data: Buffer, options: PutOptions): Promise<PutResult> {
    const out = await this.client.send(
      new PutObjectCommand({
        Bucket: this.spec.bucket,
        Key: this.objectKey(key),
        Body: data,
        ContentLength: data.length,
        ...(options.contentType ? { ContentType: options.contentType } : {}),
        ...(options.ifNoneMatch ? { IfNoneMatch: options.ifNoneMatch } : {}),
        ...(options.ifMatch ? { IfMatch: options.ifMatch } : {}),
      }),
      options.signal ? { abortSignal: options.signal } : {},
    );
    return { etag: out.ETag ?? '', size: data.length };
  }

  /**
   * One PutObject streaming `body`, signed with the sha256 the caller knows it has: the service refuses the
   * request when the bytes differ (XAmzContentSHA256Mismatch), so nothing but the promised bytes is stored.
   * putWhole holds the last chunk back, so a body that fails at its very end stores nothing either, even on
   * a service that would not check the sha256.
   */
  private async putStreamed(
    key: string,
    body: Readable,
    options: PutOptions & { sha256: string; contentLength: number },
  ): Promise<PutResult> {
    if (!/^[0-9a-f]{64}$/.test(options.sha256)) {
      throw new TargetError({
        target: this.name,
        url: this.url,
        operation: 'put',
        key,
        detail: `"${options.sha256}" is not a sha256 in hex`,
        hint: 'the manifest the copy was made from',
      });
    }
    return putWhole(body, options.contentLength, options.signal, async (stream, abortSignal) => {
      const command = new PutObjectCommand({
        Bucket: this.spec.bucket,
        Key: this.objectKey(key),
        Body: stream,
        ContentLength: options.contentLength,
        ...(options.contentType ? { ContentType: options.contentType } : {}),
        ...(options.ifNoneMatch ? { IfNoneMatch: options.ifNoneMatch } : {}),
        ...(options.ifMatch ? { IfMatch: options.ifMatch } : {}),
      });
      signWithSha256(command, options.sha256);
      const out = await this.client.send(command, { abortSignal });
      return { etag: out.ETag ?? '', size: options.contentLength };
    });
  }

  private multipart(key: string, options: PutOptions) {
    const { signal } = options;
    const Bucket = this.spec.bucket;
    const Key = this.objectKey(key);
    const send = { ...(signal ? { abortSignal: signal } : {}) };
    const conditional = Boolean(options.ifNoneMatch || options.ifMatch);
    const parts: CompletedPart[] = [];
    /** Each part's length and sha256, which sign it and which prove, if it comes to that, what was stored. */
    const sums: Array<{ bytes: number; sha256: string }> = [];
    let uploadId: string | undefined;
    const retry = (operation: string): RetryContext => ({
      ...this.options.retry,
      target: this.name,
      operation,
      key,
      logger: this.logger,
      signal,
    });
    return {
      single: (data: Buffer) => this.putObject(key, data, options),
      begin: async () => {
        // The service checks the condition again on completion; checking first saves uploading gigabytes in vain.
        if (conditional) await checkPutCondition(this, key, options);
        // A start whose answer was lost leaves an empty upload behind, which abortStaleUploads and the
        // bucket's lifecycle remove; the retry starts another.
        const out = await retrying(async () => {
          try {
            return await this.client.send(
              new CreateMultipartUploadCommand({ Bucket, Key, ...(options.contentType ? { ContentType: options.contentType } : {}) }),
              send,
            );
          } catch (err) {
            throw this.fail('start upload', key, err);
          }
        }, retry('start upload'));
        uploadId = out.UploadId;
      },
      part: async (number: number, data: Buffer) => {
        if (number > MAX_PARTS) {
          throw new TargetError({
            target: this.name,
            url: this.url,
            operation: 'put',
            key,
            detail: `the upload needs more than ${MAX_PARTS} parts of ${data.length} bytes`,
            hint: 'pass contentLength with the put so that the part size can be chosen for the object size',
          });
        }
        // The signature needs the part's sha256 anyway: computed here, the SDK takes it instead of hashing again.
        const sha256 = createHash('sha256').update(data).digest('hex');
        sums[number - 1] = { bytes: data.length, sha256 };
        const out = await retrying(
          async () => {
            try {
              const command = new UploadPartCommand({
                Bucket,
                Key,
                UploadId: uploadId,
                PartNumber: number,
                Body: data,
                ContentLength: data.length,
              });
              signWithSha256(command, sha256);
              return await this.client.send(command, send);
            } catch (err) {
              throw this.fail('upload part', `${key} #${number}`, err);
            }
          },
          { ...retry('upload part'), key: `${key} #${number}` },
        );
        parts[number - 1] = { PartNumber: number, ETag: out.ETag };
      },
      complete: async (count: number, size: number) => {
        let unsure = false;
        try {
          return await retrying(async () => {
            try {
              const out = await this.client.send(
                new CompleteMultipartUploadCommand({
                  Bucket,
                  Key,
                  UploadId: uploadId,
                  MultipartUpload: { Parts: parts.slice(0, count) },
                  ...(options.ifNoneMatch ? { IfNoneMatch: options.ifNoneMatch } : {}),
                  ...(options.ifMatch ? { IfMatch: options.ifMatch } : {}),
                }),
                send,
              );
              return { etag: out.ETag ?? '', size };
            } catch (err) {
              const failure = this.fail('complete upload', key, err, conditional);
              if (isRetryable(failure)) unsure = true;
              throw failure;
            }
          }, retry('complete upload'));
        } catch (err) {
          // An earlier attempt may have completed the upload with its answer lost: the retry then finds no
          // such upload (or, with a condition, the object it made). Only proof that the object is this upload
          // ends it well.
          if (!unsure || !(err instanceof NotFoundError || err instanceof PreconditionFailedError)) throw err;
          const etag = await retrying(
            () => this.storedUpload(key, parts.slice(0, count), sums.slice(0, count), size, signal),
            retry('check completed upload'),
          );
          if (etag === undefined) {
            if (err instanceof PreconditionFailedError) throw err;
            throw new TargetError({
              target: this.name,
              url: this.url,
              operation: 'complete upload',
              key,
              detail: `the multipart upload was gone when its completion was sent again, and ${key} does not hold its ${count} parts`,
              hint: `whether something aborted it (a prune's stale-upload clean-up, a lifecycle rule) or wrote ${key} meanwhile; the upload is sent again on the next run`,
              cause: err,
            });
          }
          this.logger.info('target.upload_completed_unanswered', { target: this.name, object: key, parts: count, bytes: size });
          return { etag, size };
        }
      },
      abandon: async () => {
        if (!uploadId) return;
        try {
          await this.client.send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId: uploadId }), {
            abortSignal: AbortSignal.timeout(30_000),
          });
        } catch (err) {
          // Some servers do not implement it; R2 and S3 also expire incomplete uploads (abortStaleUploads).
          this.logger.warn('target.abort_upload_failed', {
            target: this.name,
            key,
            error: scrub(this.id, (err as Error).message ?? String(err)),
          });
        }
      },
    };
  }

  /**
   * The object's etag when `key` holds exactly the parts of a multipart upload, else undefined. Its size
   * must match; then its etag, when it is the one S3 and R2 give an object assembled from exactly these
   * parts (see multipartEtag), proves it. A service whose etags say nothing of the kind is read back,
   * part by part against the sha256 each part was signed with. A size alone proves nothing: another
   * writer's object may have it too.
   */
  private async storedUpload(
    key: string,
    parts: CompletedPart[],
    sums: Array<{ bytes: number; sha256: string }>,
    size: number,
    signal: AbortSignal | undefined,
  ): Promise<string | undefined> {
    let info: ObjectInfo;
    try {
      info = await this.head(key, { signal });
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
    if (info.size !== size) return undefined;
    const expected = multipartEtag(parts.map((p) => p.ETag ?? ''));
    if (expected !== undefined && bareEtag(info.etag) === expected) return info.etag;
    const { body, etag } = await this.get(key, { signal });
    let part = 0;
    let filled = 0;
    let hash = createHash('sha256');
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        for (let offset = 0; offset < chunk.length; ) {
          if (part >= sums.length) return undefined;
          const n = Math.min(sums[part]!.bytes - filled, chunk.length - offset);
          hash.update(chunk.subarray(offset, offset + n));
          offset += n;
          filled += n;
          if (filled === sums[part]!.bytes) {
            if (hash.digest('hex') !== sums[part]!.sha256) return undefined;
            part++;
            filled = 0;
            hash = createHash('sha256');
          }
        }
      }
    } finally {
      body.destroy();
    }
    return part === sums.length && filled === 0 && etag === info.etag ? etag : undefined;
  }

  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    checkKey(this.id, 'get', key);
    const { signal, range } = options;
    try {
      const out = await this.client.send(
        new GetObjectCommand({
          Bucket: this.spec.bucket,
          Key: this.objectKey(key),
          ...(range ? { Range: `bytes=${range.start}-${range.end ?? ''}` } : {}),
        }),
        signal ? { abortSignal: signal } : {},
      );
      const body = out.Body as Readable;
      if (signal) addAbortSignal(signal, body);
      const total = /\/(\d+)$/.exec(out.ContentRange ?? '')?.[1];
      return { body, size: total !== undefined ? Number(total) : Number(out.ContentLength ?? 0), etag: out.ETag ?? '' };
    } catch (err) {
      if (signal?.aborted) throw abortError(signal);
      throw this.fail('get', key, err);
    }
  }

  async head(key: string, options: { signal?: AbortSignal } = {}): Promise<ObjectInfo> {
    checkKey(this.id, 'head', key);
    try {
      const out = await this.client.send(
        new HeadObjectCommand({ Bucket: this.spec.bucket, Key: this.objectKey(key) }),
        options.signal ? { abortSignal: options.signal } : {},
      );
      return { key, size: Number(out.ContentLength ?? 0), lastModified: out.LastModified ?? new Date(0), etag: out.ETag ?? '' };
    } catch (err) {
      if (options.signal?.aborted) throw abortError(options.signal);
      throw this.fail('head', key, err);
    }
  }

  list(prefix: string, options: { signal?: AbortSignal } = {}): AsyncIterable<ObjectInfo> {
    checkKey(this.id, 'list', prefix, 'prefix');
    return this.pages(prefix, options.signal);
  }

  private async *pages(prefix: string, signal: AbortSignal | undefined): AsyncGenerator<ObjectInfo> {
    const strip = this.spec.prefix.length;
    let token: string | undefined;
    let previous: string | undefined;
    do {
      let out;
      try {
        out = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.spec.bucket,
            Prefix: this.objectKey(prefix),
            MaxKeys: this.pageSize,
            ...(token ? { ContinuationToken: token } : {}),
          }),
          signal ? { abortSignal: signal } : {},
        );
      } catch (err) {
        if (signal?.aborted) throw abortError(signal);
        throw this.fail('list', prefix, err);
      }
      for (const o of out.Contents ?? []) {
        if (!o.Key) continue;
        // Resuming a listing, here and in the retry wrapper, relies on key order; a server that breaks it
        // would make keys disappear from listings, and retention act on an incomplete one.
        if (previous !== undefined && compareKeys(o.Key, previous) <= 0) {
          throw new TargetError({
            target: this.name,
            url: this.url,
            operation: 'list',
            key: prefix,
            detail: `the service listed "${o.Key}" after "${previous}", out of key order`,
            hint: 'that the endpoint is an S3-compatible service that lists keys in order',
          });
        }
        previous = o.Key;
        yield { key: o.Key.slice(strip), size: Number(o.Size ?? 0), lastModified: o.LastModified ?? new Date(0), etag: o.ETag ?? '' };
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  /** One request per call (the SDK retries nothing: maxAttempts 1); retries are retry.ts's, which `once` switches off. */
  async delete(key: string, options: DeleteOptions = {}): Promise<void> {
    checkKey(this.id, 'delete', key);
    try {
      await this.client.send(
        new DeleteObjectCommand({ Bucket: this.spec.bucket, Key: this.objectKey(key) }),
        options.signal ? { abortSignal: options.signal } : {},
      );
    } catch (err) {
      if (options.signal?.aborted) throw abortError(options.signal);
      const failure = this.fail('delete', key, err);
      if (failure instanceof NotFoundError) return;
      throw failure;
    }
  }

  /**
   * Deletes up to thousands of keys with DeleteObjects (1000 per request). Throws on the first key the
   * service refuses, naming it; a key under a bucket lock gives ObjectHeldError.
   */
  async deleteMany(keys: string[], options: { signal?: AbortSignal } = {}): Promise<void> {
    for (const key of keys) checkKey(this.id, 'delete', key);
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      let out;
      try {
        out = await this.client.send(
          new DeleteObjectsCommand({
            Bucket: this.spec.bucket,
            Delete: { Objects: batch.map((k) => ({ Key: this.objectKey(k) })), Quiet: true },
          }),
          options.signal ? { abortSignal: options.signal } : {},
        );
      } catch (err) {
        if (options.signal?.aborted) throw abortError(options.signal);
        throw this.fail('delete', `${batch.length} keys from ${batch[0]}`, err);
      }
      const refused = (out.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
      if (refused.length > 0) {
        const first = refused[0]!;
        const key = (first.Key ?? '').slice(this.spec.prefix.length);
        throw this.fail(
          'delete',
          key,
          Object.assign(new Error(first.Message ?? first.Code ?? 'refused'), { Code: first.Code, name: first.Code }),
        );
      }
    }
  }

  /** Aborts multipart uploads started before `olderThan` under this target's prefix. */
  async abortStaleUploads(olderThan: Date, options: { signal?: AbortSignal } = {}): Promise<number> {
    const signal = options.signal;
    const send = signal ? { abortSignal: signal } : {};
    let removed = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      let out;
      try {
        out = await this.client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.spec.bucket,
            Prefix: this.spec.prefix,
            ...(keyMarker ? { KeyMarker: keyMarker } : {}),
            ...(uploadIdMarker ? { UploadIdMarker: uploadIdMarker } : {}),
          }),
          send,
        );
      } catch (err) {
        if (signal?.aborted) throw abortError(signal);
        if ((err as S3Failure).$metadata?.httpStatusCode === 501) {
          // A server that cannot list uploads keeps none that we could abort.
          this.logger.warn('target.list_uploads_unsupported', { target: this.name });
          return removed;
        }
        throw this.fail('abort stale uploads', undefined, err);
      }
      for (const u of out.Uploads ?? []) {
        if (!u.Key || !u.UploadId || !u.Initiated || u.Initiated >= olderThan) continue;
        try {
          await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.spec.bucket, Key: u.Key, UploadId: u.UploadId }), send);
          removed++;
        } catch (err) {
          if (signal?.aborted) throw abortError(signal);
          const failure = this.fail('abort stale uploads', u.Key.slice(this.spec.prefix.length), err);
          if (!(failure instanceof NotFoundError)) throw failure;
        }
      }
      if (!out.IsTruncated) return removed;
      keyMarker = out.NextKeyMarker;
      uploadIdMarker = out.NextUploadIdMarker;
    }
  }
}

/**
 * R2 refuses the CRC32 header the SDK insists on for DeleteObjects, which requires some body checksum:
 * send the classic Content-MD5 instead (the SDK's documented MD5 fallback for S3-compatible services).
 */
// biome-ignore lint/suspicious/noExplicitAny: the SDK's middleware types are generic over every command
const contentMd5ForDeleteObjects = (next: any, context: any) => async (args: any) => {
  const request = args.request as { headers?: Record<string, string>; body?: unknown } | undefined;
  if (context?.commandName === 'DeleteObjectsCommand' && request?.headers) {
    for (const name of Object.keys(request.headers)) {
      const lower = name.toLowerCase();
      if (lower.startsWith('x-amz-checksum-') || lower === 'x-amz-sdk-checksum-algorithm') delete request.headers[name];
    }
    const body = request.body;
    const bytes = typeof body === 'string' ? Buffer.from(body) : body instanceof Uint8Array ? body : Buffer.alloc(0);
    request.headers['content-md5'] = createHash('md5').update(bytes).digest('base64');
  }
  return next(args);
};

/** Signs `command` with a payload sha256 the caller has (before signing, so the signer takes it instead of hashing). */
function signWithSha256(command: PutObjectCommand | UploadPartCommand, sha256: string): void {
  (command.middlewareStack as PutObjectCommand['middlewareStack']).add(
    // biome-ignore lint/suspicious/noExplicitAny: the SDK's middleware types are generic over every command
    (next: any) => async (args: any) => {
      (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = sha256;
      return next(args);
    },
    { step: 'build', name: 'tcabPayloadSha256' },
  );
}

function bareEtag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/"/g, '');
}

/**
 * The etag S3 and R2 give an object completed from these parts: the MD5 of the parts' binary MD5s (their
 * etags), then "-" and the number of parts. Undefined when a part's etag is not an MD5 (SSE-KMS, other services).
 */
export function multipartEtag(partEtags: string[]): string | undefined {
  const md5s = partEtags.map(bareEtag);
  if (md5s.length === 0 || md5s.some((e) => !/^[0-9a-f]{32}$/i.test(e))) return undefined;
  return `${createHash('md5')
    .update(Buffer.concat(md5s.map((e) => Buffer.from(e, 'hex'))))
    .digest('hex')}-${md5s.length}`;
}

export function createS3Target(spec: S3TargetSpec, options?: S3TargetOptions): S3Target {
  return new S3Target(spec, options);
}
