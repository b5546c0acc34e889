import { describe, expect, it } from 'vitest';
import { SETTINGS } from '../../src/settings.js';
import { ConfigError } from '../../src/errors.js';
import { loadDrillSettings, loadMonitorSettings, loadVerifySettings } from '../../src/jobs/settings.js';
import { longestGapMs } from '../../src/util/schedule-gap.js';
import { lastReadAt, planVerifyRotation, type RotationCandidate } from '../../src/jobs/verify/index.js';
import type { VerifyEntry } from '../../src/catalog/verify-record.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const MIN = 60_000;

function snapshotId(ms: number, n: number): string {
  return (
    new Date(ms)
      .toISOString()
      .replace(/[-:]/g, '')
      .replace(/\.\d{3}Z$/, 'Z') +
    '-' +
    n.toString(16).padStart(8, '0')
  );
}

interface Simulation {
  runs: Array<{ at: number; selected: number; snapshots: number; bytes: number; totalBytes: number }>;
  worstUnreadMs: number;
  neverRereadButLongLived: string[];
  rereadCount: Map<string, number>;
}

/**
 * Months of hourly snapshots under a restic-like retention (48 hourly, 14 daily, 8 weekly), verified daily at
 * 05:00 with a 7-day window, checking every hour that no stored snapshot has gone unread for longer.
 */
function simulate(options: {
  days: number;
  sizeOf: (n: number) => number;
  withinMs?: number;
  intervalMs?: number;
  verifyHourUtc?: number;
  timerStopped?: [number, number];
}): Simulation {
  const withinMs = options.withinMs ?? 7 * DAY;
  const intervalMs = options.intervalMs ?? DAY;
  const start = Date.UTC(2026, 0, 5);
  const live = new Map<string, RotationCandidate & { n: number }>();
  const entries: Record<string, VerifyEntry> = {};
  const sim: Simulation = { runs: [], worstUnreadMs: 0, neverRereadButLongLived: [], rereadCount: new Map() };
  let n = 0;
  for (let now = start; now < start + options.days * DAY; now += HOUR) {
    const id = snapshotId(now, n);
    live.set(id, { id, n, storedAt: new Date(now + 2 * MIN), artifactBytes: options.sizeOf(n) });
    n++;
    for (const [sid, c] of live) {
      const age = now - c.storedAt.getTime();
      const t = new Date(c.storedAt.getTime() - 2 * MIN);
      const keep =
        age < 48 * HOUR || (t.getUTCHours() === 0 && age < 14 * DAY) || (t.getUTCHours() === 0 && t.getUTCDay() === 1 && age < 8 * 7 * DAY);
      if (!keep) {
        if (age > withinMs && !sim.rereadCount.get(sid)) sim.neverRereadButLongLived.push(sid);
        live.delete(sid);
        delete entries[sid];
      }
    }
    const candidates = [...live.values()];
    const hour = new Date(now).getUTCHours();
    const day = Math.floor((now - start) / DAY);
    const stopped = options.timerStopped !== undefined && day >= options.timerStopped[0] && day < options.timerStopped[1];
    const runNow = !stopped && (intervalMs === DAY ? hour === (options.verifyHourUtc ?? 5) : (now - start) % intervalMs === 0);
    if (runNow) {
      const plan = planVerifyRotation(candidates, entries, { now: new Date(now), withinMs, intervalMs });
      for (const s of plan.selected) {
        entries[s.id] = { checkedAt: new Date(now + 10 * MIN).toISOString(), ok: true };
        sim.rereadCount.set(s.id, (sim.rereadCount.get(s.id) ?? 0) + 1);
      }
      sim.runs.push({
        at: now,
        selected: plan.selected.length,
        snapshots: candidates.length,
        bytes: plan.selected.reduce((b, s) => b + (live.get(s.id)!.artifactBytes ?? 0), 0),
        totalBytes: candidates.reduce((b, c) => b + (c.artifactBytes ?? 0), 0),
      });
    }
    // While the timer is stopped nothing can keep the promise; it must hold again from the first run after.
    const excused =
      options.timerStopped !== undefined &&
      day >= options.timerStopped[0] &&
      (day < options.timerStopped[1] || (day === options.timerStopped[1] && hour < (options.verifyHourUtc ?? 5) + 1));
    if (!excused) for (const c of candidates) sim.worstUnreadMs = Math.max(sim.worstUnreadMs, now - lastReadAt(c, entries[c.id]));
  }
  return sim;
}

