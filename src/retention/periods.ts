/**
 * The calendar periods retention buckets snapshots into, in UTC. Each function maps a time to a number
 * that is equal for two times exactly when they fall in the same period.
 */
export type PeriodOf = (timeMs: number) => number;

const DAY_MS = 86_400_000;

export const hourOf: PeriodOf = (ms) => {
  const t = new Date(ms);
  return t.getUTCFullYear() * 1_000_000 + (t.getUTCMonth() + 1) * 10_000 + t.getUTCDate() * 100 + t.getUTCHours();
};

export const dayOf: PeriodOf = (ms) => {
  const t = new Date(ms);
  return t.getUTCFullYear() * 10_000 + (t.getUTCMonth() + 1) * 100 + t.getUTCDate();
};

/** ISO 8601 week-numbering year and week, as year * 100 + week. */
export function isoWeek(ms: number): { year: number; week: number } {
  const midnight = Math.floor(ms / DAY_MS) * DAY_MS;
  const mondayBased = (new Date(midnight).getUTCDay() + 6) % 7;
  // A week belongs to the year that holds its Thursday.
  const thursday = new Date(midnight + (3 - mondayBased) * DAY_MS);
  const year = thursday.getUTCFullYear();
  const jan1 = new Date(0);
  jan1.setUTCFullYear(year, 0, 1);
  const week = Math.floor((thursday.getTime() - jan1.getTime()) / (7 * DAY_MS)) + 1;
  return { year, week };
}

export const weekOf: PeriodOf = (ms) => {
  const { year, week } = isoWeek(ms);
  return year * 100 + week;
};

export const monthOf: PeriodOf = (ms) => {
  const t = new Date(ms);
  return t.getUTCFullYear() * 100 + (t.getUTCMonth() + 1);
};

export const yearOf: PeriodOf = (ms) => new Date(ms).getUTCFullYear();
