/**
 * Prune: apply each target's retention policy, behind the safety rails, and collect garbage.
 *
 * Per target: a complete listing with every manifest read (a failed page means this target deletes
 * nothing), the policy's plan, then the rails (pinned, newest verified, min keep, min age, max delete share
 * unless forced). A snapshot counts as verified when its manifest is readable and its artifact is listed
 * at the manifest's size (every manifest is written only after the bytes under it were hashed and matched:
 * snapshot reads its uploads back, replicate checks while it streams) and the verify record does not say
 * its last re-read failed. Snapshots go manifest first, then data. Then garbage: data objects without a
 * manifest older than a day, and stale multipart uploads. Objects under an immutability lock are reported as
 * held, not as failures. A refused target throws with the rail's message, after the other targets are done.
 */
import { idTime } from '../catalog/layout.js';
import { copyState, readVerifyRecord } from './verify-record.js';
import { TcabError, errorMessage } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { planRetention, type KeptSnapshot } from '../retention/policy.js';
import { applySafetyRails, type RailReport, type RailSnapshot } from '../retention/rails.js';
import type { RetentionConfig } from '../retention/settings.js';
import { abortError } from '../targets/failure.js';
import type { Target } from '../targets/target.js';
import { removeOrphan, removeSnapshot } from './prune-delete.js';
import { readTargetCatalog, type TargetCatalog } from './replicate-prune-catalog.js';

/** Data without a manifest younger than this may be an upload in progress; older is garbage. */
export const GARBAGE_AGE_MS = 24 * 3_600_000;

export interface PruneDeps {
  targets: Target[];
  database: string;
  retention: RetentionConfig;
  logger?: Logger;
  /** The current time (tests). */
  now?: () => Date;
}

export interface PruneRequest {
  /** Report what would be removed; remove nothing. */
  dryRun?: boolean;
  /** Allow a run that deletes more than TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE of a target's snapshots. */
  force?: boolean;
  signal?: AbortSignal;
}

export interface PruneTargetOutcome {
  target: string;
  ok: boolean;
  /** Where the policy came from (the target's setting, or the default). */
  policy: string;
  /** Set when the target could not be listed completely: it deleted nothing. */
  error?: string;
  snapshots: number;
  /** Newest first, each with why. */
  kept: KeptSnapshot[];
  /** Removed snapshots (with dryRun: those that would be). */
  removed: string[];
  /** Snapshots an immutability lock or legal hold protects. */
  held: Array<{ id: string; detail: string }>;
  /** Snapshots left in place because a replicate run stored them again meanwhile. */
  left: Array<{ id: string; detail: string }>;
  /** What each safety rail changed. */
  rails: RailReport[];
  refused: RailReport | null;
  garbage: { removed: string[]; held: Array<{ key: string; detail: string }>; staleUploads: number };
  failures: string[];
}

export interface PruneResult {
  database: string;
  dryRun: boolean;
  force: boolean;
  targets: PruneTargetOutcome[];
  removed: number;
  durationMs: number;
}

export class PruneFailedError extends TcabError {
  readonly result: PruneResult;
  constructor(message: string, result: PruneResult, options: { code: string; hint: string }) {
    super(message, options);
    this.name = 'PruneFailedError';
    this.result = result;
  }
}

export async function runPrune(deps: PruneDeps, request: PruneRequest = {}): Promise<PruneResult> {
  const log = deps.logger ?? silentLogger;
  const started = Date.now();
  const now = deps.now?.() ?? new Date();
  if (deps.targets.length === 0) throw new TcabError('No targets configured', { hint: 'set TCAB_BACKUP_TARGETS' });
  const targets = await Promise.all(deps.targets.map((t) => pruneTarget(t, deps, request, now, log)));
  const result: PruneResult = {
    database: deps.database, dryRun: Boolean(request.dryRun), force: Boolean(request.force), targets,
    removed: targets.reduce((n, t) => n + t.removed.length, 0), durationMs: Date.now() - started,
  };
  throwIfFailed(result);
  log.info('prune.completed', {
    database: deps.database, dryRun: result.dryRun, removed: result.removed, durationMs: result.durationMs,
    targets: targets.map((t) => ({ target: t.target, kept: t.kept.length, removed: t.removed.length, held: t.held.length, garbage: t.garbage.removed.length, rails: t.rails.map((r) => r.rail) })),
  });
  return result;
}

