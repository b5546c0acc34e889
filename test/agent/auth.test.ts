/**
 * TCAB-HMAC-SHA256 as the agent enforces it, and the request hygiene around it: every failure is the same
 * generic 401, the reason is in the agent's log only, secrets appear nowhere, bodies are capped, ids are
 * checked before the file system is touched.
 */
import { randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient, AgentError } from '../../src/agent/client.js';
import { RequestAuthenticator } from '../../src/agent/auth.js';
import { MAX_BODY_BYTES, signRequest } from '../../src/agent/protocol.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { agentConfig, KEY, KEY_ID, problemOf, rawRequest, signedHeaders, signedRequest, type RawAnswer } from './helpers.js';
import { captureLog, tempDir } from '../support/world.js';

const OLD_KEY_ID = 'functions-2025';
const OLD_KEY = randomBytes(32).toString('hex');
const WRONG_KEY = randomBytes(32).toString('hex');

let work: { dir: string; remove(): Promise<void> };
let agent: RunningAgent;
const logs = captureLog();

beforeAll(async () => {
  work = await tempDir('auth');
  createSampleDatabase(join(work.dir, 'tcab.sqlite'), { runs: 30 });
  agent = await startAgent(
    agentConfig(work.dir, {
      keys: new Map([
        [KEY_ID, KEY],
        [OLD_KEY_ID, OLD_KEY],
      ]),
    }),
    { logger: logs.logger },
  );
});

afterAll(async () => {
  await agent?.close();
  await work?.remove();
});

const now = () => Math.floor(Date.now() / 1000);
let generic401: unknown;

function expectGeneric401(answer: RawAnswer): void {
  expect(answer.status).toBe(401);
  expect(answer.headers['content-type']).toBe('application/problem+json');
  expect(answer.headers['cache-control']).toBe('no-store');
  expect(answer.headers['www-authenticate']).toBe('TCAB-HMAC-SHA256');
  const body = problemOf(answer);
  expect(body).toMatchObject({ type: 'about:blank', title: 'Unauthorized', status: 401 });
  generic401 ??= body;
  // Byte for byte the same body whatever failed: nothing tells a prober which check it tripped.
  expect(body).toEqual(generic401);
  const text = answer.body.toString('utf8');
  for (const secret of [KEY, OLD_KEY, WRONG_KEY]) expect(text).not.toContain(secret);
}

function lastRejection(): string {
  const events = logs.events('auth.rejected');
  return String(events[events.length - 1]?.reason);
}

function lastRejectedKeyId(): unknown {
  const events = logs.events('auth.rejected');
  return events[events.length - 1]?.clientKeyId;
}

