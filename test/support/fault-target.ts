/**
 * A `Target` that fails one chosen operation at one chosen point, the way a backend fails: at the start of a
 * put, when a put's body passes a byte offset (part N), at the commit (the body consumed, the object not yet
 * stored), when a get's body has passed N bytes, on a head or a delete, on a listing after N items. The
 * failure is one of:
 * - 'error': a permanent TargetError (the retry wrapper gives up at once);
 * - 'transient': a transient TargetError (the retry wrapper retries it);
 * - 'destroy': the stream is destroyed without an error (a put's body, as file.ts and parts.ts do when
 *   their backend fails; a get's body, as a socket that closes early), and a put rejects;
 * - 'hang': nothing more happens until the operation's AbortSignal aborts; an operation called without a
 *   signal could never be cancelled, so it fails at once instead and is listed in `unsignalled`;
 * - 'lost': the inner operation completes (the object is stored, deleted, read), then a transient error is
 *   thrown as if the answer had been lost on the way back.
 *
 * Deterministic: faults are triggered by counts (matching calls, bytes, items), never by time. Wrap the bare
 * backend and put the retry wrapper around this one, as openTarget does around a backend, so retries meet
 * the faults as in production:
 *
 *   const faulty = new FaultTarget(new FileTarget(spec));
 *   const target = withRetry(faulty, { retries: 3, baseDelayMs: 1 });
 */
import { PassThrough, Readable } from 'node:stream';
import { TargetError } from '../../src/errors.js';
import { abortError } from '../../src/targets/failure.js';
import type { GetOptions, GetResult, ObjectInfo, PutOptions, PutResult, Target } from '../../src/targets/target.js';

export type FaultOp = 'put' | 'get' | 'head' | 'list' | 'delete';
export type FaultKind = 'error' | 'transient' | 'destroy' | 'hang' | 'lost';

export type FaultPoint =
  /** Before the inner operation is called (put: before any byte of the body is read). */
  | { at: 'start' }
  /** put: when the body passes this byte offset (the bytes before it reach the backend); get: after this many bytes. */
  | { at: 'body'; offset: number }
  /** put: the whole body has been read, the inner put has not resolved (it is made to fail: nothing is stored). */
  | { at: 'commit' }
  /** list: after this many items (at the end of the listing when it has fewer). */
  | { at: 'page'; items: number };

export interface Fault {
  op: FaultOp;
  /** Ignored for 'lost', which always comes after the inner operation completed. */
  point: FaultPoint;
  kind: FaultKind;
  /** Keys (list: prefixes) it applies to; default every one. */
  keys?: RegExp;
  /** Matching calls let through before the fault applies; default 0. */
  skip?: number;
  /** Matching calls it applies to; default every one after `skip`. */
  times?: number;
  /** Called when a hang begins: a test aborts the job here, as a host timeout or an operator would. */
  onHang?: (what: string) => void;
}

export function describeFault(f: Fault): string {
  const point =
    f.kind === 'lost'
      ? 'answer'
      : f.point.at === 'body'
        ? `body@${f.point.offset}`
        : f.point.at === 'page'
          ? `page@${f.point.items}`
          : f.point.at;
  const which = f.keys ? ` ${f.keys.source}` : '';
  const count = `${f.skip ? ` after ${f.skip}` : ''}${f.times !== undefined ? ` x${f.times}` : ''}`;
  return `${f.op}${which} ${point} ${f.kind}${count}`;
}

export class FaultTarget implements Target {
  /** What fired, in order, e.g. "put snapshots/.../x.sqlite: body passed 2097152 bytes (destroy)". */
  readonly fired: string[] = [];
  /** Operations that were to hang but had no AbortSignal to end them. */
  readonly unsignalled: string[] = [];
  /** Operations started and not yet settled, for a test's message when a job does not settle. */
  readonly inFlight = new Set<string>();
  readonly abortStaleUploads?: Target['abortStaleUploads'];
  private matched = 0;
  private applied = 0;

  constructor(
    readonly inner: Target,
    private fault?: Fault,
  ) {
    if (inner.abortStaleUploads) {
      const abortStale = inner.abortStaleUploads.bind(inner);
      this.abortStaleUploads = (olderThan, options) => this.track('abortStaleUploads', '', abortStale(olderThan, options));
    }
  }

  get name(): string {
    return this.inner.name;
  }

  get url(): string {
    return this.inner.url;
  }

  /** Replaces the fault (undefined: none); counts start again. */
  arm(fault: Fault | undefined): void {
    this.fault = fault;
    this.matched = 0;
    this.applied = 0;
  }

  /** The fault, when this call is one it applies to. */
  private take(op: FaultOp, key: string): Fault | undefined {
    const f = this.fault;
    if (!f || f.op !== op || (f.keys && !f.keys.test(key))) return undefined;
    this.matched++;
    if (this.matched <= (f.skip ?? 0)) return undefined;
    if (f.times !== undefined && this.applied >= f.times) return undefined;
    this.applied++;
    return f;
  }

