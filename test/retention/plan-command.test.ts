import { describe, expect, it } from 'vitest';
import { TcabError } from '../../src/errors.js';
import { runRetentionPlanCommand } from '../../src/retention/plan-command.js';

const input = (value: unknown) => JSON.stringify(value);
const snapshots = [
  { id: 'b', time: '2026-11-23T10:00:00Z', tags: [] },
  { id: 'a', time: '2026-11-24T10:00:00+01:00', tags: ['pinned'] },
];

function errorOf(text: string): TcabError {
  try {
    runRetentionPlanCommand(text);
  } catch (e) {
    expect(e).toBeInstanceOf(TcabError);
    return e as TcabError;
  }
  throw new Error('expected the command to fail');
}

describe('tcab-backup retention plan', () => {
  it('writes keep (with reasons) and remove, newest first, as JSON', () => {
    const out = runRetentionPlanCommand(input({ policy: { last: 1 }, snapshots, now: '2026-11-25T00:00:00Z' }));
    expect(JSON.parse(out)).toEqual({ keep: [{ id: 'a', reasons: ['last snapshot'] }], remove: ['b'] });
    expect(out.endsWith('\n')).toBe(true);
  });

  it('takes durations and tag lists as the architecture names them, and ignores extra snapshot fields', () => {
    const out = runRetentionPlanCommand(
      input({
        policy: { withinDaily: '1d', tags: [['pinned']] },
        snapshots: [...snapshots.map((s) => ({ ...s, verified: true, artifact: { bytes: 1 } })), { id: 'c', time: '2026-11-20T00:00:00Z' }],
        now: '2026-11-25T00:00:00Z',
      }),
    );
    expect(JSON.parse(out)).toEqual({
      // a is 09:00 UTC on the 24th, so the day before from 09:00 on is within a day of it.
      keep: [
        { id: 'a', reasons: ['has tags [pinned]', 'daily within 1d'] },
        { id: 'b', reasons: ['daily within 1d'] },
      ],
      remove: ['c'],
    });
  });

  it('uses the current time when "now" is not given', () => {
    const future = new Date(Date.now() + 86_400_000).toISOString();
    const past = new Date(Date.now() - 3_600_000).toISOString();
    const older = new Date(Date.now() - 3 * 86_400_000).toISOString();
    const out = JSON.parse(
      runRetentionPlanCommand(
        input({
          policy: { within: '1d' },
          snapshots: [
            { id: 'future', time: future, tags: [] },
            { id: 'past', time: past, tags: [] },
            { id: 'older', time: older, tags: [] },
          ],
        }),
      ),
    );
    expect(out.remove).toEqual(['older']);
  });

  it('says when the input is not JSON', () => {
    const e = errorOf('{"policy": ');
    expect(e.message).toMatch(/^Retention plan input is not JSON: .*Check: the JSON on stdin/);
  });

  it('names the field and the snapshot index of each problem, all at once', () => {
    const e = errorOf(
      input({
        policy: { daily: -2, dayly: 3, within: '30min', tags: [[]] },
        snapshots: [
          { id: 'a', time: '2026-11-24T10:00:00Z', tags: [] },
          { id: '', time: 'yesterday', tags: 'pinned' },
          { id: 'a', time: '2026-11-24T11:00:00Z' },
        ],
        now: 'soon',
        extra: true,
      }),
    );
    expect(e.message).toMatch(/^Invalid retention plan input: /);
    expect(e.message).toContain('policy.daily: expected a whole number from 0, or -1 for no limit');
    expect(e.message).toContain('policy: unknown field(s) "dayly"');
    expect(e.message).toContain('policy.within: "30min" has the unknown unit "min"');
    expect(e.message).toContain('policy.tags[0]: a tag list may not be empty');
    expect(e.message).toContain('snapshots[1].id: the snapshot id may not be empty');
    expect(e.message).toContain('snapshots[1].time: expected an ISO 8601 time with a zone, like 2026-11-24T16:13:00Z');
    expect(e.message).toContain('snapshots[1].tags: expected a list of tag strings');
    expect(e.message).toContain('now: expected an ISO 8601 time with a zone');
    expect(e.message).toContain('(input): unknown field(s) "extra"');
    expect(e.message).toMatch(/Check: the JSON on stdin/);
  });

  it('refuses a snapshot listed twice, naming both indexes', () => {
    const e = errorOf(
      input({ policy: { last: 1 }, snapshots: [snapshots[0], snapshots[1], { ...snapshots[0], time: '2026-11-01T00:00:00Z' }] }),
    );
    expect(e.message).toContain('snapshots[2].id: "b" is also snapshots[0].id: each snapshot must appear once');
  });

  it('refuses what is not an input object, and a time without a zone', () => {
    expect(errorOf('[]').message).toContain('(input): expected an object {"policy": {...}, "snapshots": [...], "now"?}');
    expect(errorOf(input({ snapshots: [] })).message).toContain('policy: expected an object of rules');
    expect(errorOf(input({ policy: {}, snapshots: [{ id: 'x', time: '2026-11-24T10:00:00', tags: [] }] })).message).toContain(
      'snapshots[0].time: expected an ISO 8601 time with a zone',
    );
  });
});
