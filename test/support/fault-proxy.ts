/**
 * A forwarder that injects failures the way clouds produce them: error statuses (503 SlowDown,
 * 500 InternalError, 429), connections reset before any answer, answers cut off part-way through
 * their body, and answers lost after the upstream applied the request. Rules apply to matching
 * requests, a set number of times each, in the order they were added.
 */
import { request as httpRequest } from 'node:http';
import { startForwardingProxy, type Exchange } from './http-proxy.js';

export type Fault =
  | { status: number; code: string; retryAfter?: string }
  | 'reset'
  /** Forward the request, then drop the connection after this many bytes of the answer's body. */
  | { cutAfterBytes: number }
  /**
   * Forward the request and let the upstream apply it, then reset the client's connection instead of
   * passing the answer on: a write that succeeded but whose answer was lost.
   */
  | 'lost-answer';

export interface FaultRule {
  /** Which requests it applies to; default all. */
  match?: (method: string, url: URL) => boolean;
  /** How many matching requests it fails; default 1; Infinity for all. */
  times?: number;
  fault: Fault;
}

export interface FaultProxy {
  endpoint: string;
  /** Every request that reached the proxy, as "METHOD /path?query", with the fault it got, if any. */
  seen: Array<{ request: string; fault: string | null }>;
  inject(rule: FaultRule): void;
  clear(): void;
  stop(): Promise<void>;
}

export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const rules: Array<Required<Omit<FaultRule, 'match'>> & Pick<FaultRule, 'match'>> = [];
  const seen: FaultProxy['seen'] = [];
  const proxy = await startForwardingProxy(upstream, async (x) => {
    const method = x.req.method ?? 'GET';
    const request = `${method} ${x.url.pathname}${x.url.search}`;
    const rule = rules.find((r) => r.times > 0 && (!r.match || r.match(method, x.url)));
    if (!rule) {
      seen.push({ request, fault: null });
      return x.forward();
    }
    rule.times--;
    if (rule.fault === 'reset') {
      seen.push({ request, fault: 'reset' });
      x.req.socket.destroy();
      return;
    }
    if (rule.fault === 'lost-answer') {
      seen.push({ request, fault: 'lost answer' });
      return forwardAndDropAnswer(x, upstream);
    }
    if ('cutAfterBytes' in rule.fault) {
      seen.push({ request, fault: `cut after ${rule.fault.cutAfterBytes} bytes` });
      return forwardAndCut(x, upstream, afterBytes(rule.fault.cutAfterBytes));
    }
    seen.push({ request, fault: String(rule.fault.status) });
    await x.reply(
      rule.fault.status,
      rule.fault.code,
      'injected by the test',
      rule.fault.retryAfter ? { 'retry-after': rule.fault.retryAfter } : {},
    );
  });
  return {
    endpoint: proxy.endpoint,
    seen,
    inject: (rule) => rules.push({ times: 1, ...rule }),
    clear: () => {
      rules.length = 0;
      seen.length = 0;
    },
    stop: proxy.stop,
  };
}

/** True for a listing request of Azure Blob (comp=list) or S3 (ListObjectsV2). */
export function isListing(method: string, url: URL): boolean {
  return method === 'GET' && (url.searchParams.get('comp') === 'list' || url.searchParams.get('list-type') === '2');
}

/**
 * Matches page `page` (1-based) of every listing: a listing's first request carries no continuation
 * marker, each further page does. Keep such a rule first, so that it sees every request.
 */
export function listPage(page: number): (method: string, url: URL) => boolean {
  let current = 0;
  return (method, url) => {
    if (!isListing(method, url)) return false;
    const continued = Boolean(url.searchParams.get('marker') || url.searchParams.get('continuation-token'));
    current = continued ? current + 1 : 1;
    return current === page;
  };
}

function forwardAndDropAnswer(x: Exchange, upstream: string): Promise<void> {
  const target = new URL(upstream);
  return new Promise<void>((resolve) => {
    const drop = () => {
      x.req.socket.destroy();
      resolve();
    };
    const out = httpRequest(
      { host: target.hostname, port: target.port, method: x.req.method, path: x.req.url, headers: x.req.headers, agent: false },
      // The whole answer is read first: by then the upstream has done all it was asked to.
      (answer) => answer.on('end', drop).on('error', drop).resume(),
    );
    out.on('error', drop);
    x.req.pipe(out);
  });
}

/**
 * Forwards the request and passes the answer on until the byte `findCut` names (an offset in the answer's
 * body, given each piece as it arrives and its offset, until it names one), then drops the connection: the
 * status, the headers and the bytes before the cut reach the client, so it sees an answer that breaks off
 * part-way, not one that never came.
 */
