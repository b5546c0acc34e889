/**
 * The restore drill with the application drill on (TCAB_BACKUP_DRILL_APP / `tcab-backup drill --app`): real
 * targets (file and Azurite), a real agent over real HTTP with the stand-in backend (src/dev/standin-backend.ts),
 * and the drill job streaming each target's stored artifact to it. Every case checks that no backend process
 * and no scratch file is left behind, on the agent and in the drill's work folder.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { drillCommand } from '../../src/cli/commands/drill.js';
import type { ManifestV1 as Manifest } from '../../src/catalog/manifest.js';
import { DrillFailedError, runDrill, type DrillResult } from '../../src/jobs/drill/index.js';
import { DrillRecordSchema, readRecentDrills, type DrillRecord } from '../../src/catalog/drill-record.js';
import { loadMonitorSettings } from '../../src/jobs/settings.js';
import { runMonitor } from '../../src/jobs/monitor/index.js';
import { createLogger } from '../../src/log.js';
import { renderStatusPage } from '../../src/status/page.js';
import type { Target } from '../../src/targets/target.js';
import { agentConfig, KEY, KEY_ID, standinCommand } from '../agent/helpers.js';
import { captureLog } from '../support/world.js';
import { ARTIFACT } from '../support/fault-matrix.js';
import { FaultTarget } from '../support/fault-target.js';
import { flipBodyByte, readsThrough } from '../support/v2-fixtures.js';
import { DATABASE, startFixture, type Fixture } from '../status/fixture.js';

const RUNS = 120;
let fx: Fixture;
let workDir: string;
let manifest: Manifest;

interface DrillAgent {
  agent: RunningAgent;
  client: AgentClient;
  staging: string;
  pidFile: string;
  events: ReturnType<typeof captureLog>;
}
const agents: DrillAgent[] = [];

/** An agent on the fixture's live database whose backend command is the stand-in, with `knobs` to misbehave. */
async function drillAgent(
  name: string,
  knobs: string[] = [],
  options: { healthTimeoutMs?: number; freeBytes?: number } = {},
): Promise<DrillAgent> {
  const staging = join(fx.work, `staging-${name}`);
  const pidFile = join(fx.work, `${name}.pid`);
  const events = captureLog();
  const agent = await startAgent(
    agentConfig(fx.work, {
      dbPath: fx.dbPath,
      stagingDir: staging,
      compression: 'gzip',
      drill: {
        command: standinCommand(pidFile, knobs),
        healthTimeoutMs: options.healthTimeoutMs ?? 30_000,
        stopGraceMs: 300,
      },
    }),
    { logger: events.logger, ...(options.freeBytes !== undefined ? { freeBytes: async () => options.freeBytes! } : {}) },
  );
  const made = { agent, client: new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY }), staging, pidFile, events };
  agents.push(made);
  return made;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** No backend process, no scratch file on the agent, nothing in the drill's work folder. */
async function expectNothingLeft(d: DrillAgent): Promise<void> {
  await d.agent.idle();
  const pid = await readFile(d.pidFile, 'utf8').then(Number, () => undefined);
  if (pid !== undefined) expect(alive(pid), `backend process ${pid} is still running`).toBe(false);
  expect((await readdir(d.staging)).filter((n) => n.startsWith('drill-'))).toEqual([]);
  expect(await readdir(workDir)).toEqual([]);
}

