/**
 * Every function settles: a job stuck on a network wait that is never answered is aborted at
 * TCAB_BACKUP_JOB_TIMEOUT, and the invocation fails naming the job and its last step, instead of hanging
 * until the host's functionTimeout ends it without a word. The stuck party is real: a TCP server that
 * accepts connections and never answers, standing for the agent's VM or a storage endpoint that froze.
 */
import { registration } from '../support/functions-host.js';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HttpRequest, InvocationContext } from '@azure/functions';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SETTINGS } from '../../src/settings.js';
import { FUNCTION_TIMEOUT_MS, invocation, jobTimeoutMs, resetBackupConfig } from '../../src/host/context.js';
import { parseDurationMs } from '../../src/util/duration.js';

let work: string;
let silent: Server;
let port: number;
const sockets: Socket[] = [];
const key = randomBytes(32).toString('hex');
const logs: string[] = [];
const VARIABLES = [
  'TCAB_BACKUP_TARGETS',
  'TCAB_BACKUP_AGENT_URL',
  'TCAB_BACKUP_AGENT_KEY_ID',
  'TCAB_BACKUP_AGENT_KEY',
  'TCAB_BACKUP_JOB_TIMEOUT',
  'TCAB_BACKUP_TARGET_HOLE_ACCESS_KEY_ID',
  'TCAB_BACKUP_TARGET_HOLE_SECRET_ACCESS_KEY',
];
const timer = { isPastDue: false, schedule: { adjustForDST: false }, scheduleStatus: { last: '', next: '', lastUpdated: '' } };

function context(name: string): InvocationContext {
  return new InvocationContext({
    functionName: name,
    invocationId: randomBytes(8).toString('hex'),
    logHandler: (_level, ...args) => logs.push(args.map(String).join(' ')),
  });
}

function setEnv(extra: Record<string, string> = {}): void {
  for (const v of VARIABLES) delete process.env[v];
  Object.assign(process.env, {
    TCAB_BACKUP_TARGETS: `local=file://${join(work, 'local')}`,
    TCAB_BACKUP_AGENT_URL: `http://127.0.0.1:${port}`,
    TCAB_BACKUP_AGENT_KEY_ID: 'functions',
    TCAB_BACKUP_AGENT_KEY: key,
    TCAB_BACKUP_JOB_TIMEOUT: '1s',
    ...extra,
  });
  resetBackupConfig();
}

/** Resolves when every connection the job opened to the silent server is closed: the abort reached the wait. */
async function connectionsClosed(): Promise<number> {
  await Promise.all(sockets.map((s) => (s.destroyed ? undefined : once(s, 'close'))));
  return sockets.length;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-fn-timeout-'));
  silent = createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    socket.resume();
  });
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  port = (silent.address() as { port: number }).port;
  setEnv();
  await import('../../src/functions/snapshot.js');
  await import('../../src/functions/replicate.js');
});

afterAll(async () => {
  for (const v of VARIABLES) delete process.env[v];
  resetBackupConfig();
  for (const s of sockets) s.destroy();
  await new Promise((resolve) => silent.close(resolve));
  await rm(work, { recursive: true, force: true });
});

beforeEach(() => {
  setEnv();
  logs.length = 0;
  sockets.length = 0;
});

