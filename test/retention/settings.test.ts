import { describe, expect, it } from 'vitest';
import { SETTINGS } from '../../src/settings.js';
import { ConfigError } from '../../src/errors.js';
import { parseCalendarDuration } from '../../src/retention/duration.js';
import { planRetention } from '../../src/retention/policy.js';
import {
  DEFAULT_MAX_DELETE_SHARE,
  DEFAULT_MIN_AGE,
  DEFAULT_MIN_KEEP,
  DEFAULT_RETENTION_POLICY,
  DEFAULT_RETENTION_POLICY_TEXT,
  formatRetentionPolicy,
  loadRetentionConfig,
  parseRetentionPolicy,
  retentionVariable,
} from '../../src/retention/settings.js';

describe('parseRetentionPolicy', () => {
  it('reads every rule of the documented example', () => {
    const policy = parseRetentionPolicy(
      'last=3,hourly=24,daily=14,weekly=8,monthly=12,yearly=-1,within=2d,withinDaily=30d,tags=pinned;release+v1',
    );
    expect(policy).toEqual({
      last: 3,
      hourly: 24,
      daily: 14,
      weekly: 8,
      monthly: 12,
      yearly: -1,
      within: { years: 0, months: 0, days: 2, hours: 0 },
      withinDaily: { years: 0, months: 0, days: 30, hours: 0 },
      tags: [['pinned'], ['release', 'v1']],
    });
  });

  it('takes "unlimited" for -1, rule names in any case, spaces around rules, and every within rule', () => {
    const policy = parseRetentionPolicy(
      ' Daily = unlimited , WITHINHOURLY=1d, withinWeekly=1m, withinMonthly=1y, withinYearly=10y, withinDaily=1y2m3d4h, ',
    );
    expect(policy.daily).toBe(-1);
    expect(policy.withinHourly).toEqual(parseCalendarDuration('1d'));
    expect(policy.withinDaily).toEqual({ years: 1, months: 2, days: 3, hours: 4 });
    expect(formatRetentionPolicy(policy)).toBe(
      'daily=-1,withinHourly=1d,withinDaily=1y2m3d4h,withinWeekly=1m,withinMonthly=1y,withinYearly=10y',
    );
  });

  it('round-trips through its canonical text', () => {
    const text = 'last=3,hourly=24,daily=14,weekly=8,monthly=12,yearly=-1,within=2d,withinDaily=30d,tags=pinned;release+v1';
    expect(formatRetentionPolicy(parseRetentionPolicy(text))).toBe(text);
    expect(parseRetentionPolicy(formatRetentionPolicy(DEFAULT_RETENTION_POLICY))).toEqual(DEFAULT_RETENTION_POLICY);
  });

  it('names the rule that is wrong and what it expects', () => {
    expect(() => parseRetentionPolicy('daily=x')).toThrow(/daily: "x" is not a count: expected a whole number from 0, or -1/);
    expect(() => parseRetentionPolicy('daily=-2')).toThrow(/daily: "-2" is not a count/);
    expect(() => parseRetentionPolicy('daily=1.5')).toThrow(/daily: "1.5" is not a count/);
    expect(() => parseRetentionPolicy('dayly=7')).toThrow(/unknown rule "dayly": expected rule=value with rules last, hourly/);
    expect(() => parseRetentionPolicy('daily')).toThrow(/daily: has no value/);
    expect(() => parseRetentionPolicy('daily=7,daily=8')).toThrow(/daily: is given twice/);
    expect(() => parseRetentionPolicy('within=30min')).toThrow(/within: "30min" has the unknown unit "min"/);
    expect(() => parseRetentionPolicy('withinDaily=')).toThrow(/withinDaily: a duration is empty/);
    expect(() => parseRetentionPolicy('tags=pinned;;v1')).toThrow(/tags: list 2 \(""\) has an empty tag/);
    expect(() => parseRetentionPolicy('tags=release+')).toThrow(/tags: list 1 \("release\+"\) has an empty tag/);
  });

  it('refuses a policy that keeps nothing and so would never remove anything', () => {
    expect(() => parseRetentionPolicy('')).toThrow(/sets no rule.*last=-1 to keep everything/);
    expect(() => parseRetentionPolicy('daily=0,within=0d')).toThrow(/sets no rule/);
  });
});

