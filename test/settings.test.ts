import { readdir, readFile } from 'node:fs/promises';
import { expect, it } from 'vitest';
import { loadAgentConfig } from '../src/agent/config.js';
import { loadAgentClientConfig, loadBackupConfig, loadJobTimeoutMs, loadSnapshotFormat, loadTargetsConfig } from '../src/config.js';
import { ConfigError } from '../src/errors.js';
import { loadChunkGrace, loadDrillSettings, loadMonitorSettings, loadVerifySettings } from '../src/jobs/settings.js';
import { isPgConfigured, loadPgCheckConfig, loadPgDrillConfig } from '../src/postgres/config.js';
import { loadRetentionConfig } from '../src/retention/settings.js';
import { SETTINGS } from '../src/settings.js';
import type { Env } from '../src/util/settings.js';

const SECRET = 'x'.repeat(40);
const GUID = '72f988bf-86f1-41af-91ab-2d7cd011db47';
/** A target named zz: its per-target variables are TCAB_BACKUP_TARGET_ZZ_* and TCAB_BACKUP_RETENTION_ZZ. */
const BASE: Env = {
  TCAB_BACKUP_TARGETS: 'zz=file:///tmp/tcab-settings-test',
  TCAB_BACKUP_AGENT_URL: 'http://127.0.0.1:8787',
  TCAB_BACKUP_AGENT_KEY_ID: 'k1',
  TCAB_BACKUP_AGENT_KEY: SECRET,
  TCAB_AGENT_DB: '/tmp/runs.sqlite',
  TCAB_AGENT_STAGING: '/tmp/staging',
  TCAB_AGENT_KEYS: `k1=${SECRET}`,
  TCAB_BACKUP_PG_SERVERS:
    '/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/pg1',
  TCAB_BACKUP_PG_DRILL_USER: 'drill',
  TCAB_BACKUP_PG_DRILL_PASSWORD: SECRET,
};
const ENTRA: Env = {
  TCAB_BACKUP_AGENT_AUTH: 'entra',
  TCAB_BACKUP_AGENT_ENTRA_SCOPE: 'api://tcab-backup-agent/.default',
  TCAB_AGENT_AUTH: 'hmac,entra',
  TCAB_AGENT_ENTRA_TENANT_ID: GUID,
  TCAB_AGENT_ENTRA_AUDIENCE: 'api://tcab-backup-agent',
  TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS: GUID,
  TCAB_BACKUP_PG_DRILL_AUTH: 'entra',
  TCAB_BACKUP_PG_DRILL_PASSWORD: undefined,
};

/** Every loader of settings, each giving back what it loaded (or the ConfigError it threw). */
const LOADERS: Record<string, (env: Env) => unknown> = {
  targets: loadTargetsConfig,
  agentClient: loadAgentClientConfig,
  backup: loadBackupConfig,
  jobTimeout: loadJobTimeoutMs,
  snapshotFormat: loadSnapshotFormat,
  agent: loadAgentConfig,
  retention: (env) => {
    const r = loadRetentionConfig(env, ['zz']);
    return { rails: r.rails, policies: [...r.policies].map(([name, p]) => [name, p.policy]) };
  },
  chunkGrace: loadChunkGrace,
  verify: loadVerifySettings,
  drill: loadDrillSettings,
  monitor: loadMonitorSettings,
  pgConfigured: isPgConfigured,
  pgCheck: loadPgCheckConfig,
  pgDrill: loadPgDrillConfig,
};

function run(load: (env: Env) => unknown, env: Env): unknown {
  try {
    return load(env);
  } catch (e) {
    if (e instanceof ConfigError) return { problems: e.problems };
    throw e;
  }
}

/** The catalogue name of a variable: the zz target's variables stand for the <NAME> patterns. */
const catalogueName = (variable: string) =>
  variable
    .replace(/^TCAB_BACKUP_TARGET_ZZ_/, 'TCAB_BACKUP_TARGET_<NAME>_')
    .replace(/^TCAB_BACKUP_RETENTION_ZZ$/, 'TCAB_BACKUP_RETENTION_<NAME>');

/** The TCAB_ variables the loaders look at, over the hmac and the entra variants. */
function variablesRead(): Set<string> {
  const seen = new Set<string>();
  for (const variant of [BASE, { ...BASE, ...ENTRA }, {}]) {
    const env = new Proxy(
      { ...variant },
      {
        get(target, name) {
          if (typeof name === 'string' && name.startsWith('TCAB_')) seen.add(catalogueName(name));
          return Reflect.get(target, name);
        },
      },
    );
    for (const load of Object.values(LOADERS)) run(load, env);
  }
  return seen;
}

