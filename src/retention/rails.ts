/**
 * Safety rails: a second pass over a retention plan that can only move snapshots from "remove" to "keep"
 * (with the rail's reason), or refuse the run. A refused plan removes nothing and keeps everything, so a
 * caller that ignores `refused` still deletes nothing. Each rail is reported when it changes the plan.
 * The rails, their order and why they are apart from the planner: docs/architecture.md, "Retention".
 */
import { TcabError } from '../errors.js';
import { PIN_TAG } from '../catalog/manifest.js';
import { formatDuration } from '../util/duration.js';
import { sortNewestFirst, type KeptSnapshot, type RetentionPlan, type RetentionSnapshot } from './policy.js';

export interface RailSnapshot extends RetentionSnapshot {
  /** The stored artifact's sha256 was checked against the manifest. */
  verified: boolean;
  /** Pinned by the operator; a snapshot tagged "pinned" is pinned too. */
  pinned?: boolean;
}

/** The rails that come from settings (TCAB_BACKUP_RETENTION_MIN_KEEP, _MIN_AGE, _MAX_DELETE_SHARE). */
export interface RetentionRailSettings {
  minKeep: number;
  minAgeMs: number;
  /** 0..1: the largest share of a target's snapshots one run may delete without force. */
  maxDeleteShare: number;
}

export interface SafetyRails extends RetentionRailSettings {
  force: boolean;
  /** Every manifest of the target was listed and read; retention acts only on a complete listing. */
  listingComplete: boolean;
  /** Target name, for messages. */
  target?: string;
}

/**
 * 'verify-record' is not applied here: prune refuses a target with it when the target's verify record cannot
 * be read, since then no copy there is known to be good (src/jobs/prune/index.ts).
 */
export type RailName = 'listing-complete' | 'pinned' | 'newest-verified' | 'min-keep' | 'min-age' | 'max-delete-share' | 'verify-record';

export interface RailReport {
  rail: RailName;
  message: string;
  /** The snapshots the rail kept (or, for a refusal or a forced run, those the run would delete). */
  ids: string[];
}

export interface GuardedPlan extends RetentionPlan {
  /** What each rail changed, in the order the rails apply. */
  rails: RailReport[];
  /** Set when the run must not delete anything; its message says why (the prune job throws with it). */
  refused: RailReport | null;
}

function checkRails(rails: SafetyRails): void {
  const problems: string[] = [];
  if (!(Number.isSafeInteger(rails.minKeep) && rails.minKeep >= 0)) problems.push(`minKeep ${rails.minKeep} is not a whole number from 0`);
  if (!(Number.isFinite(rails.minAgeMs) && rails.minAgeMs >= 0)) problems.push(`minAgeMs ${rails.minAgeMs} is not a duration from 0`);
  if (!(rails.maxDeleteShare >= 0 && rails.maxDeleteShare <= 1))
    problems.push(`maxDeleteShare ${rails.maxDeleteShare} is not between 0 and 1`);
  if (problems.length)
    throw new TcabError(`Invalid retention safety rails: ${problems.join('; ')}`, {
      code: 'RETENTION_RAILS_INVALID',
      hint: 'TCAB_BACKUP_RETENTION_MIN_KEEP, TCAB_BACKUP_RETENTION_MIN_AGE and TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE',
    });
}

function checkPlanCoversSnapshots(plan: RetentionPlan, snapshots: readonly RailSnapshot[]): void {
  const planned = new Set([...plan.keep.map((k) => k.id), ...plan.remove]);
  const listed = new Set(snapshots.map((s) => s.id));
  const unplanned = [...listed].filter((id) => !planned.has(id));
  const unlisted = [...planned].filter((id) => !listed.has(id));
  if (unplanned.length || unlisted.length || planned.size !== plan.keep.length + plan.remove.length) {
    const detail = [
      unplanned.length ? `not in the plan: ${unplanned.slice(0, 5).join(', ')}` : '',
      unlisted.length ? `not in the listing: ${unlisted.slice(0, 5).join(', ')}` : '',
    ]
      .filter(Boolean)
      .join('; ');
    throw new TcabError(`The retention plan does not match the snapshot listing${detail ? ` (${detail})` : ' (an id is planned twice)'}`, {
      code: 'RETENTION_INPUT_INVALID',
      hint: 'plan and rails must be given the same list of snapshots',
    });
  }
}