describe('a job stuck on a request that is never answered', () => {
  it('fails the snapshot timer at TCAB_BACKUP_JOB_TIMEOUT, naming the job and its last step, and closes the request', async () => {
    const err = await (registration('snapshotTimer').handler(timer, context('snapshotTimer')) as Promise<void>).catch((e: Error) => e);
    expect(err).toMatchObject({ name: 'JobTimeoutError' });
    expect((err as Error).message).toMatch(
      /^The snapshot job did not finish within 1s \(TCAB_BACKUP_JOB_TIMEOUT\): it was stopped after its last logged step, snapshot\.requesting, so that this invocation fails now/,
    );
    expect((err as Error).message).toContain('Check: the agent or target named in that step');
    expect(await connectionsClosed()).toBe(1);
    expect(logs.some((l) => l.includes('"event":"job.timed_out"') && l.includes('"job":"snapshot"'))).toBe(true);
  });

  it('answers the manual snapshot with 504 and the reason', async () => {
    const res = (await registration('snapshotHttp').handler(
      new HttpRequest({ method: 'POST', url: 'http://localhost/api/snapshots', body: { string: '{}' } }),
      context('snapshotHttp'),
    )) as { status: number; body: string };
    expect(res.status).toBe(504);
    expect(JSON.parse(res.body)).toMatchObject({
      title: 'The snapshot did not finish in time',
      detail: expect.stringMatching(/^The snapshot job did not finish within 1s/),
    });
    expect(await connectionsClosed()).toBe(1);
  });

  it('fails the replicate timer when a storage endpoint never answers', async () => {
    setEnv({
      TCAB_BACKUP_TARGETS: `local=file://${join(work, 'local')},hole=s3://tcab?endpoint=http://127.0.0.1:${port}`,
      TCAB_BACKUP_TARGET_HOLE_ACCESS_KEY_ID: 'AKIATIMEOUTTEST',
      TCAB_BACKUP_TARGET_HOLE_SECRET_ACCESS_KEY: 'timeout-test-secret-access-key',
    });
    const err = await (registration('replicateTimer').handler(timer, context('replicateTimer')) as Promise<void>).catch((e: Error) => e);
    expect(err).toMatchObject({ name: 'JobTimeoutError' });
    expect((err as Error).message).toMatch(/^The replicate job did not finish within 1s \(TCAB_BACKUP_JOB_TIMEOUT\)/);
    // Whatever it had opened by then (loading the S3 client may take most of that second) is closed.
    await connectionsClosed();
  });

  it('fails an invocation whose TCAB_BACKUP_JOB_TIMEOUT is not a duration, naming the variable', async () => {
    setEnv({ TCAB_BACKUP_JOB_TIMEOUT: 'soon' });
    await expect(registration('snapshotTimer').handler(timer, context('snapshotTimer')) as Promise<void>).rejects.toThrow(
      /TCAB_BACKUP_JOB_TIMEOUT: "soon" is invalid/,
    );
  });

  it('fails an invocation whose TCAB_BACKUP_JOB_TIMEOUT leaves the stopped job less than a minute before functionTimeout', async () => {
    setEnv({ TCAB_BACKUP_JOB_TIMEOUT: '29m30s' });
    await expect(registration('snapshotTimer').handler(timer, context('snapshotTimer')) as Promise<void>).rejects.toThrow(
      /TCAB_BACKUP_JOB_TIMEOUT: 29m30s leaves less than 1m .* functionTimeout of 30m in host.json; set 29m or less/,
    );
    // A minute below is accepted.
    expect(jobTimeoutMs({ TCAB_BACKUP_JOB_TIMEOUT: '29m' })).toBe(29 * 60_000);
  });
});

describe('a job stopped at its timeout', () => {
  it('is given time to settle before the invocation fails, so a one-at-a-time flag is not released while it still runs', async () => {
    setEnv();
    const events: string[] = [];
    const run = invocation(context('snapshotTimer')).bounded('snapshot', async (signal) => {
      await once(signal, 'abort');
      events.push('aborted');
      // Cleanup after the abort (closing streams, removing staging) takes a while.
      await new Promise((resolve) => setTimeout(resolve, 300));
      events.push('cleaned up');
      throw signal.reason;
    });
    await expect(run).rejects.toThrow(/The snapshot job did not finish within 1s/);
    events.push('invocation failed');
    expect(events).toEqual(['aborted', 'cleaned up', 'invocation failed']);
  });

  it('fails anyway, and logs it, when the stopped job never settles', async () => {
    setEnv();
    logs.length = 0;
    const started = Date.now();
    const run = invocation(context('snapshotTimer')).bounded('snapshot', () => new Promise<never>(() => undefined));
    await expect(run).rejects.toThrow(/The snapshot job did not finish within 1s/);
    // One second to the timeout and at most as long again for the job to settle.
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(logs.join('\n')).toMatch(/job\.not_settled/);
  });
});

it('keeps the default TCAB_BACKUP_JOB_TIMEOUT below the functionTimeout of host.json', () => {
  const host = JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'host.json'), 'utf8')) as { functionTimeout: string };
  const [h, m, s] = host.functionTimeout.split(':').map(Number);
  const functionTimeoutMs = ((h! * 60 + m!) * 60 + s!) * 1000;
  const jobTimeoutMs = parseDurationMs(SETTINGS.find((x) => x.name === 'TCAB_BACKUP_JOB_TIMEOUT')!.default!);
  // Room for the aborted job to clean up and for the failure to be logged before the host would step in.
  expect(functionTimeoutMs - jobTimeoutMs).toBeGreaterThanOrEqual(5 * 60_000);
  // The bound the functions enforce on TCAB_BACKUP_JOB_TIMEOUT is host.json's.
  expect(FUNCTION_TIMEOUT_MS).toBe(functionTimeoutMs);
});
