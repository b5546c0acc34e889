/**
 * What every backend does at its edge: check keys, turn a backend's failure into an error an operator can
 * act on (which target, which URL, which key, what to check), decide whether waiting could fix it, and
 * make sure no credential of the target leaks into the message.
 */
import type { Readable } from 'node:stream';
import { NotFoundError, PreconditionFailedError, TargetError } from '../errors.js';
import type { ObjectInfo, PutOptions } from './target.js';
import { redact } from '../log.js';

export interface TargetIdentity {
  name: string;
  /** The URL without credentials (TargetSpec.displayUrl). */
  url: string;
  /** Values that must never appear in an error message (connection string, secret access key). */
  secrets: string[];
}

const MAX_KEY_LENGTH = 1024;
// Control characters break listings and logs; backslashes mean different things on different backends.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it looks for
const FORBIDDEN_KEY_CHARS = /[\u0000-\u001f\u007f\\]/;

/** Why `key` cannot name an object, or null when it can. `prefix` allows '' and a trailing '/'. */
export function keyProblem(key: string, kind: 'key' | 'prefix'): string | null {
  if (typeof key !== 'string') return 'it is not a string';
  if (kind === 'key' && key.length === 0) return 'it is empty';
  if (key.length > MAX_KEY_LENGTH) return `it is longer than ${MAX_KEY_LENGTH} characters`;
  if (key.startsWith('/')) return 'it starts with "/" (keys are relative to the target)';
  if (FORBIDDEN_KEY_CHARS.test(key)) return 'it contains a backslash or a control character';
  const segments = key.split('/');
  // A prefix may end in '/' (a folder) or mid-segment; only the segments before that must be whole.
  const whole = kind === 'prefix' ? segments.slice(0, -1) : segments;
  if (kind === 'key' && key.endsWith('/')) return 'it ends with "/" (that names a folder, not an object)';
  for (const s of whole) {
    if (s === '') return 'it contains an empty segment ("//")';
    if (s === '.' || s === '..') return 'it contains a "." or ".." segment';
  }
  const last = segments[segments.length - 1];
  if (kind === 'prefix' && (last === '.' || last === '..')) return 'it ends with a "." or ".." segment';
  return null;
}

export function checkKey(id: TargetIdentity, operation: string, key: string, kind: 'key' | 'prefix' = 'key'): void {
  const problem = keyProblem(key, kind);
  if (problem) {
    throw new TargetError({
      target: id.name,
      url: id.url,
      operation,
      key: JSON.stringify(key),
      detail: `invalid ${kind}: ${problem}`,
      code: 'INVALID_KEY',
      hint: 'keys are "/"-separated relative paths such as snapshots/tcab/2026/11/24/<id>.json',
    });
  }
}

/** Key order as S3 and R2 list: by UTF-8 bytes (for ASCII keys, plain string order). */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Removes the target's own secrets and any registered or recognisable credential from `text`. */
export function scrub(id: TargetIdentity, text: string): string {
  let out = text;
  for (const s of id.secrets) if (s && out.includes(s)) out = out.split(s).join('***');
  return redact(out);
}

const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'ENETDOWN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

/** A connection-level failure (reset, refused, timed out, hang-up) anywhere in the cause chain. */
export function isTransientNetworkError(err: unknown): boolean {
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 6; e = (e as { cause?: unknown }).cause, depth++) {
    const { code, name, message } = e as { code?: unknown; name?: unknown; message?: unknown };
    if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
    if (name === 'TimeoutError' || name === 'RequestTimeout') return true;
    if (typeof message === 'string' && /socket hang up|ECONNRESET|EPIPE|ETIMEDOUT/i.test(message)) return true;
  }
  return false;
}

/** Throttling (429), timeouts (408) and server errors; 501 Not Implemented never gets better. */
export function isTransientStatus(status: number | undefined): boolean {
  return status === 408 || status === 429 || (status !== undefined && status >= 500 && status !== 501);
}

/** The deepest message with a network error code, e.g. "connect ECONNREFUSED 127.0.0.1:9". */
export function networkDetail(err: unknown): string | undefined {
  let found: string | undefined;
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 6; e = (e as { cause?: unknown }).cause, depth++) {
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (typeof code === 'string' && typeof message === 'string' && message)
      found = message.includes(code) ? message : `${code}: ${message}`;
  }
  return found;
}

