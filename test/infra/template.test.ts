/**
 * infra/main.bicep, compiled and evaluated by the real Bicep compiler: what `azd up` would create,
 * checked the way an operator reviewing the deployment would.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadBackupConfig, loadTargetsConfig } from '../../src/config.js';
import { NODE_FLAGS } from '../../src/node-flags.js';
import { SETTINGS } from '../../src/settings.js';
import { loadMonitorSettings } from '../../src/jobs/settings.js';
import { loadPgCheckConfig, loadPgDrillConfig } from '../../src/postgres/config.js';
import { parseRetentionPolicy } from '../../src/retention/settings.js';
import {
  appSettings,
  BASE_PARAMS,
  compiledTemplate,
  keyVaultReference,
  ofType,
  one,
  ROOT,
  runInfraCheck,
  snapshot,
  SUBSCRIPTION,
  type ArmResource,
  type Snapshot,
} from './bicep.js';

const OPERATOR = '11111111-1111-1111-1111-111111111111';
const PG_RG = '/subscriptions/22222222-2222-2222-2222-222222222222/resourceGroups/rg-db';
const PG_SERVERS = [
  `${PG_RG}/providers/Microsoft.DBforPostgreSQL/flexibleServers/tcab-pg`,
  `${PG_RG}/providers/Microsoft.DBforPostgreSQL/flexibleServers/tcab-pg-replica`,
];
const SUBNET =
  '/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/vnet-tcab/subnets/snet-functions';
const NSG =
  '/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-vm/providers/Microsoft.Network/networkSecurityGroups/nsg-tcab-vm';
const R2_URL = 'r2://0123456789abcdef0123456789abcdef/tcab-backups';
const AGENT_KEY = 'a3f1'.repeat(16);
const R2_SECRET = 'r2-secret-value-that-must-stay-in-key-vault';
const PG_PASSWORD = 'pg-drill-password-that-must-stay-in-key-vault';

/** Built-in roles the template may grant, by id. Anything else must be this template's custom role. */
const BUILT_IN_ROLES: Record<string, string> = {
  'b7e6dc6d-f1e8-4753-8033-0f276bb0955b': 'Storage Blob Data Owner',
  'ba92f5b4-2d11-453d-a403-e96b0029c9fe': 'Storage Blob Data Contributor',
  '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1': 'Storage Blob Data Reader',
  '3913510d-42f4-4e42-8a64-420c390055eb': 'Monitoring Metrics Publisher',
  '4633458b-17de-408a-b874-0445c86b69e6': 'Key Vault Secrets User',
  'b86a8fe4-44ce-4948-aee5-eccb2c155cd7': 'Key Vault Secrets Officer',
};

const FUNCTION_NAMES = [
  'snapshotTimer',
  'snapshotHttp',
  'replicateTimer',
  'pruneTimer',
  'verifyTimer',
  'drillTimer',
  'monitorTimer',
  'statusHttp',
  'pgCheckTimer',
  'pgDrillTimer',
];

/** Settings from work in progress elsewhere that the template must set as well. */
const ALSO_REQUIRED = [
  'TCAB_BACKUP_REPLICATE_SCHEDULE',
  'TCAB_BACKUP_PRUNE_SCHEDULE',
  'TCAB_BACKUP_VERIFY_SCHEDULE',
  'TCAB_BACKUP_DRILL_SCHEDULE',
  'TCAB_BACKUP_MONITOR_SCHEDULE',
  'TCAB_BACKUP_RETENTION_BLOB',
  'TCAB_BACKUP_RETENTION_R2',
  'TCAB_BACKUP_PG_SERVERS',
  'TCAB_BACKUP_PG_CHECK_SCHEDULE',
  'TCAB_BACKUP_PG_DRILL_SCHEDULE',
  'TCAB_BACKUP_PG_DRILL_PASSWORD',
  'TCAB_BACKUP_TARGET_R2_ACCESS_KEY_ID',
  'TCAB_BACKUP_TARGET_R2_SECRET_ACCESS_KEY',
];
const SECRET_SETTINGS = [
  'TCAB_BACKUP_AGENT_KEY',
  'TCAB_BACKUP_TARGET_R2_ACCESS_KEY_ID',
  'TCAB_BACKUP_TARGET_R2_SECRET_ACCESS_KEY',
  'TCAB_BACKUP_PG_DRILL_PASSWORD',
];

