/**
 * The fault matrix of the snapshot job (test/support/fault-matrix.ts, SNAPSHOT_TABLE): the real agent over
 * HTTP streams a real SQLite snapshot into "healthy" and "faulty" folder targets while "faulty" fails one
 * operation at one point. Artifacts of one part and of five (the agent's compression is off so the artifact
 * is as large as the database).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentClient } from '../../src/agent/client.js';
import { runSnapshot } from '../../src/jobs/snapshot/index.js';
import { startAgentPool, type AgentPool } from '../support/agent-pool.js';
import { casesOf, faultOf, PART, SIZES, SNAPSHOT_TABLE, settleWithin, type MatrixCase, type SizeName } from '../support/fault-matrix.js';
import { expectOutcome, goodIds, matrixFolder, visibleProblems } from '../support/matrix-world.js';

const DATABASE = 'tcab';
const pools = new Map<SizeName, AgentPool>();

beforeAll(async () => {
  for (const size of SNAPSHOT_TABLE.sizes) {
    // One part: about 80 KiB. Many: past four parts, so a fault in the middle part has whole parts on both sides.
    pools.set(size, await startAgentPool(3, size === 'one' ? { runs: 10 } : { targetBytes: (SIZES.many.parts - 0.5) * PART }, 'none'));
  }
});

afterAll(async () => {
  for (const pool of pools.values()) await pool.close();
});

describe.concurrent('fault matrix: snapshot', () => {
  it.each(casesOf(SNAPSHOT_TABLE).map((c) => [c.title, c] as const))('%s', async (_title, c) => {
    await pools.get(c.size)!.with((client) => snapshotCase(c, client));
  });
});

async function snapshotCase(c: MatrixCase, client: AgentClient): Promise<void> {
  const world = await matrixFolder('snapshot');
  try {
    const healthy = world.target('healthy').target;
    const { target: faulty, faults } = world.target('faulty');
    const controller = new AbortController();
    // The artifact's size is the database's; the fault's offsets are set from the nominal part size.
    const fault = faultOf(c, (SIZES[c.size].parts - 0.5) * PART, () => controller.abort());
    faults.arm(fault);
    const settled = await settleWithin(`snapshot (${c.title})`, controller, [faults], (signal) =>
      runSnapshot(
        { agent: client, targets: [healthy, faulty], database: DATABASE },
        { trigger: { kind: 'cli', reason: c.title }, compression: 'none', signal },
      ),
    );
    expectOutcome(c, settled, faults, fault);

    const healthyPlain = world.plain('healthy');
    const faultyPlain = world.plain('faulty');
    // No manifest anywhere without its whole data.
    expect([...(await visibleProblems(healthyPlain, DATABASE)), ...(await visibleProblems(faultyPlain, DATABASE))]).toEqual([]);
    if (settled.status === 'resolved') {
      const id = settled.value.manifest.id;
      if (c.size === 'many') expect(settled.value.manifest.artifact.bytes).toBeGreaterThan(SIZES.many.parts * PART * 0.8);
      expect(await goodIds(healthyPlain, DATABASE)).toEqual([id]);
      expect(await goodIds(faultyPlain, DATABASE)).toEqual([id]);
    } else if (c.expect !== 'aborted') {
      // A target that fails does not stop the others: the healthy one holds the snapshot, whole.
      expect(await goodIds(healthyPlain, DATABASE), 'the healthy target holds no verified snapshot').toHaveLength(1);
    }
  } finally {
    await world.remove();
  }
}