describe('verify rotation', () => {
  it('re-reads every stored snapshot within the window across three months of hourly snapshots and daily runs', () => {
    const sim = simulate({ days: 90, sizeOf: () => 280e6 });
    expect(sim.runs.length).toBeGreaterThanOrEqual(89);
    expect(sim.worstUnreadMs).toBeLessThanOrEqual(7 * DAY);
    expect(sim.neverRereadButLongLived).toEqual([]);
    // Spread, not bursts: once retention is steady (about 70 snapshots), a run reads about a seventh of them.
    const steady = sim.runs.slice(60);
    const perRun = steady.map((r) => r.selected);
    const average = perRun.reduce((a, b) => a + b, 0) / perRun.length;
    expect(Math.max(...perRun)).toBeLessThanOrEqual(Math.ceil(average * 1.6));
    expect(Math.max(...steady.map((r) => r.snapshots))).toBeLessThan(100);
    expect(average).toBeLessThan(Math.max(...steady.map((r) => r.snapshots)) / 3);
  });

  it('keeps the guarantee with snapshots of very different sizes and reads about a seventh of the bytes per run', () => {
    const sim = simulate({ days: 60, sizeOf: (n) => (n % 24 === 0 ? 2e9 : 50e6 + (n % 7) * 10e6) });
    expect(sim.worstUnreadMs).toBeLessThanOrEqual(7 * DAY);
    expect(sim.neverRereadButLongLived).toEqual([]);
    for (const r of sim.runs.slice(30)) expect(r.bytes).toBeGreaterThanOrEqual(r.totalBytes / 7 - 1);
  });

  it('holds with a window of exactly one run interval: every run reads everything stored before the last run', () => {
    const sim = simulate({ days: 20, sizeOf: () => 1e6, withinMs: DAY, intervalMs: DAY });
    expect(sim.worstUnreadMs).toBeLessThanOrEqual(DAY);
    expect(sim.neverRereadButLongLived).toEqual([]);
  });

  it('catches up in one run after the timer stopped for four days, then keeps the window again', () => {
    const sim = simulate({ days: 70, sizeOf: () => 280e6, timerStopped: [40, 44] });
    expect(sim.worstUnreadMs).toBeLessThanOrEqual(7 * DAY);
    expect(sim.neverRereadButLongLived).toEqual([]);
  });

  it('reads every snapshot already past the window at once, e.g. on the first run after an upgrade', () => {
    const now = new Date(Date.UTC(2026, 5, 1, 5));
    const candidates: RotationCandidate[] = Array.from({ length: 80 }, (_, i) => ({
      id: snapshotId(now.getTime() - i * 2.5 * DAY - HOUR, i),
      storedAt: new Date(now.getTime() - i * 2.5 * DAY - HOUR),
      artifactBytes: 100,
    }));
    const plan = planVerifyRotation(candidates, {}, { now, withinMs: 7 * DAY, intervalMs: DAY });
    const overdue = candidates.filter((c) => c.storedAt.getTime() + 7 * DAY <= now.getTime() + DAY + HOUR).map((c) => c.id);
    expect(overdue.length).toBe(77);
    expect(
      plan.selected
        .filter((s) => s.reason === 'due')
        .map((s) => s.id)
        .sort(),
    ).toEqual(overdue.sort());
  });

  it('always re-reads a snapshot whose last check failed and one whose artifact is missing, and reads all with --all', () => {
    const now = new Date(Date.UTC(2026, 2, 1, 5));
    const candidates: RotationCandidate[] = Array.from({ length: 30 }, (_, i) => ({
      id: snapshotId(now.getTime() - (i + 1) * HOUR, i),
      storedAt: new Date(now.getTime() - (i + 1) * HOUR),
      artifactBytes: i === 7 ? undefined : 1000,
    }));
    const entries: Record<string, VerifyEntry> = Object.fromEntries(
      candidates.map((c) => [c.id, { checkedAt: new Date(now.getTime() - HOUR / 2).toISOString(), ok: true }]),
    );
    entries[candidates[3]!.id] = { checkedAt: new Date(now.getTime() - HOUR / 2).toISOString(), ok: false, error: 'sha256 mismatch' };
    const plan = planVerifyRotation(candidates, entries, { now, withinMs: 7 * DAY, intervalMs: DAY });
    expect(plan.selected).toContainEqual({ id: candidates[3]!.id, reason: 'failed-before' });
    expect(plan.selected).toContainEqual({ id: candidates[7]!.id, reason: 'missing-artifact' });
    // A share is a seventh of the count (5) and of the bytes (29 of 1000 bytes present: 4143), so six are read.
    expect(plan.countShare).toBe(5);
    expect(plan.byteShare).toBe(4143);
    expect(plan.selected.length).toBe(6);
    const all = planVerifyRotation(candidates, entries, { now, withinMs: 7 * DAY, intervalMs: DAY, all: true });
    expect(all.selected.map((s) => s.id).sort()).toEqual(candidates.map((c) => c.id).sort());
  });

  it('picks the least recently verified first', () => {
    const now = new Date(Date.UTC(2026, 2, 1, 5));
    const candidates: RotationCandidate[] = Array.from({ length: 14 }, (_, i) => ({
      id: snapshotId(now.getTime() - (20 - i) * DAY, i),
      storedAt: new Date(now.getTime() - (20 - i) * DAY),
      artifactBytes: 10,
    }));
    // Checked one a day over the last 14 days, in a shuffled order.
    const order = [5, 2, 9, 0, 13, 7, 11, 1, 4, 12, 3, 8, 6, 10];
    const entries: Record<string, VerifyEntry> = {};
    order.forEach((ci, day) => {
      entries[candidates[ci]!.id] = { checkedAt: new Date(now.getTime() - (14 - day) * DAY + HOUR).toISOString(), ok: true };
    });
    // A 28-day window: nothing is due, so the one snapshot of this run's share is the least recently read.
    const plan = planVerifyRotation(candidates, entries, { now, withinMs: 28 * DAY, intervalMs: DAY });
    expect(plan.selected).toEqual([{ id: candidates[5]!.id, reason: 'share' }]);
    // With a 14-day window the two read longest ago are due: the first falls out of the window before the next
    // run, the second just at it (a late timer must not push it over).
    const tight = planVerifyRotation(candidates, entries, { now, withinMs: 14 * DAY, intervalMs: DAY });
    expect(tight.selected).toEqual([
      { id: candidates[5]!.id, reason: 'due' },
      { id: candidates[2]!.id, reason: 'due' },
    ]);
  });
});

