/**
 * Retries for every backend, in one place: exponential backoff with full jitter for what waiting can fix
 * (throttling, 5xx, timeouts, connection resets) and never for what it cannot (not found, lost
 * preconditions, other 4xx, integrity failures, aborts).
 *
 * The SDKs' own retries are switched off (S3 maxAttempts 1, Blob maxTries 1) so attempts do not multiply:
 * an operation is tried at most 1 + `retries` times. A streamed put cannot be replayed, so it is tried once
 * here; its backends retry each buffered part through `retrying` instead. A delete asked `once` is sent once.
 */
import type { Readable } from 'node:stream';
import { errorMessage, isAbortError, isPermanent, NotFoundError, PreconditionFailedError, TargetError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { abortError, compareKeys, isTransientNetworkError } from './failure.js';
import type { DeleteOptions, GetOptions, GetResult, ObjectInfo, PutOptions, PutResult, Target } from './target.js';

export interface RetryOptions {
  /** Retries after the first attempt. Default 5. */
  retries?: number;
  /** Backoff before the first retry is drawn from [0, baseDelayMs]; it doubles per retry. Default 500 ms. */
  baseDelayMs?: number;
  /** Upper bound of any single wait. Default 20 s. */
  maxDelayMs?: number;
}

export const DEFAULT_RETRY: Required<RetryOptions> = { retries: 5, baseDelayMs: 500, maxDelayMs: 20_000 };

/** True when waiting and trying again may succeed. */
export function isRetryable(err: unknown): boolean {
  if (isAbortError(err) || isPermanent(err)) return false;
  if (err instanceof TargetError) return err.transient;
  return isTransientNetworkError(err);
}

/** Full jitter: a uniform draw below the exponential cap, but never shorter than a Retry-After. */
export function backoffMs(attempt: number, options: RetryOptions, retryAfterMs?: number): number {
  const base = options.baseDelayMs ?? DEFAULT_RETRY.baseDelayMs;
  const max = options.maxDelayMs ?? DEFAULT_RETRY.maxDelayMs;
  const jittered = Math.random() * Math.min(max, base * 2 ** attempt);
  return Math.min(max, Math.max(jittered, retryAfterMs ?? 0));
}

/** Waits `ms`, or rejects with an AbortError as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export interface RetryContext extends RetryOptions {
  target: string;
  operation: string;
  key?: string;
  signal?: AbortSignal;
  logger?: Logger;
}

/** Runs `fn` until it succeeds, fails for good, runs out of retries, or `signal` aborts. */
export async function retrying<T>(fn: () => Promise<T>, ctx: RetryContext): Promise<T> {
  const retries = ctx.retries ?? DEFAULT_RETRY.retries;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (ctx.signal?.aborted) throw isAbortError(err) ? err : abortError(ctx.signal);
      if (attempt >= retries || !isRetryable(err)) throw err;
      const delayMs = backoffMs(attempt, ctx, (err as TargetError).retryAfterMs);
      (ctx.logger ?? silentLogger).warn('target.retry', {
        // "object", not "key": the logger masks fields named like credentials ("key", "secret").
        target: ctx.target,
        operation: ctx.operation,
        object: ctx.key,
        attempt: attempt + 1,
        of: retries,
        delayMs: Math.round(delayMs),
        error: errorMessage(err),
      });
      await sleep(delayMs, ctx.signal);
    }
  }
}

