/**
 * The retention policy and its planner: restic `forget` semantics, in UTC, as a pure function from a list of
 * snapshots, a policy and `now` to what is kept (each with restic's reasons) and what is removed, newest
 * first. A policy with no rule removes nothing.
 * The exact rules and reasons: docs/architecture.md, "Retention".
 */
import { TcabError } from '../errors.js';
import { formatCalendarDuration, isZeroDuration, subtractCalendarDuration, type CalendarDuration } from './duration.js';
import { dayOf, hourOf, monthOf, weekOf, yearOf, type PeriodOf } from './periods.js';

export interface RetentionPolicy {
  /** Keep the n newest snapshots; -1 keeps all. */
  last?: number;
  /** Keep the newest snapshot of each of the n newest hours that have one; -1 for every hour. */
  hourly?: number;
  daily?: number;
  /** Weeks are ISO 8601 weeks (Monday to Sunday, numbered in the ISO week-numbering year). */
  weekly?: number;
  monthly?: number;
  yearly?: number;
  /** Keep every snapshot newer than this span before the newest snapshot. */
  within?: CalendarDuration;
  withinHourly?: CalendarDuration;
  withinDaily?: CalendarDuration;
  withinWeekly?: CalendarDuration;
  withinMonthly?: CalendarDuration;
  withinYearly?: CalendarDuration;
  /** Keep any snapshot that carries all tags of one of these lists. */
  tags?: string[][];
}

export interface RetentionSnapshot {
  id: string;
  time: Date;
  tags: string[];
}

export interface KeptSnapshot {
  id: string;
  reasons: string[];
}

export interface RetentionPlan {
  /** Newest first. */
  keep: KeptSnapshot[];
  /** Newest first. */
  remove: string[];
}

export const COUNT_RULES = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
export const WITHIN_RULES = ['within', 'withinHourly', 'withinDaily', 'withinWeekly', 'withinMonthly', 'withinYearly'] as const;
export type CountRule = (typeof COUNT_RULES)[number];
export type WithinRule = (typeof WITHIN_RULES)[number];

export const EMPTY_POLICY_REASON = 'no retention rule set';

// The `last` rule's period is the snapshot's position: every snapshot starts a new one.
const COUNT_PERIODS: Record<CountRule, PeriodOf | null> = {
  last: null,
  hourly: hourOf,
  daily: dayOf,
  weekly: weekOf,
  monthly: monthOf,
  yearly: yearOf,
};
const WITHIN_PERIODS: Record<Exclude<WithinRule, 'within'>, { periodOf: PeriodOf; word: string }> = {
  withinHourly: { periodOf: hourOf, word: 'hourly' },
  withinDaily: { periodOf: dayOf, word: 'daily' },
  withinWeekly: { periodOf: weekOf, word: 'weekly' },
  withinMonthly: { periodOf: monthOf, word: 'monthly' },
  withinYearly: { periodOf: yearOf, word: 'yearly' },
};
const COUNT_REASON: Record<CountRule, string> = {
  last: 'last snapshot',
  hourly: 'hourly snapshot',
  daily: 'daily snapshot',
  weekly: 'weekly snapshot',
  monthly: 'monthly snapshot',
  yearly: 'yearly snapshot',
};

/** When no snapshot is older than `now`, restic measures from Go's zero time: 0001-01-01T00:00:00Z. */
const ZERO_TIME_MS = (() => {
  const t = new Date(0);
  t.setUTCFullYear(1, 0, 1);
  return t.getTime();
})();

/** What is wrong with a policy, one line per rule, empty when it is valid. */
export function policyProblems(policy: RetentionPolicy): string[] {
  const problems: string[] = [];
  for (const rule of COUNT_RULES) {
    const n = policy[rule];
    if (n !== undefined && !(Number.isSafeInteger(n) && n >= -1))
      problems.push(`${rule}: ${n} is not a count (a whole number from 0, or -1 for no limit)`);
  }
  for (const rule of WITHIN_RULES) {
    const d = policy[rule];
    if (d === undefined) continue;
    const parts = [d.years, d.months, d.days, d.hours];
    if (!parts.every((x) => Number.isSafeInteger(x) && x >= 0))
      problems.push(`${rule}: years, months, days and hours must be whole numbers from 0`);
  }
  (policy.tags ?? []).forEach((list, i) => {
    if (list.length === 0) problems.push(`tags[${i}]: a tag list is empty (it would keep every snapshot)`);
    else if (list.some((t) => t.length === 0)) problems.push(`tags[${i}]: a tag is empty`);
  });
  return problems;
}

export function isEmptyPolicy(policy: RetentionPolicy): boolean {
  return COUNT_RULES.every((r) => !policy[r]) && WITHIN_RULES.every((r) => isZeroDuration(policy[r])) && (policy.tags ?? []).length === 0;
}

