/**
 * Shared pieces of the agent tests: real agents on 127.0.0.1:0, real SQLite files, raw HTTP where exact bytes
 * matter. Temporary folders and log capture come from ../support/world.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Readable } from 'node:stream';
import type { AgentConfig } from '../../src/agent/config.js';
import { signRequest } from '../../src/agent/protocol.js';
import { firstColumn, firstValue, openDatabase } from '../../src/util/sqlite.js';

export const KEY_ID = 'functions';
/** The stand-in backend of application drills; the demo runs it built, the tests from its source (Node 24 strips the types). */
export const STANDIN = fileURLToPath(new URL('../../src/dev/standin-backend.ts', import.meta.url));

/**
 * The agent's drill command starting the stand-in backend (src/dev/standin-backend.ts) on the restored copy,
 * writing its pid to `pidFile`; `knobs` are its STANDIN_* settings (exit at start, no /healthz, ...).
 */
export function standinCommand(pidFile: string, knobs: string[] = []): string[] {
  return [process.execPath, STANDIN, '--database-url', '{database_url}', '--port', '{port}', `STANDIN_PID_FILE=${pidFile}`, ...knobs];
}
export const KEY = randomBytes(32).toString('hex');

export function agentConfig(work: string, overrides: Partial<AgentConfig> = {}): AgentConfig {
  return {
    dbPath: join(work, 'tcab.sqlite'),
    stagingDir: join(work, 'staging'),
    host: '127.0.0.1',
    port: 0,
    keys: new Map([[KEY_ID, KEY]]),
    tls: undefined,
    databaseName: 'tcab',
    compression: 'auto',
    stagingTtlMs: 3_600_000,
    ...overrides,
  };
}

export interface RawAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** One request with exactly the path, headers and body given (no normalisation of `..` or `%2f`). */
export function rawRequest(
  baseUrl: string,
  options: { method?: string; path: string; headers?: Record<string, string | number>; body?: string | Buffer; ca?: string },
): Promise<RawAnswer> {
  const base = new URL(baseUrl);
  const fn = base.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = fn({
      hostname: base.hostname,
      port: base.port,
      method: options.method ?? 'GET',
      path: options.path,
      headers: options.headers,
      agent: false,
      ...(options.ca ? { ca: options.ca } : {}),
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Headers of a correctly signed request, with the usual key unless told otherwise. */
export function signedHeaders(
  method: string,
  pathAndQuery: string,
  body: string = '',
  opts: { keyId?: string; secret?: string; ts?: number; nonce?: string } = {},
): Record<string, string | number> {
  const headers: Record<string, string | number> = {
    Authorization: signRequest({
      keyId: opts.keyId ?? KEY_ID,
      secret: opts.secret ?? KEY,
      method,
      pathAndQuery,
      body,
      ts: opts.ts,
      nonce: opts.nonce,
    }),
  };
  if (body) {
    headers['Content-Type'] = 'application/json';
    headers['Content-Length'] = Buffer.byteLength(body);
  }
  return headers;
}

export function signedRequest(
  baseUrl: string,
  method: string,
  path: string,
  body = '',
  extra: Record<string, string> = {},
): Promise<RawAnswer> {
  return rawRequest(baseUrl, { method, path, body, headers: { ...signedHeaders(method, path, body), ...extra } });
}

export async function sha256OfStream(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export function sha256OfFile(path: string): Promise<string> {
  return sha256OfStream(createReadStream(path));
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Row counts of every table, read the way an operator would after a restore. */
export function tableCounts(path: string): Record<string, number> {
  const db = openDatabase(path, { readOnly: true });
  try {
    const names = firstColumn<string>(db, "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name");
    return Object.fromEntries(names.map((n) => [n, firstValue<number>(db, `SELECT count(*) FROM "${n}"`)!]));
  } finally {
    db.close();
  }
}

export function integrityCheck(path: string): string {
  const db = openDatabase(path, { readOnly: true });
  try {
    return firstColumn<string>(db, 'PRAGMA integrity_check').join('; ');
  } finally {
    db.close();
  }
}

export function problemOf(answer: RawAnswer): { type: string; title: string; status: number; detail: string } {
  return JSON.parse(answer.body.toString('utf8')) as { type: string; title: string; status: number; detail: string };
}