describe('every signing failure is the same 401; the reason goes to the log', () => {
  it('accepts a correctly signed request', async () => {
    expect((await signedRequest(agent.url, 'GET', '/v1/status')).status).toBe(200);
  });

  const cases: Array<[string, () => Promise<RawAnswer>, RegExp]> = [
    ['unsigned', () => rawRequest(agent.url, { path: '/v1/status' }), /no Authorization header/],
    ['another scheme', () => rawRequest(agent.url, { path: '/v1/status', headers: { Authorization: `Bearer ${KEY}` } }), /malformed/],
    [
      'signed with a wrong secret',
      () => rawRequest(agent.url, { path: '/v1/status', headers: signedHeaders('GET', '/v1/status', '', { secret: WRONG_KEY }) }),
      /signature does not match/,
    ],
    [
      'an unknown key id',
      () => rawRequest(agent.url, { path: '/v1/status', headers: signedHeaders('GET', '/v1/status', '', { keyId: 'stranger' }) }),
      /unknown key id/,
    ],
    [
      'a stale timestamp (301 s old)',
      () => rawRequest(agent.url, { path: '/v1/status', headers: signedHeaders('GET', '/v1/status', '', { ts: now() - 301 }) }),
      /behind the agent's clock by 30\d s/,
    ],
    [
      'a future timestamp (301 s ahead)',
      () => rawRequest(agent.url, { path: '/v1/status', headers: signedHeaders('GET', '/v1/status', '', { ts: now() + 301 }) }),
      /ahead of the agent's clock by 30\d s/,
    ],
    [
      'a tampered body',
      () =>
        rawRequest(agent.url, {
          method: 'POST',
          path: '/v1/snapshots',
          body: '{"compression":"none"}',
          headers: { ...signedHeaders('POST', '/v1/snapshots', '{"compression":"gzip"}') },
        }),
      /signature does not match/,
    ],
    [
      'a tampered path',
      () =>
        rawRequest(agent.url, {
          method: 'DELETE',
          path: '/v1/snapshots/20260101T000000Z-00000002',
          headers: signedHeaders('DELETE', '/v1/snapshots/20260101T000000Z-00000001'),
        }),
      /signature does not match/,
    ],
    [
      'a tampered query',
      () => rawRequest(agent.url, { path: '/v1/status?verbose=1', headers: signedHeaders('GET', '/v1/status') }),
      /signature does not match/,
    ],
    [
      'a tampered method',
      () =>
        rawRequest(agent.url, {
          method: 'DELETE',
          path: '/v1/snapshots/20260101T000000Z-00000001',
          headers: signedHeaders('GET', '/v1/snapshots/20260101T000000Z-00000001'),
        }),
      /signature does not match/,
    ],
  ];
  for (const [what, send, reason] of cases) {
    it(`rejects ${what}`, async () => {
      expectGeneric401(await send());
      expect(lastRejection()).toMatch(reason);
    });
  }

  it('logs which key id a rejected request claimed, so an operator can tell a stale key from a stranger', async () => {
    await rawRequest(agent.url, {
      path: '/v1/status',
      headers: signedHeaders('GET', '/v1/status', '', { keyId: OLD_KEY_ID, secret: WRONG_KEY }),
    });
    expect(lastRejectedKeyId()).toBe(OLD_KEY_ID);
    expect(logs.events('auth.rejected').at(-1)).toMatchObject({ level: 'warn', method: 'GET', path: '/v1/status', remote: '127.0.0.1' });
  });

  it('rejects a replayed request (same key id and nonce), even though the first one was accepted', async () => {
    const headers = signedHeaders('GET', '/v1/status');
    expect((await rawRequest(agent.url, { path: '/v1/status', headers })).status).toBe(200);
    expectGeneric401(await rawRequest(agent.url, { path: '/v1/status', headers }));
    expect(lastRejection()).toMatch(/nonce already used/);
  });

  it('accepts timestamps just inside the 300 s window either way', async () => {
    for (const ts of [now() - 295, now() + 295]) {
      const answer = await rawRequest(agent.url, { path: '/v1/status', headers: signedHeaders('GET', '/v1/status', '', { ts }) });
      expect(answer.status).toBe(200);
    }
  });

  it('holds several keys at once for rotation: both the new and the old key work', async () => {
    const current = new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY });
    const previous = new AgentClient({ url: agent.url, keyId: OLD_KEY_ID, key: OLD_KEY });
    expect((await current.status()).database.name).toBe('tcab');
    expect((await previous.status()).database.name).toBe('tcab');
    // A key id paired with the other id's secret is not a valid key.
    const mixed = new AgentClient({ url: agent.url, keyId: OLD_KEY_ID, key: KEY });
    const err = await mixed.status().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).status).toBe(401);
    expect((err as AgentError).message).toContain('clock skew > 300 s between function app and VM');
    expect((err as AgentError).message).toContain(new URL(agent.url).host);
    expect((err as AgentError).message).not.toContain(KEY);
    expect((err as AgentError).permanent).toBe(true);
  });

  it('answers /healthz without a signature, and nothing else', async () => {
    const answer = await rawRequest(agent.url, { path: '/healthz' });
    expect(answer.status).toBe(200);
    expect(answer.body.toString()).toBe('ok');
    expect(answer.headers['cache-control']).toBe('no-store');
    await expect(new AgentClient({ url: agent.url, keyId: 'x', key: 'y' }).health()).resolves.toBeUndefined();
    expectGeneric401(await rawRequest(agent.url, { path: '/v1/nothing-here' }));
  });

  it('never writes a secret into its log, even for requests carrying one', () => {
    expect(logs.lines.length).toBeGreaterThan(5);
    const all = logs.lines.join('\n');
    for (const secret of [KEY, OLD_KEY, WRONG_KEY]) expect(all).not.toContain(secret);
  });
});

describe('the replay cache stays bounded', () => {
  const keys = new Map([['k', KEY]]);
  const signed = (ts: number, nonce: string) => ({
    method: 'GET',
    pathAndQuery: '/v1/status',
    body: Buffer.alloc(0),
    authorization: signRequest({ keyId: 'k', secret: KEY, method: 'GET', pathAndQuery: '/v1/status', ts, nonce }),
  });

  it('forgets nonces once their timestamps leave the window, and still rejects replays inside it', () => {
    let nowMs = 1_800_000_000_000;
    const auth = new RequestAuthenticator(keys, { maxNonces: 3, nowMs: () => nowMs });
    const t = nowMs / 1000;
    for (const n of ['nonce-aaaaaaaaaaaa', 'nonce-bbbbbbbbbbbb', 'nonce-cccccccccccc']) expect(auth.verify(signed(t, n)).ok).toBe(true);
    expect(auth.verify(signed(t, 'nonce-aaaaaaaaaaaa'))).toMatchObject({ ok: false, reason: expect.stringMatching(/nonce already used/) });
    // Full, and nothing has expired yet: a new request is refused rather than a remembered nonce dropped.
    expect(auth.verify(signed(t, 'nonce-dddddddddddd'))).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/more than 3 signed requests/),
    });
    // Past the window the old nonces are forgotten; replaying them now fails on the timestamp instead.
    nowMs += 301_000;
    expect(auth.verify(signed(nowMs / 1000, 'nonce-dddddddddddd')).ok).toBe(true);
    expect(auth.rememberedNonces).toBe(1);
    expect(auth.verify(signed(t, 'nonce-aaaaaaaaaaaa'))).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/behind the agent's clock/),
    });
  });
});

