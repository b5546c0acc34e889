import { describe, expect, it } from 'vitest';
import { SETTINGS } from '../../src/settings.js';
import { ConfigError } from '../../src/errors.js';
import { DEFAULT_VALIDATION_SQL, isPgConfigured, loadPgCheckConfig, loadPgDrillConfig } from '../../src/postgres/config.js';

const SUB = '0b1f6471-1bf0-4dda-aec3-cb9272f09590';
const ID = `/subscriptions/${SUB}/resourceGroups/rg-tcab/providers/Microsoft.DBforPostgreSQL/flexibleServers/tcab-prod`;
const drillEnv = {
  TCAB_BACKUP_PG_SERVERS: ID,
  TCAB_BACKUP_PG_DRILL_USER: 'tcab_drill',
  TCAB_BACKUP_PG_DRILL_PASSWORD: 'S3cret-drill-password!',
};

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('pg check configuration', () => {
  it('takes the documented defaults', () => {
    const c = loadPgCheckConfig({ TCAB_BACKUP_PG_SERVERS: ID });
    expect(c.servers).toEqual([{ id: ID, subscriptionId: SUB, resourceGroup: 'rg-tcab', name: 'tcab-prod' }]);
    expect(c.armEndpoint).toBe('https://management.azure.com');
    expect(c.policy).toEqual({ minRetentionDays: 7, requireGeoRedundant: false, maxBackupAgeMs: 26 * 3_600_000 });
    expect(c.enforce).toBe(false);
    expect(c.checkSchedule.split(' ')).toHaveLength(6);
  });

  it('reads several servers and the policy', () => {
    const other = ID.replace('tcab-prod', 'tcab-eu').replace('rg-tcab', 'rg-other');
    const c = loadPgCheckConfig({
      TCAB_BACKUP_PG_SERVERS: ` ${ID} , ${other} `,
      TCAB_BACKUP_PG_MIN_RETENTION_DAYS: '14',
      TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT: 'true',
      TCAB_BACKUP_PG_MAX_BACKUP_AGE: '30h',
      TCAB_BACKUP_PG_ENFORCE: 'true',
      TCAB_BACKUP_ARM_ENDPOINT: 'https://127.0.0.1:8443/',
    });
    expect(c.servers.map((s) => s.name)).toEqual(['tcab-prod', 'tcab-eu']);
    expect(c.policy).toEqual({ minRetentionDays: 14, requireGeoRedundant: true, maxBackupAgeMs: 30 * 3_600_000 });
    expect(c.enforce).toBe(true);
    expect(c.armEndpoint).toBe('https://127.0.0.1:8443');
  });

  it('names each bad variable and says what it expects, all at once', () => {
    const problems = problemsOf(() =>
      loadPgCheckConfig({
        TCAB_BACKUP_PG_SERVERS: `${ID},/subscriptions/not-a-uuid/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/x1,/subscriptions/${SUB}/resourceGroups/rg/providers/Microsoft.Sql/servers/db`,
        TCAB_BACKUP_PG_MIN_RETENTION_DAYS: '3',
        TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT: 'yes',
        TCAB_BACKUP_PG_MAX_BACKUP_AGE: 'a day',
        TCAB_BACKUP_PG_CHECK_SCHEDULE: '0 * * * *',
        TCAB_BACKUP_ARM_ENDPOINT: 'http://management.example.com',
      }),
    );
    const text = problems.join('\n');
    expect(text).toMatch(/TCAB_BACKUP_PG_SERVERS: "not-a-uuid" in .* is not a subscription id/);
    expect(text).toMatch(/TCAB_BACKUP_PG_SERVERS: ".*Microsoft.Sql\/servers\/db" is not a flexible server resource id/);
    expect(text).toMatch(/TCAB_BACKUP_PG_MIN_RETENTION_DAYS: "3" is invalid: Azure keeps 7 to 35 days/);
    expect(text).toMatch(/TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT: "yes" is invalid: expected true or false/);
    expect(text).toMatch(/TCAB_BACKUP_PG_MAX_BACKUP_AGE: "a day" is invalid/);
    expect(text).toMatch(/TCAB_BACKUP_PG_CHECK_SCHEDULE: .* six fields/);
    expect(text).toMatch(/TCAB_BACKUP_ARM_ENDPOINT: .* https/);
    expect(problems).toHaveLength(7);
  });

  it('refuses a missing server list, a server named twice and an upper-case server name', () => {
    expect(problemsOf(() => loadPgCheckConfig({}))[0]).toMatch(
      /^TCAB_BACKUP_PG_SERVERS: is not set: expected comma-separated resource ids/,
    );
    expect(problemsOf(() => loadPgCheckConfig({ TCAB_BACKUP_PG_SERVERS: `${ID},${ID.replace('rg-tcab', 'RG-TCAB')}` }))[0]).toMatch(
      /server "tcab-prod" is listed twice/,
    );
    expect(problemsOf(() => loadPgCheckConfig({ TCAB_BACKUP_PG_SERVERS: ID.replace('tcab-prod', 'Tcab-Prod') }))[0]).toMatch(
      /"Tcab-Prod" in .* is not a flexible server name/,
    );
    expect(isPgConfigured({})).toBe(false);
    expect(isPgConfigured({ TCAB_BACKUP_PG_SERVERS: ID })).toBe(true);
  });
});