export function parseRetryAfterMs(value: string | null | undefined): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

export function describeStatus(status: number | undefined, code: string | undefined, message: string | undefined): string {
  const parts = [status ? `HTTP ${status}` : '', code ?? '', message && message !== code ? message : ''].filter(Boolean);
  return parts.join(' ') || 'unknown error';
}

/** The hint for a failure, by its kind, in the operator's terms. */
export function hintFor(kind: 'network' | 'auth' | 'throttled' | 'server' | 'missing-container' | 'other', where: string): string {
  switch (kind) {
    case 'network':
      return `that ${where} is reachable from here (DNS, firewall, private endpoint) and the endpoint in the target URL is right`;
    case 'auth':
      return `the credentials of this target and their permissions on ${where}`;
    case 'throttled':
      return `the request rate on ${where}; the operation was retried with backoff and may succeed on the next run`;
    case 'server':
      return `the provider's status page for ${where}; the operation was retried with backoff`;
    case 'missing-container':
      return `that ${where} exists (it is not created automatically)`;
    default:
      return `the target URL and the state of ${where}`;
  }
}

/** A failure to read the body of a put, kept apart from the backend's own failures: the hint differs. */
export class SourceError extends Error {
  constructor(cause: unknown) {
    super((cause as Error)?.message ?? String(cause), { cause });
    this.name = 'SourceError';
  }
}

export function sourceFailure(id: TargetIdentity, operation: string, key: string | undefined, err: SourceError): TargetError {
  return new TargetError({
    target: id.name,
    url: id.url,
    operation,
    ...(key !== undefined ? { key } : {}),
    detail: `reading the data to upload failed: ${scrub(id, err.message)}`,
    cause: err.cause,
    hint: 'the source of the upload (the snapshot agent, or the target it was being copied from)',
  });
}

/** Builds the error for an aborted operation, keeping the name callers test for (AbortError). */
export function abortError(signal: AbortSignal | undefined): Error {
  const reason = signal?.reason as unknown;
  if (reason instanceof Error && reason.name === 'AbortError') return reason;
  const err = new Error('The operation was aborted', { cause: reason });
  err.name = 'AbortError';
  return err;
}

/**
 * Stops a put's body that the put will not read to its end, destroying it with the reason. Whoever feeds it
 * (a snapshot writing one download into several targets) learns at once that this target stopped and why;
 * a body destroyed without a reason looks, to its writer, like one that merely has no room yet. The put's
 * own rejection is what its caller acts on, so the body's error must not become an uncaught exception:
 * a listener is added for it.
 */
export function abandonBody(body: Readable, reason: unknown): void {
  if (body.destroyed) return;
  body.on('error', () => undefined);
  body.destroy(reason instanceof Error ? reason : new Error(String(reason)));
}

/**
 * The chunks of a put's body as Buffers. A failure to read is the source's, not the backend's: it comes out
 * as SourceError (or the abort), so the error's hint points at the agent or the copy source.
 */
export async function* bodyChunks(body: Readable, signal: AbortSignal | undefined): AsyncGenerator<Buffer> {
  const chunks = (body as AsyncIterable<Buffer | string>)[Symbol.asyncIterator]();
  for (;;) {
    let next: IteratorResult<Buffer | string>;
    try {
      next = await chunks.next();
    } catch (err) {
      throw signal?.aborted ? abortError(signal) : new SourceError(err);
    }
    if (next.done) return;
    yield typeof next.value === 'string' ? Buffer.from(next.value) : next.value;
  }
}

/**
 * For multi-part conditional writes: fails fast, before gigabytes are uploaded, when the condition already
 * does not hold. The condition is sent again on completion, which is what makes the write safe.
 */
export async function checkPutCondition(
  target: { name: string; url: string; head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo> },
  key: string,
  options: PutOptions,
): Promise<void> {
  let current: ObjectInfo | undefined;
  try {
    current = await target.head(key, options.signal ? { signal: options.signal } : {});
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
  }
  if ((options.ifNoneMatch && current) || (options.ifMatch && current?.etag !== options.ifMatch)) {
    throw new PreconditionFailedError(`${key} on target "${target.name}" (${target.url})`);
  }
}