/** Settings the Functions host reads itself, from the %NAME% of a timer binding in src/functions. */
async function timerBindings(): Promise<Set<string>> {
  const dir = new URL('../src/functions/', import.meta.url);
  const names = new Set<string>();
  for (const file of await readdir(dir)) {
    const text = await readFile(new URL(file, dir), 'utf8');
    for (const m of text.matchAll(/'%(TCAB_[A-Z0-9_]+)%'/g)) names.add(m[1]!);
  }
  return names;
}

it('the loaders read exactly the catalogued settings, besides the timer schedules the Functions host reads', async () => {
  const read = variablesRead();
  const bound = await timerBindings();
  const catalogue = new Set(SETTINGS.map((s) => s.name));
  expect(
    [...read].filter((n) => !catalogue.has(n)),
    'read by a loader, but not in the catalogue',
  ).toEqual([]);
  expect(
    [...bound].filter((n) => !catalogue.has(n)),
    'bound by a timer, but not in the catalogue',
  ).toEqual([]);
  const unread = [...catalogue].filter((n) => !read.has(n));
  expect(
    unread.filter((n) => !bound.has(n)),
    'in the catalogue, but read by nothing',
  ).toEqual([]);
  // Today only replicate and prune leave their schedule to the host alone.
  expect(unread.sort()).toEqual(['TCAB_BACKUP_PRUNE_SCHEDULE', 'TCAB_BACKUP_REPLICATE_SCHEDULE']);
});

it('an unset setting loads exactly as its catalogued default written out', () => {
  const variants = [BASE, { ...BASE, ...ENTRA }];
  const withDefaults = (env: Env): Env => {
    const out = { ...env };
    for (const s of SETTINGS) {
      if (s.default === undefined) continue;
      const name = s.name.replace('<NAME>', 'ZZ');
      if (out[name] === undefined) out[name] = s.default;
    }
    return out;
  };
  let compared = 0;
  for (const env of variants) {
    for (const [what, load] of Object.entries(LOADERS)) {
      const implicit = run(load, env);
      expect(implicit, `${what} fails on a valid environment`).not.toHaveProperty('problems');
      expect(run(load, withDefaults(env)), `${what}: a default differs from the catalogue's`).toEqual(implicit);
      compared++;
    }
  }
  expect(compared).toBe(2 * Object.keys(LOADERS).length);
  // The check can fail: a value other than the default loads differently.
  expect(run(loadJobTimeoutMs, { TCAB_BACKUP_JOB_TIMEOUT: '24m' })).not.toEqual(run(loadJobTimeoutMs, {}));
});

it('the chunk grace must exceed 4 x TCAB_BACKUP_JOB_TIMEOUT, and the loader says so naming both', () => {
  expect(loadChunkGrace({})).toEqual({ graceMs: 7 * 24 * 3_600_000, jobTimeoutMs: 25 * 60_000 });
  expect(loadChunkGrace({ TCAB_BACKUP_CHUNK_GRACE: '101m' })).toEqual({ graceMs: 101 * 60_000, jobTimeoutMs: 25 * 60_000 });
  const refused = run(loadChunkGrace, { TCAB_BACKUP_CHUNK_GRACE: '100m' }) as { problems: string[] };
  expect(refused.problems).toHaveLength(1);
  expect(refused.problems[0]).toMatch(/^TCAB_BACKUP_CHUNK_GRACE: .* must exceed 4 x TCAB_BACKUP_JOB_TIMEOUT \(4 x 25m/);
  // A longer job timeout needs a longer grace; both problems of a bad environment are reported together.
  expect(run(loadChunkGrace, { TCAB_BACKUP_CHUNK_GRACE: '1d', TCAB_BACKUP_JOB_TIMEOUT: '6h' })).toEqual({
    problems: [expect.stringMatching(/^TCAB_BACKUP_CHUNK_GRACE: 1d must exceed 4 x TCAB_BACKUP_JOB_TIMEOUT/)],
  });
  expect(run(loadChunkGrace, { TCAB_BACKUP_CHUNK_GRACE: 'soon', TCAB_BACKUP_JOB_TIMEOUT: 'never' })).toEqual({
    problems: [expect.stringMatching(/^TCAB_BACKUP_CHUNK_GRACE: /), expect.stringMatching(/^TCAB_BACKUP_JOB_TIMEOUT: /)],
  });
});

it('no setting is declared by two parts', () => {
  const names = SETTINGS.map((s) => s.name);
  expect(names.length).toBe(new Set(names).size);
  expect(names.length).toBeGreaterThanOrEqual(70);
});
