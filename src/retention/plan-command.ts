/**
 * `tcab-backup retention plan`: the policy alone, no safety rails, as a stable JSON interface.
 *
 *   stdin:  {"policy": {"daily": 7, "withinDaily": "30d", "tags": [["pinned"]], ...},
 *            "snapshots": [{"id": "...", "time": "2026-11-24T16:13:00Z", "tags": ["pinned"]}, ...],
 *            "now": "2026-11-25T00:00:00Z"}                         ("now" optional: the current time)
 *   stdout: {"keep": [{"id": "...", "reasons": ["daily snapshot"]}, ...], "remove": ["...", ...]}
 *
 * Both lists are newest first. Policy keys are those of RetentionPolicy; durations are strings like 1y2m3d4h.
 * Snapshot objects may carry more fields (e.g. piped from `tcab-backup list --json`); they are ignored.
 * Times are compared to the millisecond.
 */
import { z } from 'zod';
import { TcabError } from '../errors.js';
import { parseCalendarDuration } from './duration.js';
import { planRetention, type RetentionPolicy, type RetentionSnapshot } from './policy.js';

const Count = z
  .number({ message: 'expected a count: a whole number from 0, or -1 for no limit' })
  .int('expected a whole number')
  .min(-1, 'expected a whole number from 0, or -1 for no limit');

const Duration = z.string({ message: 'expected a duration string like 7d or 1y2m3d4h' }).transform((s, ctx) => {
  try {
    return parseCalendarDuration(s);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});

const Time = z.iso
  .datetime({ offset: true, message: 'expected an ISO 8601 time with a zone, like 2026-11-24T16:13:00Z' })
  .transform((s) => new Date(s));

export const RetentionPolicySchema = z.strictObject(
  {
    last: Count.optional(),
    hourly: Count.optional(),
    daily: Count.optional(),
    weekly: Count.optional(),
    monthly: Count.optional(),
    yearly: Count.optional(),
    within: Duration.optional(),
    withinHourly: Duration.optional(),
    withinDaily: Duration.optional(),
    withinWeekly: Duration.optional(),
    withinMonthly: Duration.optional(),
    withinYearly: Duration.optional(),
    tags: z
      .array(
        z
          .array(z.string().min(1, 'a tag may not be empty'), { message: 'expected a list of tags' })
          .min(1, 'a tag list may not be empty (it would keep every snapshot)'),
        { message: 'expected a list of tag lists, like [["pinned"], ["release", "v1"]]' },
      )
      .optional(),
  },
  { message: 'expected an object of rules, like {"daily": 7, "weekly": 4}' },
);

const SnapshotSchema = z.object(
  {
    id: z.string({ message: 'expected the snapshot id as a string' }).min(1, 'the snapshot id may not be empty'),
    time: Time,
    tags: z.array(z.string(), { message: 'expected a list of tag strings' }).default([]),
  },
  { message: 'expected a snapshot object {"id", "time", "tags"}' },
);

export const RetentionPlanInputSchema = z
  .strictObject(
    {
      policy: RetentionPolicySchema,
      snapshots: z.array(SnapshotSchema, { message: 'expected a list of snapshots' }),
      now: Time.optional(),
    },
    { message: 'expected an object {"policy": {...}, "snapshots": [...], "now"?}' },
  )
  .superRefine((input, ctx) => {
    const first = new Map<string, number>();
    input.snapshots.forEach((s, i) => {
      const earlier = first.get(s.id);
      if (earlier !== undefined)
        ctx.addIssue({
          code: 'custom',
          path: ['snapshots', i, 'id'],
          message: `"${s.id}" is also snapshots[${earlier}].id: each snapshot must appear once`,
        });
      else first.set(s.id, i);
    });
  });

function pathOf(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : `${out ? '.' : ''}${String(p)}`;
  return out || '(input)';
}

const HINT = 'the JSON on stdin: {"policy": {"daily": 7, ...}, "snapshots": [{"id", "time", "tags"}], "now"?}';

export function runRetentionPlanCommand(stdinText: string): string {
  let json: unknown;
  try {
    json = JSON.parse(stdinText);
  } catch (e) {
    throw new TcabError(`Retention plan input is not JSON: ${(e as Error).message}`, { code: 'RETENTION_INPUT_INVALID', hint: HINT });
  }
  const parsed = RetentionPlanInputSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => {
      const unknown = i.code === 'unrecognized_keys' ? `unknown field(s) ${i.keys.map((k) => `"${k}"`).join(', ')}` : i.message;
      return `${pathOf(i.path)}: ${unknown}`;
    });
    throw new TcabError(`Invalid retention plan input: ${issues.join('; ')}`, { code: 'RETENTION_INPUT_INVALID', hint: HINT });
  }
  const { policy, snapshots, now } = parsed.data;
  const plan = planRetention(snapshots as RetentionSnapshot[], policy as RetentionPolicy, now ?? new Date());
  return JSON.stringify(plan, null, 2) + '\n';
}
