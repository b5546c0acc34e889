/**
 * The fault matrix of the format-2 snapshot job (test/support/fault-matrix-v2.ts, SNAPSHOT_V2): the real agent
 * over HTTP cuts a real SQLite snapshot into chunks for "healthy" and "faulty" folder targets, each holding two
 * earlier snapshots (A and B), while "faulty" fails one operation at one point: its chunk listing, chunk upload
 * k of n (before the write, its answer lost after the write, its body destroyed), the chunk list, the manifest,
 * the check after the manifest. And the agent's side: its chunk-data answer breaks off in the middle of chunk
 * k of n (a proxy between the job and the agent).
 *
 * After each: the job settled; it failed naming the target and the chunk's key or the step, or succeeded as a
 * retry allows; the healthy target got the whole snapshot (unless the source broke); every manifest either
 * target shows restores to its exact file (so no manifest names an absent chunk); A and B still restore; and a
 * second run without the fault completes on both and restores exactly.
 */
import { cp } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { listCatalog } from '../../src/catalog/catalog.js';
import { runSnapshot, type SnapshotResultV2 } from '../../src/jobs/snapshot/index.js';
import { CHUNK_DATA_REQUESTS } from '../../src/jobs/snapshot/v2.js';
import type { Target } from '../../src/targets/target.js';
import { KEY, KEY_ID } from '../agent/helpers.js';
import { startAgentPool, type AgentPool } from '../support/agent-pool.js';
import { fullMessage, settleWithin } from '../support/fault-matrix.js';
import {
  caseRows,
  casesOfV2,
  DB,
  everyManifestRestores,
  expectObjectNamed,
  faultOfV2,
  makeFixtureV2,
  POSITIONS,
  SNAPSHOT_V2,
  skipFor,
  type FixtureCounts,
  type FixtureV2,
  type Position,
} from '../support/fault-matrix-v2.js';
import { startChunkDataCutProxy } from '../support/fault-proxy.js';
import { expectOutcome, matrixFolder, type MatrixFolder } from '../support/matrix-world.js';
import { counting, sha256Of, tally, vacuumInto } from '../support/v2-fixtures.js';
import { tempDir } from '../support/world.js';

const TIMING = { graceMs: 7 * 86_400_000, jobTimeoutMs: 25 * 60_000 };
let fx: FixtureV2;
let pool: AgentPool;
let counts: FixtureCounts;
/** The sha256 of the file every snapshot of the agent's database is (the database does not change). */
let agentSha: string;
let removeWork: () => Promise<void>;

function snapshot(client: AgentClient, targets: Target[], reason: string, signal?: AbortSignal): Promise<SnapshotResultV2> {
  return runSnapshot(
    { agent: client, targets, database: DB, timing: TIMING },
    { trigger: { kind: 'cli', reason }, format: 2, ...(signal ? { signal } : {}) },
  );
}

beforeAll(async () => {
  const work = await tempDir('matrix-v2-snapshot');
  removeWork = work.remove;
  fx = await makeFixtureV2(work.dir);
  // Another database than A's and B's: nearly every chunk of its snapshot is new to a target holding them.
  pool = await startAgentPool(3, { runs: 900, seed: 11 }, 'auto');
  agentSha = await sha256Of(vacuumInto(pool.database, join(work.dir, 'agent.sqlite')));
  const world = await matrixFolder('snapshot-v2-clean');
  try {
    await cp(fx.pair.dir, world.dir('clean'), { recursive: true });
    const result = await pool.with((client) => snapshot(client, [world.plain('clean')], 'fault-free run'));
    const o = result.targets[0]!;
    expect(result.manifest.snapshot.sha256).toBe(agentSha);
    counts = { ...fx.counts, uploads: o.chunks!.new + o.chunks!.renewed };
  } finally {
    await world.remove();
  }
  // Several dozen uploads, so that "the 7th" is a middle one and the last is far from the first.
  expect(counts.uploads).toBeGreaterThanOrEqual(30);
  console.log(`fixture: the agent's snapshot uploads ${counts.uploads} chunks to a target holding A and B`);
}, 120_000);
afterAll(async () => {
  await pool?.close();
  await removeWork?.();
});

/** What a target may show: A, B, and any snapshot of the agent's database (the file it must restore to). */
async function expectedOn(world: MatrixFolder, name: string): Promise<Record<string, string>> {
  const expected: Record<string, string> = { [fx.pair.a.id]: fx.sha.a, [fx.pair.b.id]: fx.sha.b };
  for (const s of (await listCatalog(world.plain(name), DB)).snapshots) expected[s.id] ??= agentSha;
  return expected;
}

/**
 * What a user checks after a run: every snapshot each target shows restores to its exact file (none names an
 * absent chunk), A and B are still there, the healthy target holds the new snapshot unless the source broke;
 * then a run without the fault completes on both and restores exactly.
 */
async function afterRun(world: MatrixFolder, client: AgentClient, healthyComplete: boolean, resolved: boolean): Promise<void> {
  const earlier = [fx.pair.a.id, fx.pair.b.id];
  const shown: Record<string, string[]> = {};
  for (const name of ['healthy', 'faulty']) {
    shown[name] = await everyManifestRestores(world, name, await expectedOn(world, name));
    for (const id of earlier) expect(shown[name], `snapshot ${id}, stored before, is gone from "${name}"`).toContain(id);
  }
  if (healthyComplete) expect(shown.healthy, 'the healthy target did not get the snapshot').toHaveLength(3);
  if (resolved) expect(shown.faulty).toHaveLength(3);

  const again = await snapshot(client, [world.plain('healthy'), world.plain('faulty')], 'the run after the fault');
  expect(again.targets.map((o) => o.ok)).toEqual([true, true]);
  for (const name of ['healthy', 'faulty']) {
    const now = await everyManifestRestores(world, name, await expectedOn(world, name));
    expect(now).toContain(again.manifest.id);
    expect(now.length).toBe(shown[name]!.length + 1);
  }
}

