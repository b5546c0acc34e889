/**
 * How streamed bodies reach a backend. putWhole sends one of known sha256 and length in a single request.
 * putInParts streams any other body in fixed-size parts (S3 multipart parts, Blob blocks) with bounded memory:
 * at most `concurrency` parts in flight plus the one being filled. Every part is sent as a Buffer with a
 * known length, so no backend ever needs chunked transfer encoding, and each part can be retried on its
 * own. A body that fits in one part is sent in a single request instead.
 */
import { addAbortSignal, finished, Transform, type Readable, type TransformCallback } from 'node:stream';
import { abandonBody, abortError, bodyChunks, SourceError } from './failure.js';

export interface PartSink<R> {
  /** The whole body fitted in one part: store it with one request. */
  single(data: Buffer): Promise<R>;
  /** Called once before the first part of a multi-part upload. */
  begin(): Promise<void>;
  /** Stores part `number` (1-based). Parts may complete out of order. */
  part(number: number, data: Buffer): Promise<void>;
  /** All `count` parts are stored; make the object visible. */
  complete(count: number, size: number): Promise<R>;
  /** The upload failed or was aborted after `begin`: clean up where the backend allows. Must not throw. */
  abandon(): Promise<void>;
}

export interface PartOptions {
  partSize: number;
  concurrency: number;
  signal?: AbortSignal;
}

export async function putInParts<R>(body: Readable, sink: PartSink<R>, options: PartOptions): Promise<R> {
  const { partSize, concurrency, signal } = options;
  if (signal?.aborted) {
    abandonBody(body, abortError(signal));
    throw abortError(signal);
  }
  if (signal) addAbortSignal(signal, body);

  // A stored part's buffer is filled again rather than left to the garbage collector: an upload then holds
  // at most `concurrency + 1` part buffers for its whole life, not a trail of freed ones awaiting collection.
  let buffer = Buffer.allocUnsafe(partSize);
  const spare: Array<typeof buffer> = [];
  let filled = 0;
  let number = 0;
  let size = 0;
  let begun = false;
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;

  const send = async (data: typeof buffer) => {
    if (!begun) {
      begun = true;
      await sink.begin();
    }
    const n = ++number;
    const p = sink.part(n, data).then(
      () => {
        inFlight.delete(p);
        if (data.length === partSize) spare.push(data);
      },
      (err) => {
        inFlight.delete(p);
        failure ??= err;
      },
    );
    inFlight.add(p);
    while (inFlight.size >= concurrency && failure === undefined) await Promise.race(inFlight);
  };

  try {
    for await (const bytes of bodyChunks(body, signal)) {
      let offset = 0;
      while (offset < bytes.length) {
        // A full part waits for the next byte before it is sent: then the last part is never empty,
        // and a body of exactly one part still goes as a single request.
        if (filled === partSize) {
          await send(buffer);
          if (failure !== undefined) throw failure;
          buffer = spare.pop() ?? Buffer.allocUnsafe(partSize);
          filled = 0;
        }
        const n = Math.min(partSize - filled, bytes.length - offset);
        bytes.copy(buffer, filled, offset, offset + n);
        filled += n;
        offset += n;
        size += n;
      }
    }
    if (!begun) return await sink.single(buffer.subarray(0, filled));
    await send(buffer.subarray(0, filled));
    while (inFlight.size > 0) await Promise.race(inFlight);
    if (failure !== undefined) throw failure;
    if (signal?.aborted) throw abortError(signal);
    return await sink.complete(number, size);
  } catch (err) {
    abandonBody(body, err);
    // Parts still running would race the clean-up; let them finish (they fail fast once aborted).
    await Promise.allSettled([...inFlight]);
    if (begun) await sink.abandon();
    throw err;
  }
}

/**
 * The largest body sent in one request when the caller can send it all again (it passes the body's sha256,
 * as replicate does from a manifest). One request instead of a part per few MiB: nothing to assemble at the
 * service, and on S3/R2 no part to hash for its signature, since the known sha256 signs the whole body and
 * the service checks it. The price is that a failure sends the whole body again (replicate retries a copy
 * from its source): at 1 GiB, seconds between clouds. S3 and R2 take up to 5 GiB in one PutObject, Blob
 * up to 5,000 MiB in one Put Blob.
 */
export const SINGLE_REQUEST_MAX_BYTES = 1024 * 1024 * 1024;

/**
 * The length of a stream to send whole with putWhole: its sha256 and length are known and it is at most
 * `max` bytes (SINGLE_REQUEST_MAX_BYTES unless a target was tuned); undefined when it goes in parts.
 */
export function wholeBodyLength(options: { sha256?: string; contentLength?: number }, max = SINGLE_REQUEST_MAX_BYTES): number | undefined {
  const { sha256, contentLength } = options;
  return sha256 !== undefined && contentLength !== undefined && contentLength <= max ? contentLength : undefined;
}

/**
 * Sends `body` (exactly `contentLength` bytes) as the streamed body of one request made by `send`. The last
 * chunk is held back until the body has ended whole: a body that fails instead (a source cut off, a copy
 * that does not match its manifest), or is longer or shorter than announced, aborts the request before the
 * service has the whole object, so nothing is stored. Such a failure is thrown as a SourceError.
 */
export async function putWhole<R>(
  body: Readable,
  contentLength: number,
  signal: AbortSignal | undefined,
  send: (stream: Readable, abortSignal: AbortSignal) => Promise<R>,
): Promise<R> {
  const stop = new AbortController();
  const onAbort = () => stop.abort(signal!.reason);
  if (signal?.aborted) onAbort();
  signal?.addEventListener('abort', onAbort, { once: true });
  let sourceFailed: unknown;
  const guarded = new HoldLastChunk(contentLength);
  // pipe() passes no errors on, nor a close before the end: either must reach the request, which is then
  // aborted (a body closed without an error would otherwise leave the request waiting for bytes for ever).
  finished(body, { writable: false }, (err) => {
    if (err)
      guarded.destroy(
        err.code === 'ERR_STREAM_PREMATURE_CLOSE'
          ? new Error(`the body was closed after ${guarded.received} of the ${contentLength} bytes announced, without an error`, {
              cause: err,
            })
          : err,
      );
  });
  guarded.once('error', (err) => {
    sourceFailed = err;
    stop.abort(err);
  });
  body.pipe(guarded);
  try {
    return await send(guarded, stop.signal);
  } catch (err) {
    guarded.destroy();
    abandonBody(body, signal?.aborted ? abortError(signal) : err);
    if (signal?.aborted) throw abortError(signal);
    if (sourceFailed !== undefined) throw new SourceError(sourceFailed);
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/** Passes a body through but for its last chunk, which goes only once the body has ended with the announced length. */
class HoldLastChunk extends Transform {
  private held: Buffer | undefined;
  private bytes = 0;

  get received(): number {
    return this.bytes;
  }

  constructor(private readonly expected: number) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.expected) return cb(new Error(`the body has more than the ${this.expected} bytes announced`));
    const previous = this.held;
    this.held = chunk;
    cb(null, previous);
  }

  override _flush(cb: TransformCallback): void {
    if (this.bytes !== this.expected) return cb(new Error(`the body ended after ${this.bytes} of the ${this.expected} bytes announced`));
    cb(null, this.held);
  }
}
