/**
 * The fault matrix of the restore drill on format-2 snapshots (test/support/fault-matrix-v2.ts, DRILL_V2 and
 * DRILL_APP_V2): "good" then "faulty", each holding A and B, B (the newest) drilled restored to a file, checked
 * as it streams, and in the application drill (the stored chunks sent to a real agent with the stand-in
 * backend), while "faulty" fails its snapshot listing, a manifest read, the chunk list read or chunk read k of
 * n, or the drill record's write. The faults on reads are persistent from the call they hit on: a drill that
 * reads a chunk again meets the same fault.
 *
 * After each: the drill settled; it failed naming the target and the chunk's key, the chunk list, the manifest
 * or the listing, or passed as a retry allows; "faulty" has a failed drill record saying so (a passed one when
 * it passed); "good"'s drill passed and is recorded; no scratch file is left in the drill folder; the drill
 * changed nothing: A and B still restore from "faulty" to their exact files. In the application drill the
 * agent started no backend and left nothing in its staging folder.
 */
import { access, cp, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { readRecentDrills } from '../../src/catalog/drill-record.js';
import { DrillFailedError, runDrill, type DrillResult } from '../../src/jobs/drill/index.js';
import { silentLogger } from '../../src/log.js';
import { agentConfig, KEY, KEY_ID, standinCommand } from '../agent/helpers.js';
import { fullMessage, settleWithin, type Settled } from '../support/fault-matrix.js';
import {
  CHUNK,
  CHUNK_KEY,
  caseRows,
  casesOfV2,
  DB,
  DRILL_APP_V2,
  DRILL_V2,
  everyManifestRestores,
  expectObjectNamed,
  faultOfV2,
  makeFixtureV2,
  type CaseV2,
  type FixtureV2,
} from '../support/fault-matrix-v2.js';
import { expectOutcome, matrixFolder, type MatrixFolder } from '../support/matrix-world.js';
import { tempDir } from '../support/world.js';

let fx: FixtureV2;
let work: string;
let removeWork: () => Promise<void>;
let appAgent: RunningAgent;
let appClient: AgentClient;
const NO_LIVE = { unavailable: 'the fault matrix drills without a live database' };

beforeAll(async () => {
  const folder = await tempDir('matrix-v2-drill');
  work = folder.dir;
  removeWork = folder.remove;
  fx = await makeFixtureV2(work);
  expect(fx.counts.refsB).toBeGreaterThanOrEqual(30);
  appAgent = await startAgent(
    agentConfig(work, {
      dbPath: join(work, 'live.sqlite'),
      stagingDir: join(work, 'staging'),
      drill: {
        command: standinCommand(join(work, 'backend.pid')),
        healthTimeoutMs: 30_000,
        stopGraceMs: 300,
      },
    }),
    { logger: silentLogger },
  );
  appClient = new AgentClient({ url: appAgent.url, keyId: KEY_ID, key: KEY });
}, 60_000);
afterAll(async () => {
  await appAgent?.close();
  await removeWork?.();
});

function resultOf(settled: Settled<DrillResult>): DrillResult | undefined {
  if (settled.status === 'resolved') return settled.value;
  return settled.error instanceof DrillFailedError ? settled.error.result : undefined;
}

/** What a user checks after a drill: its records, the drill folder, and that the stored snapshots are untouched. */
async function afterDrill(world: MatrixFolder, c: CaseV2, settled: Settled<DrillResult>, workDir: string): Promise<void> {
  expect(await readdir(workDir).catch(() => []), 'the drill left scratch files').toEqual([]);
  const both = { [fx.pair.a.id]: fx.sha.a, [fx.pair.b.id]: fx.sha.b };
  expect(await everyManifestRestores(world, 'faulty', both)).toEqual(Object.keys(both).sort());
  if (c.expect === 'aborted') return;
  const result = resultOf(settled);
  expect(
    result,
    `the drill failed without a per-target result: ${settled.status === 'rejected' ? fullMessage(settled.error) : ''}`,
  ).toBeDefined();
  const [good, faulty] = result!.targets;
  expect(good).toMatchObject({ target: 'good', ok: true });
  const storedGood = await readRecentDrills(world.plain('good'), DB, 5);
  expect(storedGood.map((r) => [r.drillId, r.record?.ok])).toEqual([[result!.drillId, true]]);
  expect(faulty!.ok).toBe(settled.status === 'resolved');
  const storedFaulty = await readRecentDrills(world.plain('faulty'), DB, 5);
  if (c.row.names?.source === 'drill record' && settled.status === 'rejected') {
    // The record itself could not be written: the failure says so, and no record claims anything.
    expect(faulty!.error).toMatch(/drill record .* could not be written/);
    // What to check is the target's write, not the stored copy (which the drill proved).
    expect((settled.error as DrillFailedError).hint).toMatch(/the drill passed, but its record could not be stored/);
    expect(storedFaulty.filter((r) => r.record?.ok)).toEqual([]);
    return;
  }
  expect(
    storedFaulty.map((r) => [r.drillId, r.record?.ok]),
    'no drill record on "faulty" says how its drill went',
  ).toEqual([[result!.drillId, settled.status === 'resolved']]);
  if (settled.status === 'rejected') {
    const recorded = storedFaulty[0]!.record!.error!;
    expect(recorded).toContain('target "faulty"');
    if (c.row.keys === CHUNK && c.kind !== 'hang') expect(recorded, 'the drill record does not name the chunk').toMatch(CHUNK_KEY);
    if (c.row.names) expect(recorded, 'the drill record does not name what failed').toMatch(c.row.names);
  }
}

describe.concurrent('fault matrix v2: drill', () => {
  it.each(caseRows(DRILL_V2))('%s', async (_title, c) => {
    const world = await matrixFolder('drill-v2');
    try {
      for (const name of ['good', 'faulty']) await cp(fx.pair.dir, world.dir(name), { recursive: true });
      const workDir = join(world.root, 'work');
      const good = world.target('good');
      const faulty = world.target('faulty');
      const controller = new AbortController();
      const fault = faultOfV2(c, fx.counts, () => controller.abort());
      faulty.faults.arm(fault);
      const settled = await settleWithin(`drill v2 (${c.title})`, controller, [faulty.faults], (signal) =>
        runDrill(
          {
            targets: [good.target, faulty.target],
            database: DB,
            live: NO_LIVE,
            workDir,
            method: c.way as 'restore' | 'stream',
            logger: silentLogger,
          },
          { signal },
        ),
      );
      expectOutcome(c, settled, faulty.faults, fault);
      expectObjectNamed(c, settled as { status: string; error?: unknown });
      await afterDrill(world, c, settled, workDir);
    } finally {
      await world.remove();
    }
  });
});

// One application drill at a time: the agent refuses a second while one runs.
describe('fault matrix v2: application drill', () => {
  it.each(caseRows(DRILL_APP_V2))('%s', async (_title, c) => {
    const world = await matrixFolder('drill-app-v2');
    try {
      for (const name of ['good', 'faulty']) await cp(fx.pair.dir, world.dir(name), { recursive: true });
      const workDir = join(world.root, 'work');
      await mkdir(workDir);
      const faulty = world.target('faulty');
      const controller = new AbortController();
      const fault = faultOfV2(c, fx.counts, () => controller.abort());
      faulty.faults.arm(fault);
      // "good" only as the second target would start the backend for it; the faults are what is tested here.
      const settled = await settleWithin(`application drill v2 (${c.title})`, controller, [faulty.faults], (signal) =>
        runDrill(
          { targets: [faulty.target], database: DB, live: NO_LIVE, workDir, method: 'stream', app: appClient, logger: silentLogger },
          { signal },
        ),
      );
      expectOutcome(c, settled, faulty.faults, fault);
      expectObjectNamed(c, settled as { status: string; error?: unknown });
      expect(await readdir(workDir), 'the drill left scratch files').toEqual([]);
      await appAgent.idle();
      expect(
        (await readdir(join(work, 'staging'))).filter((n) => n.startsWith('drill-')),
        'the agent kept drill files',
      ).toEqual([]);
      await expect(
        access(join(work, 'backend.pid')),
        'the agent started the backend on a copy it did not wholly receive',
      ).rejects.toMatchObject({
        code: 'ENOENT',
      });
      const both = { [fx.pair.a.id]: fx.sha.a, [fx.pair.b.id]: fx.sha.b };
      expect(await everyManifestRestores(world, 'faulty', both)).toEqual(Object.keys(both).sort());
      if (c.expect === 'aborted') return;
      const record = resultOf(settled)!.targets[0]!;
      expect(record.checks?.method, 'the file-level drill (before the application drill) did not pass').toBe('stream');
      expect(record.app).toMatchObject({ passed: false, failedStep: 'receive' });
      expect(record.app!.error).toContain('the upload was stopped, the agent started nothing');
      const stored = await readRecentDrills(world.plain('faulty'), DB, 5);
      expect(stored.map((r) => r.record?.ok)).toEqual([false]);
      if (c.row.keys === CHUNK) expect(stored[0]!.record!.error).toMatch(CHUNK_KEY);
    } finally {
      await rm(join(work, 'backend.pid'), { force: true });
      await world.remove();
    }
  });
});

it('the format-2 drill matrix has the size it states', () => {
  const file = casesOfV2(DRILL_V2).length;
  const app = casesOfV2(DRILL_APP_V2).length;
  console.log(`fault matrix v2: drill ${file} cases (restored to a file, checked as it streams) + ${app} in the application drill`);
  expect(file).toBeGreaterThan(90);
  expect(app).toBeGreaterThan(15);
});
