import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { registration, registrations } from '../support/functions-host.js';
import { HttpRequest, InvocationContext } from '@azure/functions';
import { startAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { resetBackupConfig } from '../../src/host/context.js';
import { createLogger } from '../../src/log.js';
import { openTarget } from '../../src/targets/index.js';
import { listCatalog, readManifest } from '../../src/catalog/catalog.js';
import { v1 } from '../support/stored-snapshots.js';

let work: string;
let agent: { url: string; close(): Promise<void> };
const key = randomBytes(32).toString('hex');
const logs: string[] = [];

function context(name: string): InvocationContext {
  return new InvocationContext({
    functionName: name,
    invocationId: randomBytes(8).toString('hex'),
    logHandler: (_level, ...args) => logs.push(args.map(String).join(' ')),
  });
}

function setEnv(agentUrl: string): void {
  process.env.TCAB_BACKUP_TARGETS = `local=file://${join(work, 'backups')}`;
  process.env.TCAB_BACKUP_AGENT_URL = agentUrl;
  process.env.TCAB_BACKUP_AGENT_KEY_ID = 'functions';
  process.env.TCAB_BACKUP_AGENT_KEY = key;
  process.env.TCAB_BACKUP_SNAPSHOT_SCHEDULE = '0 0 * * * *';
  // The tests below check format 1's artifact unless they say otherwise; the default (2) is tested by the timer.
  process.env.TCAB_BACKUP_FORMAT = '1';
  resetBackupConfig();
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-fn-'));
  createSampleDatabase(join(work, 'tcab.sqlite'), { runs: 300 });
  agent = await startAgent(
    {
      dbPath: join(work, 'tcab.sqlite'),
      stagingDir: join(work, 'staging'),
      host: '127.0.0.1',
      port: 0,
      keys: new Map([['functions', key]]),
      tls: undefined,
      databaseName: 'tcab',
      compression: 'gzip',
      stagingTtlMs: 3_600_000,
    },
    { logger: createLogger({ level: 'error' }) },
  );
  setEnv(agent.url);
  await import('../../src/functions/snapshot.js');
});

afterAll(async () => {
  await agent?.close();
  await rm(work, { recursive: true, force: true });
});

beforeEach(() => {
  setEnv(agent.url);
  logs.length = 0;
});

describe('function registrations', () => {
  it('registers the timer on the schedule setting and the manual snapshot on POST /api/snapshots with a function key', () => {
    expect(registrations.map((r) => r.name).sort()).toEqual(expect.arrayContaining(['snapshotHttp', 'snapshotTimer']));
    const timer = Object.values(registration('snapshotTimer').bindings).find((b) => b.direction === 'in')!;
    expect(timer.type).toBe('timerTrigger');
    expect(timer.schedule).toBe('%TCAB_BACKUP_SNAPSHOT_SCHEDULE%');
    const http = Object.values(registration('snapshotHttp').bindings).find((b) => b.direction === 'in')!;
    expect(http.type).toBe('httpTrigger');
    expect(http.route).toBe('snapshots');
    expect(http.methods).toEqual(['POST']);
    expect(http.authLevel).toBe('function');
  });
});