function forwardAndCut(x: Exchange, upstream: string, findCut: (data: Buffer, base: number) => number | undefined): Promise<void> {
  const target = new URL(upstream);
  return new Promise<void>((resolve) => {
    const out = httpRequest(
      { host: target.hostname, port: target.port, method: x.req.method, path: x.req.url, headers: x.req.headers, agent: false },
      (answer) => {
        x.res.writeHead(answer.statusCode ?? 502, answer.headers);
        let pos = 0;
        let cutAt: number | undefined;
        let cut = false;
        answer.on('data', (data: Buffer) => {
          if (cut) return;
          const base = pos;
          pos += data.length;
          cutAt ??= findCut(data, base);
          if (cutAt === undefined || pos < cutAt) {
            x.res.write(data);
            return;
          }
          cut = true;
          answer.destroy();
          x.res.write(data.subarray(0, cutAt - base), () => {
            x.res.socket?.destroy();
            resolve();
          });
        });
        answer.on('end', () => {
          x.res.end();
          resolve();
        });
        answer.on('error', () => resolve());
      },
    );
    out.on('error', () => {
      x.res.socket?.destroy();
      resolve();
    });
    x.req.pipe(out);
  });
}

/** The cut of a body after its first `limit` bytes (an answer without a body is passed on whole). */
function afterBytes(limit: number): (data: Buffer, base: number) => number | undefined {
  return (data, base) => (base + data.length >= limit ? limit : undefined);
}

/**
 * The request kinds a wire fault can single out, the same names for both services:
 * - CreateUpload: S3 CreateMultipartUpload (POST ?uploads); Blob has none;
 * - UploadPart: S3 UploadPart (PUT ?partNumber&uploadId), Blob Put Block (PUT ?comp=block);
 * - CompleteUpload: S3 CompleteMultipartUpload (POST ?uploadId), Blob Put Block List (PUT ?comp=blocklist);
 * - AbortUpload: S3 AbortMultipartUpload (DELETE ?uploadId);
 * - PutObject: S3 PutObject, Blob Put Blob (a whole object in one request);
 * - GetObject, HeadObject, DeleteObject, List (S3 ListObjectsV2 and ListMultipartUploads, Blob List Blobs).
 */
export type WireRequestKind =
  | 'CreateUpload'
  | 'UploadPart'
  | 'CompleteUpload'
  | 'AbortUpload'
  | 'PutObject'
  | 'GetObject'
  | 'HeadObject'
  | 'DeleteObject'
  | 'List'
  | 'Other';

export function wireRequestKind(method: string, url: URL): WireRequestKind {
  const q = url.searchParams;
  switch (method) {
    case 'POST':
      if (q.has('uploads')) return 'CreateUpload';
      if (q.has('uploadId')) return 'CompleteUpload';
      return 'Other';
    case 'PUT':
      if (q.has('partNumber') || q.get('comp') === 'block') return 'UploadPart';
      if (q.get('comp') === 'blocklist') return 'CompleteUpload';
      if (q.has('comp') || q.has('restype')) return 'Other';
      return 'PutObject';
    case 'GET':
      if (isListing(method, url) || q.has('uploads')) return 'List';
      if (q.has('comp') || q.has('restype')) return 'Other';
      return 'GetObject';
    case 'HEAD':
      return 'HeadObject';
    case 'DELETE':
      return q.has('uploadId') ? 'AbortUpload' : 'DeleteObject';
    default:
      return 'Other';
  }
}

export type WireFault =
  | { status: number; code: string }
  /** The connection is reset before the request reaches the service. */
  | 'reset'
  /** The request reaches the service and is carried out; then the connection is reset before the answer. */
  | 'answer-lost'
  /** The answer's body is cut off after this many bytes. */
  | { cutAfterBytes: number };

export interface WireRule {
  kind: WireRequestKind;
  /** The first request of that kind it applies to, 1-based, counted from when the rule was added. */
  nth: number;
  /** How many requests of that kind from the nth on; default 1; Infinity for every one. */
  times?: number;
  /** Only requests whose path matches. */
  path?: RegExp;
  fault: WireFault;
}

export interface WireFaultProxy {
  endpoint: string;
  /** Every request, with its kind and the fault it got, if any. */
  seen: Array<{ request: string; kind: WireRequestKind; fault: string | null }>;
  inject(rule: WireRule): void;
  /** Faults actually applied since the last clear. */
  applied(): string[];
  clear(): void;
  stop(): Promise<void>;
}

function describeWireFault(fault: WireFault): string {
  if (typeof fault === 'string') return fault;
  if ('cutAfterBytes' in fault) return `cut after ${fault.cutAfterBytes} bytes`;
  return `${fault.status} ${fault.code}`;
}

