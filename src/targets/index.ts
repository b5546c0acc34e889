/**
 * Opens a target from its spec: the backend for its scheme, wrapped with retries. Nothing connects until
 * the first operation.
 */
import { silentLogger, type Logger } from '../log.js';
import { AzureBlobTarget } from './azblob.js';
import { FileTarget } from './file.js';
import { withRetry, type RetryOptions } from './retry.js';
import { S3Target } from './s3.js';
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
      backend = new AzureBlobTarget(spec, {
        logger, ...(retry ? { retry } : {}),
        ...(tuning.pageSize ? { pageSize: tuning.pageSize } : {}),
        ...(tuning.partSize ? { blockSize: tuning.partSize } : {}),
        ...(tuning.concurrency ? { concurrency: tuning.concurrency } : {}),
      });
      break;
    case 's3':
      backend = new S3Target(spec, {
        logger, ...(retry ? { retry } : {}),
        ...(tuning.pageSize ? { pageSize: tuning.pageSize } : {}),
        ...(tuning.partSize ? { partSize: tuning.partSize } : {}),
        ...(tuning.concurrency ? { concurrency: tuning.concurrency } : {}),
      });
      break;
    default: {
      const never: never = spec;
      throw new Error(`unknown target kind ${(never as { kind: string }).kind}`);
    }
  }
  return withRetry(backend, { ...retry, logger });
}