describe('the default policy', () => {
  it('is what the settings catalogue documents', () => {
    const doc = (name: string) => SETTINGS.find((s) => s.name === name);
    expect(doc('TCAB_BACKUP_RETENTION_<NAME>')?.default).toBe(DEFAULT_RETENTION_POLICY_TEXT);
    expect(doc('TCAB_BACKUP_RETENTION_MIN_KEEP')?.default).toBe(String(DEFAULT_MIN_KEEP));
    expect(doc('TCAB_BACKUP_RETENTION_MIN_AGE')?.default).toBe(DEFAULT_MIN_AGE);
    expect(doc('TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE')?.default).toBe(String(DEFAULT_MAX_DELETE_SHARE));
    for (const name of [
      'TCAB_BACKUP_RETENTION_<NAME>',
      'TCAB_BACKUP_RETENTION_MIN_KEEP',
      'TCAB_BACKUP_RETENTION_MIN_AGE',
      'TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE',
    ]) {
      expect(doc(name)).toMatchObject({ side: 'backup', requiredInAzure: false, secret: false });
    }
  });

  it('keeps two days of hourly snapshots, two weeks of days, eight weeks, twelve months and every year', () => {
    const newest = Date.parse('2026-11-24T16:00:00Z');
    // Two years of hourly snapshots.
    const history = Array.from({ length: 2 * 8760 }, (_, i) => ({ id: `s${i}`, time: new Date(newest - i * 3_600_000), tags: [] }));
    const plan = planRetention(history, DEFAULT_RETENTION_POLICY, new Date(newest + 60_000));
    const kept = new Set(plan.keep.map((k) => k.id));
    for (let i = 0; i < 48; i++) expect(kept.has(`s${i}`)).toBe(true); // every hour of the last two days
    expect(kept.has('s48')).toBe(false);
    const keptTimes = plan.keep.map((k) => new Date(newest - Number(k.id.slice(1)) * 3_600_000).toISOString());
    // The last snapshot of each earlier day (23:00 UTC) for the daily rule...
    expect(keptTimes).toContain('2026-11-22T23:00:00.000Z');
    expect(keptTimes).toContain('2026-11-11T23:00:00.000Z');
    // ...of each month, each year, and the oldest one because yearly is unlimited.
    expect(keptTimes).toContain('2025-12-31T23:00:00.000Z');
    expect(keptTimes.at(-1)).toBe(new Date(newest - (2 * 8760 - 1) * 3_600_000).toISOString());
    expect(plan.keep.length).toBeLessThan(100);
  });
});

describe('the defaults for a snapshot every 5 minutes', () => {
  it('keep the last 24 snapshots (two hours), then the newest of each hour, day, week, month and year', () => {
    const newest = Date.parse('2026-11-24T16:55:00Z');
    const FIVE_MINUTES = 300_000;
    // A year of snapshots every 5 minutes, as the default TCAB_BACKUP_SNAPSHOT_SCHEDULE makes them.
    const history = Array.from({ length: 365 * 288 }, (_, i) => ({ id: `s${i}`, time: new Date(newest - i * FIVE_MINUTES), tags: [] }));
    const plan = planRetention(history, DEFAULT_RETENTION_POLICY, new Date(newest + 60_000));
    const kept = new Set(plan.keep.map((k) => k.id));
    for (let i = 0; i < 24; i++) expect(kept.has(`s${i}`), `s${i}, ${i * 5} minutes before the newest`).toBe(true);
    // The last 24 reach back to 15:00; 14:55, the newest of its hour, stays by the hourly rule, 14:50 goes.
    expect(kept.has('s24')).toBe(true);
    expect(kept.has('s25')).toBe(false);
    // 98 in all: 24 more than hourly snapshots with the calendar rules alone keep (76, README "What it costs").
    expect(plan.keep).toHaveLength(98);
  });

  it('are TCAB_BACKUP_FORMAT=2 and a snapshot every 5 minutes', () => {
    const doc = (name: string) => SETTINGS.find((s) => s.name === name);
    expect(doc('TCAB_BACKUP_FORMAT')?.default).toBe('2');
    expect(doc('TCAB_BACKUP_SNAPSHOT_SCHEDULE')?.default).toBe('0 */5 * * * *');
    expect(DEFAULT_RETENTION_POLICY_TEXT).toBe('last=24,hourly=48,daily=14,weekly=8,monthly=12,yearly=-1');
  });
});