  private error(op: string, key: string, what: string, transient: boolean): TargetError {
    return new TargetError({
      target: this.name,
      url: this.url,
      operation: op,
      key,
      transient,
      code: 'INJECTED_FAULT',
      detail: `injected fault: ${what}${transient ? ' (transient)' : ''}`,
      hint: 'nothing: the test injected this failure',
    });
  }

  private fire(what: string): void {
    this.fired.push(what);
  }

  /** Waits until `signal` aborts and rejects with its AbortError. */
  private async hang(what: string, f: Fault, signal: AbortSignal | undefined, op: string, key: string): Promise<never> {
    if (!signal) {
      this.unsignalled.push(what);
      throw this.error(op, key, `${what} was to hang, but it has no AbortSignal: nothing could ever cancel it`, false);
    }
    return new Promise<never>((_, reject) => {
      const stop = () => reject(abortError(signal));
      if (signal.aborted) return stop();
      signal.addEventListener('abort', stop, { once: true });
      f.onHang?.(what);
    });
  }

  private track<T>(op: string, key: string, p: Promise<T>): Promise<T> {
    const label = `${op} ${key}`.trim();
    this.inFlight.add(label);
    return p.finally(() => this.inFlight.delete(label));
  }

  put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<PutResult> {
    return this.track('put', key, this.doPut(key, body, options));
  }

  private async doPut(key: string, body: Readable | Buffer, options: PutOptions): Promise<PutResult> {
    const f = this.take('put', key);
    if (!f) return this.inner.put(key, body, options);
    if (f.kind === 'lost') {
      await this.inner.put(key, body, options);
      this.fire(`put ${key}: stored, answer lost`);
      throw this.error('put', key, `${key} was stored, then the answer was lost`, true);
    }
    if (f.point.at === 'start') {
      const what = `put ${key}: start (${f.kind})`;
      this.fire(what);
      if (f.kind === 'hang') {
        try {
          await this.hang(what, f, options.signal, 'put', key);
        } finally {
          if (!Buffer.isBuffer(body)) body.destroy();
        }
      }
      if (f.kind === 'destroy' && !Buffer.isBuffer(body)) body.destroy();
      throw this.error('put', key, `failed before reading the body`, f.kind === 'transient');
    }
    const source = Buffer.isBuffer(body) ? Readable.from([body]) : body;
    return this.putThrough(key, source, options, f);
  }

