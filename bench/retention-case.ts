/**
 * Retention case: planning a target that holds 10,000 snapshots (over a year of hourly snapshots, far more
 * than the default policy ever leaves behind), with the default policy and the safety rails, as prune does
 * for each target. The rails are run forced: unforced, the max-delete-share rail would refuse at once and
 * skip the work a real forced clean-up does.
 */
import { performance } from 'node:perf_hooks';
import { planRetention } from '../src/retention/policy.js';
import { applySafetyRails, type GuardedPlan, type RailSnapshot } from '../src/retention/rails.js';
import {
  DEFAULT_MAX_DELETE_SHARE,
  DEFAULT_MIN_AGE,
  DEFAULT_MIN_KEEP,
  DEFAULT_RETENTION_POLICY,
  DEFAULT_RETENTION_POLICY_TEXT,
} from '../src/retention/settings.js';
import { syntheticHistory } from '../src/retention/synthetic.js';
import { parseDurationMs } from '../src/util/duration.js';
import { atMost, holds, type BenchCase, type CaseResult } from './case.js';
import { formatSeconds, median, round } from './stats.js';

const SNAPSHOTS = 10_000;
/** "Well under a second": a quarter of one, for the median run. */
export const RETENTION_TARGET_MS = 250;

function planOnce(history: readonly RailSnapshot[], now: Date): { ms: number; plan: GuardedPlan } {
  const t0 = performance.now();
  const plan = applySafetyRails(
    planRetention(history, DEFAULT_RETENTION_POLICY, now),
    history,
    {
      minKeep: DEFAULT_MIN_KEEP,
      minAgeMs: parseDurationMs(DEFAULT_MIN_AGE),
      maxDeleteShare: DEFAULT_MAX_DELETE_SHARE,
      force: true,
      listingComplete: true,
      target: 'bench',
    },
    now,
  );
  return { ms: performance.now() - t0, plan };
}

export const retentionCase: BenchCase = {
  name: 'retention',
  title: `retention plan + safety rails over ${SNAPSHOTS.toLocaleString('en')} snapshots`,
  run: async (options): Promise<CaseResult> => {
    const now = new Date();
    const history: RailSnapshot[] = syntheticHistory(SNAPSHOTS, { newest: now }).map((s) => ({ ...s, verified: true }));
    const runs = Array.from({ length: options.retentionRuns }, () => planOnce(history, now));
    const times = runs.map((r) => r.ms);
    const medianMs = median(times);
    const plan = runs.at(-1)!.plan;
    const complete = plan.keep.length + plan.remove.length === SNAPSHOTS && plan.keep.length > 0 && plan.refused === null;
    return {
      checks: [
        atMost(
          `retention plan of ${SNAPSHOTS.toLocaleString('en')} snapshots (median of ${options.retentionRuns})`,
          medianMs,
          RETENTION_TARGET_MS,
          formatSeconds,
        ),
        holds(
          'the plan covers every snapshot, keeps some, is not refused',
          complete,
          `${plan.keep.length} kept, ${plan.remove.length} removed`,
          `the plan has ${plan.keep.length} kept and ${plan.remove.length} removed of ${SNAPSHOTS}${plan.refused ? `, refused: ${plan.refused.message}` : ''}`,
        ),
      ],
      notes: [
        `policy ${DEFAULT_RETENTION_POLICY_TEXT}; rails min keep ${DEFAULT_MIN_KEEP}, min age ${DEFAULT_MIN_AGE}, max delete share ${DEFAULT_MAX_DELETE_SHARE} (forced)`,
        `${options.retentionRuns} runs in this process: first ${formatSeconds(times[0]!)} (includes JIT warm-up), median ${formatSeconds(medianMs)}, ` +
          `min ${formatSeconds(Math.min(...times))}, max ${formatSeconds(Math.max(...times))}; ${plan.keep.length} kept, ${plan.remove.length} removed, rails: ${plan.rails.map((r) => r.rail).join(', ') || 'none'}`,
      ],
      details: {
        snapshots: SNAPSHOTS,
        policy: DEFAULT_RETENTION_POLICY_TEXT,
        runs: options.retentionRuns,
        samplesMs: times.map((t) => round(t, 2)),
        medianMs: round(medianMs, 2),
        kept: plan.keep.length,
        removed: plan.remove.length,
        rails: plan.rails.map((r) => ({ rail: r.rail, snapshots: r.ids.length })),
      },
    };
  },
};
