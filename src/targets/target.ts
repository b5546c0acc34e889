/**
 * The storage interface every backend implements (file://, azblob://, r2:// and s3://).
 *
 * Core logic (snapshot, replicate, prune, verify, drill) sees only this interface and never imports a
 * backend. Every method takes an AbortSignal, streams instead of buffering, converts the backend's
 * "not found" to NotFoundError at its edge, and returns errors instead of logging them.
 * Retries for throttling, 5xx and connection resets live in one wrapper (retry.ts), not in backends.
 */
import type { Readable } from 'node:stream';

export interface ObjectInfo {
  /** Key relative to the target's prefix, '/'-separated, never starting with '/'. */
  key: string;
  size: number;
  lastModified: Date;
  /** Opaque version token usable with `ifMatch`. */
  etag: string;
}

export interface PutOptions {
  signal?: AbortSignal;
  /** Known length of the body, when the caller has it (lets backends pick part sizes). */
  contentLength?: number;
  contentType?: string;
  /** Write only if the current object's etag equals this (optimistic concurrency). */
  ifMatch?: string;
  /** Write only if no object exists at the key. */
  ifNoneMatch?: '*';
  /**
   * The sha256 (hex) the caller knows the whole body has, from a manifest. A backend whose service can check
   * it sends it (S3 and R2: `x-amz-content-sha256` on one PutObject, which the service refuses when the bytes
   * differ) and may then send the body in one request; others ignore it. The caller still checks the bytes.
   */
  sha256?: string;
}

export interface PutResult {
  etag: string;
  size: number;
}

export interface GetOptions {
  signal?: AbortSignal;
  /** Inclusive byte range. */
  range?: { start: number; end?: number };
}

export interface GetResult {
  body: Readable;
  /** Size of the whole object (not of the range). */
  size: number;
  etag: string;
}

export interface DeleteOptions {
  signal?: AbortSignal;
  /**
   * Send at most one delete request: the retry wrapper does not repeat it, and no backend retries on its own
   * (the SDKs' retries are off). A delete whose answer is lost may have been applied; repeating it later could
   * remove an object written at the key in between, which prune's chunk sweep must never do
   * (docs/format-2.md, "Collecting chunks (prune)"). The caller then gets the error and decides.
   */
  once?: boolean;
}

export interface Target {
  /** The operator's name for this target (from TCAB_BACKUP_TARGETS). */
  readonly name: string;
  /** The target URL with any credential removed; safe to log. */
  readonly url: string;

  /**
   * Writes `body` to `key`, streaming a Readable. The object becomes visible only when complete: a body that
   * errors or an abort leaves no object and no partial object at `key` (temporary files and incomplete
   * uploads are removed where the backend allows). Overwrites unless `ifNoneMatch`/`ifMatch` say otherwise,
   * in which case a losing write throws PreconditionFailedError. A put that fails destroys a streamed body
   * it has not read to the end, with its error, so whoever writes into the body stops waiting for room (the
   * body's error is handled: it never becomes an uncaught exception). A Buffer body (small documents such as
   * manifests) can be retried by the retry wrapper; a stream cannot be replayed, so it is not.
   */
  put(key: string, body: Readable | Buffer, options?: PutOptions): Promise<PutResult>;

  /** Opens the object for reading. Throws NotFoundError when it does not exist. */
  get(key: string, options?: GetOptions): Promise<GetResult>;

  /** Size, time and etag of one object. Throws NotFoundError when it does not exist. */
  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo>;

  /**
   * Every object whose key starts with `prefix`, in lexicographic key order, paging through the backend.
   * A failure on any page throws: callers that act on a listing (retention) must never see a partial one.
   */
  list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo>;

  /** Removes the object. Idempotent: deleting a missing key succeeds. One request per call with `once`. */
  delete(key: string, options?: DeleteOptions): Promise<void>;

  /**
   * Incomplete multipart uploads (or their backend's equivalent) older than `olderThan`, removed.
   * Returns how many were removed; backends without such a thing return 0.
   */
  abortStaleUploads?(olderThan: Date, options?: { signal?: AbortSignal }): Promise<number>;

  /**
   * A small object read whole into one buffer, without a stream: the object when it is at most `maxBytes`,
   * else its first `maxBytes + 1` bytes (so the caller sees that it is longer). Throws NotFoundError when it
   * does not exist. Offered by backends where it is much cheaper than get (a folder: no stream, no stat); a
   * format-2 restore reads thousands of chunks this way (catalog/chunk-store.ts, readStoredChunk).
   */
  readSmall?(key: string, maxBytes: number, options?: { signal?: AbortSignal }): Promise<Buffer>;
}