/**
 * A forwarder that fails request N of a kind: with an error status, a reset before or after the service
 * carried the request out, or an answer cut off mid-body. Counting is per rule and deterministic: the 7th
 * UploadPart is the 7th that reaches the proxy (with concurrent parts, whichever that is).
 */
export async function startWireFaultProxy(upstream: string): Promise<WireFaultProxy> {
  const rules: Array<{ rule: WireRule; count: number }> = [];
  const seen: WireFaultProxy['seen'] = [];
  const proxy = await startForwardingProxy(upstream, async (x) => {
    const method = x.req.method ?? 'GET';
    const kind = wireRequestKind(method, x.url);
    const request = `${method} ${x.url.pathname}${x.url.search}`;
    let fault: WireFault | undefined;
    for (const entry of rules) {
      const { rule } = entry;
      if (rule.kind !== kind || (rule.path && !rule.path.test(x.url.pathname))) continue;
      entry.count++;
      const times = rule.times ?? 1;
      if (!fault && entry.count >= rule.nth && entry.count < rule.nth + times) fault = rule.fault;
    }
    seen.push({ request, kind, fault: fault ? describeWireFault(fault) : null });
    if (!fault) return x.forward();
    if (fault === 'reset') {
      x.req.socket.destroy();
      return;
    }
    if (fault === 'answer-lost') return forwardThenReset(x, upstream);
    if ('cutAfterBytes' in fault) return forwardAndCut(x, upstream, afterBytes(fault.cutAfterBytes));
    await x.reply(fault.status, fault.code, 'injected by the test');
  });
  return {
    endpoint: proxy.endpoint,
    seen,
    inject: (rule) => rules.push({ rule, count: 0 }),
    applied: () => seen.filter((s) => s.fault).map((s) => `${s.kind} ${s.request}: ${s.fault}`),
    clear: () => {
      rules.length = 0;
      seen.length = 0;
    },
    stop: proxy.stop,
  };
}

/** Sends the request to the service and waits for its whole answer, then resets the client's connection. */
function forwardThenReset(x: Exchange, upstream: string): Promise<void> {
  const target = new URL(upstream);
  return new Promise<void>((resolve) => {
    const out = httpRequest(
      { host: target.hostname, port: target.port, method: x.req.method, path: x.req.url, headers: x.req.headers, agent: false },
      (answer) => {
        answer.resume();
        const done = () => {
          x.req.socket.destroy();
          resolve();
        };
        answer.on('end', done);
        answer.on('error', done);
      },
    );
    out.on('error', () => {
      x.req.socket.destroy();
      resolve();
    });
    x.req.pipe(out);
  });
}

/**
 * A proxy between the snapshot job and its agent whose first `times` chunk-data answers (POST .../chunk-data)
 * break off in the middle of record `k` (1-based): records 1 to k-1 pass whole, then half of record k's frame,
 * then the connection drops, as when the agent or the network between dies mid-answer. Every other request,
 * and every later chunk-data request, passes untouched; answers after the first break off in their first
 * record (they ask for what the first did not deliver). `cuts` says how often the fault has happened.
 */
export async function startChunkDataCutProxy(
  upstream: string,
  k: number,
  times = 1,
): Promise<{ endpoint: string; cut(): boolean; cuts(): number; stop(): Promise<void> }> {
  let cuts = 0;
  const proxy = await startForwardingProxy(upstream, async (x) => {
    if (cuts >= times || x.req.method !== 'POST' || !x.url.pathname.endsWith('/chunk-data')) return x.forward();
    cuts++;
    // The first answer breaks off in record k; a later one (asking for what was not received) in its first.
    const cutRecord = cuts === 1 ? k : 1;
    // The answer's framing: "<sha256> <length>\n" then `length` bytes of zstd frame, per record; the cut is
    // half-way through record `cutRecord`'s frame.
    let header = '';
    let frameLeft = 0;
    let index = 0;
    await forwardAndCut(x, upstream, (data, base) => {
      for (let at = 0; at < data.length; ) {
        if (frameLeft > 0) {
          const n = Math.min(frameLeft, data.length - at);
          frameLeft -= n;
          at += n;
          continue;
        }
        const nl = data.indexOf(10, at);
        header += data.toString('latin1', at, nl < 0 ? data.length : nl);
        if (nl < 0) break;
        at = nl + 1;
        frameLeft = Number(header.split(' ')[1]);
        header = '';
        index++;
        if (index === cutRecord) return base + at + Math.floor(frameLeft / 2);
      }
      return undefined;
    });
  });
  return { endpoint: proxy.endpoint, cut: () => cuts > 0, cuts: () => cuts, stop: proxy.stop };
}
