import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { armClientFactory } from '../../src/postgres/arm.js';
import { loadPgDrillConfig } from '../../src/postgres/config.js';
import { PgDrillError, runPgDrill } from '../../src/postgres/drill.js';
import { sweepDrillServers } from '../../src/postgres/sweeper.js';
import { silentLogger } from '../../src/log.js';
import { FakeArm, type FakeServer } from '../support/fake-arm.js';
import { ARM_TOKEN, FixedCredential, SUBSCRIPTION, bypassProxyForLoopback, pgEnv } from '../support/pg-harness.js';
import { captureLog, folderTarget } from '../support/world.js';

const HOUR = 3_600_000;
let arm: FakeArm;
let source: FakeServer;

beforeAll(async () => {
  bypassProxyForLoopback();
  arm = await FakeArm.start({ token: ARM_TOKEN });
});
afterAll(async () => {
  await arm?.stop();
});
beforeEach(() => {
  source = arm.addServer({ subscriptionId: SUBSCRIPTION, resourceGroup: 'rg-tcab', name: 'tcab-prod' });
});
afterEach(() => {
  arm.servers.clear();
  arm.requests.length = 0;
});

function drillTags(sourceId: string, ageMs: number): Record<string, string> {
  return {
    'tcab-backup-drill': 'true',
    'tcab-backup-drill-source': sourceId,
    'tcab-backup-drill-created': new Date(Date.now() - ageMs).toISOString(),
  };
}

function add(name: string, tags: Record<string, string>, over: Partial<FakeServer> = {}): FakeServer {
  return arm.addServer({ subscriptionId: SUBSCRIPTION, resourceGroup: 'rg-tcab', name, tags, ...over });
}

const env = () =>
  pgEnv(arm.endpoint, [FakeArm.id(source)], {
    TCAB_BACKUP_PG_DRILL_USER: 'tcab_drill',
    TCAB_BACKUP_PG_DRILL_PASSWORD: 'drill-password-123',
  });

async function sweep() {
  const config = loadPgDrillConfig(env());
  const clientFor = armClientFactory(config, new FixedCredential({ arm: ARM_TOKEN }), { ca: arm.ca, maxRetries: 0 });
  return sweepDrillServers({ sources: config.servers, maxAgeMs: config.maxAgeMs, clientFor, logger: silentLogger, now: new Date() });
}

describe('the drill server sweeper', () => {
  it('deletes only the old drill server among untagged, source, young and foreign servers', async () => {
    const id = FakeArm.id(source);
    add('tcab-drill-untagged-0001', {}, { createdAt: new Date(Date.now() - 48 * HOUR) });
    // The source server itself, even carrying every drill tag and name prefix, is never a target.
    source.tags = drillTags(id, 48 * HOUR);
    add('tcab-drill-tcab-prod-young001', drillTags(id, HOUR));
    add('tcab-drill-tcab-prod-old00001', drillTags(id, 7 * HOUR));
    add('restore-test-0001', drillTags(id, 48 * HOUR));
    add('tcab-drill-tcab-eu-00000001', drillTags(id.replace('tcab-prod', 'tcab-eu'), 48 * HOUR));
    add('tcab-drill-tcab-prod-dropping', drillTags(id, 48 * HOUR), { state: 'Dropping' });
    add('tcab-drill-tcab-prod-undated1', { 'tcab-backup-drill': 'true', 'tcab-backup-drill-source': id }, { createdAt: undefined });
    add('tcab-drill-tcab-prod-other-rg', drillTags(id, 48 * HOUR), { resourceGroup: 'rg-elsewhere' });

    const result = await sweep();
    expect(result.errors).toEqual([]);
    expect(result.deleted.map((d) => d.server)).toEqual(['tcab-drill-tcab-prod-old00001']);
    expect(result.deleted[0]!.ageMs).toBeGreaterThan(7 * HOUR - 60_000);
    expect(arm.requestsOf('DELETE').map((r) => r.path.split('/').pop())).toEqual(['tcab-drill-tcab-prod-old00001']);
    const reasons = Object.fromEntries(result.kept.map((k) => [k.server, k.reason]));
    expect(reasons).toEqual({
      'tcab-prod': 'server "tcab-prod" is a source server',
      'tcab-drill-untagged-0001': 'server "tcab-drill-untagged-0001" is not tagged tcab-backup-drill=true',
      'tcab-drill-tcab-prod-young001': expect.stringMatching(/is 1h old, younger than TCAB_BACKUP_PG_DRILL_MAX_AGE \(6h\)/),
      'restore-test-0001': 'server "restore-test-0001" does not carry the drill name prefix "tcab-drill-"',
      'tcab-drill-tcab-eu-00000001': expect.stringMatching(/is a drill server of another source/),
      'tcab-drill-tcab-prod-dropping': 'drill server "tcab-drill-tcab-prod-dropping" is already being deleted',
      'tcab-drill-tcab-prod-undated1': expect.stringMatching(/has no creation time .* so its age is unknown/),
    });
    expect(arm.find('rg-tcab', 'tcab-prod')).toBeDefined();
    expect(arm.find('rg-tcab', 'tcab-drill-tcab-prod-old00001')?.state).toBe('Dropping');
  });

  it('runs within every drill tick, and a delete Azure refuses fails the tick with the server and the role to grant', async () => {
    add('tcab-drill-tcab-prod-old00001', drillTags(FakeArm.id(source), 7 * HOUR));
    arm.injectFailure({
      method: 'DELETE',
      path: /tcab-drill-tcab-prod-old00001$/,
      status: 403,
      code: 'AuthorizationFailed',
      message: 'No delete permission.',
    });
    const store = await folderTarget('primary');
    try {
      const log = captureLog();
      const err = await runPgDrill(loadPgDrillConfig(env()), {
        target: store.target,
        credential: new FixedCredential({ arm: ARM_TOKEN }),
        logger: log.logger,
        arm: { ca: arm.ca, maxRetries: 0 },
      }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(PgDrillError);
      const drillError = err as PgDrillError;
      expect(drillError.message).toMatch(
        /Deleting drill server "tcab-drill-tcab-prod-old00001" \(resource group "rg-tcab", 7h old\) failed: 403 AuthorizationFailed: No delete permission\. Check: the function app's managed identity \(AZURE_CLIENT_ID\) needs the Contributor role on resource group "rg-tcab"/,
      );
      // The sweep failing does not hold up the drill itself.
      expect(drillError.result.servers[0]).toMatchObject({ action: 'restore-started', newDrill: true });
      expect(arm.find('rg-tcab', 'tcab-drill-tcab-prod-old00001')?.state).toBe('Ready');
    } finally {
      await store.remove();
    }
  });
});
