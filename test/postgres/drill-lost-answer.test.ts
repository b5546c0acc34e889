/**
 * The Postgres drill keeps its state in records written with If-None-Match / If-Match. Here every record
 * write the drill makes is applied by the storage but its answer is lost on the way back (Azurite behind
 * the fault proxy), so each is retried and its retry meets the write itself. The drill must go on as if
 * the answers had arrived: not take its own write for another invocation's, back off, delete the record
 * the pointer names, and so skip the drill for a whole interval.
 */
import { randomBytes } from 'node:crypto';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startAzurite, type Azurite } from '../../src/dev/emulators.js';
import { loadPgDrillConfig } from '../../src/postgres/config.js';
import { runPgDrill } from '../../src/postgres/drill.js';
import { PgCurrentDrillSchema, PgDrillRecordSchema, pgCurrentDrillKey, pgDrillKey, readRecord } from '../../src/postgres/records.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import { FakeArm } from '../support/fake-arm.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { ARM_TOKEN, FixedCredential, SUBSCRIPTION, TestClock, bypassProxyForLoopback, pgEnv } from '../support/pg-harness.js';
import { captureLog } from '../support/world.js';

const MIN = 60_000;
let arm: FakeArm;
let azurite: Azurite;
let faults: FaultProxy;

beforeAll(async () => {
  bypassProxyForLoopback();
  [arm, azurite] = await Promise.all([FakeArm.start({ token: ARM_TOKEN }), startAzurite()]);
  await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('tcab').create();
  faults = await startFaultProxy(new URL(azurite.endpoint).origin);
});

afterAll(async () => {
  await faults?.stop();
  await Promise.all([arm?.stop(), azurite?.stop()]);
});

it('goes on with its drill when every record write lands but loses its answer', async () => {
  const source = arm.addServer({ subscriptionId: SUBSCRIPTION, resourceGroup: 'rg-tcab', name: 'tcab-prod', location: 'westeurope' });
  const url = `azblob://${azurite.account}/tcab/t-${randomBytes(4).toString('hex')}?endpoint=${azurite.endpoint}`;
  const connectionString = azurite.connectionString.replace(new URL(azurite.endpoint).origin, faults.endpoint);
  const target = openTarget(parseTargetUrl('primary', url, { connectionString }), { retry: { baseDelayMs: 5, maxDelayMs: 20 } });
  const clock = new TestClock();
  const log = captureLog();
  const config = loadPgDrillConfig(
    pgEnv(arm.endpoint, [FakeArm.id(source)], { TCAB_BACKUP_PG_DRILL_USER: 'tcab', TCAB_BACKUP_PG_DRILL_PASSWORD: 'unused-here' }),
  );
  const tick = async () =>
    (
      await runPgDrill(config, {
        target,
        credential: new FixedCredential({ arm: ARM_TOKEN }),
        logger: log.logger,
        now: clock.now,
        arm: { ca: arm.ca, maxRetries: 0 },
      })
    ).servers[0]!;

  // The first attempt of every write under drills/ is applied, and then its connection is reset.
  let attempt = 0;
  faults.inject({
    fault: 'lost-answer',
    times: Infinity,
    match: (m, u) => m === 'PUT' && u.pathname.includes('/drills/') && attempt++ % 2 === 0,
  });

  const t1 = await tick();
  expect(t1).toMatchObject({ action: 'restore-started', newDrill: true, drill: { state: 'restoring' } });
  const drillId = t1.drill!.drillId;
  const lost = faults.seen.filter((s) => s.fault === 'lost answer').map((s) => s.request.replace(/^.*\/drills\/pg-tcab-prod\//, ''));
  // The record's creation, the pointer's creation and the record's updates all lost their answer.
  expect(lost.slice(0, 3)).toEqual([`${drillId}.json`, 'current.json', `${drillId}.json`]);
  const pointer = await readRecord(target, pgCurrentDrillKey('tcab-prod'), PgCurrentDrillSchema);
  expect(pointer?.value.drillId).toBe(drillId);
  expect((await readRecord(target, pgDrillKey('tcab-prod', drillId), PgDrillRecordSchema))?.value.state).toBe('restoring');

  clock.advance(10 * MIN);
  const t2 = await tick();
  expect(t2).toMatchObject({ action: 'ready', newDrill: false, drill: { drillId, state: 'validating' } });
  expect(arm.requestsOf('PUT')).toHaveLength(1);
  expect(log.lines.filter((l) => l.includes('pg.drill.backed-off') || l.includes('pg.drill.record-missing'))).toEqual([]);
});
