/**
 * What replicate should copy where, and from which sources in what order: every snapshot some target holds
 * that another lacks, holds incomplete, or holds a damaged copy of, except what the destination's own
 * retention would remove at once. Pure: no I/O.
 * Why these sources and this limit: docs/architecture.md, "Replicate".
 */
import { storedBytes, type Manifest } from '../../catalog/manifest.js';
import { TcabError } from '../../errors.js';
import { planRetention } from '../../retention/policy.js';
import { applySafetyRails, type RailSnapshot } from '../../retention/rails.js';
import type { RetentionConfig } from '../../retention/settings.js';
import type { TargetCatalog } from '../../catalog/target-catalog.js';
import { copyState, type VerifyRecord } from '../../catalog/verify-record.js';

export interface PlannedCopy {
  id: string;
  /** The first source's manifest (format 1: one artifact; format 2: a chunk list and chunks). */
  manifest: Manifest;
  /** Targets holding a complete copy, in configuration order. */
  sources: string[];
  /** The stored bytes of the snapshot (format 2: of all its chunks, of which only those the destination lacks travel). */
  bytes: number;
  /** Set when the destination has a damaged copy that this copy replaces: what is wrong with it. */
  repairs?: string;
}

export interface SkippedCopy {
  id: string;
  reason: string;
}

export interface DestinationPlan {
  destination: string;
  /** Complete snapshots the destination already holds. */
  present: number;
  copies: PlannedCopy[];
  skipped: SkippedCopy[];
  /** Copies whose last verify failed and that no target has a good copy to repair from: a failure, not a skip. */
  unrepairable: SkippedCopy[];
}

export interface PlanOptions {
  retention?: RetentionConfig;
  now: Date;
  /** Each target's verify record, by target name; a target without one has no failed copies on record. */
  verifyRecords?: ReadonlyMap<string, VerifyRecord | undefined>;
}

export function planReplication(catalogs: readonly TargetCatalog[], options: PlanOptions): DestinationPlan[] {
  const ids = new Set<string>();
  for (const c of catalogs) for (const s of c.snapshots) ids.add(s.id);
  const newestFirst = [...ids].sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
  const verifyOf = (c: TargetCatalog, id: string) => copyState(options.verifyRecords?.get(c.target.name), id);

  return catalogs.map((destination) => {
    const plan: DestinationPlan = { destination: destination.target.name, present: 0, copies: [], skipped: [], unrepairable: [] };
    for (const id of newestFirst) {
      const own = destination.byId.get(id);
      const ownVerify = own ? verifyOf(destination, id) : undefined;
      const failedVerify = ownVerify?.state === 'failed';
      if (own?.complete && !failedVerify) {
        plan.present++;
        continue;
      }
      const complete = catalogs.filter((c) => c !== destination && c.byId.get(id)?.complete);
      const known = complete.filter((c) => ['ok', 'unchecked'].includes(verifyOf(c, id).state));
      const good = [...known, ...complete.filter((c) => verifyOf(c, id).state === 'unreadable')];
      const holders = failedVerify ? good : [...good, ...complete.filter((c) => !good.includes(c))];
      const damage =
        own && !own.complete
          ? own.problem
          : failedVerify
            ? `its last verify failed${ownVerify.error ? ` (${ownVerify.error})` : ''}`
            : undefined;
      if (holders.length === 0) {
        if (failedVerify) {
          const others = catalogs
            .filter((c) => c !== destination)
            .map((c) => `target "${c.target.name}" ${goodCopyLack(c, id, verifyOf(c, id))}`);
          plan.unrepairable.push({
            id,
            reason: `cannot be repaired: its copy there failed verify${ownVerify.error ? ` (${ownVerify.error})` : ''}, and no other target has a good copy to copy again (${others.join('; ') || 'no other target could be listed'})`,
          });
          continue;
        }
        const problems = catalogs.map((c) => c.byId.get(id) && `"${c.target.name}": ${c.byId.get(id)!.problem}`).filter(Boolean);
        plan.skipped.push({ id, reason: `no reachable target holds a complete copy (${problems.join('; ')})` });
        continue;
      }
      const manifest = holders[0]!.byId.get(id)!.manifest!;
      plan.copies.push({
        id,
        manifest,
        sources: holders.map((c) => c.target.name),
        bytes: storedBytes(manifest),
        ...(damage ? { repairs: damage } : {}),
      });
    }
    if (options.retention) dropWhatRetentionRemoves(destination, plan, options.retention, options.now);
    return plan;
  });
}

/** Why a target cannot serve as the source of a repair, in words that follow 'target "a"'. */
function goodCopyLack(catalog: TargetCatalog, id: string, verify: ReturnType<typeof copyState>): string {
  const own = catalog.byId.get(id);
  if (!own) return 'has no copy';
  if (!own.complete) return `has a damaged copy (${own.problem})`;
  return `has a copy whose last verify failed too${verify.error ? ` (${verify.error})` : ''}`;
}

function dropWhatRetentionRemoves(destination: TargetCatalog, plan: DestinationPlan, retention: RetentionConfig, now: Date): void {
  if (plan.copies.length === 0) return;
  const name = destination.target.name;
  const own = retention.policies.get(name);
  if (!own) {
    throw new TcabError(`No retention policy was loaded for target "${name}"`, {
      hint: 'load the retention settings with the names of every configured target (loadRetentionConfig)',
    });
  }
  const incoming = new Map(plan.copies.map((c) => [c.id, c]));
  const snapshots: RailSnapshot[] = destination.snapshots.map((s) => {
    const copy = incoming.get(s.id);
    const tags = s.manifest?.tags ?? copy?.manifest.tags ?? [];
    return { id: s.id, time: s.time, tags, verified: s.complete || copy !== undefined };
  });
  for (const copy of plan.copies) {
    if (!destination.byId.has(copy.id)) {
      snapshots.push({ id: copy.id, time: new Date(copy.manifest.createdAt), tags: copy.manifest.tags, verified: true });
    }
  }
  const guarded = applySafetyRails(
    planRetention(snapshots, own.policy, now),
    snapshots,
    { ...retention.rails, force: true, listingComplete: true, target: name },
    now,
  );
  const removed = new Set(guarded.remove);
  const kept: PlannedCopy[] = [];
  for (const copy of plan.copies) {
    if (removed.has(copy.id)) {
      plan.skipped.push({ id: copy.id, reason: `the retention policy of target "${name}" (${own.source}) would remove it at once` });
    } else kept.push(copy);
  }
  plan.copies = kept;
}
