/**
 * How the agent is reached and what it refuses to start with: TLS off loopback, HTTPS with a private CA,
 * compressions this machine lacks; and what the client says when the agent cannot be reached or is silent.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient, AgentError } from '../../src/agent/client.js';
import { startAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { TcabError } from '../../src/errors.js';
import { agentConfig, KEY, KEY_ID, problemOf, signedRequest } from './helpers.js';
import { captureLog, tempDir } from '../support/world.js';

const run = promisify(execFile);

let work: { dir: string; remove(): Promise<void> };

beforeAll(async () => {
  work = await tempDir('transport');
  createSampleDatabase(join(work.dir, 'tcab.sqlite'), { runs: 40 });
});

afterAll(() => work?.remove());

describe('startAgent refuses what it must not run with', () => {
  it('refuses a non-loopback address without TLS, even when the config was built in code', async () => {
    for (const host of ['0.0.0.0', '10.0.1.4', '::']) {
      const err = await startAgent(agentConfig(work.dir, { host }), { logger: captureLog().logger }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TcabError);
      expect((err as Error).message).toContain(`refuses to listen on ${host} without TLS`);
      expect((err as Error).message).toContain('TCAB_AGENT_TLS_CERT');
    }
  });

  it('refuses a database it cannot read, naming the setting', async () => {
    const err = await startAgent(agentConfig(work.dir, { dbPath: join(work.dir, 'missing.sqlite') }), {
      logger: captureLog().logger,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TcabError);
    expect((err as Error).message).toMatch(/cannot read the database .*missing\.sqlite \(ENOENT\).*TCAB_AGENT_DB/);
  });

  it('refuses a configured compression this machine cannot do', async () => {
    // A runtime without zstd in node:zlib and a machine without the zstd program.
    const noZstd = { zstdCommand: join(work.dir, 'no-such-zstd'), runtimeZstd: false };
    const err = await startAgent(agentConfig(work.dir, { compression: 'zstd' }), { logger: captureLog().logger, ...noZstd }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TcabError);
    expect((err as Error).message).toContain('cannot make zstd artifacts (it can make: gzip, none)');
    expect((err as Error).message).toContain('install the zstd package');
  });
});

describe('without zstd in the runtime or on the machine', () => {
  it('offers gzip and none, makes gzip by default, and answers 400 to a request for zstd', async () => {
    const agent = await startAgent(agentConfig(work.dir), {
      logger: captureLog().logger,
      zstdCommand: join(work.dir, 'no-such-zstd'),
      runtimeZstd: false,
    });
    try {
      const client = new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY });
      expect((await client.status()).agent.compressions).toEqual(['gzip', 'none']);
      const zstd = await signedRequest(agent.url, 'POST', '/v1/snapshots', '{"compression":"zstd"}');
      expect(zstd.status).toBe(400);
      expect(problemOf(zstd).detail).toBe('This agent cannot make zstd artifacts (it can make: gzip, none).');
      const desc = await client.createSnapshot();
      expect(desc.artifact.compression).toBe('gzip');
    } finally {
      await agent.close();
    }
  });
});

describe('HTTPS with a self-signed certificate', () => {
  let cert: string;
  let key: string;
  beforeAll(async () => {
    const certPath = join(work.dir, 'agent.crt');
    const keyPath = join(work.dir, 'agent.key');
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=tcab-agent',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout',
      keyPath,
      '-out',
      certPath,
    ]);
    cert = await readFile(certPath, 'utf8');
    key = await readFile(keyPath, 'utf8');
  });

  it('serves https, and a client trusting the certificate through `ca` works end to end', async () => {
    const agent = await startAgent(agentConfig(work.dir, { tls: { cert, key } }), { logger: captureLog().logger });
    try {
      expect(agent.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const client = new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY, ca: cert });
      await client.health();
      const desc = await client.createSnapshot({ compression: 'gzip' });
      const { body, bytes } = await client.openSnapshot(desc.id);
      let received = 0;
      for await (const chunk of body) received += (chunk as Buffer).length;
      expect(received).toBe(bytes);
      await client.deleteSnapshot(desc.id);

      // Without the CA the certificate is not trusted, and the error says what to configure.
      const untrusting = new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY });
      const err = await untrusting.status().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentError);
      expect((err as AgentError).status).toBeUndefined();
      expect((err as AgentError).message).toContain('TCAB_BACKUP_AGENT_CA');
      expect((err as AgentError).permanent).toBe(true);
    } finally {
      await agent.close();
    }
  });

  it('may listen on a non-loopback address with TLS', async () => {
    const agent = await startAgent(agentConfig(work.dir, { host: '0.0.0.0', tls: { cert, key } }), { logger: captureLog().logger });
    try {
      const port = new URL(agent.url).port;
      await new AgentClient({ url: `https://127.0.0.1:${port}`, keyId: KEY_ID, key: KEY, ca: cert }).status();
    } finally {
      await agent.close();
    }
  });
});

describe('what the client says when the agent is not there or silent', () => {
  it('names the agent (host only) and what to check when nothing listens', async () => {
    const agent = await startAgent(agentConfig(work.dir), { logger: captureLog().logger });
    const url = agent.url;
    await agent.close();
    const client = new AgentClient({ url, keyId: KEY_ID, key: KEY });
    const err = await client.createSnapshot().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    const message = (err as Error).message;
    expect(message).toContain(`Snapshot agent at ${new URL(url).host}: POST /v1/snapshots failed: ECONNREFUSED`);
    expect(message).toContain('is the agent running and reachable from the function app?');
    expect(message).not.toContain(KEY);
    expect((err as AgentError).permanent).toBe(false);
  });

  it('gives up after timeoutMs of silence, saying which setting to look at', async () => {
    const sockets: Socket[] = [];
    const silent: Server = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    try {
      const port = (silent.address() as { port: number }).port;
      const client = new AgentClient({ url: `http://127.0.0.1:${port}`, keyId: KEY_ID, key: KEY, timeoutMs: 300 });
      const started = Date.now();
      const err = await client.status().catch((e: unknown) => e);
      expect(Date.now() - started).toBeLessThan(5000);
      expect(err).toBeInstanceOf(AgentError);
      expect((err as Error).message).toContain('got no answer within 300 ms');
      expect((err as Error).message).toContain('TCAB_BACKUP_AGENT_TIMEOUT');
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });

  it('refuses an answer that does not follow the protocol', async () => {
    const liar: Server = createServer((s) => {
      s.once('data', () =>
        s.end('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{"database":{}}'),
      );
    });
    await new Promise<void>((r) => liar.listen(0, '127.0.0.1', r));
    try {
      const port = (liar.address() as { port: number }).port;
      const err = await new AgentClient({ url: `http://127.0.0.1:${port}`, keyId: KEY_ID, key: KEY }).status().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentError);
      expect((err as Error).message).toMatch(/GET \/v1\/status sent a status that does not follow protocol v1 \(database\.name: /);
    } finally {
      await new Promise((r) => liar.close(r));
    }
  });
});
