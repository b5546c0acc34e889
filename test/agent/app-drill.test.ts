/**
 * The application drill through a real agent over real HTTP: a real snapshot's artifact streamed to
 * POST /v1/drills, restored into staging, and a stand-in backend (src/dev/standin-backend.ts) started on
 * the copy. Every case checks that no backend process and no scratch file is left behind.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import { request as httpRequest, type ClientRequest } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import type { DrillResult } from '../../src/agent/app-drill.js';
import { AgentBusyError, AgentClient, AgentError } from '../../src/agent/client.js';
import { signRequest, type SnapshotDescription } from '../../src/agent/protocol.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { createLogger } from '../../src/log.js';
import { agentConfig, KEY, KEY_ID, rawRequest, signedRequest, standinCommand } from './helpers.js';
import { tempDir } from '../support/world.js';

const RUNS = 300;

let work: { dir: string; remove(): Promise<void> };
let description: SnapshotDescription;
let artifact: Buffer;

/** A logger that lets a test wait for an event instead of for time. */
function eventLogger() {
  const seen: Array<Record<string, unknown>> = [];
  const waiters: Array<{ name: string; resolve: (r: Record<string, unknown>) => void }> = [];
  const logger = createLogger({
    level: 'debug',
    sink: (_level, line) => {
      const record = JSON.parse(line) as Record<string, unknown>;
      seen.push(record);
      for (const w of waiters.filter((x) => x.name === record.event)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(record);
      }
    },
  });
  return {
    logger,
    seen,
    next: (name: string) => new Promise<Record<string, unknown>>((resolve) => waiters.push({ name, resolve })),
  };
}

interface DrillAgent {
  agent: RunningAgent;
  staging: string;
  pidFile: string;
  events: ReturnType<typeof eventLogger>;
}

const agents: DrillAgent[] = [];

async function drillAgent(
  name: string,
  knobs: string[] = [],
  options: { healthTimeoutMs?: number; stopGraceMs?: number; freeBytes?: number; requestTimeoutMs?: number } = {},
): Promise<DrillAgent> {
  const staging = join(work.dir, `staging-${name}`);
  const pidFile = join(work.dir, `${name}.pid`);
  const events = eventLogger();
  const agent = await startAgent(
    agentConfig(work.dir, {
      stagingDir: staging,
      drill: {
        command: standinCommand(pidFile, knobs),
        healthTimeoutMs: options.healthTimeoutMs ?? 30_000,
        stopGraceMs: options.stopGraceMs ?? 5_000,
      },
    }),
    {
      logger: events.logger,
      ...(options.freeBytes !== undefined ? { freeBytes: async () => options.freeBytes! } : {}),
      ...(options.requestTimeoutMs !== undefined ? { requestTimeoutMs: options.requestTimeoutMs } : {}),
    },
  );
  const made = { agent, staging, pidFile, events };
  agents.push(made);
  return made;
}

function drillPath(d: SnapshotDescription): string {
  const q = new URLSearchParams({
    snapshotId: d.id,
    artifactSha256: d.artifact.sha256,
    artifactBytes: String(d.artifact.bytes),
    compression: d.artifact.compression,
    snapshotSha256: d.snapshot.sha256,
    snapshotBytes: String(d.snapshot.bytes),
  });
  return `/v1/drills?${q.toString()}`;
}

interface Sent {
  req: ClientRequest;
  answer: Promise<{ status: number; body: string }>;
}

/** Starts POST /v1/drills; `body` is sent in two halves unless `hold` keeps the second back. */
function sendDrill(baseUrl: string, body: Buffer, options: { hold?: boolean } = {}): Sent {
  const path = drillPath(description);
  const url = new URL(baseUrl);
  const req = httpRequest({
    hostname: url.hostname,
    port: url.port,
    method: 'POST',
    path,
    agent: false,
    headers: {
      Authorization: signRequest({
        keyId: KEY_ID,
        secret: KEY,
        method: 'POST',
        pathAndQuery: path,
        bodySha256: description.artifact.sha256,
      }),
      'Content-Type': 'application/octet-stream',
      'Content-Length': body.length,
    },
  });
  const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  const half = Math.floor(body.length / 2);
  req.write(body.subarray(0, half));
  if (!options.hold) req.end(body.subarray(half));
  return { req, answer };
}