const IDENTITY_PRINCIPAL = /^\[reference\('[^']*\/userAssignedIdentities\/(id-tcab-backup-[a-z0-9]+)', '[0-9-]+'\)\.principalId\]$/;

/** Function names and %SETTING% binding expressions registered in src/functions. */
async function registeredFunctions(): Promise<{ names: string[]; bindingSettings: string[] }> {
  const dir = path.join(ROOT, 'src', 'functions');
  const names: string[] = [];
  const bindingSettings: string[] = [];
  for (const file of (await readdir(dir)).filter((f) => f.endsWith('.ts'))) {
    const text = await readFile(path.join(dir, file), 'utf8');
    for (const m of text.matchAll(/app\.(?:timer|http)\(\s*'([A-Za-z0-9]+)'/g)) names.push(m[1]!);
    for (const m of text.matchAll(/'%([A-Z0-9_]+)%'/g)) bindingSettings.push(m[1]!);
  }
  return { names, bindingSettings };
}

/** The scope an assignment applies to, from its resource id (literal or still an ARM expression). */
function assignmentScope(r: ArmResource): string {
  const literal = /^(\/subscriptions\/.+)\/providers\/Microsoft\.Authorization\/roleAssignments\/[^/]+$/.exec(r.id);
  if (literal) return literal[1]!;
  const extension = /^\[extensionResourceId\('([^']+)', 'Microsoft\.Authorization\/roleAssignments'/.exec(r.id);
  if (extension) return extension[1]!;
  const group = /^\[resourceId\('([^']+)', '([^']+)', 'Microsoft\.Authorization\/roleAssignments'/.exec(r.id);
  if (group) return `/subscriptions/${group[1]}/resourceGroups/${group[2]}`;
  throw new Error(`cannot tell the scope of role assignment ${r.id}`);
}

function principalOf(r: ArmResource): string {
  const p = String(r.properties.principalId ?? '');
  if (IDENTITY_PRINCIPAL.test(p)) return 'function identity';
  if (p === OPERATOR) return 'operator';
  throw new Error(`role assignment ${r.name} names an unknown principal "${p}"`);
}

function roleOf(r: ArmResource, s: Snapshot): string {
  const id = String(r.properties.roleDefinitionId ?? '');
  const builtIn = new RegExp(`^/subscriptions/${SUBSCRIPTION}/providers/Microsoft\\.Authorization/roleDefinitions/([0-9a-f-]{36})$`).exec(
    id,
  );
  if (builtIn && BUILT_IN_ROLES[builtIn[1]!]) return BUILT_IN_ROLES[builtIn[1]!]!;
  const custom = ofType(s, 'Microsoft.Authorization/roleDefinitions').find((d) => d.id.toLowerCase() === id.toLowerCase());
  if (custom) return custom.properties.roleName;
  throw new Error(`role assignment ${r.name} grants a role outside the known list: ${id}`);
}

function grants(s: Snapshot): string[] {
  return ofType(s, 'Microsoft.Authorization/roleAssignments')
    .map((r) => `${principalOf(r)} | ${roleOf(r, s)} | ${assignmentScope(r)}`)
    .sort();
}

/** The settings with their Key Vault references resolved to stand-ins, as the running app sees them. */
function resolved(env: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, keyVaultReference(v) ? 'f'.repeat(64) : v]));
}

describe('infra: compile and lint', () => {
  it('builds and lints with zero errors and zero warnings', async () => {
    const out = await runInfraCheck();
    expect(out).toContain('0 errors, 0 warnings');
    const template = await compiledTemplate();
    expect(template.$schema).toContain('subscriptionDeploymentTemplate');
  });

  it("no storage account in the compiled template allows shared key access, but the drill share's (SMB mounts need its key)", async () => {
    const template = await compiledTemplate();
    const accounts: Array<{ module: string; allowSharedKeyAccess: unknown }> = [];
    const walk = (resources: any, module: string) => {
      for (const r of Object.values(resources ?? {}) as any[]) {
        if (r.type === 'Microsoft.Storage/storageAccounts' && !r.existing)
          accounts.push({ module, allowSharedKeyAccess: r.properties.allowSharedKeyAccess });
        if (r.type === 'Microsoft.Resources/deployments') walk(r.properties.template.resources, r.name);
      }
    };
    walk(template.resources, 'main');
    expect(accounts.sort((a, b) => a.module.localeCompare(b.module))).toEqual([
      { module: 'backup-storage', allowSharedKeyAccess: false },
      { module: 'drill-share', allowSharedKeyAccess: true },
      { module: 'runtime-storage', allowSharedKeyAccess: false },
    ]);
  });
});

describe('infra: a full deployment (R2, Postgres mode, VNet and NSG rule, operator)', () => {
  let s: Snapshot;
  let env: Record<string, string>;

  beforeAll(async () => {
    s = await snapshot('full', {
      ...BASE_PARAMS,
      principalId: OPERATOR,
      r2TargetUrl: R2_URL,
      pgServerIds: PG_SERVERS.join(','),
      pgDrillUser: 'tcab_drill',
      functionSubnetId: SUBNET,
      agentNetworkSecurityGroupId: NSG,
      agentKey: AGENT_KEY,
      r2SecretAccessKey: R2_SECRET,
      pgDrillPassword: PG_PASSWORD,
    });
    env = appSettings(s);
  });

  it("runs the jobs with the Node options of src/node-flags.ts (the function app's NODE_OPTIONS)", () => {
    expect(env.NODE_OPTIONS).toBe(NODE_FLAGS.join(' '));
  });

  it('sets every setting the app requires in Azure, and the settings of the other jobs', () => {
    const targetNames = env.TCAB_BACKUP_TARGETS!.split(',').map((t) => t.split('=')[0]!.toUpperCase());
    const required = SETTINGS.filter((d) => d.side === 'backup' && d.requiredInAzure).flatMap((d) =>
      d.name.includes('<NAME>') ? targetNames.map((t) => d.name.replace('<NAME>', t)) : [d.name],
    );
    expect(required).toContain('TCAB_BACKUP_TARGETS');
    for (const name of [...required, ...ALSO_REQUIRED]) {
      expect(env[name], `app setting ${name}`).toBeTruthy();
    }
    for (const [name, value] of Object.entries(env).filter(([k]) => k.endsWith('_SCHEDULE'))) {
      expect(value.trim().split(/\s+/), `${name} is NCRONTAB with six fields`).toHaveLength(6);
    }
  });

  it('covers every function the app registers: an alert rule for each, an app setting for each %SETTING% binding', async () => {
    const { names, bindingSettings } = await registeredFunctions();
    expect(names).toContain('snapshotTimer');
    for (const name of names) expect(FUNCTION_NAMES, `alert rule for ${name}`).toContain(name);
    for (const setting of bindingSettings) expect(env[setting], `app setting ${setting} (a trigger binding)`).toBeTruthy();
  });

  it("writes settings the app's own configuration loader accepts", () => {
    const config = loadBackupConfig(resolved(env));
    const backupAccount = ofType(s, 'Microsoft.Storage/storageAccounts').find((a) => a.name.startsWith('stbak'))!.name;
    expect(config.targets.map((t) => [t.name, t.kind])).toEqual([
      ['blob', 'azblob'],
      ['r2', 's3'],
    ]);
    const blob = config.targets[0]!;
    expect(blob.kind === 'azblob' && blob.account).toBe(backupAccount);
    expect(blob.kind === 'azblob' && blob.connectionString).toBeUndefined();
    const r2 = config.targets[1]!;
    expect(r2.kind === 's3' && r2.r2 && r2.bucket).toBe('tcab-backups');
    expect(config.agent.url.href).toBe('https://10.0.1.4:8787/');
    expect(loadTargetsConfig(resolved(env)).database).toBe('tcab');
    expect(parseRetentionPolicy(env.TCAB_BACKUP_RETENTION_BLOB!)).toMatchObject({
      last: 24,
      hourly: 24,
      daily: 14,
      weekly: 8,
      monthly: 12,
    });
    expect(parseRetentionPolicy(env.TCAB_BACKUP_RETENTION_R2!)).toMatchObject({ last: 24, hourly: 24, daily: 14, weekly: 8, monthly: 12 });
    const pgCheck = loadPgCheckConfig(resolved(env));
    expect(pgCheck.servers).toHaveLength(2);
    expect(pgCheck.policy.minRetentionDays).toBe(7);
    const pgDrill = loadPgDrillConfig(resolved(env));
    expect(pgDrill.user).toBe('tcab_drill');
    expect(pgDrill.auth.kind).toBe('password');
  });

  it("keeps secrets in Key Vault: the settings are references to this template's vault, no value is inlined", () => {
    const vault = one(s, 'Microsoft.KeyVault/vaults');
    expect(vault.properties.enableRbacAuthorization).toBe(true);
    const secretResources = ofType(s, 'Microsoft.KeyVault/vaults/secrets').map((r) => r.name.split('/')[1]);
    for (const name of SECRET_SETTINGS) {
      const ref = keyVaultReference(env[name]!);
      expect(ref, `${name} is a Key Vault reference`).not.toBeNull();
      expect(ref!.vault).toBe(vault.name);
      expect(secretResources).toContain(ref!.secret);
    }
    for (const d of SETTINGS.filter((x) => x.side === 'backup' && x.secret)) {
      for (const [name, value] of Object.entries(env)) {
        const pattern = new RegExp(`^${d.name.replace('<NAME>', '[A-Z0-9_]+')}$`);
        if (pattern.test(name)) expect(keyVaultReference(value), `${name} is a Key Vault reference`).not.toBeNull();
      }
    }
    for (const secret of [AGENT_KEY, R2_SECRET, PG_PASSWORD]) expect(s.text).not.toContain(secret);
    const site = one(s, 'Microsoft.Web/sites');
    expect(site.properties.keyVaultReferenceIdentity).toBe(one(s, 'Microsoft.ManagedIdentity/userAssignedIdentities').id);
  });

  it('runs on Flex Consumption with Node 24 and a user-assigned identity, without keys', () => {
    const plan = one(s, 'Microsoft.Web/serverfarms');
    expect(plan.sku).toMatchObject({ name: 'FC1', tier: 'FlexConsumption' });
    const site = one(s, 'Microsoft.Web/sites');
    const identity = one(s, 'Microsoft.ManagedIdentity/userAssignedIdentities');
    expect(site.identity?.type).toBe('UserAssigned');
    expect(Object.keys(site.identity?.userAssignedIdentities ?? {})).toEqual([identity.id]);
    expect(site.properties.functionAppConfig.runtime).toEqual({ name: 'node', version: '24' });
    expect(site.properties.functionAppConfig.deployment.storage.authentication).toEqual({
      type: 'UserAssignedIdentity',
      userAssignedIdentityResourceId: identity.id,
    });
    expect(site.properties.httpsOnly).toBe(true);
    expect(site.properties.virtualNetworkSubnetId).toBe(SUBNET);
    expect(site.tags?.['azd-service-name']).toBe('backup');

    const runtimeAccount = ofType(s, 'Microsoft.Storage/storageAccounts').find((a) => a.name.startsWith('stfn'))!;
    expect(env.AzureWebJobsStorage__accountName).toBe(runtimeAccount.name);
    expect(env.AzureWebJobsStorage__credential).toBe('managedidentity');
    const clientId = `[reference('${identity.id}', '2024-11-30').clientId]`;
    expect(env.AzureWebJobsStorage__clientId).toBe(clientId);
    expect(env.AZURE_CLIENT_ID).toBe(clientId);
    expect(env.APPLICATIONINSIGHTS_AUTHENTICATION_STRING).toBe(
      `[format('ClientId={0};Authorization=AAD', reference('${identity.id}', '2024-11-30').clientId)]`,
    );
    expect(env.AzureWebJobsStorage).toBeUndefined();
    expect(Object.keys(env)).not.toContain('FUNCTIONS_WORKER_RUNTIME');
    expect(s.text).not.toMatch(/AccountKey=/);
    // The one key in the template: the drill share's, handed to the mount and nowhere else (not to a setting or an output).
    expect(s.text.match(/listKeys\(/g)).toHaveLength(1);
    const mount = one(s, 'Microsoft.Web/sites/config', '/azurestorageaccounts');
    expect(mount.properties.drill.accessKey).toMatch(/^\[listKeys\(/);
    expect(JSON.stringify(env)).not.toMatch(/listKeys/);

    const insights = one(s, 'Microsoft.Insights/components');
    expect(insights.properties.DisableLocalAuth).toBe(true);
    expect(insights.properties.WorkspaceResourceId).toBe(one(s, 'Microsoft.OperationalInsights/workspaces').id);
  });

  it("no storage account allows shared keys (but the drill share's), public blobs, old TLS or plain HTTP", () => {
    const accounts = ofType(s, 'Microsoft.Storage/storageAccounts');
    expect(accounts.map((a) => a.name.replace(/[a-z0-9]{13}$/, '')).sort()).toEqual(['stbak', 'stdrill', 'stfn']);
    for (const a of accounts) {
      expect(a.properties, a.name).toMatchObject({
        allowSharedKeyAccess: a.name.startsWith('stdrill'),
        allowBlobPublicAccess: false,
        minimumTlsVersion: 'TLS1_2',
        supportsHttpsTrafficOnly: true,
      });
    }
  });

  it("mounts the drill share at the drill's work folder: an account of its own holding one file share, no blob, no role for anyone", () => {
    const drill = ofType(s, 'Microsoft.Storage/storageAccounts').find((a) => a.name.startsWith('stdrill'))!;
    const share = one(s, 'Microsoft.Storage/storageAccounts/fileServices/shares');
    expect(share.name).toBe(`${drill.name}/default/drill`);
    expect(share.properties).toMatchObject({ shareQuota: 8, enabledProtocols: 'SMB' });
    expect(ofType(s, 'Microsoft.Storage/storageAccounts/blobServices/containers').filter((c) => c.name.startsWith(drill.name))).toEqual([]);
    expect(ofType(s, 'Microsoft.Authorization/roleAssignments').filter((r) => String(r.id).includes(drill.name))).toEqual([]);
    const mount = one(s, 'Microsoft.Web/sites/config', '/azurestorageaccounts');
    expect(mount.properties.drill).toMatchObject({
      type: 'AzureFiles',
      protocol: 'Smb',
      accountName: drill.name,
      shareName: 'drill',
      mountPath: '/mounts/drill',
    });
    expect(env.TCAB_BACKUP_DRILL_WORK_DIR).toBe('/mounts/drill');
  });

  it('protects the backup account: versioning, soft delete, and a lifecycle backstop beyond retention', () => {
    const backup = ofType(s, 'Microsoft.Storage/storageAccounts').find((a) => a.name.startsWith('stbak'))!;
    const service = ofType(s, 'Microsoft.Storage/storageAccounts/blobServices').find((b) => b.name === `${backup.name}/default`)!;
    expect(service.properties.isVersioningEnabled).toBe(true);
    expect(service.properties.deleteRetentionPolicy).toMatchObject({ enabled: true, days: 7 });
    expect(service.properties.containerDeleteRetentionPolicy).toMatchObject({ enabled: true, days: 7 });
    expect(backup.properties.immutableStorageWithVersioning ?? null).toBeNull();

    const rules = one(s, 'Microsoft.Storage/storageAccounts/managementPolicies').properties.policy.rules;
    const snapshots = rules.find((r: any) => r.name === 'snapshots-backstop');
    expect(snapshots.definition.filters.prefixMatch).toEqual(['tcab/snapshots/']);
    expect(snapshots.definition.actions.baseBlob.tierToCool.daysAfterModificationGreaterThan).toBe(30);
    // monthly=12 reaches back at most 12 x 31 days.
    expect(env.TCAB_BACKUP_RETENTION_BLOB).toBe('daily=14,hourly=24,last=24,monthly=12,weekly=8');
    expect(snapshots.definition.actions.baseBlob.delete.daysAfterModificationGreaterThan).toBeGreaterThan(12 * 31);
    const versions = rules.find((r: any) => r.name === 'previous-versions');
    expect(versions.definition.actions.version.delete.daysAfterCreationGreaterThan).toBe(7);
  });

  it('grants exactly the known roles, each to a known principal, on the narrowest scope', () => {
    const rg = `/subscriptions/${SUBSCRIPTION}/resourceGroups/rg-prod`;
    const name = (type: string, prefix: string) => ofType(s, type).find((r) => r.name.startsWith(prefix))!.name;
    const backup = `${rg}/providers/Microsoft.Storage/storageAccounts/${name('Microsoft.Storage/storageAccounts', 'stbak')}`;
    const runtime = `${rg}/providers/Microsoft.Storage/storageAccounts/${name('Microsoft.Storage/storageAccounts', 'stfn')}`;
    const vault = one(s, 'Microsoft.KeyVault/vaults').id;
    const insights = one(s, 'Microsoft.Insights/components').id;
    const customRole = one(s, 'Microsoft.Authorization/roleDefinitions').properties.roleName;
    expect(grants(s)).toEqual(
      [
        `function identity | Key Vault Secrets User | ${vault}`,
        `function identity | Monitoring Metrics Publisher | ${insights}`,
        `function identity | Storage Blob Data Contributor | ${backup}`,
        `function identity | Storage Blob Data Owner | ${runtime}`,
        `function identity | ${customRole} | ${PG_RG}`,
        `operator | Key Vault Secrets Officer | ${vault}`,
        `operator | Storage Blob Data Reader | ${backup}`,
      ].sort(),
    );
  });

  it('Postgres mode: one least-privilege role per resource group and a delete lock on every source server', () => {
    const roles = ofType(s, 'Microsoft.Authorization/roleDefinitions');
    expect(roles).toHaveLength(1);
    const role = roles[0]!.properties;
    expect(role.assignableScopes).toEqual([PG_RG]);
    expect([...role.permissions[0].actions].sort()).toEqual([
      'Microsoft.DBforPostgreSQL/flexibleServers/backups/read',
      'Microsoft.DBforPostgreSQL/flexibleServers/delete',
      'Microsoft.DBforPostgreSQL/flexibleServers/read',
      'Microsoft.DBforPostgreSQL/flexibleServers/write',
      'Microsoft.DBforPostgreSQL/locations/azureAsyncOperation/read',
      'Microsoft.DBforPostgreSQL/locations/operationResults/read',
    ]);
    expect(role.permissions[0].dataActions ?? []).toEqual([]);
    const locks = ofType(s, 'Microsoft.Authorization/locks');
    expect(locks.map((l) => l.id.split('/providers/Microsoft.Authorization/locks/')[0]).sort()).toEqual([...PG_SERVERS].sort());
    for (const l of locks) expect(l.properties.level).toBe('CanNotDelete');
    expect(env.TCAB_BACKUP_PG_SERVERS).toBe(PG_SERVERS.join(','));
  });

  it('alerts on failed invocations of every function and on missing snapshots, drills and monitor runs', () => {
    const group = one(s, 'Microsoft.Insights/actionGroups');
    expect(group.properties.emailReceivers.map((e: any) => e.emailAddress)).toEqual(['ops@example.org']);
    const rules = ofType(s, 'Microsoft.Insights/scheduledQueryRules');
    const workspace = one(s, 'Microsoft.OperationalInsights/workspaces').id;
    for (const rule of rules) {
      expect(rule.properties.enabled, rule.name).toBe(true);
      expect(rule.properties.scopes).toEqual([workspace]);
      expect(rule.properties.actions.actionGroups).toEqual([group.id]);
    }
    const query = (r: ArmResource) => r.properties.criteria.allOf[0].query as string;
    for (const fn of FUNCTION_NAMES) {
      const failed = rules.filter((r) => query(r).includes(`Name == "${fn}"`) && query(r).includes('Success == false'));
      expect(failed, `failed-invocation rule for ${fn}`).toHaveLength(1);
      expect(failed[0]!.properties.criteria.allOf[0]).toMatchObject({ timeAggregation: 'Count', operator: 'GreaterThan', threshold: 0 });
    }
    const absence = (event: string) =>
      rules.filter((r) => query(r).includes(`tostring(e.event) == "${event}"`) && r.properties.criteria.allOf[0].operator === 'LessThan');
    for (const event of ['snapshot.completed', 'drill.completed', 'verify.completed', 'monitor.status', 'pg.check.completed']) {
      expect(absence(event), `absence rule for ${event}`).toHaveLength(1);
      expect(absence(event)[0]!.properties.criteria.allOf[0].threshold).toBe(1);
    }
    const snapshotRule = absence('snapshot.completed')[0]!;
    expect(snapshotRule.properties.overrideQueryTimeRange).toBe('PT30M');
    expect(query(snapshotRule)).toContain('ago(30m)');
    const critical = rules.filter((r) => query(r).includes('tostring(e.state) == "critical"'));
    expect(critical).toHaveLength(1);
    expect(critical[0]!.properties.criteria.allOf[0]).toMatchObject({ operator: 'GreaterThan', threshold: 0 });
  });

  it("admits only the function subnet to the agent port on the VM's NSG", () => {
    const rules = ofType(s, 'Microsoft.Network/networkSecurityGroups/securityRules');
    expect(rules.map((r) => r.id.split('/securityRules/')[0])).toEqual([NSG, NSG]);
    const allow = rules.find((r) => r.properties.access === 'Allow')!.properties;
    const deny = rules.find((r) => r.properties.access === 'Deny')!.properties;
    expect(allow).toMatchObject({ direction: 'Inbound', protocol: 'Tcp', destinationPortRange: '8787', priority: 300 });
    expect(allow.sourceAddressPrefixes).toContain(`reference('${SUBNET}'`);
    expect(deny).toMatchObject({ direction: 'Inbound', sourceAddressPrefix: '*', destinationPortRange: '8787', priority: 301 });
  });
});

describe('infra: the defaults (Azure target only, Postgres mode off, no operator, no NSG rule)', () => {
  let s: Snapshot;
  let env: Record<string, string>;
  beforeAll(async () => {
    s = await snapshot('defaults', BASE_PARAMS);
    env = appSettings(s);
  });

  it('backs up to the Blob target alone and leaves Postgres mode off', () => {
    expect(env.TCAB_BACKUP_TARGETS).toMatch(/^blob=azblob:\/\/stbak[a-z0-9]+\/tcab$/);
    expect(Object.keys(env).filter((k) => k.includes('_R2'))).toEqual([]);
    expect(env.TCAB_BACKUP_PG_SERVERS).toBe('');
    expect(Object.keys(env).filter((k) => k.startsWith('TCAB_BACKUP_PG_') && !/_SCHEDULE$|_SERVERS$/.test(k))).toEqual([]);
    expect(loadBackupConfig(resolved(env)).targets.map((t) => t.name)).toEqual(['blob']);
  });

  it('mounts the drill share by default, and not with drillShare=false (drills that do not fit then stream)', async () => {
    expect(env.TCAB_BACKUP_DRILL_WORK_DIR).toBe('/mounts/drill');
    expect(ofType(s, 'Microsoft.Web/sites/config').map((c) => c.name)).toContainEqual(expect.stringMatching(/\/azurestorageaccounts$/));
    const off = await snapshot('no-drill-share', { ...BASE_PARAMS, drillShare: false });
    expect(
      ofType(off, 'Microsoft.Storage/storageAccounts')
        .map((a) => a.name.replace(/[a-z0-9]{13}$/, ''))
        .sort(),
    ).toEqual(['stbak', 'stfn']);
    expect(ofType(off, 'Microsoft.Web/sites/config').filter((c) => c.name.endsWith('/azurestorageaccounts'))).toEqual([]);
    expect(appSettings(off).TCAB_BACKUP_DRILL_WORK_DIR).toBeUndefined();
    expect(off.text).not.toMatch(/listKeys\(/);
  }, 180_000);

  it('creates no custom role, lock, NSG rule or operator grant', () => {
    expect(ofType(s, 'Microsoft.Authorization/roleDefinitions')).toEqual([]);
    expect(ofType(s, 'Microsoft.Authorization/locks')).toEqual([]);
    expect(ofType(s, 'Microsoft.Network/networkSecurityGroups/securityRules')).toEqual([]);
    expect(grants(s).every((g) => g.startsWith('function identity |'))).toBe(true);
    expect(grants(s)).toHaveLength(4);
  });

  it("sets the monitor's snapshot ages and the no-snapshot alert from the schedule's interval (30m, 1h, 30 minutes every 5 minutes; 2h, 4h, 120 minutes hourly)", async () => {
    const ages = (e: Record<string, string>) => loadMonitorSettings(resolved(e)).thresholds.snapshot;
    const alert = (t: Snapshot) =>
      ofType(t, 'Microsoft.Insights/scheduledQueryRules').find((r) =>
        (r.properties.criteria.allOf[0].query as string).includes('tostring(e.event) == "snapshot.completed"'),
      )!;
    expect([env.TCAB_BACKUP_SNAPSHOT_WARN_AGE, env.TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE]).toEqual(['30m', '60m']);
    expect(ages(env)).toEqual({ warnMs: 30 * 60_000, criticalMs: 60 * 60_000 });
    expect(alert(s).properties.overrideQueryTimeRange).toBe('PT30M');
    const hourly = await snapshot('hourly', { ...BASE_PARAMS, snapshotSchedule: '0 0 * * * *', snapshotIntervalMinutes: 60 });
    const hourlyEnv = appSettings(hourly);
    expect([hourlyEnv.TCAB_BACKUP_SNAPSHOT_WARN_AGE, hourlyEnv.TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE]).toEqual(['120m', '240m']);
    expect(ages(hourlyEnv)).toEqual({ warnMs: 2 * 3_600_000, criticalMs: 4 * 3_600_000 });
    expect(alert(hourly).properties.overrideQueryTimeRange).toBe('PT120M');
    expect(alert(hourly).properties.displayName ?? alert(hourly).properties.description).toContain('120 minutes');
  }, 180_000);

  it("still watches every function, but not the Postgres jobs' absence", () => {
    const queries = ofType(s, 'Microsoft.Insights/scheduledQueryRules').map((r) => r.properties.criteria.allOf[0].query as string);
    expect(queries.filter((q) => q.startsWith('AppRequests'))).toHaveLength(FUNCTION_NAMES.length);
    expect(queries.filter((q) => q.includes('pg.check.completed') || q.includes('pg.drill.completed'))).toEqual([]);
  });
});
