import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { inspect } from 'node:util';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type Azurite } from '../../src/dev/emulators.js';
import { NotFoundError, ObjectHeldError, TargetError } from '../../src/errors.js';
import { createLogger, type Fields } from '../../src/log.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl, type AzureBlobTargetSpec } from '../../src/targets/spec.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { bufferStream, describeTargetConformance, failureOf, MiB, randomStream, readAll, sha256Hex, sha256Of } from './conformance.js';

const CONTAINER = 'tcab';
let azurite: Azurite;
let faults: FaultProxy;

beforeAll(async () => {
  azurite = await startAzurite();
  await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER).create();
  faults = await startFaultProxy(new URL(azurite.endpoint).origin);
});

afterAll(async () => {
  await faults?.stop();
  await azurite?.stop();
});

function blobSpec(options: { name?: string; container?: string; connectionString?: string; endpoint?: string } = {}): AzureBlobTargetSpec {
  const endpoint = options.endpoint ?? azurite.endpoint;
  const url = `azblob://${azurite.account}/${options.container ?? CONTAINER}/t-${randomBytes(4).toString('hex')}?endpoint=${endpoint}`;
  return parseTargetUrl(options.name ?? 'blob', url, {
    connectionString: options.connectionString ?? azurite.connectionString,
  }) as AzureBlobTargetSpec;
}

/** Azurite's connection string, pointed at the fault-injecting proxy in front of it. */
function viaFaults(): string {
  return azurite.connectionString.replace(new URL(azurite.endpoint).origin, faults.endpoint);
}

describeTargetConformance(
  'azblob (Azurite)',
  async () =>
    openTarget(blobSpec(), {
      tuning: { pageSize: 4, partSize: 5 * MiB },
      retry: { baseDelayMs: 20 },
    }),
  { pageSize: 4 },
);