describe('loadRetentionConfig', () => {
  it('gives each target its own policy, or the default, and the rails their defaults', () => {
    const config = loadRetentionConfig({ TCAB_BACKUP_RETENTION_BLOB: 'daily=7', TCAB_BACKUP_RETENTION_R2_EU: 'last=2' }, [
      'blob',
      'r2-eu',
      'local',
    ]);
    expect(config.policies.get('blob')).toEqual({ policy: { daily: 7 }, source: 'TCAB_BACKUP_RETENTION_BLOB' });
    expect(config.policies.get('r2-eu')).toEqual({ policy: { last: 2 }, source: 'TCAB_BACKUP_RETENTION_R2_EU' });
    expect(config.policies.get('local')).toEqual({
      policy: DEFAULT_RETENTION_POLICY,
      source: `default (${DEFAULT_RETENTION_POLICY_TEXT})`,
    });
    expect(config.rails).toEqual({ minKeep: 3, minAgeMs: 3_600_000, maxDeleteShare: 0.5 });
    expect(retentionVariable('r2-eu')).toBe('TCAB_BACKUP_RETENTION_R2_EU');
  });

  it('reads the rails', () => {
    const config = loadRetentionConfig(
      {
        TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
        TCAB_BACKUP_RETENTION_MIN_AGE: '1d',
        TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
      },
      ['blob'],
    );
    expect(config.rails).toEqual({ minKeep: 0, minAgeMs: 86_400_000, maxDeleteShare: 1 });
    expect(loadRetentionConfig({ TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '.25' }, []).rails.maxDeleteShare).toBe(0.25);
  });

  it('lists every problem at once, each naming its variable', () => {
    let error: unknown;
    try {
      loadRetentionConfig(
        {
          TCAB_BACKUP_RETENTION_BLOB: 'daily=seven',
          TCAB_BACKUP_RETENTION_BLOBB: 'daily=7',
          TCAB_BACKUP_RETENTION_MIN_KEEP: '-1',
          TCAB_BACKUP_RETENTION_MIN_AGE: 'soon',
          TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '50%',
        },
        ['blob'],
      );
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems;
    expect(problems).toHaveLength(5);
    expect(problems).toContain(
      'TCAB_BACKUP_RETENTION_BLOB: "daily=seven" is invalid: daily: "seven" is not a count: expected a whole number from 0, or -1 (or "unlimited") for no limit',
    );
    expect(problems.find((p) => p.startsWith('TCAB_BACKUP_RETENTION_BLOBB:'))).toMatch(
      /no target in TCAB_BACKUP_TARGETS has this name \(targets: blob\)/,
    );
    expect(problems.find((p) => p.startsWith('TCAB_BACKUP_RETENTION_MIN_KEEP:'))).toMatch(
      /"-1" is invalid: expected a whole number from 0/,
    );
    expect(problems.find((p) => p.startsWith('TCAB_BACKUP_RETENTION_MIN_AGE:'))).toMatch(/"soon" is not a duration/);
    expect(problems.find((p) => p.startsWith('TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE:'))).toMatch(
      /"50%" is invalid: expected a share from 0 to 1/,
    );
  });

  it('refuses a target whose name would read a safety-rail setting as its policy', () => {
    expect(() => loadRetentionConfig({}, ['min-age'])).toThrow(
      /target name "min-age" makes its retention variable TCAB_BACKUP_RETENTION_MIN_AGE, which is a safety-rail setting/,
    );
  });

  it('takes an empty variable as unset', () => {
    expect(loadRetentionConfig({ TCAB_BACKUP_RETENTION_BLOB: '  ' }, ['blob']).policies.get('blob')?.policy).toEqual(
      DEFAULT_RETENTION_POLICY,
    );
  });
});
