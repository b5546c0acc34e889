import { describe, expect, it } from 'vitest';
import { planRetention, type RetentionPolicy } from '../../src/retention/policy.js';
import { applySafetyRails, type RailSnapshot, type SafetyRails } from '../../src/retention/rails.js';

const NOW = new Date('2026-11-24T12:00:00Z');
const HOUR = 3_600_000;

/** n snapshots, one a day back from 11:00 today; s0 is the newest. All verified unless listed. */
function history(n: number, extra: Partial<Record<number, Partial<RailSnapshot>>> = {}): RailSnapshot[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `s${i}`,
    time: new Date(NOW.getTime() - HOUR - i * 24 * HOUR),
    tags: [],
    verified: true,
    ...extra[i],
  }));
}

const off: SafetyRails = { minKeep: 0, minAgeMs: 0, maxDeleteShare: 1, force: false, listingComplete: true };

function run(snaps: RailSnapshot[], policy: RetentionPolicy, rails: Partial<SafetyRails> = {}) {
  return applySafetyRails(planRetention(snaps, policy, NOW), snaps, { ...off, ...rails }, NOW);
}

describe('applySafetyRails', () => {
  it('leaves a plan that breaks no rail as it is, and reports nothing', () => {
    const snaps = history(5);
    const plan = planRetention(snaps, { last: 3 }, NOW);
    const guarded = applySafetyRails(plan, snaps, { ...off, minKeep: 3, minAgeMs: HOUR / 2, maxDeleteShare: 0.5 }, NOW);
    expect(guarded).toEqual({ ...plan, rails: [], refused: null });
  });

  it('acts only on a complete listing: otherwise it refuses and removes nothing', () => {
    const snaps = history(5);
    const guarded = run(snaps, { last: 1 }, { listingComplete: false, target: 'r2' });
    expect(guarded.remove).toEqual([]);
    expect(guarded.keep.map((k) => k.id)).toEqual(['s0', 's1', 's2', 's3', 's4']);
    expect(guarded.keep[1]!.reasons).toEqual(['run refused (listing-complete)']);
    expect(guarded.refused).toMatchObject({ rail: 'listing-complete', ids: ['s1', 's2', 's3', 's4'] });
    expect(guarded.refused!.message).toMatch(
      /^Retention refused on target "r2": the snapshot listing is incomplete.*nothing is removed.*Check: /,
    );
  });

  it('always keeps pinned snapshots, by tag or by flag', () => {
    const snaps = history(5, { 2: { tags: ['pinned'] }, 3: { pinned: true } });
    const guarded = run(snaps, { last: 1 }, { target: 'blob' });
    expect(guarded.keep).toEqual([
      { id: 's0', reasons: ['last snapshot'] },
      { id: 's2', reasons: ['pinned'] },
      { id: 's3', reasons: ['pinned'] },
    ]);
    expect(guarded.remove).toEqual(['s1', 's4']);
    expect(guarded.rails).toEqual([
      { rail: 'pinned', ids: ['s2', 's3'], message: 'Kept 2 pinned snapshot(s) on target "blob" that the policy would remove: s2, s3' },
    ]);
  });

  it('never deletes the newest verified snapshot', () => {
    const snaps = history(5, { 0: { verified: false }, 1: { verified: false } });
    const guarded = run(snaps, { last: 1 });
    expect(guarded.keep.map((k) => k.id)).toEqual(['s0', 's2']);
    expect(guarded.keep[1]!.reasons).toEqual(['newest verified snapshot']);
    expect(guarded.rails).toEqual([
      { rail: 'newest-verified', ids: ['s2'], message: expect.stringMatching(/^Kept s2, the newest snapshot whose sha256 was verified/) },
    ]);
    // With nothing verified there is nothing to protect, and nothing is reported.
    expect(run(history(3, { 0: { verified: false }, 1: { verified: false }, 2: { verified: false } }), { last: 1 }).rails).toEqual([]);
  });

  it('keeps at least the minimum number of newest snapshots', () => {
    const guarded = run(history(6), { last: 1 }, { minKeep: 3 });
    expect(guarded.keep).toEqual([
      { id: 's0', reasons: ['last snapshot'] },
      { id: 's1', reasons: ['one of the 3 newest (min keep)'] },
      { id: 's2', reasons: ['one of the 3 newest (min keep)'] },
    ]);
    expect(guarded.rails.map((r) => [r.rail, r.ids])).toEqual([['min-keep', ['s1', 's2']]]);
    expect(guarded.rails[0]!.message).toMatch(/among the 3 newest \(TCAB_BACKUP_RETENTION_MIN_KEEP\)/);
  });

  it('never deletes anything younger than the minimum age, nor anything dated in the future', () => {
    const snaps: RailSnapshot[] = [
      { id: 'future', time: new Date(NOW.getTime() + 2 * HOUR), tags: [], verified: false },
      { id: 'ten-minutes', time: new Date(NOW.getTime() - 10 * 60_000), tags: [], verified: true },
      { id: 'fifty-minutes', time: new Date(NOW.getTime() - 50 * 60_000), tags: [], verified: true },
      { id: 'one-hour', time: new Date(NOW.getTime() - HOUR), tags: [], verified: true },
      { id: 'two-hours', time: new Date(NOW.getTime() - 2 * HOUR), tags: [], verified: true },
    ];
    // `tags` keeps nothing here: the policy alone would remove everything.
    const guarded = run(snaps, { tags: [['never']] }, { minAgeMs: HOUR });
    expect(guarded.keep.map((k) => k.id)).toEqual(['future', 'ten-minutes', 'fifty-minutes']);
    expect(guarded.keep.map((k) => k.reasons[0])).toEqual([
      'younger than 1h (min age)',
      'newest verified snapshot',
      'younger than 1h (min age)',
    ]);
    expect(guarded.remove).toEqual(['one-hour', 'two-hours']);
    expect(guarded.rails.map((r) => [r.rail, r.ids])).toEqual([
      ['newest-verified', ['ten-minutes']],
      ['min-age', ['future', 'fifty-minutes']],
    ]);
  });

  it('refuses a run that would delete more than the allowed share, and removes nothing', () => {
    const snaps = history(10);
    const guarded = run(snaps, { last: 2 }, { maxDeleteShare: 0.5, target: 'blob' });
    expect(guarded.remove).toEqual([]);
    expect(guarded.keep).toHaveLength(10);
    expect(guarded.keep[9]).toEqual({ id: 's9', reasons: ['run refused (max-delete-share)'] });
    expect(guarded.refused).toMatchObject({ rail: 'max-delete-share', ids: ['s2', 's3', 's4', 's5', 's6', 's7', 's8', 's9'] });
    expect(guarded.refused!.message).toBe(
      'Retention refused: the run would delete 8 of 10 snapshots on target "blob" (80%), more than TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE allows (50%); nothing is removed. ' +
        'Check: the retention policy of this target; if the deletion is intended, run prune with --force or raise TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE',
    );
  });

  it('lets a forced run delete more than the share, and reports that it was forced', () => {
    const guarded = run(history(10), { last: 2 }, { maxDeleteShare: 0.5, force: true });
    expect(guarded.refused).toBeNull();
    expect(guarded.remove).toHaveLength(8);
    expect(guarded.rails).toEqual([
      {
        rail: 'max-delete-share',
        ids: guarded.remove,
        message: expect.stringMatching(/^Forced: the run would delete 8 of 10 snapshots \(80%\)/),
      },
    ]);
  });

  it('allows exactly the share, and counts the share after the other rails have kept what they keep', () => {
    expect(run(history(10), { last: 5 }, { maxDeleteShare: 0.5 }).refused).toBeNull();
    expect(run(history(10), { last: 4 }, { maxDeleteShare: 0.5 }).refused?.rail).toBe('max-delete-share');
    const rescued = run(history(10), { last: 2 }, { maxDeleteShare: 0.5, minKeep: 5 });
    expect(rescued.refused).toBeNull();
    expect(rescued.remove).toEqual(['s5', 's6', 's7', 's8', 's9']);
  });

  it('refuses rails that make no sense, and a plan that does not match the listing', () => {
    const snaps = history(3);
    const plan = planRetention(snaps, { last: 1 }, NOW);
    expect(() => applySafetyRails(plan, snaps, { ...off, minKeep: -1 })).toThrow(/minKeep -1 is not a whole number/);
    expect(() => applySafetyRails(plan, snaps, { ...off, maxDeleteShare: 1.5 })).toThrow(/maxDeleteShare 1.5 is not between 0 and 1/);
    expect(() => applySafetyRails(plan, snaps, { ...off, minAgeMs: Number.NaN })).toThrow(/minAgeMs NaN/);
    expect(() => applySafetyRails(plan, snaps.slice(1), off)).toThrow(/does not match the snapshot listing \(not in the listing: s0\)/);
    expect(() => applySafetyRails(plan, [...snaps, { ...snaps[0]!, id: 'extra' }], off)).toThrow(/not in the plan: extra/);
    expect(() => applySafetyRails({ keep: plan.keep, remove: [...plan.remove, 's0'] }, snaps, off)).toThrow(/an id is planned twice/);
  });
});
