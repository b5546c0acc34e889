/**
 * The fault matrix of the Postgres PITR drill's record writes (test/support/fault-matrix.ts, PG_DRILL_TABLE):
 * its records on the target are its lock, written with If-None-Match and If-Match, so a write that failed,
 * hung or lost its answer must neither start a second restore nor lose the drill. One tick runs under the
 * fault against the fake Azure Resource Manager (the first tick asks for the restore; no PostgreSQL is
 * needed), then a tick of a fresh invocation without faults, as the next timer would.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPgDrillConfig } from '../../src/postgres/config.js';
import { runPgDrill, type PgDrillResult } from '../../src/postgres/drill.js';
import { PgCurrentDrillSchema, PgDrillRecordSchema, pgCurrentDrillKey, pgDrillKey, readRecord } from '../../src/postgres/records.js';
import type { Target } from '../../src/targets/target.js';
import { FakeArm } from '../support/fake-arm.js';
import { casesOf, faultOf, PG_DRILL_TABLE, settleWithin } from '../support/fault-matrix.js';
import { expectOutcome, matrixFolder } from '../support/matrix-world.js';
import { ARM_TOKEN, FixedCredential, SUBSCRIPTION, TestClock, bypassProxyForLoopback, pgEnv } from '../support/pg-harness.js';

const SERVER = 'tcab-prod';
let arm: FakeArm;

beforeAll(async () => {
  bypassProxyForLoopback();
  arm = await FakeArm.start({ token: ARM_TOKEN });
});
afterAll(async () => {
  await arm?.stop();
});

/** A restore request to ARM: the PUT of a drill server. */
const restoreRequests = (resourceGroup: string) =>
  arm.requestsOf('PUT', new RegExp(`/resourceGroups/${resourceGroup}/providers/Microsoft.DBforPostgreSQL/flexibleServers/tcab-drill-`));

describe.concurrent('fault matrix: pg drill', () => {
  it.each(casesOf(PG_DRILL_TABLE).map((c) => [c.title, c] as const))('%s', async (_title, c) => {
    const world = await matrixFolder('pg');
    // A resource group per case, so that concurrent cases on the one fake ARM do not see each other's servers.
    const resourceGroup = `rg-${Math.random().toString(36).slice(2, 10)}`;
    const source = arm.addServer({ subscriptionId: SUBSCRIPTION, resourceGroup, name: SERVER, location: 'westeurope' });
    try {
      const clock = new TestClock();
      const config = loadPgDrillConfig(
        pgEnv(arm.endpoint, [FakeArm.id(source)], {
          TCAB_BACKUP_PG_DRILL_USER: 'drill',
          TCAB_BACKUP_PG_DRILL_PASSWORD: 'not-used-before-validation',
          TCAB_BACKUP_PG_DRILL_TLS: 'disable',
        }),
      );
      const tick = (target: Target, signal?: AbortSignal): Promise<PgDrillResult> =>
        runPgDrill(config, {
          target,
          credential: new FixedCredential({ arm: ARM_TOKEN }),
          now: clock.now,
          arm: { ca: arm.ca, maxRetries: 0 },
          ...(signal ? { signal } : {}),
        });

      const primary = world.target('primary');
      const controller = new AbortController();
      const fault = faultOf(c, 0, () => controller.abort());
      primary.faults.arm(fault);
      const settled = await settleWithin(`pg drill (${c.title})`, controller, [primary.faults], (signal) => tick(primary.target, signal));
      expectOutcome(c, settled, primary.faults, fault);
      if (settled.status === 'resolved') {
        // Nothing else ran: a tick that reports it backed off for another invocation is wrong, and its drill is lost.
        expect(
          settled.value.servers[0]!.action,
          `tick 1 reported "${settled.value.servers[0]!.detail}" with no other invocation running`,
        ).not.toBe('backed-off');
      }
      expect(restoreRequests(resourceGroup).length, 'restores requested by the faulted tick').toBeLessThanOrEqual(1);

      // The next timer, a fresh invocation, no faults.
      const plain = world.plain('primary');
      await tick(plain);
      const pointer = await readRecord(plain, pgCurrentDrillKey(SERVER), PgCurrentDrillSchema);
      expect(pointer, 'no current drill after two ticks').toBeDefined();
      const record = await readRecord(plain, pgDrillKey(SERVER, pointer!.value.drillId), PgDrillRecordSchema);
      expect(
        record,
        `the current drill ${pointer!.value.drillId} has no record: the drill is lost until the interval passes`,
      ).toBeDefined();
      // Exactly one restore was asked for across both ticks, and the drill goes on.
      expect(restoreRequests(resourceGroup)).toHaveLength(1);
      expect(['restoring', 'validating']).toContain(record!.value.state);
    } finally {
      for (const key of [...arm.servers.keys()]) if (key.includes(`/resourcegroups/${resourceGroup}/`)) arm.servers.delete(key);
      await world.remove();
    }
  });
});
