/**
 * A long, realistic snapshot history for exercising the planner at scale (tests and the benchmark):
 * one snapshot per interval back from `newest`, a few minutes of deterministic jitter as a timer-triggered
 * function has, an occasional second (manual) snapshot in the same hour, and now and then a pinned one.
 */
import type { RetentionSnapshot } from './policy.js';

export interface SyntheticHistoryOptions {
  newest: Date;
  /** Default one hour. */
  intervalMs?: number;
  /** Every n-th snapshot is followed by a manual one ten minutes earlier; default 97. */
  manualEvery?: number;
  /** Every n-th snapshot is pinned; default 1000. */
  pinnedEvery?: number;
}

function snapshotId(ms: number, n: number): string {
  const iso = new Date(ms).toISOString();
  const stamp = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}T${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  return `${stamp}-${(n >>> 0).toString(16).padStart(8, '0')}`;
}

/** `count` snapshots, oldest first (the order a listing by key returns), ids in the agent's format. */
export function syntheticHistory(count: number, options: SyntheticHistoryOptions): RetentionSnapshot[] {
  const interval = options.intervalMs ?? 3_600_000;
  const manualEvery = options.manualEvery ?? 97;
  const pinnedEvery = options.pinnedEvery ?? 1000;
  const newest = options.newest.getTime();
  const out: RetentionSnapshot[] = [];
  for (let i = 0; out.length < count; i++) {
    // Jitter of 0..179 s, fixed by position so runs are repeatable.
    const ms = newest - i * interval + ((i * 7919) % 180) * 1000 - 179_000;
    out.push({ id: snapshotId(ms, out.length), time: new Date(ms), tags: i % pinnedEvery === pinnedEvery - 1 ? ['pinned'] : [] });
    if (out.length < count && i % manualEvery === manualEvery - 1) {
      out.push({ id: snapshotId(ms - 600_000, out.length), time: new Date(ms - 600_000), tags: ['manual'] });
    }
  }
  return out.reverse();
}