  /**
   * Relays the body to the inner put until the fault's point, then makes the inner put fail (so, by the
   * Target contract, it stores nothing) and fails this put the way the fault says.
   */
  private putThrough(key: string, source: Readable, options: PutOptions, f: Fault): Promise<PutResult> {
    const relay = new PassThrough({ highWaterMark: 64 * 1024 });
    // The inner put learns of a failure of its body by reading it; it may not be reading yet.
    relay.on('error', () => undefined);
    const inner = this.inner.put(key, relay, options);
    const limit = f.point.at === 'body' ? f.point.offset : Infinity;
    return new Promise<PutResult>((resolve, reject) => {
      let passed = 0;
      let tripped = false;
      let settled = false;
      const settle = (err: unknown, value?: PutResult) => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve(value!);
      };
      const detach = () => {
        source.off('data', onData);
        source.off('end', onEnd);
        source.off('error', onError);
        source.pause();
      };
      // The inner backend gave up on its own (or was aborted): do to the caller's body what it did to ours.
      relay.once('close', () => {
        if (tripped || source.readableEnded) return;
        detach();
        source.destroy();
      });
      inner.then(
        (r) => {
          if (!tripped) settle(undefined, r);
        },
        (e) => {
          if (!tripped) settle(e);
        },
      );
      const trip = async (what: string) => {
        tripped = true;
        detach();
        this.fire(`put ${key}: ${what} (${f.kind})`);
        if (f.kind === 'hang') {
          try {
            await this.hang(`put ${key}: ${what}`, f, options.signal, 'put', key);
          } catch (e) {
            relay.destroy(e as Error);
            await inner.catch(() => undefined);
            source.destroy();
            return settle(e);
          }
        }
        relay.destroy(new Error('injected fault: the backend gave up on this upload'));
        const stored = await inner.then(
          () => true,
          () => false,
        );
        if (f.kind === 'destroy') source.destroy();
        if (stored) return settle(new Error(`fault-target: the inner put of ${key} stored the object although its body failed`));
        settle(this.error('put', key, `${what}; nothing was stored`, f.kind === 'transient'));
      };
      const onData = (chunk: Buffer) => {
        if (passed + chunk.length > limit) {
          const room = limit - passed;
          if (room > 0) relay.write(chunk.subarray(0, room));
          passed = limit;
          void trip(`body passed ${limit} bytes`);
          return;
        }
        passed += chunk.length;
        if (!relay.write(chunk)) {
          source.pause();
          relay.once('drain', () => {
            if (!tripped) source.resume();
          });
        }
      };
      const onEnd = () => {
        if (f.point.at === 'commit') return void trip(`the whole body (${passed} bytes) was read, the upload not committed`);
        if (f.point.at === 'body') {
          // The body ended before the offset: fail at its end, so the fault still fires.
          return void trip(`body ended at ${passed} bytes, before ${limit}`);
        }
        relay.end();
      };
      const onError = (err: Error) => {
        detach();
        relay.destroy(err);
      };
      source.on('data', onData);
      source.once('end', onEnd);
      source.once('error', onError);
    });
  }

  get(key: string, options: GetOptions = {}): Promise<GetResult> {
    return this.track('get', key, this.doGet(key, options));
  }

  private async doGet(key: string, options: GetOptions): Promise<GetResult> {
    const f = this.take('get', key);
    if (!f) return this.inner.get(key, options);
    if (f.kind !== 'lost' && f.point.at === 'start') {
      const what = `get ${key}: start (${f.kind})`;
      this.fire(what);
      if (f.kind === 'hang') await this.hang(what, f, options.signal, 'get', key);
      throw this.error('get', key, 'failed before answering', f.kind === 'transient');
    }
    const got = await this.inner.get(key, options);
    if (f.kind === 'lost') {
      got.body.destroy();
      this.fire(`get ${key}: answer lost`);
      throw this.error('get', key, 'the answer was lost', true);
    }
    const limit = f.point.at === 'body' ? f.point.offset : 0;
    return { ...got, body: this.cutBody(key, got.body, limit, f, options.signal) };
  }

  /**
   * The body as read, up to `limit` bytes; then it fails the way the fault says. Bytes are pulled from the
   * inner body only as the consumer reads, so the fault comes while the consumer is reading (a failure that
   * comes before anyone listens is a different case, which the wire tests reach).
   */
  private cutBody(key: string, body: Readable, limit: number, f: Fault, signal: AbortSignal | undefined): Readable {
    let passed = 0;
    let tripped = false;
    const trip = () => {
      if (tripped) return;
      tripped = true;
      body.off('data', onData);
      body.off('end', onEnd);
      body.destroy();
      const what = `get ${key}: body cut after ${passed} bytes (${f.kind})`;
      this.fire(what);
      if (f.kind === 'destroy') return void out.destroy();
      if (f.kind === 'hang') {
        this.hang(what, f, signal, 'get', key).catch((e: Error) => out.destroy(e));
        return;
      }
      out.destroy(this.error('get', key, `the body broke off after ${passed} bytes`, f.kind === 'transient'));
    };
    const out = new Readable({
      highWaterMark: 64 * 1024,
      read: () => {
        if (!tripped) body.resume();
      },
      destroy: (err, cb) => {
        // A consumer that gives up stops the read underneath.
        if (!tripped) body.destroy();
        cb(err);
      },
    });
    const onData = (chunk: Buffer) => {
      if (passed + chunk.length > limit) {
        const room = limit - passed;
        if (room > 0) out.push(chunk.subarray(0, room));
        passed = limit;
        return trip();
      }
      passed += chunk.length;
      if (!out.push(chunk)) body.pause();
    };
    const onEnd = () => trip();
    body.on('data', onData);
    body.pause();
    body.once('end', onEnd);
    body.once('error', (e) => out.destroy(e));
    return out;
  }

  head(key: string, options: { signal?: AbortSignal } = {}): Promise<ObjectInfo> {
    return this.track(
      'head',
      key,
      this.simple('head', key, options.signal, () => this.inner.head(key, options)),
    );
  }

  delete(key: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    return this.track(
      'delete',
      key,
      this.simple('delete', key, options.signal, () => this.inner.delete(key, options)),
    );
  }

  private async simple<T>(op: 'head' | 'delete', key: string, signal: AbortSignal | undefined, run: () => Promise<T>): Promise<T> {
    const f = this.take(op, key);
    if (!f) return run();
    if (f.kind === 'lost') {
      await run();
      this.fire(`${op} ${key}: answer lost`);
      throw this.error(op, key, 'the answer was lost', true);
    }
    const what = `${op} ${key}: start (${f.kind})`;
    this.fire(what);
    if (f.kind === 'hang') await this.hang(what, f, signal, op, key);
    throw this.error(op, key, 'failed before answering', f.kind === 'transient');
  }

  list(prefix: string, options: { signal?: AbortSignal } = {}): AsyncIterable<ObjectInfo> {
    const self = this;
    return (async function* () {
      const f = self.take('list', prefix);
      if (!f) {
        yield* self.inner.list(prefix, options);
        return;
      }
      const items = f.point.at === 'page' ? f.point.items : 0;
      let n = 0;
      const trip = async () => {
        const what = `list ${prefix}: after ${n} items (${f.kind})`;
        self.fire(what);
        if (f.kind === 'hang') await self.hang(what, f, options.signal, 'list', prefix);
        throw self.error('list', prefix, `the listing failed after ${n} items`, f.kind === 'transient');
      };
      for await (const item of self.inner.list(prefix, options)) {
        if (n >= items) await trip();
        yield item;
        n++;
      }
      await trip();
    })();
  }
}
