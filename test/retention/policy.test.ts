import { describe, expect, it } from 'vitest';
import { TcabError } from '../../src/errors.js';
import { parseCalendarDuration, subtractCalendarDuration } from '../../src/retention/duration.js';
import { dayOf, hourOf, monthOf, weekOf, yearOf } from '../../src/retention/periods.js';
import { planRetention, type RetentionPolicy, type RetentionSnapshot } from '../../src/retention/policy.js';
import { DEFAULT_RETENTION_POLICY } from '../../src/retention/settings.js';
import { syntheticHistory } from '../../src/retention/synthetic.js';

const snap = (id: string, iso: string, tags: string[] = []): RetentionSnapshot => ({ id, time: new Date(iso), tags });

/**
 * A second, deliberately different formulation of restic's rules, to check the planner at scale: per rule,
 * take the first snapshot of each distinct period in newest-first order, the first n of those, and the
 * oldest snapshot when fewer than n were used before reaching it.
 */
function referencePlan(snapshots: RetentionSnapshot[], policy: RetentionPolicy, now: Date) {
  const sorted = snapshots
    .map((s, i) => ({ s, i }))
    .sort((a, b) => b.s.time.getTime() - a.s.time.getTime() || a.i - b.i)
    .map((x) => x.s);
  const reasons = new Map<string, string[]>();
  const add = (id: string, r: string) => reasons.set(id, [...(reasons.get(id) ?? []), r]);
  const oldest = sorted.length - 1;
  const ms = (i: number) => sorted[i]!.time.getTime();
  let ref = new Date('0001-01-01T00:00:00Z').getTime();
  for (const s of sorted) if (s.time < now && s.time.getTime() > ref) ref = s.time.getTime();

  const firstsOfPeriods = (indices: number[], key: (i: number) => number) => {
    const seen = new Set<number>();
    return indices.filter((i) => {
      if (seen.has(key(i))) return false;
      seen.add(key(i));
      return true;
    });
  };
  const all = sorted.map((_, i) => i);
  const perSnapshot: Array<Array<[number, string]>> = sorted.map(() => []);
  let order = 0;
  const note = (i: number, r: string, o: number) => perSnapshot[i]!.push([o, r]);

  for (const list of policy.tags ?? []) {
    const o = order++;
    for (const i of all.filter((i) => list.every((t) => sorted[i]!.tags.includes(t)))) note(i, `has tags [${list.join(', ')}]`, o);
  }
  if (policy.within) {
    const cutoff = subtractCalendarDuration(ref, policy.within);
    const o = order++;
    for (const i of all.filter((i) => ms(i) > cutoff)) note(i, 'within', o);
  }
  const countRules: Array<[keyof RetentionPolicy, (i: number) => number, string]> = [
    ['last', (i) => i, 'last'],
    ['hourly', (i) => hourOf(ms(i)), 'hourly'],
    ['daily', (i) => dayOf(ms(i)), 'daily'],
    ['weekly', (i) => weekOf(ms(i)), 'weekly'],
    ['monthly', (i) => monthOf(ms(i)), 'monthly'],
    ['yearly', (i) => yearOf(ms(i)), 'yearly'],
  ];
  for (const [rule, key, word] of countRules) {
    const n = policy[rule] as number | undefined;
    if (!n) continue;
    const o = order++;
    const firsts = firstsOfPeriods(all, key);
    const chosen = n === -1 ? firsts : firsts.slice(0, n);
    for (const i of chosen) note(i, `${word} snapshot`, o);
    const usedBeforeOldest = chosen.filter((i) => i < oldest).length;
    if (!chosen.includes(oldest) && (n === -1 || usedBeforeOldest < n)) note(oldest, `oldest ${word} snapshot`, o);
  }
  const withinRules: Array<[keyof RetentionPolicy, (i: number) => number, string]> = [
    ['withinHourly', (i) => hourOf(ms(i)), 'hourly'],
    ['withinDaily', (i) => dayOf(ms(i)), 'daily'],
    ['withinWeekly', (i) => weekOf(ms(i)), 'weekly'],
    ['withinMonthly', (i) => monthOf(ms(i)), 'monthly'],
    ['withinYearly', (i) => yearOf(ms(i)), 'yearly'],
  ];
  for (const [rule, key, word] of withinRules) {
    const d = policy[rule] as RetentionPolicy['within'];
    if (!d) continue;
    const o = order++;
    const cutoff = subtractCalendarDuration(ref, d);
    const inside = all.filter((i) => ms(i) > cutoff);
    const firsts = firstsOfPeriods(inside, key);
    for (const i of firsts) note(i, `${word} within`, o);
    if (inside.includes(oldest) && !firsts.includes(oldest)) note(oldest, `oldest ${word} within`, o);
  }
  for (const [i, notes] of perSnapshot.entries()) for (const [, r] of notes.sort((a, b) => a[0] - b[0])) add(sorted[i]!.id, r);
  return {
    keep: sorted.filter((s) => reasons.has(s.id)).map((s) => ({ id: s.id, reasons: reasons.get(s.id)! })),
    remove: sorted.filter((s) => !reasons.has(s.id)).map((s) => s.id),
  };
}

