/**
 * The fault matrix of the snapshot job (test/support/fault-matrix.ts, SNAPSHOT_TABLE): the real agent over
 * HTTP streams a real SQLite snapshot into "healthy" and "faulty" folder targets while "faulty" fails one
 * operation at one point. Artifacts of one part and of five (the agent's compression is off so the artifact
 * is as large as the database).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { runSnapshot } from '../../src/jobs/snapshot.js';
import { silentLogger } from '../../src/log.js';
import { agentConfig, KEY, KEY_ID } from '../agent/helpers.js';
import { casesOf, faultOf, PART, SIZES, SNAPSHOT_TABLE, settleWithin, type SizeName } from '../support/fault-matrix.js';
import { expectOutcome, goodIds, matrixFolder, visibleProblems } from '../support/matrix-world.js';

const DATABASE = 'tcab';
const agents = new Map<SizeName, { agent: RunningAgent; client: AgentClient; dir: string }>();

beforeAll(async () => {
  for (const size of SNAPSHOT_TABLE.sizes) {
    const dir = await mkdtemp(join(tmpdir(), `tcab-matrix-agent-${size}-`));
    // One part: about 80 KiB. Many: past four parts, so a fault in the middle part has whole parts on both sides.
    createSampleDatabase(join(dir, 'tcab.sqlite'), size === 'one' ? { runs: 10 } : { targetBytes: (SIZES.many.parts - 0.5) * PART });
    const agent = await startAgent(agentConfig(dir, { compression: 'none' }), { logger: silentLogger });
    agents.set(size, { agent, dir, client: new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY }) });
  }
});

afterAll(async () => {
  for (const { agent, dir } of agents.values()) {
    await agent.close();
    await rm(dir, { recursive: true, force: true });
  }
});

describe('fault matrix: snapshot', () => {
  it.each(casesOf(SNAPSHOT_TABLE).map((c) => [c.title, c] as const))('%s', async (_title, c) => {
    const { client } = agents.get(c.size)!;
    const world = await matrixFolder('snapshot');
    try {
      const healthy = world.target('healthy').target;
      const { target: faulty, faults } = world.target('faulty');
      const controller = new AbortController();
      // The artifact's size is the database's; the fault's offsets are set from the nominal part size.
      const fault = faultOf(c, (SIZES[c.size].parts - 0.5) * PART, () => controller.abort());
      faults.arm(fault);
      const settled = await settleWithin(`snapshot (${c.title})`, controller, [faults], (signal) =>
        runSnapshot({ agent: client, targets: [healthy, faulty], database: DATABASE }, { trigger: { kind: 'cli', reason: c.title }, compression: 'none', signal }),
      );
      expectOutcome(c, settled, faults, fault);

      const healthyPlain = world.plain('healthy');
      const faultyPlain = world.plain('faulty');
      // No manifest anywhere without its whole data.
      expect([...await visibleProblems(healthyPlain, DATABASE), ...await visibleProblems(faultyPlain, DATABASE)]).toEqual([]);
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
  });
});
