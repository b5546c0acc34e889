/**
 * The snapshot path end to end on real parts: a real agent over HTTP, a real SQLite database being written
 * to, file targets, the CLI's restore. Faults: a corrupted stored artifact, the agent dying mid-transfer,
 * an unreachable target, invalid settings; and no secret in any log line or error.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent } from '../../src/agent/run.js';
import { listCatalog, readManifest } from '../../src/catalog/catalog.js';
import { v1 } from '../support/stored-snapshots.js';
import { main as cli } from '../../src/cli/main.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { startWriter } from '../../src/dev/writer.js';
import { runSnapshot, SnapshotFailedError } from '../../src/jobs/snapshot/index.js';
import { createLogger } from '../../src/log.js';
import { openTarget } from '../../src/targets/index.js';
import type { Target } from '../../src/targets/target.js';
import { firstColumn, firstValue, openDatabase } from '../../src/util/sqlite.js';

let work: string;
let agent: { url: string; close(): Promise<void> };
const key = randomBytes(32).toString('hex');
const logLines: string[] = [];
const logger = createLogger({ level: 'debug', sink: (_l, line) => logLines.push(line) });
let targets: Target[];

function fileTarget(name: string): Target {
  return openTarget({ kind: 'file', name, displayUrl: `file://${join(work, name)}`, path: join(work, name) }, { logger });
}

function client(url = agent.url): AgentClient {
  return new AgentClient({ url, keyId: 'ops', key, logger });
}

async function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough() as unknown as NodeJS.WriteStream;
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d));
  (stderr as unknown as PassThrough).on('data', (d: Buffer) => (err += d));
  const code = await cli(args, {
    stdout,
    stderr,
    stdin: new PassThrough(),
    env: {
      TCAB_BACKUP_TARGETS: `a=file://${join(work, 'a')},b=file://${join(work, 'b')}`,
      TCAB_BACKUP_AGENT_URL: agent.url,
      TCAB_BACKUP_AGENT_KEY_ID: 'ops',
      TCAB_BACKUP_AGENT_KEY: key,
      TCAB_LOG_LEVEL: 'debug',
      ...env,
    },
  });
  logLines.push(err);
  return { code, stdout: out, stderr: err };
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-snap-'));
  createSampleDatabase(join(work, 'tcab.sqlite'), { runs: 1500 });
  agent = await startAgent(
    {
      dbPath: join(work, 'tcab.sqlite'),
      stagingDir: join(work, 'staging'),
      host: '127.0.0.1',
      port: 0,
      keys: new Map([['ops', key]]),
      tls: undefined,
      databaseName: 'tcab',
      compression: 'auto',
      stagingTtlMs: 3_600_000,
    },
    { logger },
  );
  targets = [fileTarget('a'), fileTarget('b')];
});

afterAll(async () => {
  await agent?.close();
  await rm(work, { recursive: true, force: true });
  // Every line logged in this file, failures included, must be free of the HMAC key.
  expect(logLines.join('\n')).not.toContain(key);
});

describe('snapshot and restore', () => {
  it('stores a verified snapshot on every target while the backend writes, and restores it bit for bit', async () => {
    const writer = startWriter(join(work, 'tcab.sqlite'), { intervalMs: 2 });
    await writer.ready;
    const result = await runSnapshot({ agent: client(), targets, database: 'tcab', logger }, { trigger: { kind: 'cli', reason: 'test' } });
    const { inserts, errors } = await writer.stop();
    expect(errors).toEqual([]);
    expect(inserts).toBeGreaterThan(0);
    expect(result.targets.map((t) => [t.target, t.ok])).toEqual([
      ['a', true],
      ['b', true],
    ]);
    for (const t of targets) {
      const { snapshots, orphans } = await listCatalog(t, 'tcab');
      expect(snapshots.map((s) => s.id)).toEqual([result.manifest.id]);
      expect(orphans).toEqual([]);
      expect(v1(await readManifest(t, 'tcab', result.manifest.id)).artifact.sha256).toBe(result.manifest.artifact.sha256);
    }
    expect(await readdir(join(work, 'staging'))).toEqual([]);

    const out = join(work, 'restored.sqlite');
    const r = await runCli(['restore', '--latest', '-o', out, '--json']);
    expect(r.code).toBe(0);
    const restored = JSON.parse(r.stdout);
    expect(restored.id).toBe(result.manifest.id);
    const db = openDatabase(out, { readOnly: true });
    expect(firstValue(db, 'SELECT count(*) FROM runs')).toBe(result.manifest.database.tables.runs);
    expect(firstColumn(db, 'PRAGMA integrity_check')).toEqual(['ok']);
    db.close();
  });

  it('restores by id and as of a time, and refuses to overwrite without --force', async () => {
    const second = await runSnapshot({ agent: client(), targets, database: 'tcab', logger }, { trigger: { kind: 'cli' }, pin: true });
    const { snapshots } = await listCatalog(targets[0]!, 'tcab');
    expect(snapshots).toHaveLength(2);
    const older = snapshots[1]!.id;
    const olderManifest = await readManifest(targets[0]!, 'tcab', older);

    const out = join(work, 'by-id.sqlite');
    expect((await runCli(['restore', '--snapshot', older, '-o', out])).code).toBe(0);
    const atRun = await runCli(['restore', '--at', olderManifest.createdAt, '-o', join(work, 'at.sqlite'), '--json']);
    expect(JSON.parse(atRun.stdout).id).toBe(older);
    const latest = await runCli(['restore', '--latest', '-o', out, '--json']);
    expect(latest.code).toBe(1);
    expect(latest.stderr).toMatch(/already exists.*--force/s);
    const forced = await runCli(['restore', '--latest', '-o', out, '--force', '--json']);
    expect(forced.code).toBe(0);
    expect(JSON.parse(forced.stdout).id).toBe(second.manifest.id);
    const before = await runCli(['restore', '--at', '2000-01-01T00:00:00Z', '-o', join(work, 'none.sqlite')]);
    expect(before.code).toBe(1);
    expect(before.stderr).toContain('at or before 2000-01-01T00:00:00.000Z');
    expect(existsSync(join(work, 'none.sqlite'))).toBe(false);
  });

  it('refuses a corrupted artifact (one byte flipped), writes nothing at -o, and falls back to a good target', async () => {
    const { snapshots } = await listCatalog(targets[0]!, 'tcab');
    const manifest = v1(await readManifest(targets[0]!, 'tcab', snapshots[0]!.id));
    const path = join(work, 'a', manifest.key);
    const bytes = await readFile(path);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    await writeFile(path, bytes);

    const out = join(work, 'corrupt.sqlite');
    const onlyA = await runCli(['restore', '--snapshot', manifest.id, '--target', 'a', '-o', out]);
    expect(onlyA.code).toBe(1);
    expect(onlyA.stderr).toContain(`Snapshot ${manifest.id} on target "a"`);
    expect(onlyA.stderr).toMatch(/sha256|does not decompress/);
    expect(existsSync(out)).toBe(false);
    expect((await readdir(work)).filter((f) => f.includes('.restore-'))).toEqual([]);

    const any = await runCli(['restore', '--snapshot', manifest.id, '-o', out, '--json']);
    expect(any.code).toBe(0);
    const result = JSON.parse(any.stdout);
    expect(result.target).toBe('b');
    expect(result.skipped.map((s: { target: string }) => s.target)).toEqual(['a']);

    // Put the good bytes back for the next tests.
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    await writeFile(path, bytes);
  });
});

/** Forwards TCP to the agent and cuts the connection once `cutAfter` bytes of a response have passed. */
async function startCuttingProxy(upstream: URL, cutAfter: number): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((down) => {
    const up = connect(Number(upstream.port), upstream.hostname);
    sockets.add(down).add(up);
    let passed = 0;
    let isDownload = false;
    down.on('data', (d: Buffer) => {
      if (/^GET \/v1\/snapshots\//.test(d.toString('latin1', 0, 32))) isDownload = true;
      up.write(d);
    });
    up.on('data', (d: Buffer) => {
      passed += d.length;
      if (isDownload && passed > cutAfter) {
        down.destroy();
        up.destroy();
        return;
      }
      down.write(d);
    });
    up.on('error', () => down.destroy());
    down.on('error', () => up.destroy());
    up.on('close', () => down.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

describe('faults', () => {
  it('writes no manifest and leaves nothing visible when the agent dies mid-transfer', async () => {
    const targetsC = [fileTarget('c1'), fileTarget('c2')];
    const proxy = await startCuttingProxy(new URL(agent.url), 64 * 1024);
    try {
      const err = await runSnapshot(
        { agent: client(proxy.url), targets: targetsC, database: 'tcab', logger },
        { trigger: { kind: 'timer' } },
      ).catch((e) => e);
      expect(err).toBeInstanceOf(SnapshotFailedError);
      expect(err.message).toMatch(/download from the agent failed/);
      expect(err.message).toMatch(/Check: /);
    } finally {
      await proxy.close();
    }
    for (const t of targetsC) {
      const { snapshots, orphans } = await listCatalog(t, 'tcab');
      expect(snapshots).toEqual([]);
      expect(orphans).toEqual([]);
    }
  });

  it('stores on the healthy target and fails naming the unreachable one', async () => {
    const unreachable = openTarget(
      {
        kind: 's3',
        name: 'r2',
        displayUrl: 's3://tcab?endpoint=http://127.0.0.1:9',
        r2: false,
        bucket: 'tcab',
        prefix: '',
        endpoint: 'http://127.0.0.1:9',
        region: 'us-east-1',
        forcePathStyle: true,
        accessKeyId: 'AKIATEST',
        secretAccessKey: 'super-secret-access-key-value',
      },
      { logger, retry: { retries: 1, baseDelayMs: 10, maxDelayMs: 20 } },
    );
    const healthy = fileTarget('d');
    const err = await runSnapshot(
      { agent: client(), targets: [healthy, unreachable], database: 'tcab', logger },
      { trigger: { kind: 'timer' } },
    ).catch((e) => e);
    expect(err).toBeInstanceOf(SnapshotFailedError);
    expect(err.message).toContain('failed on 1 of 2 target(s): "r2"');
    expect(err.message).toContain('stored on "d"');
    expect(err.message).not.toContain('super-secret-access-key-value');
    expect(logLines.join('\n')).not.toContain('super-secret-access-key-value');
    const { snapshots } = await listCatalog(healthy, 'tcab');
    expect(snapshots).toHaveLength(1);
    expect(err.result.targets.find((t: { target: string }) => t.target === 'r2').ok).toBe(false);
  });

  it('rejects invalid settings naming each variable, with exit status 2', async () => {
    const r = await runCli(['snapshot'], {
      TCAB_BACKUP_TARGETS: 'a=ftp://x',
      TCAB_BACKUP_AGENT_KEY: 'short',
      TCAB_BACKUP_AGENT_URL: 'http://10.0.0.5:8787',
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('TCAB_BACKUP_TARGETS: target "a": unknown scheme "ftp:"');
    const r2 = await runCli(['snapshot'], { TCAB_BACKUP_AGENT_KEY: 'short', TCAB_BACKUP_AGENT_URL: 'http://10.0.0.5:8787' });
    expect(r2.stderr).toContain('TCAB_BACKUP_AGENT_KEY: "***" is invalid: must be at least 32 characters');
    expect(r2.stderr).toContain('TCAB_BACKUP_AGENT_URL');
    expect(r2.stderr).toContain('plain http is only allowed to a loopback agent');
    const usage = await runCli(['restore', '--latest']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('restore needs -o PATH');
  });
});

describe('settings from Key Vault', () => {
  it('names a Key Vault reference that did not resolve instead of using it as a key', async () => {
    const r = await runCli(['snapshot'], {
      TCAB_BACKUP_AGENT_KEY: '@Microsoft.KeyVault(SecretUri=https://kv-tcab.vault.azure.net/secrets/agent-key/)',
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('TCAB_BACKUP_AGENT_KEY: is an unresolved Key Vault reference');
  });
});