// Reasons without the durations, to compare with the reference's shorter words.
const shortReasons = (plan: { keep: Array<{ id: string; reasons: string[] }>; remove: string[] }) => ({
  keep: plan.keep.map((k) => ({
    id: k.id,
    reasons: k.reasons.map((r) => r.replace(/ within .*$/, ' within').replace(/^within .*$/, 'within')),
  })),
  remove: plan.remove,
});

describe('planRetention at scale', () => {
  const now = new Date('2026-11-24T16:30:00Z');
  const history = syntheticHistory(10_000, { newest: now });

  it('plans 10,000 hourly snapshots with the default policy as the rules say', () => {
    expect(history).toHaveLength(10_000);
    const plan = planRetention(history, DEFAULT_RETENTION_POLICY, now);
    expect(plan.keep.length + plan.remove.length).toBe(10_000);
    expect(plan).toEqual(referencePlan(history, DEFAULT_RETENTION_POLICY, now));

    // What an operator would check: 48 distinct hours, 14 days, and one per year back to the oldest.
    const kept = plan.keep.map((k) => history.find((s) => s.id === k.id)!);
    expect(plan.keep.filter((k) => k.reasons.includes('hourly snapshot'))).toHaveLength(48);
    expect(plan.keep.filter((k) => k.reasons.includes('daily snapshot'))).toHaveLength(14);
    expect(plan.keep.filter((k) => k.reasons.includes('weekly snapshot'))).toHaveLength(8);
    expect(plan.keep.filter((k) => k.reasons.includes('monthly snapshot'))).toHaveLength(12);
    const years = new Set(history.map((s) => s.time.getUTCFullYear()));
    expect(plan.keep.filter((k) => k.reasons.includes('yearly snapshot'))).toHaveLength(years.size);
    expect(plan.keep.at(-1)!.reasons).toEqual(['oldest yearly snapshot']);
    expect(kept[0]!.time.getTime()).toBe(Math.max(...history.map((s) => s.time.getTime())));
    expect(plan.keep.length).toBeLessThanOrEqual(48 + 14 + 8 + 12 + years.size + 1);
  });

  it('plans 10,000 snapshots with every kind of rule like the reference formulation', () => {
    const policy: RetentionPolicy = {
      last: 5,
      hourly: 30,
      daily: -1,
      weekly: 20,
      monthly: 6,
      yearly: 1,
      within: parseCalendarDuration('2d'),
      withinHourly: parseCalendarDuration('3d'),
      withinDaily: parseCalendarDuration('1m15d'),
      withinWeekly: parseCalendarDuration('4m'),
      withinMonthly: parseCalendarDuration('1y'),
      withinYearly: parseCalendarDuration('5y'),
      tags: [['pinned'], ['manual', 'pinned']],
    };
    const plan = planRetention(history, policy, now);
    expect(shortReasons(plan)).toEqual(referencePlan(history, policy, now));
    expect(plan.keep.filter((k) => k.reasons.includes('has tags [pinned]'))).toHaveLength(
      history.filter((s) => s.tags.includes('pinned')).length,
    );
  });

  it('gives the same plan for any input order when times are distinct', () => {
    const policy: RetentionPolicy = { hourly: 24, daily: 7, weekly: 4, monthly: 3 };
    const sample = history.slice(-2000);
    const shuffled = [...sample];
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = (i * 2654435761) % (i + 1);
      [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
    }
    expect(planRetention(shuffled, policy, now)).toEqual(planRetention(sample, policy, now));
  });
});

