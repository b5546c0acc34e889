/**
 * A small HTTP forwarder for tests: every request goes to `handle`, which may answer it itself or call
 * `forward()` to pass it, headers untouched (request signatures stay valid), to the upstream server.
 */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface Exchange {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  /** Sends the request upstream and streams the answer back; resolves when the answer is complete. */
  forward(): Promise<void>;
  /** Answers with an S3/Azure-style XML error, after reading the request body so the client sees it. */
  reply(status: number, code: string, message: string, headers?: Record<string, string>): Promise<void>;
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
      req, res, url,
      forward: () =>
        new Promise<void>((resolve) => {
          const out = httpRequest(
            { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent: false },
            (answer) => {
              res.writeHead(answer.statusCode ?? 502, answer.headers);
              answer.pipe(res);
              answer.on('end', resolve);
              answer.on('error', () => resolve());
              res.on('close', resolve);
            },
          );
          out.on('error', () => {
            if (!res.headersSent) res.writeHead(502).end();
            else res.destroy();
            resolve();
          });
          req.pipe(out);
        }),
      reply: async (status, code, message, headers = {}) => {
        req.resume();
        if (!req.readableEnded) await new Promise((r) => req.once('end', r));
        const body = req.method === 'HEAD' ? '' : `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`;
        res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body), 'x-ms-error-code': code, ...headers });
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