describe('schedule gaps (NCRONTAB)', () => {
  it('finds the longest time between two runs', () => {
    const from = new Date(Date.UTC(2026, 10, 25));
    expect(longestGapMs('0 0 5 * * *', from)).toBe(DAY);
    expect(longestGapMs('0 */5 * * * *', from)).toBe(5 * MIN);
    expect(longestGapMs('0 0 4 * * 1-5', from)).toBe(3 * DAY);
    expect(longestGapMs('0 0 4 * * Mon-Fri', from)).toBe(3 * DAY);
    expect(longestGapMs('0 0 0 1 * *', from)).toBe(31 * DAY);
    expect(longestGapMs('0 0 6,18 * * *', from)).toBe(12 * HOUR);
    expect(longestGapMs('0 0 1-5/2 * * *', from)).toBe(20 * HOUR);
  });

  it('names what is wrong with a schedule', () => {
    expect(() => longestGapMs('0 0 5 * *')).toThrow(/has 5 fields; expected six/);
    expect(() => longestGapMs('0 61 5 * * *')).toThrow(/minute field: 61 is outside 0-59/);
    expect(() => longestGapMs('0 0 0 30 2 *')).toThrow(/runs never in two years/);
    expect(() => longestGapMs('0 0 5-1 * * *')).toThrow(/hour field: range 5-1 runs backwards/);
  });
});

describe('settings', () => {
  it('take their defaults from the settings catalogue', () => {
    const v = loadVerifySettings({});
    expect(v).toEqual({ schedule: '0 0 5 * * *', withinMs: 7 * DAY, intervalMs: DAY });
    expect(loadDrillSettings({}).schedule).toBe('0 0 4 * * *');
    const m = loadMonitorSettings({});
    expect(m.schedule).toBe('0 */5 * * * *');
    expect(m.thresholds.snapshot).toEqual({ warnMs: HOUR / 2, criticalMs: HOUR });
    for (const name of ['TCAB_BACKUP_VERIFY_SCHEDULE', 'TCAB_BACKUP_DRILL_SCHEDULE', 'TCAB_BACKUP_MONITOR_SCHEDULE']) {
      expect(SETTINGS.find((s) => s.name === name)?.requiredInAzure, name).toBe(true);
    }
  });

  it('refuse a window no rotation can meet, thresholds in the wrong order and a relative drill folder, naming each variable', () => {
    expect(() => loadVerifySettings({ TCAB_BACKUP_VERIFY_WITHIN: '12h' })).toThrow(
      /TCAB_BACKUP_VERIFY_WITHIN: 12h is shorter than the longest gap between two verify runs/,
    );
    expect(() => loadVerifySettings({ TCAB_BACKUP_VERIFY_SCHEDULE: 'daily' })).toThrow(
      /TCAB_BACKUP_VERIFY_SCHEDULE: "daily" is not an NCRONTAB schedule/,
    );
    let err: unknown;
    try {
      loadMonitorSettings({ TCAB_BACKUP_SNAPSHOT_WARN_AGE: '5h', TCAB_BACKUP_DRILL_CRITICAL_AGE: 'soon' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      expect.stringMatching(/^TCAB_BACKUP_SNAPSHOT_WARN_AGE: 5h must be shorter than TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE \(1h\)/),
      expect.stringMatching(/^TCAB_BACKUP_DRILL_CRITICAL_AGE: "soon" is invalid/),
    ]);
    expect(() => loadDrillSettings({ TCAB_BACKUP_DRILL_WORK_DIR: 'scratch' })).toThrow(
      /TCAB_BACKUP_DRILL_WORK_DIR: "scratch" must be an absolute path/,
    );
  });
});