describe('pg drill configuration', () => {
  it('takes the documented defaults', () => {
    const c = loadPgDrillConfig(drillEnv);
    expect(c).toMatchObject({
      intervalMs: 7 * 86_400_000,
      restoreLagMs: 15 * 60_000,
      validationSql: DEFAULT_VALIDATION_SQL,
      maxDataAgeMs: 3 * 86_400_000,
      database: 'tcab',
      user: 'tcab_drill',
      auth: { kind: 'password', password: 'S3cret-drill-password!' },
      port: 5432,
      tls: 'verify',
      maxAgeMs: 6 * 3_600_000,
      timeoutMs: 2 * 3_600_000,
    });
    expect(c.drillSchedule.split(' ')).toHaveLength(6);
  });

  it('signs in with Entra without a password, and refuses a password kept alongside', () => {
    const c = loadPgDrillConfig({
      TCAB_BACKUP_PG_SERVERS: ID,
      TCAB_BACKUP_PG_DRILL_USER: 'tcab-backup-identity',
      TCAB_BACKUP_PG_DRILL_AUTH: 'entra',
    });
    expect(c.auth).toEqual({ kind: 'entra' });
    const problems = problemsOf(() => loadPgDrillConfig({ ...drillEnv, TCAB_BACKUP_PG_DRILL_AUTH: 'entra' }));
    expect(problems[0]).toMatch(/^TCAB_BACKUP_PG_DRILL_PASSWORD: is set, but TCAB_BACKUP_PG_DRILL_AUTH is entra/);
    expect(problems.join('\n')).not.toContain('S3cret-drill-password!');
  });

  it('requires the user and the password, and never prints the password', () => {
    const problems = problemsOf(() => loadPgDrillConfig({ TCAB_BACKUP_PG_SERVERS: ID, TCAB_BACKUP_PG_DRILL_AUTH: 'kerberos' }));
    expect(problems.join('\n')).toMatch(/TCAB_BACKUP_PG_DRILL_USER: is not set/);
    expect(problems.join('\n')).toMatch(/TCAB_BACKUP_PG_DRILL_AUTH: "kerberos" is invalid: expected password or entra/);
    expect(problemsOf(() => loadPgDrillConfig({ TCAB_BACKUP_PG_SERVERS: ID, TCAB_BACKUP_PG_DRILL_USER: 'u' }))[0]).toMatch(
      /^TCAB_BACKUP_PG_DRILL_PASSWORD: is not set/,
    );
    const bad = problemsOf(() => loadPgDrillConfig({ ...drillEnv, TCAB_BACKUP_PG_DRILL_PORT: '99999', TCAB_BACKUP_PG_DRILL_TLS: 'off' }));
    expect(bad).toEqual([
      'TCAB_BACKUP_PG_DRILL_PORT: "99999" is invalid: expected a port number',
      'TCAB_BACKUP_PG_DRILL_TLS: "off" is invalid: expected verify or disable',
    ]);
  });

  it('refuses a sweeper age that could delete a drill server while its drill still runs', () => {
    const problems = problemsOf(() =>
      loadPgDrillConfig({ ...drillEnv, TCAB_BACKUP_PG_DRILL_MAX_AGE: '2h', TCAB_BACKUP_PG_DRILL_TIMEOUT: '2h' }),
    );
    expect(problems).toEqual([
      expect.stringMatching(
        /^TCAB_BACKUP_PG_DRILL_MAX_AGE: 2h is too short: it must exceed TCAB_BACKUP_PG_DRILL_TIMEOUT \(2h\) by at least 1h/,
      ),
    ]);
    expect(() => loadPgDrillConfig({ ...drillEnv, TCAB_BACKUP_PG_DRILL_MAX_AGE: '3h', TCAB_BACKUP_PG_DRILL_TIMEOUT: '2h' })).not.toThrow();
  });

  it('documents every Postgres setting in the catalogue', () => {
    const names = SETTINGS.map((s) => s.name);
    for (const name of [
      'TCAB_BACKUP_PG_SERVERS',
      'TCAB_BACKUP_ARM_ENDPOINT',
      'TCAB_BACKUP_PG_MIN_RETENTION_DAYS',
      'TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT',
      'TCAB_BACKUP_PG_MAX_BACKUP_AGE',
      'TCAB_BACKUP_PG_ENFORCE',
      'TCAB_BACKUP_PG_CHECK_SCHEDULE',
      'TCAB_BACKUP_PG_DRILL_SCHEDULE',
      'TCAB_BACKUP_PG_DRILL_INTERVAL',
      'TCAB_BACKUP_PG_RESTORE_LAG',
      'TCAB_BACKUP_PG_VALIDATION_SQL',
      'TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE',
      'TCAB_BACKUP_PG_DRILL_DATABASE',
      'TCAB_BACKUP_PG_DRILL_USER',
      'TCAB_BACKUP_PG_DRILL_PASSWORD',
      'TCAB_BACKUP_PG_DRILL_AUTH',
      'TCAB_BACKUP_PG_DRILL_PORT',
      'TCAB_BACKUP_PG_DRILL_TLS',
      'TCAB_BACKUP_PG_DRILL_MAX_AGE',
      'TCAB_BACKUP_PG_DRILL_TIMEOUT',
    ]) {
      expect(names, name).toContain(name);
    }
    expect(SETTINGS.find((s) => s.name === 'TCAB_BACKUP_PG_DRILL_PASSWORD')?.secret).toBe(true);
  });
});
