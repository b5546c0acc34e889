/**
 * Opens a target from its spec: the backend for its scheme, wrapped with retries. Nothing connects until
 * the first operation, and a cloud SDK is loaded only when a target of its scheme is first used (each SDK
 * costs the process tens of MB and a few hundred ms to load; the agent and file-only runs need neither).
 */
import { silentLogger, type Logger } from '../log.js';
import { FileTarget } from './file.js';
import { withRetry, type RetryOptions } from './retry.js';
import type { TargetSpec } from './spec.js';
import type { Target } from './target.js';

export type { GetOptions, GetResult, ObjectInfo, PutOptions, PutResult, Target } from './target.js';
export type { TargetSpec } from './spec.js';
export type { RetryOptions } from './retry.js';

/** Backend settings that tests and benchmarks adjust; production uses the defaults. */
export interface TargetTuning {
  /** Objects per listing page (S3 at most 1000, Blob at most 5000). */
  pageSize?: number;
  /** Part (S3) or block (Blob) size for streamed uploads of unknown length. */
  partSize?: number;
  /** Parts in flight per upload; R2 is always held to 2. */
  concurrency?: number;
  /** S3/R2 and Blob: the largest body of known sha256 sent in one request (default 1 GiB). */
  singlePutMaxBytes?: number;
}

export interface OpenTargetOptions {
  logger?: Logger;
  retry?: RetryOptions;
  tuning?: TargetTuning;
}

export function openTarget(spec: TargetSpec, options: OpenTargetOptions = {}): Target {
  const logger = (options.logger ?? silentLogger).child({ target: spec.name });
  const { tuning = {}, retry } = options;
  let backend: Target;
  switch (spec.kind) {
    case 'file':
      backend = new FileTarget(spec);
      break;
    case 'azblob':
      backend = lazyBackend(
        spec,
        async () =>
          new (await import('./azblob.js')).AzureBlobTarget(spec, {
            logger,
            ...(retry ? { retry } : {}),
            ...(tuning.pageSize ? { pageSize: tuning.pageSize } : {}),
            ...(tuning.partSize ? { blockSize: tuning.partSize } : {}),
            ...(tuning.concurrency ? { concurrency: tuning.concurrency } : {}),
            ...(tuning.singlePutMaxBytes !== undefined ? { singlePutMaxBytes: tuning.singlePutMaxBytes } : {}),
          }),
      );
      break;
    case 's3':
      backend = lazyBackend(
        spec,
        async () =>
          new (await import('./s3.js')).S3Target(spec, {
            logger,
            ...(retry ? { retry } : {}),
            ...(tuning.pageSize ? { pageSize: tuning.pageSize } : {}),
            ...(tuning.partSize ? { partSize: tuning.partSize } : {}),
            ...(tuning.concurrency ? { concurrency: tuning.concurrency } : {}),
            ...(tuning.singlePutMaxBytes !== undefined ? { singlePutMaxBytes: tuning.singlePutMaxBytes } : {}),
          }),
      );
      break;
    default: {
      const never: never = spec;
      throw new Error(`unknown target kind ${(never as { kind: string }).kind}`);
    }
  }
  return withRetry(backend, { ...retry, logger });
}

/** A target whose backend module is imported on first use. */
function lazyBackend(spec: TargetSpec, load: () => Promise<Target>): Target {
  let backend: Promise<Target> | undefined;
  const open = () => (backend ??= load());
  return {
    name: spec.name,
    url: spec.displayUrl,
    put: async (key, body, options) => (await open()).put(key, body, options),
    get: async (key, options) => (await open()).get(key, options),
    head: async (key, options) => (await open()).head(key, options),
    delete: async (key, options) => (await open()).delete(key, options),
    async *list(prefix, options) {
      yield* (await open()).list(prefix, options);
    },
    async abortStaleUploads(olderThan, options) {
      const b = await open();
      return b.abortStaleUploads ? b.abortStaleUploads(olderThan, options) : 0;
    },
  };
}