describe('planRetention', () => {
  it('does not change the list it is given', () => {
    const list = [snap('b', '2026-11-20T10:00:00Z'), snap('a', '2026-11-21T10:00:00Z')];
    const copy = structuredClone(list);
    planRetention(list, { last: 1 }, new Date('2026-12-01T00:00:00Z'));
    expect(list).toEqual(copy);
  });

  it('keeps equal times in input order, whatever the input order', () => {
    const t = '2026-11-20T10:00:00Z';
    expect(planRetention([snap('a', t), snap('b', t), snap('c', t)], { last: 2 }).keep.map((k) => k.id)).toEqual(['a', 'b']);
    expect(planRetention([snap('c', t), snap('b', t), snap('a', t)], { last: 2 }).keep.map((k) => k.id)).toEqual(['c', 'b']);
  });

  it('measures within from the newest snapshot before the current time when no "now" is given', () => {
    const hour = 3_600_000;
    const at = (offsetHours: number) => new Date(Date.now() + offsetHours * hour).toISOString();
    const plan = planRetention([snap('future', at(5)), snap('newest', at(-1)), snap('old', at(-30))], {
      within: parseCalendarDuration('1d'),
    });
    expect(plan.keep.map((k) => k.id)).toEqual(['future', 'newest']);
    expect(plan.remove).toEqual(['old']);
  });

  it('treats zero counts and zero durations as rules not set', () => {
    const list = [snap('a', '2026-11-20T10:00:00Z'), snap('b', '2026-11-19T10:00:00Z')];
    const plan = planRetention(list, { daily: 0, within: parseCalendarDuration('0d') });
    expect(plan.keep).toEqual([
      { id: 'a', reasons: ['no retention rule set'] },
      { id: 'b', reasons: ['no retention rule set'] },
    ]);
    expect(plan.remove).toEqual([]);
  });

  it('refuses an invalid policy, naming the rule', () => {
    const list = [snap('a', '2026-11-20T10:00:00Z')];
    expect(() => planRetention(list, { daily: -2 })).toThrow(/daily: -2 is not a count/);
    expect(() => planRetention(list, { hourly: 1.5 })).toThrow(/hourly: 1.5 is not a count/);
    expect(() => planRetention(list, { tags: [[]] })).toThrow(/tags\[0\]: a tag list is empty/);
    expect(() => planRetention(list, { tags: [['a', '']] })).toThrow(/tags\[0\]: a tag is empty/);
    expect(() => planRetention(list, { within: { years: 0, months: -1, days: 0, hours: 0 } })).toThrow(
      /within: years, months, days and hours/,
    );
    expect(() => planRetention(list, { daily: -2 })).toThrow(TcabError);
  });

  it('refuses a listing with a duplicate id or an invalid time, naming the snapshot', () => {
    expect(() => planRetention([snap('a', '2026-11-20T10:00:00Z'), snap('a', '2026-11-21T10:00:00Z')], { last: 1 })).toThrow(
      /snapshot a twice/,
    );
    expect(() => planRetention([snap('bad', 'not a time')], { last: 1 })).toThrow(/snapshot bad with an invalid time/);
    expect(() => planRetention([], { last: 1 }, new Date('nope'))).toThrow(/invalid "now"/);
  });
});
