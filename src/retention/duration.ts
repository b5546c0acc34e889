/**
 * Retention durations ("1y2m3d4h"): calendar spans, as restic's --keep-within takes them. Unlike the
 * fixed-length durations of other settings (src/util/duration.ts), "m" means months here and a month or a
 * year is as long as the calendar says, so "1m" back from March 31 lands on March 3 (or 2 in a leap year).
 */
export interface CalendarDuration {
  years: number;
  months: number;
  days: number;
  hours: number;
}

const UNITS = { y: 'years', m: 'months', d: 'days', h: 'hours' } as const;
const FORMAT = 'numbers with units y (years), m (months), d (days), h (hours), like 30d or 1y2m3d4h';
// Six digits reach far past any backup history; more is a typo, not a policy.
const MAX_DIGITS = 6;

export function parseCalendarDuration(text: string): CalendarDuration {
  const t = text.trim();
  if (!t) throw new Error(`a duration is empty: expected ${FORMAT}`);
  const d: CalendarDuration = { years: 0, months: 0, days: 0, hours: 0 };
  const seen = new Set<string>();
  const re = /(\d+)([A-Za-z]*)/gy;
  let m: RegExpExecArray | null;
  let at = 0;
  while (at < t.length) {
    re.lastIndex = at;
    m = re.exec(t);
    if (!m) throw new Error(`"${text}" is not a retention duration: expected ${FORMAT}`);
    const [, digits, unit] = m as unknown as [string, string, string];
    if (!unit && re.lastIndex === t.length) throw new Error(`"${text}" has no unit after ${digits}: expected ${FORMAT}`);
    if (!unit) throw new Error(`"${text}" is not a retention duration: expected whole ${FORMAT}`);
    if (!(unit in UNITS))
      throw new Error(`"${text}" has the unknown unit "${unit}": expected ${FORMAT} (minutes and seconds are too fine for retention)`);
    if (seen.has(unit)) throw new Error(`"${text}" gives the unit "${unit}" twice`);
    if (digits.length > MAX_DIGITS) throw new Error(`"${text}" is too long a duration (at most ${MAX_DIGITS} digits per unit)`);
    seen.add(unit);
    d[UNITS[unit as keyof typeof UNITS]] = Number(digits);
    at = re.lastIndex;
  }
  return d;
}

/** Canonical text, largest unit first, as restic prints it: "1y1m1d" for "1y1d1m". */
export function formatCalendarDuration(d: CalendarDuration): string {
  const s = `${d.years ? `${d.years}y` : ''}${d.months ? `${d.months}m` : ''}${d.days ? `${d.days}d` : ''}${d.hours ? `${d.hours}h` : ''}`;
  return s || '0h';
}

/** A zero duration means the rule is not set (restic treats "0d" the same as leaving the option out). */
export function isZeroDuration(d: CalendarDuration | undefined): boolean {
  return !d || (d.years === 0 && d.months === 0 && d.days === 0 && d.hours === 0);
}

const HOUR_MS = 3_600_000;

/**
 * `fromMs` minus the duration, in UTC, with years, months and days taken together and the day overflow
 * normalised afterwards (Go's AddDate(-y, -m, -d), then minus the hours), which is what restic does: one
 * year and one month back from 2024-02-29 is 2023-01-29, not 2023-02-01. A result beyond the range of a
 * JavaScript date is -Infinity: earlier than any snapshot can be.
 */
export function subtractCalendarDuration(fromMs: number, d: CalendarDuration): number {
  const t = new Date(fromMs);
  t.setUTCFullYear(t.getUTCFullYear() - d.years, t.getUTCMonth() - d.months, t.getUTCDate() - d.days);
  const ms = t.getTime() - d.hours * HOUR_MS;
  return Number.isNaN(ms) ? -Infinity : ms;
}