async function failedDrill(d: DrillAgent, targets: Target[] = [fx.local]): Promise<{ err: DrillFailedError; record: DrillRecord }> {
  const err = await runDrill({ targets, database: DATABASE, live: d.client, workDir, app: d.client }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(DrillFailedError);
  const record = (err as DrillFailedError).result.targets[0]!;
  // What the monitor and the status page read back is the record as stored.
  const stored = (await readRecentDrills(targets[0]!, DATABASE, 50)).find((r) => r.drillId === record.drillId);
  expect(stored!.record).toEqual(record);
  return { err: err as DrillFailedError, record };
}

function monitor(targets: Target[]) {
  return runMonitor(
    { targets, database: DATABASE, thresholds: loadMonitorSettings({}).thresholds },
    { write: false, throwOnCritical: false },
  );
}

/** A target whose artifact reads, from the `nth` on, have one byte flipped on the way. */
function corruptingReads(inner: Target, nth: number): Target {
  let reads = 0;
  return readsThrough(inner, async (key, options) => {
    const got = await inner.get(key, options);
    if (!ARTIFACT.test(key) || ++reads < nth) return got;
    return flipBodyByte(got, 100);
  });
}

beforeAll(async () => {
  fx = await startFixture({ runs: RUNS, azurite: true });
  workDir = await mkdtemp(join(tmpdir(), 'tcab-drill-app-work-'));
  ({ manifest } = await fx.snapshot());
});

afterAll(async () => {
  for (const d of agents) await d.agent.close();
  await fx?.stop();
  await rm(workDir, { recursive: true, force: true });
});

describe('restore drill with the application drill', () => {
  it("starts the backend on every target's copy, records runs served and times, and counts the start in the recovery time", async () => {
    const d = await drillAgent('happy');
    const { logger, events } = captureLog();
    const result = await runDrill({ targets: fx.targets, database: DATABASE, live: d.client, workDir, app: d.client, logger });
    expect(result.ok).toBe(true);
    expect(result.targets.map((r) => r.target)).toEqual(['local', 'blob']);
    for (const r of result.targets) {
      expect(r.app).toMatchObject({
        passed: true,
        failedStep: null,
        agent: d.client.agent,
        runs: { inFile: RUNS, served: RUNS, comparison: 'all' },
      });
      expect(r.app!.checks.map((c) => [c.name, c.ok])).toEqual([
        ['receive', true],
        ['snapshot-sha256', true],
        ['integrity', true],
        ['start', true],
        ['healthz', true],
        ['runs', true],
        ['stop', true],
      ]);
      const ms = (n: string) => r.app!.checks.find((c) => c.name === n)!.ms;
      expect(r.app!.startToServingMs).toBe(ms('start') + ms('healthz') + ms('runs'));
      expect(r.app!.startToServingMs).toBeGreaterThan(0);
      expect(r.recoveryTimeMs).toBeGreaterThan(r.app!.startToServingMs!);
      const stored = (await readRecentDrills(r.target === 'local' ? fx.local : fx.blob!, DATABASE, 50)).find(
        (x) => x.drillId === r.drillId,
      );
      expect(stored!.record).toEqual(r);
    }
    // Two targets, two application drills: one per target's stored bytes.
    expect(events('drill.app_started').map((e) => e.target)).toEqual(['local', 'blob']);
    expect(d.events.events('drill.passed')).toHaveLength(2);
    expect(events('drill.completed')[0]).toMatchObject({ app: 'passed', runsServed: RUNS });
    // The monitor's status document and the page show it.
    const doc = await monitor([fx.local]);
    expect(doc.targets[0]!.drill.lastSucceeded!.app).toMatchObject({ passed: true, runsServed: RUNS });
    expect(renderStatusPage(doc)).toContain(`backend started and served ${RUNS} runs in`);
    await expectNothingLeft(d);
  });

  it('without the application drill, records no app part, and records of either kind read back', async () => {
    const result = await runDrill({ targets: [fx.local], database: DATABASE, live: fx.client, workDir });
    expect(result.targets[0]!.app).toBeUndefined();
    const older = { ...result.targets[0]! };
    expect(DrillRecordSchema.parse(JSON.parse(JSON.stringify(older)))).toEqual(older);
  });

  it('fails the drill when the backend exits at start, naming the step, what to check and its last log lines', async () => {
    const d = await drillAgent('exits', ['STANDIN_EXIT_AT_START=3']);
    const { err, record } = await failedDrill(d);
    expect(err.message).toMatch(
      /application drill on the agent at \S+ failed at step healthz: the backend exited with status 3 before \/healthz answered 200/,
    );
    expect(err.message).toContain('TCAB_AGENT_DRILL_BACKEND_COMMAND');
    expect(err.message).toContain('migration 0007 failed');
    expect(err.hint).toMatch(/application drill's step named above/);
    expect(record).toMatchObject({ ok: false, app: { passed: false, failedStep: 'healthz', startToServingMs: null } });
    expect(record.app!.backendLog!.join('\n')).toContain('migration 0007 failed');
    // The file-level checks passed and are still recorded.
    expect(record.checks?.method).toBe('restore');
    // The monitor treats it as a failed drill: critical, with what to check about the backend.
    const doc = await monitor([fx.local]);
    expect(doc.targets[0]!.drill.state).toBe('critical');
    expect(doc.problems).toContainEqual(
      expect.objectContaining({
        state: 'critical',
        check: 'drill',
        message: expect.stringContaining('failed at step healthz'),
        hint: expect.stringContaining('TCAB_AGENT_DRILL_BACKEND_COMMAND'),
      }),
    );
    expect(renderStatusPage(doc)).toContain('failed: backend at step healthz');
    await expectNothingLeft(d);
  });

  it('fails when the backend never answers /healthz, and kills it', async () => {
    const d = await drillAgent('silent', ['STANDIN_NO_HEALTH=1', 'STANDIN_IGNORE_SIGTERM=1'], { healthTimeoutMs: 800 });
    const { err, record } = await failedDrill(d);
    expect(err.message).toMatch(/failed at step healthz: GET \/healthz did not answer 200 within 800 ms/);
    expect(err.message).toContain('TCAB_AGENT_DRILL_HEALTH_TIMEOUT');
    expect(record.app!.failedStep).toBe('healthz');
    const pid = Number(await readFile(d.pidFile, 'utf8'));
    await d.agent.idle();
    expect(alive(pid)).toBe(false);
    await expectNothingLeft(d);
  });

  it('fails when the backend serves fewer runs than the file holds', async () => {
    const d = await drillAgent('fewer', ['STANDIN_DROP_RUNS=7']);
    const { err, record } = await failedDrill(d);
    expect(err.message).toMatch(new RegExp(`failed at step runs: GET /runs served ${RUNS - 7} runs, but the restored file holds ${RUNS}`));
    expect(record.app!.runs).toEqual({ inFile: RUNS, served: RUNS - 7, comparison: 'all' });
    await expectNothingLeft(d);
  });

  it('fails when the artifact is changed on the way to the agent, which refuses it before starting anything', async () => {
    const d = await drillAgent('corrupt');
    // The first read (the file-level restore) is intact; the second, streamed to the agent, is not.
    const { err, record } = await failedDrill(d, [corruptingReads(fx.local, 2)]);
    expect(err.message).toMatch(
      /failed at step receive: the agent refused the artifact before starting anything: .*answered 422.*changed or cut on the way/,
    );
    expect(record.app).toMatchObject({ passed: false, failedStep: 'receive' });
    expect(d.events.events('drill.backend_started')).toEqual([]);
    await expect(readFile(d.pidFile)).rejects.toMatchObject({ code: 'ENOENT' });
    await expectNothingLeft(d);
  });

  it('blames the target, not the agent, when the artifact breaks off on its way from the target', async () => {
    const d = await drillAgent('target-breaks');
    const breaking = new FaultTarget(fx.local, {
      op: 'get',
      keys: ARTIFACT,
      skip: 1,
      point: { at: 'body', offset: Math.floor(manifest.artifact.bytes / 2) },
      kind: 'error',
    });
    const err = await runDrill({ targets: [breaking], database: DATABASE, live: d.client, workDir, app: d.client }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(DrillFailedError);
    const record = (err as DrillFailedError).result.targets[0]!;
    expect(record.app).toMatchObject({ passed: false, failedStep: 'receive' });
    expect(record.error).toMatch(/failed at step receive: reading the artifact from target "local" broke off during the upload/);
    // What to check is the stored copy and the target, not the backend on the VM.
    expect((err as DrillFailedError).hint).toMatch(/the stored copy named is damaged or unreadable/);
    await d.agent.idle();
    expect(d.events.events('drill.backend_started')).toEqual([]);
    await expectNothingLeft(d);
  });

  it("stops the agent's drill and removes its scratch file when the drill is cancelled mid-stream", async () => {
    const d = await drillAgent('cancel');
    const cancel = new AbortController();
    const hanging = new FaultTarget(fx.local, {
      op: 'get',
      keys: ARTIFACT,
      skip: 1,
      point: { at: 'body', offset: Math.floor(manifest.artifact.bytes / 2) },
      kind: 'hang',
      onHang: () => cancel.abort(new Error('the operator pressed Ctrl-C')),
    });
    const err = await runDrill(
      { targets: [hanging], database: DATABASE, live: d.client, workDir, app: d.client },
      { signal: cancel.signal },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(cancel.signal.aborted).toBe(true);
    expect(hanging.fired).toHaveLength(1);
    // The agent had begun receiving, then saw the request go away.
    await d.agent.idle();
    expect(d.events.events('drill.started')).toHaveLength(1);
    expect(d.events.events('drill.cancelled')).toHaveLength(1);
    await expect(readFile(d.pidFile)).rejects.toMatchObject({ code: 'ENOENT' });
    await expectNothingLeft(d);
  });

  it('fails as busy when another application drill runs on the agent', async () => {
    const d = await drillAgent('busy', ['STANDIN_NO_HEALTH=1'], { healthTimeoutMs: 60_000 });
    const up = new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (d.events.events('drill.backend_started').length) {
          clearInterval(poll);
          resolve();
        }
      }, 20);
    });
    const cancel = new AbortController();
    const { body } = await fx.local.get(manifest.key);
    const first = d.client
      .appDrill({ snapshotId: manifest.id, artifact: manifest.artifact, snapshot: manifest.snapshot }, body, { signal: cancel.signal })
      .catch((e: unknown) => e);
    await up;
    const { err, record } = await failedDrill(d);
    expect(err.message).toMatch(/failed at step agent: the agent is busy with another application drill: .*answered 409/);
    expect(record.app).toMatchObject({ passed: false, failedStep: 'agent' });
    cancel.abort();
    await first;
    await expectNothingLeft(d);
  });

  it('fails when the agent has no space for the drill (507), naming the staging folder', async () => {
    const d = await drillAgent('full', [], { freeBytes: 1000 });
    const { err } = await failedDrill(d);
    expect(err.message).toMatch(/failed at step agent: the agent did not run it: .*answered 507.*TCAB_AGENT_STAGING/);
    await expect(readFile(d.pidFile)).rejects.toMatchObject({ code: 'ENOENT' });
    await expectNothingLeft(d);
  });

  it('fails, not warns, when the application drill is asked for and the agent cannot be reached', async () => {
    const offline = new AgentClient({ url: 'http://127.0.0.1:9', keyId: KEY_ID, key: KEY, timeoutMs: 5000 });
    const err = await runDrill({ targets: [fx.local], database: DATABASE, live: offline, workDir, app: offline }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DrillFailedError);
    expect((err as Error).message).toMatch(/failed at step agent: the agent did not run it: .*ECONNREFUSED/);
    const missing = await runDrill({
      targets: [fx.local],
      database: DATABASE,
      live: fx.client,
      workDir,
      app: { unavailable: 'TCAB_BACKUP_AGENT_URL is not set' },
    }).catch((e: unknown) => e);
    expect((missing as Error).message).toMatch(/needs the agent, which cannot be asked: TCAB_BACKUP_AGENT_URL is not set/);
    expect(await readdir(workDir)).toEqual([]);
  });
});