describe('request hygiene', () => {
  it('answers 413 to a declared Content-Length over 16 KiB without reading the body', async () => {
    const answer = await new Promise<RawAnswer>((resolve, reject) => {
      const base = new URL(agent.url);
      const req = request({
        hostname: base.hostname,
        port: base.port,
        method: 'POST',
        path: '/v1/snapshots',
        agent: false,
        headers: { ...signedHeaders('POST', '/v1/snapshots'), 'Content-Type': 'application/json', 'Content-Length': 10 * 1024 * 1024 },
      });
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      });
      req.on('error', reject);
      // Send only the first kilobyte of the promised 10 MiB: the answer must come anyway.
      req.write(Buffer.alloc(1024, 0x20));
    });
    expect(answer.status).toBe(413);
    expect(answer.headers['content-type']).toBe('application/problem+json');
    expect(answer.headers['cache-control']).toBe('no-store');
    expect(answer.headers.connection).toBe('close');
    expect(problemOf(answer).detail).toContain(String(MAX_BODY_BYTES));
  });

  it('answers 413 to a chunked body that grows past 16 KiB', async () => {
    const body = JSON.stringify({ compression: 'gzip', padding: 'x'.repeat(MAX_BODY_BYTES) });
    const answer = await new Promise<RawAnswer>((resolve, reject) => {
      const base = new URL(agent.url);
      const req = request({
        hostname: base.hostname,
        port: base.port,
        method: 'POST',
        path: '/v1/snapshots',
        agent: false,
        headers: signedHeaders('POST', '/v1/snapshots'),
      });
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      });
      req.on('error', reject);
      req.write(body.slice(0, 8000));
      req.write(body.slice(8000));
    });
    expect(answer.status).toBe(413);
  });

  const badIds = [
    '..',
    '../staging',
    '%2e%2e',
    '%2e%2e%2ftcab.sqlite',
    'a/b',
    '20260101T000000Z-deadbeef%2f..',
    '20260101T000000Z-deadbeef/..',
    '20260101T000000Z-DEADBEEF',
    '20260101T000000Z-deadbeef.sqlite.gz',
  ];
  for (const id of badIds) {
    it(`answers 400 to the snapshot id "${id}" for GET and DELETE`, async () => {
      for (const method of ['GET', 'DELETE']) {
        const path = `/v1/snapshots/${id}`;
        const answer = await signedRequest(agent.url, method, path);
        expect(answer.status).toBe(400);
        expect(answer.headers['content-type']).toBe('application/problem+json');
        expect(problemOf(answer).detail).toContain('expected an id like 20261124T161300Z-3f9a1c2e');
      }
    });
  }

  it('answers 400 to a body it cannot use, naming what is wrong, and 400 to a compression it does not know', async () => {
    const notJson = await signedRequest(agent.url, 'POST', '/v1/snapshots', '{compression: gzip}');
    expect(notJson.status).toBe(400);
    expect(problemOf(notJson).detail).toContain('not JSON');
    const unknownField = await signedRequest(agent.url, 'POST', '/v1/snapshots', '{"compresion":"gzip"}');
    expect(unknownField.status).toBe(400);
    expect(problemOf(unknownField).detail).toContain('compresion');
    const badValue = await signedRequest(agent.url, 'POST', '/v1/snapshots', '{"compression":"brotli"}');
    expect(badValue.status).toBe(400);
    expect(problemOf(badValue).detail).toContain('compression');
  });

  it('answers a request that is not HTTP with a 400 problem, also marked no-store', async () => {
    const { port } = new URL(agent.url);
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1', () => socket.write('HELLO agent\r\n\r\n'));
      let text = '';
      socket
        .setEncoding('utf8')
        .on('data', (t: string) => (text += t))
        .on('end', () => resolve(text))
        .on('error', reject);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(answer).toContain('Cache-Control: no-store');
    expect(answer).toContain('Content-Type: application/problem+json');
  });

  it('answers unknown endpoints with 404 and wrong methods with 405, as problems without paths or stack traces', async () => {
    const unknown = await signedRequest(agent.url, 'GET', '/v2/snapshots');
    expect(unknown.status).toBe(404);
    const wrongMethod = await signedRequest(agent.url, 'PUT', '/v1/status');
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.allow).toBe('GET');
    for (const answer of [unknown, wrongMethod]) {
      expect(answer.headers['content-type']).toBe('application/problem+json');
      expect(answer.headers['cache-control']).toBe('no-store');
      const text = answer.body.toString();
      expect(text).not.toContain(work.dir);
      expect(text).not.toMatch(/\bat .*\.(ts|js):\d+/);
    }
  });

  it('signs the whole path when the agent URL carries a path prefix (the signature covers the path as sent)', async () => {
    const c = new AgentClient({ url: `${agent.url}/prefix/`, keyId: KEY_ID, key: KEY });
    const err = await c.status().catch((e: unknown) => e);
    // Past the signature check (not 401): this agent simply serves no /prefix.
    expect((err as AgentError).status).toBe(404);
    expect((err as AgentError).detail).toContain('No such endpoint');
  });
});