describe('snapshotHttp', () => {
  const call = (body: string) =>
    registration('snapshotHttp').handler(
      new HttpRequest({
        method: 'POST',
        url: 'http://localhost/api/snapshots',
        body: { string: body },
        headers: { 'content-type': 'application/json' },
      }),
      context('snapshotHttp'),
    ) as Promise<{ status: number; headers: Record<string, string>; body: string }>;

  it('takes a pinned manual snapshot with a reason and answers 201 with the stored manifest', async () => {
    const res = await call(JSON.stringify({ reason: 'before schema migration', pin: true }));
    expect(res.status).toBe(201);
    const body = JSON.parse(res.body);
    expect(body.manifest.trigger).toEqual({ kind: 'manual', reason: 'before schema migration' });
    expect(body.manifest.tags).toContain('pinned');
    const target = openTarget({ kind: 'file', name: 'local', displayUrl: 'file://', path: join(work, 'backups') });
    const stored = v1(await readManifest(target, 'tcab', body.manifest.id));
    expect(stored.artifact.sha256).toBe(body.manifest.artifact.sha256);
    expect(stored.database.tables.runs).toBe(300);
  });

  it('takes a format-2 snapshot when TCAB_BACKUP_FORMAT=2, and a second one uploads only what changed', async () => {
    process.env.TCAB_BACKUP_FORMAT = '2';
    resetBackupConfig();
    try {
      const first = await call(JSON.stringify({ reason: 'format 2' }));
      expect(first.status).toBe(201);
      const a = JSON.parse(first.body);
      expect(a.manifest.formatVersion).toBe(2);
      expect(a.targets[0]).toMatchObject({ target: 'local', ok: true });
      const second = JSON.parse((await call('')).body);
      expect(second.manifest.formatVersion).toBe(2);
      // Nothing changed in the database: every chunk is reused, nothing is uploaded.
      expect(second.targets[0].chunks.reused).toBe(second.targets[0].chunks.distinct);
      expect(second.targets[0].uploadedBytes).toBe(0);
      const target = openTarget({ kind: 'file', name: 'local', displayUrl: 'file://', path: join(work, 'backups') });
      expect((await readManifest(target, 'tcab', second.manifest.id)).formatVersion).toBe(2);
    } finally {
      setEnv(agent.url);
    }
  });

  it('answers 400 naming the field for a bad body, and takes no snapshot', async () => {
    const target = openTarget({ kind: 'file', name: 'local', displayUrl: 'file://', path: join(work, 'backups') });
    const before = (await listCatalog(target, 'tcab')).snapshots.length;
    const bad = await call(JSON.stringify({ pin: 'yes' }));
    expect(bad.status).toBe(400);
    expect(bad.headers['Content-Type']).toBe('application/problem+json');
    expect(JSON.parse(bad.body).detail).toMatch(/^pin:/);
    expect((await call('{not json')).status).toBe(400);
    expect((await call(JSON.stringify({ reason: 'x', extra: 1 }))).status).toBe(400);
    expect((await listCatalog(target, 'tcab')).snapshots.length).toBe(before);
  });

  it('answers 502 problem+json naming the agent when the agent is down, without leaking the key', async () => {
    setEnv('http://127.0.0.1:9'); // discard port: nothing listens
    const res = await call('');
    expect(res.status).toBe(502);
    const problem = JSON.parse(res.body);
    expect(problem.detail).toContain('127.0.0.1:9');
    expect(res.body).not.toContain(key);
    expect(logs.join('\n')).not.toContain(key);
  });
});

describe('snapshotTimer', () => {
  it('stores a timer snapshot on the target, in format 2 when TCAB_BACKUP_FORMAT is not set', async () => {
    delete process.env.TCAB_BACKUP_FORMAT;
    resetBackupConfig();
    await registration('snapshotTimer').handler(
      { isPastDue: false, schedule: { adjustForDST: false }, scheduleStatus: { last: '', next: '', lastUpdated: '' } },
      context('snapshotTimer'),
    );
    const target = openTarget({ kind: 'file', name: 'local', displayUrl: 'file://', path: join(work, 'backups') });
    const { snapshots } = await listCatalog(target, 'tcab');
    const manifests = await Promise.all(snapshots.map((s) => readManifest(target, 'tcab', s.id)));
    const timed = manifests.filter((m) => m.trigger.kind === 'timer');
    expect(timed.map((m) => m.formatVersion)).toEqual([2]);
    expect(logs.some((l) => l.includes('"event":"snapshot.completed"'))).toBe(true);
    expect(await readdir(join(work, 'staging'))).toEqual([]);
  });

  it('fails the invocation with a message naming the invalid setting', async () => {
    process.env.TCAB_BACKUP_AGENT_KEY = 'short';
    resetBackupConfig();
    await expect(registration('snapshotTimer').handler({ isPastDue: false }, context('snapshotTimer'))).rejects.toThrow(
      /TCAB_BACKUP_AGENT_KEY: .*at least 32 characters/,
    );
  });
});
