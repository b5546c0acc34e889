/**
 * The replicate and prune timers, registered through the real @azure/functions registration code (see
 * test/support/functions-host.ts) and invoked as the host would, against folder targets.
 */
import { registration } from '../support/functions-host.js';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvocationContext } from '@azure/functions';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SETTINGS } from '../../src/settings.js';
import { resetBackupConfig } from '../../src/host/context.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import { DAY, HOUR, history, idsOn, invalidSnapshots, storeSnapshot } from '../support/stored-snapshots.js';

let work: string;
const key = randomBytes(32).toString('hex');
const logs: string[] = [];
const VARIABLES = [
  'TCAB_BACKUP_TARGETS',
  'TCAB_BACKUP_AGENT_URL',
  'TCAB_BACKUP_AGENT_KEY_ID',
  'TCAB_BACKUP_AGENT_KEY',
  'TCAB_BACKUP_RETENTION_PRIMARY',
  'TCAB_BACKUP_RETENTION_SECONDARY',
  'TCAB_BACKUP_RETENTION_MIN_KEEP',
  'TCAB_BACKUP_RETENTION_MIN_AGE',
  'TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE',
];

function context(name: string): InvocationContext {
  return new InvocationContext({
    functionName: name,
    invocationId: randomBytes(8).toString('hex'),
    logHandler: (_level, ...args) => logs.push(args.map(String).join(' ')),
  });
}

const timer = { isPastDue: false, schedule: { adjustForDST: false }, scheduleStatus: { last: '', next: '', lastUpdated: '' } };
const target = (name: string) => openTarget(parseTargetUrl(name, `file://${join(work, name)}`));

function setEnv(extra: Record<string, string> = {}): void {
  for (const v of VARIABLES) delete process.env[v];
  Object.assign(process.env, {
    TCAB_BACKUP_TARGETS: `primary=file://${join(work, 'primary')},secondary=file://${join(work, 'secondary')}`,
    TCAB_BACKUP_AGENT_URL: 'http://127.0.0.1:9',
    TCAB_BACKUP_AGENT_KEY_ID: 'functions',
    TCAB_BACKUP_AGENT_KEY: key,
    TCAB_BACKUP_RETENTION_MIN_KEEP: '1',
    TCAB_BACKUP_RETENTION_MIN_AGE: '1h',
    ...extra,
  });
  resetBackupConfig();
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-fn-rp-'));
  setEnv();
  await import('../../src/functions/replicate.js');
  await import('../../src/functions/prune.js');
});

afterAll(async () => {
  for (const v of VARIABLES) delete process.env[v];
  resetBackupConfig();
  await rm(work, { recursive: true, force: true });
});

beforeEach(async () => {
  await rm(join(work, 'primary'), { recursive: true, force: true });
  await rm(join(work, 'secondary'), { recursive: true, force: true });
  logs.length = 0;
});

describe('function registrations', () => {
  it('registers replicateTimer and pruneTimer on their schedule settings, which the Function App must set', () => {
    for (const [name, setting] of [
      ['replicateTimer', 'TCAB_BACKUP_REPLICATE_SCHEDULE'],
      ['pruneTimer', 'TCAB_BACKUP_PRUNE_SCHEDULE'],
    ] as const) {
      const trigger = Object.values(registration(name).bindings).find((b) => b.direction === 'in')!;
      expect(trigger.type).toBe('timerTrigger');
      expect(trigger.schedule).toBe(`%${setting}%`);
      const doc = SETTINGS.find((s) => s.name === setting)!;
      expect(doc.requiredInAzure).toBe(true);
      expect(doc.default!.trim().split(/\s+/)).toHaveLength(6);
    }
  });
});

describe('replicateTimer and pruneTimer', () => {
  it('copy what a target lacks, then prune each target by its own policy', async () => {
    setEnv({ TCAB_BACKUP_RETENTION_PRIMARY: 'last=-1', TCAB_BACKUP_RETENTION_SECONDARY: 'last=2' });
    const primary = target('primary');
    const snaps = history(4, new Date(Date.now() - 2 * HOUR), DAY);
    for (const s of snaps) await storeSnapshot(primary, s);
    const ids = snaps.map((s) => s.manifest.id);

    await registration('replicateTimer').handler(timer, context('replicateTimer'));
    // The secondary's policy keeps two: replicate copies only those.
    expect(await idsOn(target('secondary'))).toEqual(ids.slice(2));
    expect(logs.join('\n')).toContain('"event":"replicate.completed"');

    await storeSnapshot(target('secondary'), snaps[0]!);
    await registration('pruneTimer').handler(timer, context('pruneTimer'));
    expect(await idsOn(target('secondary'))).toEqual(ids.slice(2));
    expect(await idsOn(primary)).toEqual(ids);
    expect(await invalidSnapshots([primary, target('secondary')])).toEqual([]);
    expect(logs.join('\n')).toContain('"event":"prune.completed"');
    expect(logs.join('\n')).not.toContain(key);
  });

  it('fail the invocation with the rail message when prune is refused, removing nothing', async () => {
    setEnv({ TCAB_BACKUP_RETENTION_PRIMARY: 'last=1', TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '0.25' });
    const primary = target('primary');
    const snaps = history(4, new Date(Date.now() - 2 * HOUR), DAY);
    for (const s of snaps) await storeSnapshot(primary, s);

    const err = await (registration('pruneTimer').handler(timer, context('pruneTimer')) as Promise<void>).catch((e: Error) => e);
    expect((err as Error).message).toContain('Retention refused: the run would delete 3 of 4 snapshots on target "primary"');
    expect(logs.join('\n')).toContain('"event":"prune.failed"');
    expect(await idsOn(primary)).toEqual(snaps.map((s) => s.manifest.id));
  });

  it('fail the invocation naming the variable when a retention setting is invalid', async () => {
    setEnv({ TCAB_BACKUP_RETENTION_SECONDARY: 'daily=often' });
    for (const name of ['replicateTimer', 'pruneTimer']) {
      const err = await (registration(name).handler(timer, context(name)) as Promise<void>).catch((e: Error) => e);
      expect((err as Error).message).toContain('TCAB_BACKUP_RETENTION_SECONDARY: "daily=often" is invalid');
    }
  });
});
