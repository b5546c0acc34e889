/**
 * Parameters the template refuses before anything is created, each with a message that names the
 * parameter and what to do, and the parameters azd passes in.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPgDrillConfig } from '../../src/postgres/config.js';
import { appSettings, BASE_PARAMS, compiledTemplate, INFRA, one, ROOT, snapshot } from './bicep.js';

const lifecycleDelete = async (name: string, params: Record<string, unknown>) => {
  const s = await snapshot(name, { ...BASE_PARAMS, ...params });
  const rules = one(s, 'Microsoft.Storage/storageAccounts/managementPolicies').properties.policy.rules;
  return rules.find((r: any) => r.name === 'snapshots-backstop')?.definition.actions.baseBlob.delete?.daysAfterModificationGreaterThan as
    | number
    | undefined;
};

describe('infra: the lifecycle backstop never deletes what retention keeps', () => {
  it('refuses a delete age at the retention horizon and accepts one a day beyond it', async () => {
    // monthly=12 reaches back 12 x 31 = 372 days.
    await expect(lifecycleDelete('delete-at-horizon', { deleteAfterDays: 372 })).rejects.toThrow(
      /deleteAfterDays \(372\) must be greater than the longest Blob retention, 372 days/,
    );
    expect(await lifecycleDelete('delete-past-horizon', { deleteAfterDays: 373 })).toBe(373);
  });

  // Three compilations in one test: on a loaded 2-core machine each takes up to 40 s.
  it('counts every rule: weekly=60 reaches 420 days, last=2000 hourly snapshots 84 days', { timeout: 180_000 }, async () => {
    await expect(lifecycleDelete('weekly-horizon', { retentionBlob: { weekly: 60 }, deleteAfterDays: 400 })).rejects.toThrow(/420 days/);
    await expect(
      lifecycleDelete('last-horizon', { retentionBlob: { last: 2000 }, snapshotIntervalMinutes: 60, deleteAfterDays: 84 }),
    ).rejects.toThrow(/84 days/);
    expect(await lifecycleDelete('last-ok', { retentionBlob: { last: 2000 }, snapshotIntervalMinutes: 60, deleteAfterDays: 85 })).toBe(85);
  });

  it('refuses lifecycle deletion under an unlimited (-1) rule, and drops the delete action when it is off', async () => {
    await expect(lifecycleDelete('unlimited', { retentionBlob: { daily: 7, yearly: -1 } })).rejects.toThrow(
      /retentionBlob keeps some period without limit \(-1\).*Set deleteAfterDays to 0/,
    );
    expect(await lifecycleDelete('unlimited-no-delete', { retentionBlob: { daily: 7, yearly: -1 }, deleteAfterDays: 0 })).toBeUndefined();
  });

  it('refuses tiering to Cool at or after the delete age', async () => {
    await expect(lifecycleDelete('cool-after-delete', { coolAfterDays: 400 })).rejects.toThrow(
      /coolAfterDays \(400\) must be smaller than deleteAfterDays \(400\)/,
    );
  });
});

describe('infra: refused parameters', () => {
  it('an agent URL without TLS', async () => {
    await expect(snapshot('plain-agent', { ...BASE_PARAMS, agentUrl: 'http://10.0.1.4:8787' })).rejects.toThrow(
      /agentUrl "http:\/\/10\.0\.1\.4:8787" must be an https:\/\/ URL/,
    );
  });

  it('an R2 target that is not an r2:// or s3:// URL', async () => {
    await expect(snapshot('bad-r2', { ...BASE_PARAMS, r2TargetUrl: 'https://example.r2.cloudflarestorage.com/tcab' })).rejects.toThrow(
      /r2TargetUrl "https:\/\/example\.r2\.cloudflarestorage\.com\/tcab" must look like r2:\/\//,
    );
  });

  it('a Postgres server id that is not a flexible server, and Postgres mode without a drill user', async () => {
    const vm =
      '/subscriptions/22222222-2222-2222-2222-222222222222/resourceGroups/rg-db/providers/Microsoft.Compute/virtualMachines/tcab-vm';
    await expect(snapshot('bad-pg-id', { ...BASE_PARAMS, pgServerIds: vm, pgDrillUser: 'tcab_drill' })).rejects.toThrow(
      /pgServerIds: ".*virtualMachines\/tcab-vm" is not the ARM id of a PostgreSQL flexible server/,
    );
    const server =
      '/subscriptions/22222222-2222-2222-2222-222222222222/resourceGroups/rg-db/providers/Microsoft.DBforPostgreSQL/flexibleServers/tcab-pg';
    await expect(snapshot('pg-no-user', { ...BASE_PARAMS, pgServerIds: server })).rejects.toThrow(/pgDrillUser is empty/);
  });

  it('an NSG rule without a function subnet to admit', async () => {
    const nsg =
      '/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-vm/providers/Microsoft.Network/networkSecurityGroups/nsg-tcab-vm';
    await expect(snapshot('nsg-no-subnet', { ...BASE_PARAMS, agentNetworkSecurityGroupId: nsg })).rejects.toThrow(
      /agentNetworkSecurityGroupId is set but functionSubnetId is empty/,
    );
  });

  it('a retention count below -1', async () => {
    await expect(snapshot('bad-retention', { ...BASE_PARAMS, retentionBlob: { daily: -2 } })).rejects.toThrow(
      /minimum allowable value is -1/,
    );
  });
});

describe('infra: optional protections', () => {
  it('version-level WORM is off by default and turns on, unlocked, with immutabilityDays', async () => {
    const s = await snapshot('worm', { ...BASE_PARAMS, immutabilityDays: 30 });
    const backup = s.resources.find((r) => r.type === 'Microsoft.Storage/storageAccounts' && r.name.startsWith('stbak'))!;
    expect(backup.properties.immutableStorageWithVersioning).toEqual({
      enabled: true,
      immutabilityPolicy: { immutabilityPeriodSinceCreationInDays: 30, state: 'Unlocked', allowProtectedAppendWrites: false },
    });
  });

  it('entra sign-in for Postgres drills replaces the password reference', async () => {
    const server =
      '/subscriptions/22222222-2222-2222-2222-222222222222/resourceGroups/rg-db/providers/Microsoft.DBforPostgreSQL/flexibleServers/tcab-pg';
    const env = appSettings(
      await snapshot('pg-entra', { ...BASE_PARAMS, pgServerIds: server, pgDrillUser: 'func-tcab-backup', pgDrillAuth: 'entra' }),
    );
    expect(env.TCAB_BACKUP_PG_DRILL_AUTH).toBe('entra');
    expect(env.TCAB_BACKUP_PG_DRILL_PASSWORD).toBeUndefined();
    expect(env.TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT).toBe('false');
    expect(loadPgDrillConfig(Object.fromEntries(Object.entries(env).filter(([, v]) => !v.startsWith('['))))).toMatchObject({
      auth: { kind: 'entra' },
      user: 'func-tcab-backup',
    });
  });

  it('extra app settings are applied last', async () => {
    const env = appSettings(
      await snapshot('extra', {
        ...BASE_PARAMS,
        extraAppSettings: { TCAB_BACKUP_AGENT_TIMEOUT: '20m', TCAB_BACKUP_SNAPSHOT_SCHEDULE: '0 30 * * * *' },
      }),
    );
    expect(env.TCAB_BACKUP_AGENT_TIMEOUT).toBe('20m');
    expect(env.TCAB_BACKUP_SNAPSHOT_SCHEDULE).toBe('0 30 * * * *');
  });
});

describe('infra: azd wiring', () => {
  it('main.parameters.json maps only parameters the template has, from azd variables, and every required one', async () => {
    const template = await compiledTemplate();
    const declared = template.parameters as Record<string, { defaultValue?: unknown }>;
    const file = JSON.parse(await readFile(path.join(INFRA, 'main.parameters.json'), 'utf8'));
    const mapped = file.parameters as Record<string, { value: unknown }>;
    for (const [name, { value }] of Object.entries(mapped)) {
      expect(Object.keys(declared), `${name} is a template parameter`).toContain(name);
      expect(value, `${name} comes from an azd variable, never a literal`).toMatch(/^\$\{[A-Z][A-Z0-9_]*\}$/);
    }
    const required = Object.entries(declared)
      .filter(([, p]) => !('defaultValue' in p))
      .map(([n]) => n);
    expect(required.sort()).toEqual(['agentUrl', 'alertEmails', 'environmentName', 'location']);
    for (const name of required) expect(Object.keys(mapped)).toContain(name);
  });

  it('azure.yaml deploys one TypeScript function service to the app the template tags for it', async () => {
    const yaml = await readFile(path.join(ROOT, 'azure.yaml'), 'utf8');
    const service = /^services:\n {2}([a-z0-9-]+):\n((?: {4}.*\n)+)/m.exec(yaml);
    expect(service).not.toBeNull();
    expect(service![2]).toMatch(/^ {4}host: function$/m);
    expect(service![2]).toMatch(/^ {4}language: (ts|js)$/m);
    expect(service![2]).toMatch(/^ {4}project: \.$/m);
    expect(yaml).toMatch(/^ {2}path: infra$/m);
    const s = await snapshot('azd-tag', BASE_PARAMS);
    expect(one(s, 'Microsoft.Web/sites').tags?.['azd-service-name']).toBe(service![1]);
  });
});

describe('infra/r2: the bucket rules the deployment guide applies', () => {
  it('aborts incomplete uploads after a day and deletes snapshots no sooner than the Azure backstop', async () => {
    const lifecycle = JSON.parse(await readFile(path.join(INFRA, 'r2', 'lifecycle.json'), 'utf8'));
    const rules = lifecycle.rules as any[];
    const abort = rules.filter((r) => r.abortMultipartUploadsTransition);
    expect(abort).toHaveLength(1);
    expect(abort[0]).toMatchObject({
      enabled: true,
      conditions: { prefix: '' },
      abortMultipartUploadsTransition: { condition: { type: 'Age', maxAge: 86400 } },
    });
    const remove = rules.filter((r) => r.deleteObjectsTransition);
    expect(remove).toHaveLength(1);
    expect(remove[0].conditions.prefix).toBe('snapshots/');
    // The template refuses a Blob backstop within retention; R2 gets the same age and, by default, the same retention.
    const parameters = (await compiledTemplate()).parameters;
    expect(remove[0].deleteObjectsTransition.condition).toEqual({ type: 'Age', maxAge: parameters.deleteAfterDays.defaultValue * 86400 });
    expect(parameters.retentionR2.defaultValue).toEqual(parameters.retentionBlob.defaultValue);
  });

  it('the bucket lock example locks snapshots (only) for whole days', async () => {
    const lock = JSON.parse(await readFile(path.join(INFRA, 'r2', 'bucket-lock.example.json'), 'utf8'));
    expect(lock.rules).toHaveLength(1);
    expect(lock.rules[0]).toMatchObject({ enabled: true, prefix: 'snapshots/', condition: { type: 'Age' } });
    expect(lock.rules[0].condition.maxAgeSeconds % 86400).toBe(0);
  });
});