describe.concurrent('fault matrix v2: snapshot', () => {
  it.each(caseRows(SNAPSHOT_V2))('%s', async (_title, c) => {
    await pool.with(async (client) => {
      const world = await matrixFolder('snapshot-v2');
      try {
        for (const name of ['healthy', 'faulty']) await cp(fx.pair.dir, world.dir(name), { recursive: true });
        const healthy = world.target('healthy');
        const faulty = world.target('faulty');
        const controller = new AbortController();
        const fault = faultOfV2(c, counts, () => controller.abort());
        faulty.faults.arm(fault);
        const settled = await settleWithin(`snapshot v2 (${c.title})`, controller, [healthy.faults, faulty.faults], (signal) =>
          snapshot(client, [healthy.target, faulty.target], c.title, signal),
        );
        expectOutcome(c, settled, faulty.faults, fault);
        expectObjectNamed(c, settled as { status: string; error?: unknown });
        if (settled.status === 'rejected' && c.expect !== 'aborted') {
          // The healthy target is not blamed: only "faulty" is named as failed.
          expect(fullMessage(settled.error)).toMatch(/failed on 1 of 2 target\(s\): "faulty"/);
          expect(fullMessage(settled.error)).toContain('stored on "healthy"');
        }
        faulty.faults.arm(undefined);
        await afterRun(world, client, c.expect !== 'aborted', settled.status === 'resolved');
      } finally {
        await world.remove();
      }
    });
  });
});

/**
 * The agent's answer breaks off in chunk k of n. Once: the job asks the agent again for the chunks it did not
 * receive, and both targets get the whole snapshot. On every request: the job fails naming the agent after
 * CHUNK_DATA_REQUESTS, and no target shows a part-snapshot.
 */
const AGENT_CASES: Array<readonly [string, Position, 'once' | 'always']> = POSITIONS.flatMap((p) => [
  [`agent's chunk-data answer breaks off in chunk k of n (${p}), once`, p, 'once'] as const,
  [`agent's chunk-data answer breaks off in chunk k of n (${p}), on every request`, p, 'always'] as const,
]);

describe.concurrent('fault matrix v2: snapshot, the agent side', () => {
  it.each(AGENT_CASES)('%s', async (_title, position, how) => {
    await pool.with(async (client) => {
      const world = await matrixFolder('snapshot-v2-agent');
      const k = skipFor(position, counts.uploads) + 1;
      const proxy = await startChunkDataCutProxy(`http://${client.agent}`, k, how === 'once' ? 1 : Number.POSITIVE_INFINITY);
      try {
        for (const name of ['healthy', 'faulty']) await cp(fx.pair.dir, world.dir(name), { recursive: true });
        const cut = new AgentClient({ url: proxy.endpoint, keyId: KEY_ID, key: KEY });
        const controller = new AbortController();
        // Every put is counted: a resumed answer must not hand on again a chunk the broken one delivered.
        const targets = [counting(world.target('healthy').target), counting(world.target('faulty').target)];
        const settled = await settleWithin(`snapshot v2 (agent cut in chunk ${k}, ${how})`, controller, [], (signal) =>
          snapshot(
            cut,
            targets.map((t) => t.target),
            `agent cut at ${k}`,
            signal,
          ),
        );
        expect(proxy.cut(), 'the chunk-data request never passed the proxy').toBe(true);
        if (how === 'once') {
          const message = settled.status === 'rejected' ? fullMessage(settled.error) : '';
          expect(settled.status, `the job did not resume the broken answer: ${message}`).toBe('resolved');
          for (const t of targets) {
            const twice = [...tally(t.puts, /^chunks\//)].filter(([, n]) => n > 1);
            expect(twice, 'chunks written twice after the resume').toEqual([]);
          }
          // Both targets hold the new snapshot whole (it restores to the agent's file), and A and B.
          for (const name of ['healthy', 'faulty']) {
            const shown = await everyManifestRestores(world, name, await expectedOn(world, name));
            expect(shown).toHaveLength(3);
            expect(shown).toContain((settled as { value: SnapshotResultV2 }).value.manifest.id);
          }
          await afterRun(world, client, true, true);
          return;
        }
        expect(proxy.cuts(), 'the job did not ask the agent again').toBe(CHUNK_DATA_REQUESTS);
        expect(settled.status, 'the agent broke off every answer, yet the job reported success').toBe('rejected');
        const message = fullMessage((settled as { error: unknown }).error);
        expect(message).toContain(`agent at ${proxy.endpoint.replace('http://', '')}`);
        expect(message).toMatch(/reading the chunks from the agent failed/);
        // No target shows the snapshot: its chunks did not all arrive anywhere.
        for (const name of ['healthy', 'faulty']) {
          expect(await everyManifestRestores(world, name, await expectedOn(world, name))).toEqual([fx.pair.a.id, fx.pair.b.id].sort());
        }
        await afterRun(world, client, false, false);
      } finally {
        await proxy.stop();
        await world.remove();
      }
    });
  });
});

it('the format-2 snapshot matrix has the size it states', () => {
  const n = casesOfV2(SNAPSHOT_V2).length;
  console.log(`fault matrix v2: snapshot ${n} cases at the targets + ${AGENT_CASES.length} at the agent`);
  expect(n).toBeGreaterThan(35);
});