const percent = (share: number) => `${Math.round(share * 1000) / 10}%`;

export function applySafetyRails(
  plan: RetentionPlan,
  snapshots: readonly RailSnapshot[],
  rails: SafetyRails,
  now: Date = new Date(),
): GuardedPlan {
  checkRails(rails);
  checkPlanCoversSnapshots(plan, snapshots);
  const where = rails.target ? ` on target "${rails.target}"` : '';
  const sorted = sortNewestFirst(snapshots);
  const reasons = new Map<string, string[]>(plan.keep.map((k) => [k.id, [...k.reasons]]));
  const removing = new Set(plan.remove);
  const reports: RailReport[] = [];

  const result = (refused: RailReport | null): GuardedPlan => {
    if (refused) {
      for (const id of removing) reasons.set(id, [`run refused (${refused.rail})`]);
      removing.clear();
    }
    const keep: KeptSnapshot[] = [];
    const remove: string[] = [];
    for (const s of sorted) {
      if (removing.has(s.id)) remove.push(s.id);
      else keep.push({ id: s.id, reasons: reasons.get(s.id)! });
    }
    return { keep, remove, rails: reports, refused };
  };
  const planned = () => sorted.filter((s) => removing.has(s.id)).map((s) => s.id);

  if (!rails.listingComplete) {
    const ids = planned();
    return result({
      rail: 'listing-complete',
      ids,
      message: `Retention refused${where}: the snapshot listing is incomplete, so the policy could delete snapshots whose newer neighbours it did not see; nothing is removed (the plan would remove ${ids.length}). Check: the listing errors of this target in the log, then run prune again`,
    });
  }

  const rescue = (rail: RailName, candidates: readonly RailSnapshot[], reason: string, message: (ids: string[]) => string) => {
    const ids = candidates.filter((s) => removing.has(s.id)).map((s) => s.id);
    if (!ids.length) return;
    for (const id of ids) {
      removing.delete(id);
      reasons.set(id, [reason]);
    }
    reports.push({ rail, ids, message: message(ids) });
  };

  rescue(
    'pinned',
    sorted.filter((s) => s.pinned || s.tags.includes(PIN_TAG)),
    'pinned',
    (ids) => `Kept ${ids.length} pinned snapshot(s)${where} that the policy would remove: ${ids.join(', ')}`,
  );

  const newestVerified = sorted.find((s) => s.verified);
  rescue(
    'newest-verified',
    newestVerified ? [newestVerified] : [],
    'newest verified snapshot',
    (ids) => `Kept ${ids[0]}${where}, the newest snapshot whose sha256 was verified, which the policy would remove`,
  );

  rescue(
    'min-keep',
    sorted.slice(0, rails.minKeep),
    `one of the ${rails.minKeep} newest (min keep)`,
    (ids) =>
      `Kept ${ids.length} snapshot(s)${where} among the ${rails.minKeep} newest (TCAB_BACKUP_RETENTION_MIN_KEEP) that the policy would remove: ${ids.join(', ')}`,
  );

  const nowMs = now.getTime();
  const minAge = formatDuration(rails.minAgeMs);
  rescue(
    'min-age',
    sorted.filter((s) => nowMs - s.time.getTime() < rails.minAgeMs),
    `younger than ${minAge} (min age)`,
    (ids) =>
      `Kept ${ids.length} snapshot(s)${where} younger than ${minAge} (TCAB_BACKUP_RETENTION_MIN_AGE) that the policy would remove: ${ids.join(', ')}`,
  );

  const total = sorted.length;
  const share = total ? removing.size / total : 0;
  if (share > rails.maxDeleteShare) {
    const ids = planned();
    const what = `the run would delete ${ids.length} of ${total} snapshots${where} (${percent(share)}), more than TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE allows (${percent(rails.maxDeleteShare)})`;
    if (!rails.force) {
      return result({
        rail: 'max-delete-share',
        ids,
        message: `Retention refused: ${what}; nothing is removed. Check: the retention policy of this target; if the deletion is intended, run prune with --force or raise TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE`,
      });
    }
    reports.push({ rail: 'max-delete-share', ids, message: `Forced: ${what}; deleting as asked` });
  }
  return result(null);
}
