/**
 * How far apart the runs of an NCRONTAB schedule can be. The verify rotation must know it: a snapshot left
 * out of this run waits until the next one, so the longest gap (not the average) decides how many
 * snapshots each run must read to keep every one within TCAB_BACKUP_VERIFY_WITHIN.
 *
 * Six fields, UTC, as Azure Functions reads them: second minute hour day month weekday. Each field takes
 * "*", a value, a range "a-b", a step "* /n" or "a-b/n" (without the space), and comma lists of those;
 * months and weekdays also take three-letter names. Day and weekday must both match (NCrontab's rule).
 */
const DAY_MS = 86_400_000;

interface FieldSpec {
  name: string;
  min: number;
  max: number;
  names?: string[];
}

const FIELDS: FieldSpec[] = [
  { name: 'second', min: 0, max: 59 },
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12, names: ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'] },
  { name: 'weekday', min: 0, max: 6, names: ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] },
];

function value(text: string, f: FieldSpec): number {
  const named = f.names?.indexOf(text.toLowerCase()) ?? -1;
  if (named >= 0) return named + f.min;
  if (!/^\d{1,2}$/.test(text)) throw new Error(`${f.name} field: "${text}" is not a number${f.names ? ' or a name' : ''}`);
  const n = Number(text);
  if (n < f.min || n > f.max) throw new Error(`${f.name} field: ${n} is outside ${f.min}-${f.max}`);
  return n;
}

function parseField(text: string, f: FieldSpec): Set<number> {
  const out = new Set<number>();
  for (const part of text.split(',')) {
    const [range = '', stepText] = part.split('/');
    const step = stepText === undefined ? 1 : Number(stepText);
    if (!Number.isInteger(step) || step < 1) throw new Error(`${f.name} field: step "${stepText}" must be a whole number from 1`);
    let lo: number;
    let hi: number;
    if (range === '*') [lo, hi] = [f.min, f.max];
    else if (range.includes('-')) {
      const [a = '', b = ''] = range.split('-');
      [lo, hi] = [value(a, f), value(b, f)];
      if (lo > hi) throw new Error(`${f.name} field: range ${range} runs backwards`);
    } else {
      lo = value(range, f);
      hi = stepText === undefined ? lo : f.max;
    }
    for (let v = lo; v <= hi; v += step) out.add(v);
  }
  return out;
}

/** The longest time between two consecutive runs of `schedule`, looking two years ahead of `from`. */
export function longestGapMs(schedule: string, from: Date = new Date()): number {
  const parts = schedule.trim().split(/\s+/);
  if (parts.length !== 6) throw new Error(`"${schedule}" has ${parts.length} fields; expected six: second minute hour day month weekday`);
  const [seconds, minutes, hours, days, months, weekdays] = parts.map((p, i) => parseField(p, FIELDS[i]!)) as [
    Set<number>,
    Set<number>,
    Set<number>,
    Set<number>,
    Set<number>,
    Set<number>,
  ];
  const times: number[] = [];
  for (const h of [...hours].sort((a, b) => a - b)) {
    for (const m of [...minutes].sort((a, b) => a - b)) {
      for (const s of [...seconds].sort((a, b) => a - b)) times.push((h * 3600 + m * 60 + s) * 1000);
    }
  }
  let longest = 0;
  for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i]! - times[i - 1]!);
  const start = Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate());
  let previousDay: number | undefined;
  let firingDays = 0;
  for (let day = start; day < start + 731 * DAY_MS; day += DAY_MS) {
    const d = new Date(day);
    if (!days.has(d.getUTCDate()) || !months.has(d.getUTCMonth() + 1) || !weekdays.has(d.getUTCDay())) continue;
    firingDays++;
    if (previousDay !== undefined) longest = Math.max(longest, day + times[0]! - (previousDay + times[times.length - 1]!));
    previousDay = day;
  }
  if (firingDays < 2) throw new Error(`"${schedule}" runs ${firingDays === 0 ? 'never' : 'once'} in two years`);
  return longest;
}