describe('azblob target', () => {
  it('says so when the container does not exist, instead of reporting objects as missing', async () => {
    const t = openTarget(blobSpec({ name: 'nocontainer', container: 'no-such-container' }), { retry: { retries: 0 } });
    const err = await failureOf(t.get('a.json'));
    expect(err).not.toBeInstanceOf(NotFoundError);
    expect(err).toBeInstanceOf(TargetError);
    expect(err.message).toContain('Target "nocontainer"');
    expect(err.message).toMatch(/ContainerNotFound/);
    expect(err.message).toMatch(/Check: that container "no-such-container" of storage account "devstoreaccount1" exists/);
    await expect(t.head('a.json')).rejects.toThrow(/404 ContainerNotFound.*container "no-such-container"/);
    const listing = (async () => {
      for await (const _ of t.list('')) void _;
    })();
    await expect(listing).rejects.toThrow(/ContainerNotFound/);
  });

  it('never shows the connection string or its account key in an error when the service refuses it', async () => {
    const wrongKey = randomBytes(64).toString('base64');
    const connectionString = azurite.connectionString.replace(/AccountKey=[^;]+/, `AccountKey=${wrongKey}`);
    const t = openTarget(blobSpec({ name: 'badkey', connectionString }), { retry: { retries: 0 } });
    const err = await failureOf(t.put('x.json', Buffer.from('{}')));
    expect(err).toBeInstanceOf(TargetError);
    expect((err as TargetError).status).toBe(403);
    for (const text of [err.message, inspect(err, { depth: 10 })]) {
      expect(text).not.toContain(wrongKey);
      expect(text).not.toContain(connectionString);
    }
  });

  it('fails on an unreachable endpoint with an error naming the target and its URL, without the connection string', async () => {
    const port = await closedPort();
    const endpoint = `http://127.0.0.1:${port}/${azurite.account}`;
    const connectionString = azurite.connectionString.replace(azurite.endpoint, endpoint);
    const spec = blobSpec({ name: 'offsite', endpoint, connectionString });
    const t = openTarget(spec, { retry: { retries: 1, baseDelayMs: 10 } });
    const err = await failureOf(t.head('status/tcab.json'));
    expect(err).toBeInstanceOf(TargetError);
    expect(err.message).toContain('Target "offsite"');
    expect(err.message).toContain(spec.displayUrl);
    expect(err.message).toContain('ECONNREFUSED');
    expect(err.message).toMatch(/Check: .*reachable/);
    const key = /AccountKey=([^;]+)/.exec(connectionString)![1]!;
    for (const text of [err.message, inspect(err, { depth: 10 })]) {
      expect(text).not.toContain(key);
      expect(text).not.toContain(connectionString);
    }
  });

  it('without a connection string, authenticates with DefaultAzureCredential and says what to check when it cannot', async () => {
    // https, as in Azure (a token is never sent over plain http); nothing listens: the token is asked for first.
    const spec = blobSpec({ name: 'managed', endpoint: `https://127.0.0.1:${await closedPort()}/${azurite.account}` });
    delete spec.connectionString;
    const saved = { ...process.env };
    // No identity of any kind here: keep the credential chain from finding a developer login either.
    for (const k of Object.keys(process.env))
      if (k.startsWith('AZURE_') || k.startsWith('IDENTITY_') || k === 'MSI_ENDPOINT') delete process.env[k];
    try {
      const t = openTarget(spec, { retry: { retries: 0 } });
      const started = Date.now();
      const err = await failureOf(t.head('x.json'));
      expect(err).toBeInstanceOf(TargetError);
      expect(err.message).toContain('Target "managed"');
      expect(err.message).toMatch(/Check: the managed identity of the Function App \(AZURE_CLIENT_ID/);
      expect(Date.now() - started).toBeLessThan(30_000);
      const http = openTarget({ ...blobSpec({ name: 'plain' }), connectionString: undefined }, { retry: { retries: 0 } });
      await expect(http.head('x.json')).rejects.toThrow(/needs https/);
    } finally {
      process.env = saved;
    }
  });
});

describe('azblob retries and held objects (Azurite behind a fault-injecting proxy)', () => {
  it('retries 503 ServerBusy and succeeds, logging each retry', async () => {
    faults.clear();
    const events: Fields[] = [];
    const logger = createLogger({ level: 'debug', sink: (_l, _line, record) => events.push(record) });
    const t = openTarget(blobSpec({ connectionString: viaFaults() }), { logger, retry: { baseDelayMs: 20 } });
    faults.inject({ fault: { status: 503, code: 'ServerBusy' }, times: 2, match: (m) => m === 'PUT' });
    await t.put('status/tcab.json', Buffer.from('{"ok":true}'));
    expect(faults.seen.filter((s) => s.request.startsWith('PUT')).map((s) => s.fault)).toEqual(['503', '503', null]);
    expect(events.filter((e) => e.event === 'target.retry').map((e) => e.attempt)).toEqual([1, 2]);
    expect((await readAll((await t.get('status/tcab.json')).body)).toString()).toBe('{"ok":true}');
  });

  it('retries a failed block of a streamed upload on its own', async () => {
    faults.clear();
    const t = openTarget(blobSpec({ connectionString: viaFaults() }), { tuning: { partSize: 5 * MiB }, retry: { baseDelayMs: 20 } });
    let blocks = 0;
    faults.inject({ fault: 'reset', match: (m, url) => m === 'PUT' && url.searchParams.get('comp') === 'block' && ++blocks === 2 });
    const { stream, sha256 } = randomStream(12 * MiB);
    await t.put('big.bin', stream);
    expect((await sha256Of((await t.get('big.bin')).body)).sha256).toBe(sha256());
    expect(faults.seen.filter((s) => s.request.includes('comp=block&') || s.request.endsWith('comp=block'))).toHaveLength(4);
  });

  it('sends a stream of known sha256 as one Put Blob, and one of unknown sha256 in blocks', async () => {
    faults.clear();
    const t = openTarget(blobSpec({ connectionString: viaFaults() }), { tuning: { partSize: 5 * MiB } });
    const data = randomBytes(9 * MiB);
    await t.put('whole.bin', bufferStream(data), { contentLength: data.length, sha256: sha256Hex(data) });
    const puts = () =>
      faults.seen.filter((s) => s.request.startsWith('PUT')).map((s) => s.request.replace(/^PUT \/[^/]+\/[^/]+\/[^/]+\//, ''));
    expect(puts()).toEqual(['whole.bin']);
    expect((await sha256Of((await t.get('whole.bin')).body)).sha256).toBe(sha256Hex(data));

    faults.clear();
    await t.put('blocks.bin', bufferStream(data), { contentLength: data.length });
    expect(puts().filter((p) => p.includes('comp=block&') || p.endsWith('comp=block'))).toHaveLength(2);
    expect(puts().filter((p) => p.includes('comp=blocklist'))).toHaveLength(1);
  });

  it('does not retry a whole-body Put Blob that the connection cut: the caller sends it again', async () => {
    faults.clear();
    const t = openTarget(blobSpec({ connectionString: viaFaults() }), { retry: { baseDelayMs: 20 } });
    faults.inject({ fault: 'reset', match: (m) => m === 'PUT' });
    const data = randomBytes(2 * MiB);
    const err = await failureOf(t.put('cut.bin', bufferStream(data), { contentLength: data.length, sha256: sha256Hex(data) }));
    expect(err).toBeInstanceOf(TargetError);
    expect(err.message).toContain('cut.bin');
    expect(faults.seen.filter((s) => s.request.startsWith('PUT'))).toHaveLength(1);
    await expect(t.head('cut.bin')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('reports an object under an immutability policy or legal hold as held', async () => {
    faults.clear();
    const t = openTarget(blobSpec({ connectionString: viaFaults() }), { retry: { baseDelayMs: 20 } });
    await t.put('snapshots/tcab/2026/11/24/old.json', Buffer.from('{}'));
    faults.inject({ fault: { status: 409, code: 'BlobImmutableDueToPolicy' }, match: (m) => m === 'DELETE' });
    const err = await failureOf(t.delete('snapshots/tcab/2026/11/24/old.json'));
    expect(err).toBeInstanceOf(ObjectHeldError);
    expect(err.message).toContain('snapshots/tcab/2026/11/24/old.json');
    faults.inject({ fault: { status: 409, code: 'BlobImmutableDueToLegalHold' }, match: (m) => m === 'DELETE' });
    await expect(t.delete('snapshots/tcab/2026/11/24/old.json')).rejects.toBeInstanceOf(ObjectHeldError);
    expect(faults.seen.filter((s) => s.request.startsWith('DELETE'))).toHaveLength(2);
    await t.delete('snapshots/tcab/2026/11/24/old.json');
    await expect(t.head('snapshots/tcab/2026/11/24/old.json')).rejects.toBeInstanceOf(NotFoundError);
  });
});

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}
