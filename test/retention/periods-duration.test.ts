import { describe, expect, it } from 'vitest';
import { formatCalendarDuration, isZeroDuration, parseCalendarDuration, subtractCalendarDuration } from '../../src/retention/duration.js';
import { dayOf, hourOf, isoWeek, monthOf, weekOf, yearOf } from '../../src/retention/periods.js';

const ms = (iso: string) => new Date(iso).getTime();

describe('ISO 8601 weeks', () => {
  // Dates whose ISO week is a well-known edge: years starting on Thursday/Friday/Saturday, Dec 31 in week 1,
  // Jan 1 in week 53.
  const known: Array<[string, number, number]> = [
    ['2005-01-01', 2004, 53], // Saturday: the last week of 2004
    ['2005-01-02', 2004, 53],
    ['2005-12-31', 2005, 52],
    ['2007-01-01', 2007, 1], // the year starts on a Monday
    ['2007-12-30', 2007, 52],
    ['2007-12-31', 2008, 1], // Dec 31 in week 1 of the next year
    ['2008-12-29', 2009, 1],
    ['2008-12-31', 2009, 1],
    ['2009-01-01', 2009, 1], // the year starts on a Thursday: 53 weeks
    ['2009-12-31', 2009, 53],
    ['2010-01-03', 2009, 53], // Jan 3 still in week 53 of the year before
    ['2010-01-04', 2010, 1],
    ['2015-01-01', 2015, 1], // Thursday
    ['2014-12-29', 2015, 1],
    ['2016-01-01', 2015, 53], // Friday: Jan 1 in week 53
    ['2020-12-31', 2020, 53],
    ['2021-01-01', 2020, 53],
    ['2021-01-03', 2020, 53],
    ['2021-01-04', 2021, 1],
  ];
  for (const [day, year, week] of known) {
    it(`${day} is ${year}-W${String(week).padStart(2, '0')}`, () => {
      expect(isoWeek(ms(`${day}T00:00:00Z`))).toEqual({ year, week });
      expect(isoWeek(ms(`${day}T23:59:59.999Z`))).toEqual({ year, week });
      expect(weekOf(ms(`${day}T12:00:00Z`))).toBe(year * 100 + week);
    });
  }

  it('changes only on Mondays and counts 1, 2, ... 52 or 53 in every year from 1990 to 2060', () => {
    let prev = isoWeek(ms('1990-01-01T00:00:00Z')); // a Monday, week 1
    expect(prev).toEqual({ year: 1990, week: 1 });
    for (let t = ms('1990-01-02T12:00:00Z'); t < ms('2060-01-01T00:00:00Z'); t += 86_400_000) {
      const cur = isoWeek(t);
      const monday = new Date(t).getUTCDay() === 1;
      if (!monday) expect(cur).toEqual(prev);
      else if (cur.year === prev.year) expect(cur.week).toBe(prev.week + 1);
      else {
        expect([52, 53]).toContain(prev.week);
        expect(cur).toEqual({ year: prev.year + 1, week: 1 });
      }
      prev = cur;
    }
  });
});

describe('calendar periods in UTC', () => {
  it('split at UTC hour, day, month and year boundaries', () => {
    expect(hourOf(ms('2026-11-24T16:59:59.999Z'))).not.toBe(hourOf(ms('2026-11-24T17:00:00Z')));
    expect(hourOf(ms('2026-11-24T17:00:00Z'))).toBe(hourOf(ms('2026-11-24T17:59:59Z')));
    expect(dayOf(ms('2026-11-24T23:59:59.999Z'))).not.toBe(dayOf(ms('2026-11-25T00:00:00Z')));
    // A +01:00 time that is still the previous day in UTC.
    expect(dayOf(ms('2026-11-25T00:30:00+01:00'))).toBe(dayOf(ms('2026-11-24T12:00:00Z')));
    expect(monthOf(ms('2026-02-28T23:59:59Z'))).not.toBe(monthOf(ms('2026-03-01T00:00:00Z')));
    expect(yearOf(ms('2025-12-31T23:59:59Z'))).toBe(2025);
    expect(yearOf(ms('2026-01-01T00:00:00Z'))).toBe(2026);
  });
});

describe('retention durations', () => {
  it('parse years, months, days and hours in any order, and print them largest first', () => {
    expect(parseCalendarDuration('1y2m3d4h')).toEqual({ years: 1, months: 2, days: 3, hours: 4 });
    expect(parseCalendarDuration(' 1y1d1m ')).toEqual({ years: 1, months: 1, days: 1, hours: 0 });
    expect(formatCalendarDuration(parseCalendarDuration('1y1d1m'))).toBe('1y1m1d');
    expect(formatCalendarDuration(parseCalendarDuration('13d23h'))).toBe('13d23h');
    expect(formatCalendarDuration(parseCalendarDuration('0d'))).toBe('0h');
    expect(isZeroDuration(parseCalendarDuration('0d0h'))).toBe(true);
    expect(isZeroDuration(parseCalendarDuration('1h'))).toBe(false);
  });

  it('reject what is not one, saying what is expected', () => {
    expect(() => parseCalendarDuration('')).toThrow(/empty.*y \(years\), m \(months\)/);
    expect(() => parseCalendarDuration('30min')).toThrow(/unknown unit "min".*minutes and seconds are too fine/);
    expect(() => parseCalendarDuration('7')).toThrow(/no unit after 7/);
    expect(() => parseCalendarDuration('1d2d')).toThrow(/unit "d" twice/);
    expect(() => parseCalendarDuration('-1d')).toThrow(/"-1d" is not a retention duration/);
    expect(() => parseCalendarDuration('1.5d')).toThrow(/is not a retention duration|unknown unit/);
    expect(() => parseCalendarDuration('1w')).toThrow(/unknown unit "w"/);
    expect(() => parseCalendarDuration('1234567d')).toThrow(/too long/);
  });

  it('subtract months with the calendar, normalising day overflow as restic does', () => {
    const back = (from: string, d: string) => new Date(subtractCalendarDuration(ms(from), parseCalendarDuration(d))).toISOString();
    expect(back('2023-03-31T10:00:00Z', '1m')).toBe('2023-03-03T10:00:00.000Z');
    expect(back('2024-03-31T10:00:00Z', '1m')).toBe('2024-03-02T10:00:00.000Z');
    expect(back('2024-02-29T00:00:00Z', '1y1m')).toBe('2023-01-29T00:00:00.000Z');
    expect(back('2024-02-29T00:00:00Z', '1y')).toBe('2023-03-01T00:00:00.000Z');
    expect(back('2026-01-01T05:00:00Z', '1d6h')).toBe('2025-12-30T23:00:00.000Z');
    expect(back('2016-01-18T12:02:03Z', '1y2m3d3h')).toBe('2014-11-15T09:02:03.000Z');
    // Further back than a JavaScript date reaches: earlier than any snapshot.
    expect(subtractCalendarDuration(ms('2026-01-01T00:00:00Z'), parseCalendarDuration('999999y'))).toBe(-Infinity);
  });
});