/** The same target, with retries around every operation that can be safely repeated. */
export function withRetry(target: Target, options: RetryOptions & { logger?: Logger } = {}): Target {
  const logger = options.logger ?? silentLogger;
  const ctx = (operation: string, key: string | undefined, signal: AbortSignal | undefined): RetryContext => ({
    ...options,
    target: target.name,
    operation,
    key,
    signal,
    logger,
  });
  const wrapped: Target = {
    name: target.name,
    url: target.url,
    put(key: string, body: Readable | Buffer, putOptions?: PutOptions): Promise<PutResult> {
      if (!Buffer.isBuffer(body)) return target.put(key, body, putOptions);
      if (putOptions?.ifMatch || putOptions?.ifNoneMatch)
        return conditionalPut(target, key, body, putOptions, ctx('put', key, putOptions.signal));
      return retrying(() => target.put(key, body, putOptions), ctx('put', key, putOptions?.signal));
    },
    get(key: string, getOptions?: GetOptions): Promise<GetResult> {
      return retrying(() => target.get(key, getOptions), ctx('get', key, getOptions?.signal));
    },
    head(key: string, headOptions?: { signal?: AbortSignal }): Promise<ObjectInfo> {
      return retrying(() => target.head(key, headOptions), ctx('head', key, headOptions?.signal));
    },
    delete(key: string, deleteOptions?: DeleteOptions): Promise<void> {
      // One request, as asked: a repeat after a lost answer could remove what another job wrote meanwhile.
      if (deleteOptions?.once) return target.delete(key, deleteOptions);
      return retrying(() => target.delete(key, deleteOptions), ctx('delete', key, deleteOptions?.signal));
    },
    list(prefix: string, listOptions?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo> {
      return listWithRetry(target, prefix, listOptions?.signal, ctx('list', prefix, listOptions?.signal));
    },
  };
  if (target.readSmall) {
    const readSmall = target.readSmall.bind(target);
    wrapped.readSmall = (key, maxBytes, readOptions) =>
      retrying(() => readSmall(key, maxBytes, readOptions), ctx('get', key, readOptions?.signal));
  }
  if (target.abortStaleUploads) {
    const abortStale = target.abortStaleUploads.bind(target);
    wrapped.abortStaleUploads = (olderThan, abortOptions) =>
      retrying(() => abortStale(olderThan, abortOptions), ctx('abort stale uploads', undefined, abortOptions?.signal));
  }
  return wrapped;
}

/**
 * A conditional write, retried. An attempt that failed without an answer (a reset, a timeout, a 5xx) may
 * still have been applied; its retry then loses the condition to that very write. So when a retry ends in
 * PreconditionFailed after such an attempt, the object is read back: holding exactly the bytes written, it
 * is this write (success, with the object's etag now); holding others, another writer won (the race is
 * lost). Identical bytes from another writer would be indistinguishable, and change nothing the caller can
 * see: records used as locks carry their writer's own ids and times. A first attempt that loses is a lost
 * race without any reading back.
 */
async function conditionalPut(target: Target, key: string, body: Buffer, options: PutOptions, ctx: RetryContext): Promise<PutResult> {
  let unsure = false;
  try {
    return await retrying(async () => {
      try {
        return await target.put(key, body, options);
      } catch (err) {
        if (isRetryable(err)) unsure = true;
        throw err;
      }
    }, ctx);
  } catch (err) {
    if (!unsure || !(err instanceof PreconditionFailedError)) throw err;
    const etag = await retrying(() => etagIfHolding(target, key, body, options.signal), { ...ctx, operation: 'read back' });
    if (etag === undefined) throw err;
    ctx.logger?.info('target.conditional_write_landed', {
      target: ctx.target,
      object: key,
      detail: 'an earlier attempt was applied though its answer was lost',
    });
    return { etag, size: body.length };
  }
}

/** The object's etag when it holds exactly `expected`, else undefined (also when it is gone). */
async function etagIfHolding(target: Target, key: string, expected: Buffer, signal: AbortSignal | undefined): Promise<string | undefined> {
  let got;
  try {
    got = await target.get(key, { signal });
  } catch (err) {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  }
  if (got.size !== expected.length) {
    got.body.destroy();
    return undefined;
  }
  let offset = 0;
  try {
    for await (const chunk of got.body as AsyncIterable<Buffer>) {
      if (offset + chunk.length > expected.length || !chunk.equals(expected.subarray(offset, offset + chunk.length))) return undefined;
      offset += chunk.length;
    }
  } finally {
    got.body.destroy();
  }
  return offset === expected.length ? got.etag : undefined;
}

/**
 * A listing that survives a failed page: it starts again and skips what it already yielded. That is sound
 * because listings come in key order, and it never hides a failure that persists (the error is thrown).
 */
async function* listWithRetry(
  target: Target,
  prefix: string,
  signal: AbortSignal | undefined,
  ctx: RetryContext,
): AsyncGenerator<ObjectInfo> {
  const retries = ctx.retries ?? DEFAULT_RETRY.retries;
  let last: string | undefined;
  let attempt = 0;
  for (;;) {
    let progressed = false;
    try {
      for await (const item of target.list(prefix, { signal })) {
        if (last !== undefined && compareKeys(item.key, last) <= 0) continue;
        last = item.key;
        progressed = true;
        yield item;
      }
      return;
    } catch (err) {
      if (signal?.aborted) throw isAbortError(err) ? err : abortError(signal);
      if (progressed) attempt = 0;
      if (attempt >= retries || !isRetryable(err)) throw err;
      const delayMs = backoffMs(attempt, ctx, (err as TargetError).retryAfterMs);
      ctx.logger?.warn('target.retry', {
        target: ctx.target,
        operation: 'list',
        object: prefix,
        attempt: attempt + 1,
        of: retries,
        after: last,
        delayMs: Math.round(delayMs),
        error: errorMessage(err),
      });
      attempt++;
      await sleep(delayMs, signal);
    }
  }
}
