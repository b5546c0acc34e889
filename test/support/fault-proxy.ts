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
      return forwardAndCut(x, upstream, rule.fault.cutAfterBytes);
    }
    seen.push({ request, fault: String(rule.fault.status) });
    await x.reply(rule.fault.status, rule.fault.code, 'injected by the test', rule.fault.retryAfter ? { 'retry-after': rule.fault.retryAfter } : {});
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

function forwardAndCut(x: Exchange, upstream: string, limit: number): Promise<void> {
  const target = new URL(upstream);
  return new Promise<void>((resolve) => {
    const out = httpRequest(
      { host: target.hostname, port: target.port, method: x.req.method, path: x.req.url, headers: x.req.headers, agent: false },
      (answer) => {
        x.res.writeHead(answer.statusCode ?? 502, answer.headers);
        let sent = 0;
        answer.on('data', (chunk: Buffer) => {
          if (sent >= limit) return;
          const room = limit - sent;
          sent += chunk.length;
          if (sent < limit) {
            x.res.write(chunk);
            return;
          }
          answer.destroy();
          // The status, headers and the first `limit` bytes reach the client before the connection drops, so
          // the client sees an answer that breaks off part-way, not one that never came.
          x.res.write(chunk.subarray(0, room), () => {
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
