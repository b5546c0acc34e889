/**
 * azblob:// targets, through @azure/storage-blob.
 *
 * Credentials: a connection string when one is configured (local runs, Azurite), otherwise
 * DefaultAzureCredential against the account's endpoint (in Azure: the managed identity named by
 * AZURE_CLIENT_ID). An account key is never needed in Azure.
 *
 * Streams are staged as blocks of a fixed size (bounded memory, each block retried on its own) and become
 * visible only when the block list is committed; a failed or aborted upload leaves uncommitted blocks that
 * are never listed and that the service discards after a week. Small bodies go in one Put Blob.
 */
import { randomBytes } from 'node:crypto';
import { addAbortSignal, type Readable } from 'node:stream';
import { DefaultAzureCredential } from '@azure/identity';
import { BlobServiceClient, type BlobRequestConditions, type ContainerClient, type StoragePipelineOptions } from '@azure/storage-blob';
import { isAbortError, NotFoundError, ObjectHeldError, PreconditionFailedError, TargetError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import {
  abandonBody,
  abortError,
  checkKey,
  checkPutCondition,
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
import { retrying, type RetryOptions } from './retry.js';
import type { AzureBlobTargetSpec } from './spec.js';
import type { DeleteOptions, GetOptions, GetResult, ObjectInfo, PutOptions, PutResult, Target } from './target.js';

const MiB = 1024 * 1024;
const DEFAULT_BLOCK_SIZE = 8 * MiB;
const MAX_BLOCKS = 50_000;
const IMMUTABLE_CODES = new Set(['BlobImmutableDueToPolicy', 'BlobImmutableDueToLegalHold']);

export interface AzureBlobTargetOptions {
  /** Blobs per listing page. Default 5000 (the maximum). */
  pageSize?: number;
  /** Block size for streamed uploads when the length is unknown. Default 8 MiB. */
  blockSize?: number;
  /** Blocks staged at once. Default 4. */
  concurrency?: number;
  /** The largest streamed body with a known sha256 sent as one Put Blob. Default SINGLE_REQUEST_MAX_BYTES (1 GiB). */
  singlePutMaxBytes?: number;
  /** Retries of each staged block. */
  retry?: RetryOptions;
  logger?: Logger;
}

interface AzureFailure {
  name?: string;
  code?: string;
  statusCode?: number;
  message?: string;
  response?: { headers?: { get(name: string): string | undefined } };
  details?: { errorCode?: string };
}

/** Blob properties say 0x8D...; response headers say "0x8D...". One form, usable in If-Match. */
function quoted(etag: string | undefined): string {
  if (!etag) return '';
  return etag.startsWith('"') ? etag : `"${etag}"`;
}

/** The block size for a body: the configured one, grown so that `contentLength` fits in 50,000 blocks. */
export function chooseBlockSize(configured: number, contentLength: number | undefined): number {
  if (contentLength === undefined || contentLength <= configured * MAX_BLOCKS) return configured;
  return Math.ceil(contentLength / MAX_BLOCKS / MiB) * MiB;
}

function conditionsOf(options: PutOptions): BlobRequestConditions | undefined {
  if (options.ifNoneMatch) return { ifNoneMatch: '*' };
  if (options.ifMatch) return { ifMatch: options.ifMatch };
  return undefined;
}

export class AzureBlobTarget implements Target {
  readonly name: string;
  readonly url: string;
  private readonly spec: AzureBlobTargetSpec;
  private readonly id: TargetIdentity;
  private readonly options: AzureBlobTargetOptions;
  private readonly logger: Logger;
  private readonly pageSize: number;
  private readonly blockSize: number;
  private readonly concurrency: number;
  private containerInstance: ContainerClient | undefined;

  constructor(spec: AzureBlobTargetSpec, options: AzureBlobTargetOptions = {}) {
    this.name = spec.name;
    this.url = spec.displayUrl;
    this.spec = spec;
    this.id = { name: spec.name, url: spec.displayUrl, secrets: [spec.connectionString ?? ''].filter(Boolean) };
    this.options = options;
    this.logger = options.logger ?? silentLogger;
    this.pageSize = Math.max(1, Math.min(5000, options.pageSize ?? 5000));
    this.blockSize = Math.max(64 * 1024, options.blockSize ?? DEFAULT_BLOCK_SIZE);
    this.concurrency = Math.max(1, options.concurrency ?? 4);
  }

  /** Created on first use, so opening a target never touches the network or asks for a token. */
  private get container(): ContainerClient {
    if (!this.containerInstance) {
      // Retries happen in retry.ts; SDK retries on top would multiply attempts.
      const pipeline: StoragePipelineOptions = { retryOptions: { maxTries: 1 }, userAgentOptions: { userAgentPrefix: 'tcab-backup' } };
      const service = this.spec.connectionString
        ? BlobServiceClient.fromConnectionString(this.spec.connectionString, pipeline)
        : new BlobServiceClient(this.spec.endpoint, new DefaultAzureCredential(), pipeline);
      this.containerInstance = service.getContainerClient(this.spec.container);
    }
    return this.containerInstance;
  }

  private blob(key: string) {
    return this.container.getBlockBlobClient(this.spec.prefix + key);
  }

  private where(): string {
    return `container "${this.spec.container}" of storage account "${this.spec.account}"`;
  }

  /** Converts an SDK failure to NotFound / PreconditionFailed / Held / a TargetError, at the edge. */
  private fail(operation: string, key: string | undefined, err: unknown, conditional = false): Error {
    if (isAbortError(err) || err instanceof TargetError || err instanceof NotFoundError || err instanceof PreconditionFailedError) {
      return err as Error;
    }
    const what = `${key ?? ''} on target "${this.name}" (${this.url})`;
    if (err instanceof SourceError) return sourceFailure(this.id, operation, key, err);
    const e = (err ?? {}) as AzureFailure;
    const status = e.statusCode;
    // HEAD answers have no body: their error code comes only in the x-ms-error-code header.
    const code = e.code ?? e.details?.errorCode ?? e.response?.headers?.get('x-ms-error-code');
    if (code === 'ContainerNotFound') return this.targetError(operation, key, err, false, hintFor('missing-container', this.where()));
    if (code && IMMUTABLE_CODES.has(code)) return new ObjectHeldError(what, { cause: err });
    if (conditional && (status === 412 || status === 404 || code === 'BlobAlreadyExists' || code === 'ConditionNotMet')) {
      return new PreconditionFailedError(what, { cause: err });
    }
    if (status === 404) return new NotFoundError(what, { cause: err });
    if (e.name === 'CredentialUnavailableError' || e.name === 'AuthenticationError' || e.name === 'AggregateAuthenticationError') {
      return this.targetError(
        operation,
        key,
        err,
        false,
        'the managed identity of the Function App (AZURE_CLIENT_ID names a user-assigned one) or, for local runs, the connection string setting of this target',
      );
    }
    if (!this.spec.connectionString && /non-TLS/.test(e.message ?? '')) {
      return this.targetError(
        operation,
        key,
        err,
        false,
        'the endpoint: without a connection string the managed identity is used, and it needs https',
      );
    }
    if (status === 416 || code === 'InvalidRange')
      return this.targetError(operation, key, err, false, 'the requested range against the object size');
    const transient = isTransientStatus(status) || (status === undefined && isTransientNetworkError(err));
    const hint =
      status === undefined && transient
        ? hintFor('network', this.spec.endpoint)
        : status === 401 || status === 403
          ? `${hintFor('auth', this.where())} (the identity needs Storage Blob Data Contributor)`
          : status === 429 || status === 503
            ? hintFor('throttled', this.where())
            : status !== undefined && status >= 500
              ? hintFor('server', this.where())
              : hintFor('other', this.where());
    return this.targetError(operation, key, err, transient, hint);
  }

  private targetError(operation: string, key: string | undefined, err: unknown, transient: boolean, hint: string): TargetError {
    const e = (err ?? {}) as AzureFailure;
    const code = e.code ?? e.details?.errorCode ?? e.response?.headers?.get('x-ms-error-code');
    // The service's messages carry a request id and time on further lines; the first line says it.
    const message = (e.message ?? String(err)).split('\n')[0];
    const detail = e.statusCode === undefined ? (networkDetail(err) ?? message) : describeStatus(e.statusCode, code, message);
    const retryAfterMs = parseRetryAfterMs(e.response?.headers?.get('retry-after'));
    return new TargetError({
      target: this.name,
      url: this.url,
      operation,
      ...(key !== undefined ? { key } : {}),
      detail: scrub(this.id, detail ?? 'unknown error'),
      hint,
      cause: err,
      transient,
      ...(e.statusCode !== undefined ? { status: e.statusCode } : {}),
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
    });
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<PutResult> {
    checkKey(this.id, 'put', key);
    const { signal } = options;
    try {
      if (Buffer.isBuffer(body)) return await this.putBlob(key, body, options);
      const whole = wholeBodyLength(options, this.options.singlePutMaxBytes);
      if (whole !== undefined) return await this.putStreamed(key, body, { ...options, contentLength: whole });
      return await putInParts(body, this.blocks(key, options), {
        partSize: chooseBlockSize(this.blockSize, options.contentLength),
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

  private async putBlob(key: string, data: Buffer, options: PutOptions): Promise<PutResult> {
    const conditions = conditionsOf(options);
    const out = await this.blob(key).upload(data, data.length, {
      ...(conditions ? { conditions } : {}),
      ...(options.contentType ? { blobHTTPHeaders: { blobContentType: options.contentType } } : {}),
      ...(options.signal ? { abortSignal: options.signal } : {}),
    });
    return { etag: quoted(out.etag), size: data.length };
  }

  /**
   * One Put Blob streaming `body`, for a caller that can send it all again (it knows the sha256): no blocks
   * to stage and commit. Blob checks no sha256; the caller checks the bytes as they pass, and putWhole holds
   * the last chunk back, so a body that fails, even at its very end, stores nothing.
   */
  private async putStreamed(key: string, body: Readable, options: PutOptions & { contentLength: number }): Promise<PutResult> {
    if (options.ifNoneMatch || options.ifMatch) await checkPutCondition(this, key, options);
    const conditions = conditionsOf(options);
    return putWhole(body, options.contentLength, options.signal, async (stream, abortSignal) => {
      const out = await this.blob(key).upload(stream, options.contentLength, {
        ...(conditions ? { conditions } : {}),
        ...(options.contentType ? { blobHTTPHeaders: { blobContentType: options.contentType } } : {}),
        abortSignal,
      });
      return { etag: quoted(out.etag), size: options.contentLength };
    });
  }

  private blocks(key: string, options: PutOptions) {
    const { signal } = options;
    const blob = this.blob(key);
    // Concurrent uploads to one blob share its uncommitted block list: a per-upload nonce keeps them apart.
    // Block ids of one blob must all have the same length.
    const nonce = randomBytes(8).toString('hex');
    const blockId = (n: number) => Buffer.from(`${nonce}-${String(n).padStart(6, '0')}`).toString('base64');
    return {
      single: (data: Buffer) => this.putBlob(key, data, options),
      begin: async () => {
        if (options.ifNoneMatch || options.ifMatch) await checkPutCondition(this, key, options);
      },
      part: async (number: number, data: Buffer) => {
        if (number > MAX_BLOCKS) {
          throw new TargetError({
            target: this.name,
            url: this.url,
            operation: 'put',
            key,
            detail: `the upload needs more than ${MAX_BLOCKS} blocks of ${data.length} bytes`,
            hint: 'pass contentLength with the put so that the block size can be chosen for the object size',
          });
        }
        await retrying(
          async () => {
            try {
              await blob.stageBlock(blockId(number), data, data.length, signal ? { abortSignal: signal } : {});
            } catch (err) {
              throw this.fail('stage block', `${key} #${number}`, err);
            }
          },
          {
            ...this.options.retry,
            target: this.name,
            operation: 'stage block',
            key: `${key} #${number}`,
            logger: this.logger,
            signal,
          },
        );
      },
      complete: async (count: number, size: number) => {
        const conditions = conditionsOf(options);
        const ids = Array.from({ length: count }, (_, i) => blockId(i + 1));
        // Committing the same block list again is harmless, and one 503 here would otherwise throw away every
        // block staged (the streamed body cannot be sent again).
        const out = await retrying(
          async () => {
            try {
              return await blob.commitBlockList(ids, {
                ...(conditions ? { conditions } : {}),
                ...(options.contentType ? { blobHTTPHeaders: { blobContentType: options.contentType } } : {}),
                ...(signal ? { abortSignal: signal } : {}),
              });
            } catch (err) {
              throw this.fail('commit block list', key, err, Boolean(conditions));
            }
          },
          {
            ...this.options.retry,
            target: this.name,
            operation: 'commit block list',
            key,
            logger: this.logger,
            signal,
          },
        );
        return { etag: quoted(out.etag), size };
      },
      // Uncommitted blocks cannot be deleted one by one; they are invisible and expire on their own.
      abandon: async () => {},
    };
  }

  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    checkKey(this.id, 'get', key);
    const { signal, range } = options;
    try {
      const offset = range?.start ?? 0;
      const count = range?.end !== undefined ? range.end - range.start + 1 : undefined;
      // A broken download resumes from where it stopped, pinned to the same etag, a few times.
      const out = await this.blob(key).download(offset, count, { maxRetryRequests: 3, ...(signal ? { abortSignal: signal } : {}) });
      const body = out.readableStreamBody as Readable;
      if (signal) addAbortSignal(signal, body);
      const total = /\/(\d+)$/.exec(out.contentRange ?? '')?.[1];
      return { body, size: total !== undefined ? Number(total) : Number(out.contentLength ?? 0), etag: quoted(out.etag) };
    } catch (err) {
      if (signal?.aborted) throw abortError(signal);
      throw this.fail('get', key, err);
    }
  }

  async head(key: string, options: { signal?: AbortSignal } = {}): Promise<ObjectInfo> {
    checkKey(this.id, 'head', key);
    try {
      const p = await this.blob(key).getProperties(options.signal ? { abortSignal: options.signal } : {});
      return { key, size: Number(p.contentLength ?? 0), lastModified: p.lastModified ?? new Date(0), etag: quoted(p.etag) };
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
    const iterator = this.container
      .listBlobsFlat({ prefix: this.spec.prefix + prefix, ...(signal ? { abortSignal: signal } : {}) })
      .byPage({ maxPageSize: this.pageSize });
    for (;;) {
      let page;
      try {
        page = await iterator.next();
      } catch (err) {
        if (signal?.aborted) throw abortError(signal);
        throw this.fail('list', prefix, err);
      }
      if (page.done) return;
      for (const b of page.value.segment.blobItems) {
        yield {
          key: b.name.slice(strip),
          size: Number(b.properties.contentLength ?? 0),
          lastModified: b.properties.lastModified,
          etag: quoted(b.properties.etag),
        };
      }
    }
  }

  /** One request per call (the SDK retries nothing: maxTries 1); retries are retry.ts's, which `once` switches off. */
  async delete(key: string, options: DeleteOptions = {}): Promise<void> {
    checkKey(this.id, 'delete', key);
    try {
      await this.blob(key).deleteIfExists({ deleteSnapshots: 'include', ...(options.signal ? { abortSignal: options.signal } : {}) });
    } catch (err) {
      if (options.signal?.aborted) throw abortError(options.signal);
      const failure = this.fail('delete', key, err);
      if (failure instanceof NotFoundError) return;
      throw failure;
    }
  }

  /** Blob Storage has no incomplete uploads to abort: uncommitted blocks expire by themselves. */
  async abortStaleUploads(): Promise<number> {
    return 0;
  }
}

export function createAzureBlobTarget(spec: AzureBlobTargetSpec, options?: AzureBlobTargetOptions): AzureBlobTarget {
  return new AzureBlobTarget(spec, options);
}
