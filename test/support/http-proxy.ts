/**
 * A small HTTP forwarder for tests: every request goes to `handle`, which may answer it itself or call
 * `forward()` to pass it, headers untouched (request signatures stay valid), to the upstream server.
 */
import { createHash } from 'node:crypto';
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface Exchange {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  /**
   * Sends the request upstream and streams the answer back; resolves when the answer is complete.
   * `beforeAnswer` runs once the upstream has answered (so it has the whole request), before the client
   * sees the answer: a slow service, seen from the client.
   */
  forward(options?: ForwardOptions): Promise<void>;
  /** Answers with an S3/Azure-style XML error, after reading the request body so the client sees it. */
  reply(status: number, code: string, message: string, headers?: Record<string, string>): Promise<void>;
}

export interface ForwardOptions {
  beforeAnswer?: () => Promise<void>;
  /**
   * The sha256 (hex) the body must have, as S3 and R2 check `x-amz-content-sha256`: the last chunk is held
   * back until the body has ended, and a body with other bytes is answered 400 XAmzContentSHA256Mismatch
   * while the upstream request is aborted, so the upstream never has the whole of it.
   */
  sha256?: string;
}

export interface ForwardingProxy {
  endpoint: string;
  stop(): Promise<void>;
}

export async function startForwardingProxy(upstream: string, handle: (x: Exchange) => Promise<void>): Promise<ForwardingProxy> {
  const target = new URL(upstream);
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://proxy');
    const exchange: Exchange = {
      req,
      res,
      url,
      forward: (options = {}) =>
        new Promise<void>((resolve) => {
          const out = httpRequest(
            { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent: false },
            (answer) => {
              const pass = () => {
                res.writeHead(answer.statusCode ?? 502, answer.headers);
                answer.pipe(res);
                answer.on('end', resolve);
                answer.on('error', () => resolve());
                res.on('close', resolve);
              };
              if (!options.beforeAnswer) return pass();
              answer.pause();
              options.beforeAnswer().then(pass, pass);
            },
          );
          let refused = false;
          out.on('error', () => {
            if (refused) return;
            if (!res.headersSent) res.writeHead(502).end();
            else res.destroy();
            resolve();
          });
          if (!options.sha256) {
            req.pipe(out);
            return;
          }
          const hash = createHash('sha256');
          let held: Buffer | undefined;
          req.on('data', (chunk: Buffer) => {
            hash.update(chunk);
            if (held && !out.write(held)) {
              req.pause();
              out.once('drain', () => req.resume());
            }
            held = chunk;
          });
          // A client that gives up mid-body: the upstream must not get the rest, nor the held chunk.
          req.on('close', () => {
            if (req.complete) return;
            refused = true;
            out.destroy();
            resolve();
          });
          req.on('end', () => {
            const got = hash.digest('hex');
            if (got === options.sha256) {
              out.end(held);
              return;
            }
            refused = true;
            out.destroy();
            void exchange
              .reply(400, 'XAmzContentSHA256Mismatch', "The provided 'x-amz-content-sha256' header does not match what was computed.")
              .then(resolve, resolve);
          });
        }),
      reply: async (status, code, message, headers = {}) => {
        req.resume();
        if (!req.readableEnded) await new Promise((r) => req.once('end', r));
        const body =
          req.method === 'HEAD'
            ? ''
            : `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`;
        res.writeHead(status, {
          'content-type': 'application/xml',
          'content-length': Buffer.byteLength(body),
          'x-ms-error-code': code,
          ...headers,
        });
        res.end(body);
      },
    };
    handle(exchange).catch((err) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err));
      else res.destroy();
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