async function drill(d: DrillAgent, body = artifact): Promise<{ status: number; result: DrillResult & { detail?: string } }> {
  const { status, body: text } = await sendDrill(d.agent.url, body).answer;
  return { status, result: JSON.parse(text) as DrillResult & { detail?: string } };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Nothing left: no backend process (when one was started) and no scratch file in staging. */
async function expectNothingLeft(d: DrillAgent): Promise<void> {
  await d.agent.idle();
  const pid = await readFile(d.pidFile, 'utf8').then(Number, () => undefined);
  if (pid !== undefined) expect(alive(pid), `backend process ${pid} is still running`).toBe(false);
  expect((await readdir(d.staging)).filter((n) => n.startsWith('drill-'))).toEqual([]);
}

beforeAll(async () => {
  work = await tempDir('app-drill');
  createSampleDatabase(join(work.dir, 'tcab.sqlite'), { runs: RUNS, seed: 11 });
  const source = await startAgent(agentConfig(work.dir, { stagingDir: join(work.dir, 'staging-source') }), {
    logger: eventLogger().logger,
  });
  try {
    const made = await signedRequest(source.url, 'POST', '/v1/snapshots', '{"compression":"gzip"}');
    expect(made.status).toBe(201);
    description = JSON.parse(made.body.toString('utf8')) as SnapshotDescription;
    const path = `/v1/snapshots/${description.id}`;
    const got = await signedRequest(source.url, 'GET', path);
    expect(got.status).toBe(200);
    artifact = got.body;
  } finally {
    await source.close();
  }
}, 60_000);

afterAll(async () => {
  for (const d of agents) await d.agent.close();
  await work?.remove();
});

describe('POST /v1/drills', () => {
  it('restores the artifact, starts the backend on the copy, and sees it serve every run', async () => {
    const d = await drillAgent('happy');
    const { status, result } = await drill(d);
    expect(status).toBe(200);
    expect(result.passed).toBe(true);
    expect(result.failedStep).toBeNull();
    expect(result.snapshotId).toBe(description.id);
    expect(result.checks.map((c) => [c.name, c.ok])).toEqual([
      ['receive', true],
      ['snapshot-sha256', true],
      ['integrity', true],
      ['start', true],
      ['healthz', true],
      ['runs', true],
      ['stop', true],
    ]);
    expect(result.runs).toEqual({ inFile: RUNS, served: RUNS, comparison: 'all' });
    expect(result.checks.every((c) => c.ms >= 0)).toBe(true);
    expect(result.backendLog).toBeUndefined();
    // The backend ran on the scratch copy in staging, never on the live database.
    const started = d.events.seen.find((r) => r.event === 'drill.backend_started');
    expect(started).toBeDefined();
    await expectNothingLeft(d);
  });

  it('reports a backend that exits at start, with its last log lines', async () => {
    const d = await drillAgent('exits', ['STANDIN_EXIT_AT_START=3']);
    const { status, result } = await drill(d);
    expect(status).toBe(200);
    expect(result.passed).toBe(false);
    expect(result.failedStep).toBe('healthz');
    expect(result.checks.at(-1)!.detail).toMatch(/exited with status 3 before \/healthz answered 200/);
    expect(result.backendLog!.join('\n')).toContain('migration 0007 failed');
    await expectNothingLeft(d);
  });

  it('kills a backend that never answers /healthz within the timeout, even when it ignores SIGTERM', async () => {
    const d = await drillAgent('silent', ['STANDIN_NO_HEALTH=1', 'STANDIN_IGNORE_SIGTERM=1'], { healthTimeoutMs: 1_000, stopGraceMs: 300 });
    const { status, result } = await drill(d);
    expect(status).toBe(200);
    expect(result.passed).toBe(false);
    expect(result.failedStep).toBe('healthz');
    expect(result.checks.at(-1)!.detail).toMatch(/did not answer 200 within 1000 ms.*TCAB_AGENT_DRILL_HEALTH_TIMEOUT/);
    expect(result.backendLog!.join('\n')).toContain('listening on 127.0.0.1');
    expect(d.events.seen.some((r) => r.event === 'drill.check_failed' && r.step === 'healthz')).toBe(true);
    await expectNothingLeft(d);
  });

  it('fails when the backend serves fewer runs than the restored file holds', async () => {
    const d = await drillAgent('fewer', ['STANDIN_DROP_RUNS=5']);
    const { status, result } = await drill(d);
    expect(status).toBe(200);
    expect(result.passed).toBe(false);
    expect(result.failedStep).toBe('runs');
    expect(result.runs).toEqual({ inFile: RUNS, served: RUNS - 5, comparison: 'all' });
    expect(result.checks.at(-1)!.detail).toBe(`GET /runs served ${RUNS - 5} runs, but the restored file holds ${RUNS}`);
    await expectNothingLeft(d);
  });

  it('refuses an artifact whose bytes changed on the way, before anything is started', async () => {
    const d = await drillAgent('corrupt');
    const corrupted = Buffer.from(artifact);
    corrupted[Math.floor(corrupted.length / 2)]! ^= 0xff;
    const { status, result } = await drill(d, corrupted);
    expect(status).toBe(422);
    expect(result.detail).toMatch(/refused before the backend was started.*changed or cut on the way/);
    expect(d.events.seen.some((r) => r.event === 'drill.backend_started')).toBe(false);
    await expect(readFile(d.pidFile)).rejects.toMatchObject({ code: 'ENOENT' });
    await expectNothingLeft(d);
  });

  it('removes the scratch file when the request is cancelled mid-stream', async () => {
    const d = await drillAgent('cancel');
    const started = d.events.next('drill.started');
    const cancelled = d.events.next('drill.cancelled');
    const sent = sendDrill(d.agent.url, artifact, { hold: true });
    sent.answer.catch(() => undefined);
    await started;
    sent.req.destroy();
    await cancelled;
    await expectNothingLeft(d);
  });

  it('answers 409 to a second drill while one runs, and stops the first when its request goes away', async () => {
    const d = await drillAgent('busy', ['STANDIN_NO_HEALTH=1'], { healthTimeoutMs: 60_000 });
    const backendUp = d.events.next('drill.backend_started');
    const first = sendDrill(d.agent.url, artifact);
    first.answer.catch(() => undefined);
    await backendUp;
    const { status, result } = await drill(d);
    expect(status).toBe(409);
    expect(result.detail).toMatch(/Another application drill is running/);
    const cancelled = d.events.next('drill.cancelled');
    first.req.destroy();
    await cancelled;
    await expectNothingLeft(d);
  });

  it('answers 507 when staging lacks the space for the restored copy', async () => {
    const d = await drillAgent('full', [], { freeBytes: 1000 });
    const { status, result } = await drill(d);
    expect(status).toBe(507);
    expect(result.detail).toMatch(/restoring this snapshot for a drill needs about \d+.*TCAB_AGENT_STAGING/);
    await expect(readFile(d.pidFile)).rejects.toMatchObject({ code: 'ENOENT' });
    await expectNothingLeft(d);
  });

  it('answers 501 when no backend command is configured, and 401 to an unsigned drill', async () => {
    const staging = join(work.dir, 'staging-none');
    const agent = await startAgent(agentConfig(work.dir, { stagingDir: staging }), { logger: eventLogger().logger });
    agents.push({ agent, staging, pidFile: join(work.dir, 'none.pid'), events: eventLogger() });
    const { status, result } = await drill({ agent, staging, pidFile: '', events: eventLogger() });
    expect(status).toBe(501);
    expect(result.detail).toMatch(/TCAB_AGENT_DRILL_BACKEND_COMMAND/);
    const unsigned = await new Promise<number>((resolve, reject) => {
      const url = new URL(agent.url);
      const req = httpRequest({
        hostname: url.hostname,
        port: url.port,
        method: 'POST',
        path: drillPath(description),
        agent: false,
        headers: { 'Content-Length': artifact.length },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end(artifact);
    });
    expect(unsigned).toBe(401);
    await rm(staging, { recursive: true, force: true });
  });
});

/** The artifact as a stream that counts what was read of it, in chunks, with `pauseMs` between them. */
function countedBody(data: Buffer, options: { chunks?: number; pauseMs?: number } = {}): { body: Readable; read(): number } {
  let read = 0;
  const chunks = options.chunks ?? 4;
  const size = Math.ceil(data.length / chunks);
  async function* gen() {
    for (let at = 0; at < data.length; at += size) {
      if (at > 0 && options.pauseMs) await new Promise((r) => setTimeout(r, options.pauseMs));
      const chunk = data.subarray(at, at + size);
      read += chunk.length;
      yield chunk;
    }
  }
  return { body: Readable.from(gen(), { objectMode: false }), read: () => read };
}

const clientFor = (d: { agent: RunningAgent }, key = KEY) => new AgentClient({ url: d.agent.url, keyId: KEY_ID, key });

describe('AgentClient.appDrill', () => {
  it("streams the artifact and returns the agent's result", async () => {
    const d = await drillAgent('client-happy');
    const { body, read } = countedBody(artifact);
    const result = await clientFor(d).appDrill(
      { snapshotId: description.id, artifact: description.artifact, snapshot: description.snapshot },
      body,
    );
    expect(result.passed).toBe(true);
    expect(result.runs).toEqual({ inFile: RUNS, served: RUNS, comparison: 'all' });
    expect(result.checks.map((c) => c.name)).toEqual(['receive', 'snapshot-sha256', 'integrity', 'start', 'healthz', 'runs', 'stop']);
    expect(read()).toBe(artifact.length);
    await expectNothingLeft(d);
  });

  it("reports refusals before the body as the agent's status and message, without sending a byte of the artifact", async () => {
    const of = { snapshotId: description.id, artifact: description.artifact, snapshot: description.snapshot };
    // 507: no space.
    const full = await drillAgent('client-full', [], { freeBytes: 1000 });
    let sent = countedBody(artifact);
    const noSpace = await clientFor(full)
      .appDrill(of, sent.body)
      .catch((e: unknown) => e);
    expect(noSpace).toBeInstanceOf(AgentError);
    expect(noSpace).toMatchObject({ status: 507, message: expect.stringMatching(/POST \/v1\/drills answered 507.*needs about \d+/) });
    expect((noSpace as AgentError).hint).toMatch(/TCAB_AGENT_STAGING/);
    expect(sent.read()).toBe(0);
    expect(sent.body.destroyed).toBe(true);
    // 401: a wrong key.
    sent = countedBody(artifact);
    const unsigned = await clientFor(full, 'not-the-key')
      .appDrill(of, sent.body)
      .catch((e: unknown) => e);
    expect(unsigned).toMatchObject({ status: 401 });
    expect(sent.read()).toBe(0);
    // 409: a drill is running (its backend never answers /healthz).
    const busy = await drillAgent('client-busy', ['STANDIN_NO_HEALTH=1'], { healthTimeoutMs: 60_000 });
    const up = busy.events.next('drill.backend_started');
    const cancel = new AbortController();
    const first = clientFor(busy)
      .appDrill(of, countedBody(artifact).body, { signal: cancel.signal })
      .catch((e: unknown) => e);
    await up;
    sent = countedBody(artifact);
    const second = await clientFor(busy)
      .appDrill(of, sent.body)
      .catch((e: unknown) => e);
    expect(second).toBeInstanceOf(AgentBusyError);
    expect((second as AgentBusyError).message).toMatch(/answered 409.*Another application drill is running/);
    expect(sent.read()).toBe(0);
    const cancelled = busy.events.next('drill.cancelled');
    cancel.abort();
    expect(await first).toMatchObject({ name: 'AbortError' });
    await cancelled;
    await expectNothingLeft(busy);
    await expectNothingLeft(full);
  });
});

describe('deadlines', () => {
  it('lets a drill take longer than the request deadline of the other routes, upload and backend start alike', async () => {
    const d = await drillAgent('slow', ['STANDIN_START_DELAY_MS=900'], { requestTimeoutMs: 400 });
    // The upload takes about 1.2 s in pauses shorter than the deadline; the backend then takes 0.9 s to listen.
    const { body } = countedBody(artifact, { chunks: 6, pauseMs: 200 });
    const started = Date.now();
    const result = await clientFor(d).appDrill(
      { snapshotId: description.id, artifact: description.artifact, snapshot: description.snapshot },
      body,
    );
    expect(Date.now() - started).toBeGreaterThan(1_500);
    expect(result.passed).toBe(true);
    expect(result.checks.find((c) => c.name === 'receive')!.ms).toBeGreaterThan(400);
    expect(result.checks.find((c) => c.name === 'healthz')!.ms + result.checks.find((c) => c.name === 'start')!.ms).toBeGreaterThan(400);
    await expectNothingLeft(d);
  });

  it('still cuts another request that does not arrive within the deadline, and a drill upload that stalls', async () => {
    const d = await drillAgent('deadline', [], { requestTimeoutMs: 400 });
    const url = new URL(d.agent.url);
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest({
        hostname: url.hostname,
        port: url.port,
        method: 'POST',
        path: '/v1/snapshots',
        agent: false,
        headers: { 'Content-Type': 'application/json', 'Content-Length': 20 },
      });
      req.on('response', (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      });
      req.on('error', reject);
      req.write('{"compression"');
    });
    expect(answer.status).toBe(408);
    expect(answer.body).toMatch(/did not arrive whole within 400 ms/);
    // A drill whose client stops sending mid-artifact is cut off and cleaned up.
    const stalled = d.events.next('drill.upload_stalled');
    const cancelled = d.events.next('drill.cancelled');
    const sent = sendDrill(d.agent.url, artifact, { hold: true });
    sent.answer.catch(() => undefined);
    await stalled;
    await cancelled;
    await expectNothingLeft(d);
    // The routes still answer in time when the request is whole.
    const health = await rawRequest(d.agent.url, { path: '/healthz' });
    expect(health.status).toBe(200);
  });
});