describe('tcab-backup drill --app', () => {
  async function run(
    args: string[],
    agent: DrillAgent,
    extraEnv: Record<string, string> = {},
  ): Promise<{ code: number; stdout: string; error?: unknown }> {
    const stdout = new PassThrough();
    let text = '';
    stdout.on('data', (b: Buffer) => (text += b.toString()));
    const env = {
      TCAB_BACKUP_TARGETS: `local=file://${fx.work}/backups`,
      TCAB_BACKUP_AGENT_URL: agent.agent.url,
      TCAB_BACKUP_AGENT_KEY_ID: KEY_ID,
      TCAB_BACKUP_AGENT_KEY: KEY,
      TCAB_BACKUP_DRILL_WORK_DIR: workDir,
      ...extraEnv,
    };
    try {
      const code = await drillCommand(args, {
        io: { stdout, stderr: process.stderr, stdin: process.stdin, env },
        logger: createLogger({ level: 'error' }),
        env,
      });
      return { code, stdout: text };
    } catch (error) {
      return { code: 1, stdout: text, error };
    }
  }

  it('says the backend started and served the runs, with times; --json carries the app part; the setting does the same', async () => {
    const d = await drillAgent('cli');
    const human = await run(['--app'], d);
    expect(human.error).toBeUndefined();
    expect(human.stdout).toMatch(
      new RegExp(
        `application: backend started and served ${RUNS} runs in \\d+ ms \\(start \\d+ ms, /healthz \\d+ ms, /runs \\d+ ms; ${RUNS} runs in the file`,
      ),
    );
    const json = JSON.parse((await run(['--json', '--app'], d)).stdout) as DrillResult;
    expect(json.targets[0]!.app).toMatchObject({ passed: true, runs: { served: RUNS, inFile: RUNS } });
    const bySetting = JSON.parse((await run(['--json'], d, { TCAB_BACKUP_DRILL_APP: 'true' })).stdout) as DrillResult;
    expect(bySetting.targets[0]!.app?.passed).toBe(true);
    const without = JSON.parse((await run(['--json'], d)).stdout) as DrillResult;
    expect(without.targets[0]!.app).toBeUndefined();
    await expectNothingLeft(d);
  });

  it("fails with exit status 1, printing the step, the backend's log lines and what to check", async () => {
    const d = await drillAgent('cli-exits', ['STANDIN_EXIT_AT_START=3']);
    const out = await run(['--app'], d);
    expect(out.error).toBeInstanceOf(DrillFailedError);
    expect(out.stdout).toContain('application drill: failed at step healthz after receive ok');
    expect(out.stdout).toContain('migration 0007 failed');
    await expectNothingLeft(d);
  });
});