async function pruneTarget(target: Target, deps: PruneDeps, request: PruneRequest, now: Date, log: Logger): Promise<PruneTargetOutcome> {
  const retention = deps.retention.policies.get(target.name);
  const outcome: PruneTargetOutcome = {
    target: target.name, ok: false, policy: retention?.source ?? 'none', snapshots: 0, kept: [], removed: [], held: [], left: [],
    rails: [], refused: null, garbage: { removed: [], held: [], staleUploads: 0 }, failures: [],
  };
  if (!retention) {
    outcome.error = `no retention policy was loaded for target "${target.name}"`;
    return outcome;
  }
  const signal = request.signal;
  let catalog: TargetCatalog;
  try {
    catalog = await readTargetCatalog(target, deps.database, signal ? { signal } : {});
  } catch (e) {
    if (signal?.aborted) throw e;
    outcome.error = `listing failed: ${errorMessage(e)}`;
    outcome.refused = applySafetyRails({ keep: [], remove: [] }, [], { ...deps.retention.rails, force: false, listingComplete: false, target: target.name }, now).refused;
    log.error('prune.listing_failed', { target: target.name, error: errorMessage(e) });
    return outcome;
  }

  // A copy whose last re-read did not match its manifest is not verified, whatever its listing says.
  const verifyRecord = await readVerifyRecord(target, deps.database, signal).catch((e: unknown) => {
    log.warn('prune.verify_record_unreadable', { target: target.name, error: errorMessage(e) });
    return undefined;
  });
  const snapshots: RailSnapshot[] = catalog.snapshots.map((s) => ({
    id: s.id, time: s.time, tags: s.manifest?.tags ?? [],
    verified: s.complete && copyState(verifyRecord, s.id).state !== 'failed',
  }));
  const guarded = applySafetyRails(
    planRetention(snapshots, retention.policy, now),
    snapshots,
    { ...deps.retention.rails, force: Boolean(request.force), listingComplete: true, target: target.name },
    now,
  );
  outcome.snapshots = snapshots.length;
  outcome.rails = guarded.rails;
  outcome.refused = guarded.refused;
  outcome.kept = guarded.keep;

  // Without its manifest, a snapshot's tags (a pin) are unknown: it stays until it is repaired.
  const unreadable = new Map(catalog.snapshots.filter((s) => s.manifestError).map((s) => [s.id, s.manifestError!]));
  for (const [id, error] of unreadable) outcome.failures.push(`snapshot ${id}: ${error}`);
  const remove = guarded.remove.filter((id) => !unreadable.has(id));
  for (const id of guarded.remove.filter((x) => unreadable.has(x))) outcome.kept.push({ id, reasons: ['manifest unreadable: kept until repaired'] });
  if (guarded.refused) return finish(outcome);

  for (const id of remove) {
    if (signal?.aborted) throw abortError(signal);
    if (request.dryRun) {
      outcome.removed.push(id);
      continue;
    }
    try {
      const done = await removeSnapshot(target, deps.database, catalog.byId.get(id)!, signal);
      if (done.status === 'removed') outcome.removed.push(id);
      else if (done.status === 'held') outcome.held.push({ id, detail: done.detail });
      else outcome.left.push({ id, detail: done.detail });
      log.info('prune.snapshot', { target: target.name, id, status: done.status, ...(done.status !== 'removed' ? { detail: done.detail } : {}) });
    } catch (e) {
      if (signal?.aborted) throw e;
      outcome.failures.push(`removing snapshot ${id} failed: ${errorMessage(e)}`);
    }
  }
  await collectGarbage(target, deps.database, catalog, outcome, request, now, log);
  return finish(outcome);
}

async function collectGarbage(target: Target, database: string, catalog: TargetCatalog, outcome: PruneTargetOutcome, request: PruneRequest, now: Date, log: Logger): Promise<void> {
  const cutoff = new Date(now.getTime() - GARBAGE_AGE_MS);
  const signal = request.signal;
  for (const orphan of catalog.orphans) {
    if (orphan.lastModified.getTime() >= cutoff.getTime()) continue;
    if (request.dryRun) {
      outcome.garbage.removed.push(orphan.key);
      continue;
    }
    try {
      const done = await removeOrphan(target, database, orphan, cutoff, signal);
      if (done.status === 'removed') outcome.garbage.removed.push(orphan.key);
      else if (done.status === 'held') outcome.garbage.held.push({ key: orphan.key, detail: done.detail });
      log.info('prune.garbage', { target: target.name, key: orphan.key, status: done.status, ...(done.status !== 'removed' ? { detail: done.detail } : {}) });
    } catch (e) {
      if (signal?.aborted) throw e;
      outcome.failures.push(`removing garbage ${orphan.key} failed: ${errorMessage(e)}`);
    }
  }
  if (request.dryRun || !target.abortStaleUploads) return;
  try {
    outcome.garbage.staleUploads = await target.abortStaleUploads(cutoff, signal ? { signal } : {});
  } catch (e) {
    if (signal?.aborted) throw e;
    outcome.failures.push(`aborting stale uploads failed: ${errorMessage(e)}`);
  }
}

function finish(outcome: PruneTargetOutcome): PruneTargetOutcome {
  outcome.kept.sort((a, b) => idTime(b.id).getTime() - idTime(a.id).getTime() || (a.id < b.id ? 1 : -1));
  outcome.ok = !outcome.error && !outcome.refused && outcome.failures.length === 0;
  return outcome;
}

function throwIfFailed(result: PruneResult): void {
  const refused = result.targets.filter((t) => t.refused);
  const failed = result.targets.filter((t) => t.error || t.failures.length);
  if (refused.length === 0 && failed.length === 0) return;
  const parts: string[] = [];
  for (const t of result.targets) {
    if (t.error) parts.push(`target "${t.target}": ${t.error}`);
    if (t.refused) parts.push(t.refused.message);
    for (const f of t.failures.slice(0, 3)) parts.push(`target "${t.target}": ${f}`);
    if (t.failures.length > 3) parts.push(`target "${t.target}": and ${t.failures.length - 3} more`);
  }
  const onlyRefused = failed.length === 0;
  throw new PruneFailedError(`Prune of "${result.database}" ${onlyRefused ? 'refused' : 'failed'}: ${parts.join('; ')}`, result, {
    code: onlyRefused ? 'PRUNE_REFUSED' : 'PRUNE_FAILED',
    hint: onlyRefused
      ? 'the message of the safety rail above; nothing was removed on a refused target'
      : 'the named target (reachability, permissions); an unreadable manifest must be repaired (replicate rewrites it from another target) or removed by hand',
  });
}