/** Newest first; equal times keep their input order (Array.prototype.sort is stable). */
export function sortNewestFirst<T extends { time: Date }>(snapshots: readonly T[]): T[] {
  return snapshots
    .map((s) => ({ s, ms: s.time.getTime() }))
    .sort((a, b) => b.ms - a.ms)
    .map((x) => x.s);
}

/** The newest snapshot time that is before `now`, the reference the within rules measure back from. */
function withinReference(timesMs: number[], nowMs: number): number {
  let latest = ZERO_TIME_MS;
  for (const t of timesMs) if (t > latest && t < nowMs) latest = t;
  return latest;
}

function checkInput(snapshots: readonly RetentionSnapshot[], policy: RetentionPolicy, now: Date): void {
  const problems = policyProblems(policy);
  if (problems.length) {
    throw new TcabError(`Invalid retention policy: ${problems.join('; ')}`, {
      code: 'RETENTION_POLICY_INVALID',
      hint: 'the retention setting of this target',
    });
  }
  if (Number.isNaN(now.getTime())) throw new TcabError('Retention planning got an invalid "now" time', { code: 'RETENTION_INPUT_INVALID' });
  const seen = new Set<string>();
  for (const s of snapshots) {
    if (seen.has(s.id))
      throw new TcabError(`Retention planning got snapshot ${s.id} twice`, {
        code: 'RETENTION_INPUT_INVALID',
        hint: 'the snapshot listing: each id must appear once',
      });
    seen.add(s.id);
    if (Number.isNaN(s.time.getTime()))
      throw new TcabError(`Retention planning got snapshot ${s.id} with an invalid time`, {
        code: 'RETENTION_INPUT_INVALID',
        hint: "the snapshot's manifest (createdAt)",
      });
  }
}

function hasAllTags(snapshotTags: ReadonlySet<string>, list: readonly string[]): boolean {
  return list.every((t) => snapshotTags.has(t));
}

/**
 * Which snapshots the policy keeps (newest first, each with its reasons) and which it removes (newest
 * first). Pure: no I/O, and `now` only decides which snapshots count as "in the future".
 */
export function planRetention(snapshots: readonly RetentionSnapshot[], policy: RetentionPolicy, now: Date = new Date()): RetentionPlan {
  checkInput(snapshots, policy, now);
  const sorted = sortNewestFirst(snapshots);
  if (isEmptyPolicy(policy)) return { keep: sorted.map((s) => ({ id: s.id, reasons: [EMPTY_POLICY_REASON] })), remove: [] };

  const timesMs = sorted.map((s) => s.time.getTime());
  const reference = withinReference(timesMs, now.getTime());
  const within = isZeroDuration(policy.within)
    ? null
    : { cutoff: subtractCalendarDuration(reference, policy.within!), reason: `within ${formatCalendarDuration(policy.within!)}` };

  const counters = COUNT_RULES.filter((r) => policy[r]).map((r) => ({
    left: policy[r]!,
    periodOf: COUNT_PERIODS[r],
    reason: COUNT_REASON[r],
    previous: undefined as number | undefined,
  }));
  const windows = (Object.keys(WITHIN_PERIODS) as Array<keyof typeof WITHIN_PERIODS>)
    .filter((r) => !isZeroDuration(policy[r]))
    .map((r) => ({
      ...WITHIN_PERIODS[r],
      cutoff: subtractCalendarDuration(reference, policy[r]!),
      reason: `${WITHIN_PERIODS[r].word} within ${formatCalendarDuration(policy[r]!)}`,
      previous: undefined as number | undefined,
    }));
  const tagLists = policy.tags ?? [];

  const plan: RetentionPlan = { keep: [], remove: [] };
  const oldest = sorted.length - 1;
  sorted.forEach((snapshot, nr) => {
    const t = timesMs[nr]!;
    const reasons: string[] = [];
    if (tagLists.length) {
      const own = new Set(snapshot.tags);
      for (const list of tagLists) if (hasAllTags(own, list)) reasons.push(`has tags [${list.join(', ')}]`);
    }
    if (within && t > within.cutoff) reasons.push(within.reason);
    for (const c of counters) {
      if (c.left === 0) continue;
      const period = c.periodOf ? c.periodOf(t) : nr;
      if (period === c.previous && nr !== oldest) continue;
      reasons.push(period === c.previous ? `oldest ${c.reason}` : c.reason);
      c.previous = period;
      if (c.left > 0) c.left--;
    }
    for (const w of windows) {
      if (!(t > w.cutoff)) continue;
      const period = w.periodOf(t);
      if (period === w.previous && nr !== oldest) continue;
      reasons.push(period === w.previous ? `oldest ${w.reason}` : w.reason);
      w.previous = period;
    }
    if (reasons.length) plan.keep.push({ id: snapshot.id, reasons });
    else plan.remove.push(snapshot.id);
  });
  return plan;
}
