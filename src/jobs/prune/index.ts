/**
 * Prune: applies each target's retention policy behind the safety rails, then collects garbage (data without
 * a manifest and multipart uploads older than a day), then format-2 chunks no manifest references that are
 * older than the chunk grace (chunks.ts; that sweep runs on a target whose retention a rail refused too). Every target is planned before any deletes, because
 * the last-good-copy rail looks across targets; a snapshot goes manifest first, then data. A target whose
 * listing or verify record fails, or whose run a rail refuses, deletes nothing, and the run throws naming it
 * after the other targets are done.
 * Why: docs/architecture.md, "Prune" and "Retention".
 */
import { idTime, verifyRecordKey } from '../../catalog/layout.js';
import { copyState, readVerifyRecord, type VerifyRecord } from '../../catalog/verify-record.js';
import { TargetError, TcabError, errorMessage } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import { planRetention, type KeptSnapshot } from '../../retention/policy.js';
import { applySafetyRails, type RailReport, type RailSnapshot } from '../../retention/rails.js';
import type { RetentionConfig } from '../../retention/settings.js';
import { abortError } from '../../targets/failure.js';
import type { Target } from '../../targets/target.js';
import { removeOrphan, removeSnapshot } from './delete.js';
import { describeSweep, emptySweep, sweepChunks, type ChunkSweepOutcome } from './chunks.js';
import { loadChunkGrace, type ChunkGrace } from '../settings.js';
import { planReplication } from '../replicate/plan.js';
import { readTargetCatalog, type TargetCatalog } from '../../catalog/target-catalog.js';

/** Data without a manifest younger than this may be an upload in progress; older is garbage. */
export const GARBAGE_AGE_MS = 24 * 3_600_000;

export interface PruneDeps {
  targets: Target[];
  database: string;
  retention: RetentionConfig;
  logger?: Logger;
  /** The current time (tests). */
  now?: () => Date;
  /** G and J for the chunk collection (loadChunkGrace); the catalogued defaults when absent. */
  chunkGrace?: ChunkGrace;
  /** Milliseconds from some origin, for the chunk sweep's J limit (tests). */
  sweepClock?: () => number;
  /** The wait (ms) before a sweep that stepped back for a marker written at the same time claims once more (tests). */
  sweepRetryDelay?: () => number;
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
  /** What each safety rail changed, last-good-copy (which looks across targets) after the others. */
  rails: Array<RailReport | LastGoodCopyReport>;
  refused: RailReport | null;
  garbage: { removed: string[]; held: Array<{ key: string; detail: string }>; staleUploads: number };
  /** Format-2 chunk collection; null when the target could not be listed (then it was not swept). */
  chunks: ChunkSweepOutcome | null;
  failures: string[];
}

/** The cross-target rail's report, shaped like the other rails' reports. */
export interface LastGoodCopyReport {
  rail: 'last-good-copy';
  message: string;
  /** The snapshots it kept on this target. */
  ids: string[];
}

export interface PruneResult {
  database: string;
  dryRun: boolean;
  force: boolean;
  targets: PruneTargetOutcome[];
  removed: number;
  /** Chunks removed over all targets (with dryRun: that would be), and their stored bytes. */
  chunksRemoved: number;
  chunkBytesRemoved: number;
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
  const plans = await Promise.all(deps.targets.map((t) => planTarget(t, deps, request, now, log)));
  keepLastGoodCopies(plans, deps.retention, now);
  const targets = await Promise.all(plans.map((p) => carryOut(p, deps, request, now, log)));
  const result: PruneResult = {
    database: deps.database,
    dryRun: Boolean(request.dryRun),
    force: Boolean(request.force),
    targets,
    removed: targets.reduce((n, t) => n + t.removed.length, 0),
    chunksRemoved: targets.reduce((n, t) => n + (t.chunks?.removed ?? 0), 0),
    chunkBytesRemoved: targets.reduce((n, t) => n + (t.chunks?.removedBytes ?? 0), 0),
    durationMs: Date.now() - started,
  };
  throwIfFailed(result);
  log.info('prune.completed', {
    database: deps.database,
    dryRun: result.dryRun,
    removed: result.removed,
    chunksRemoved: result.chunksRemoved,
    chunkBytesRemoved: result.chunkBytesRemoved,
    durationMs: result.durationMs,
    targets: targets.map((t) => ({
      target: t.target,
      kept: t.kept.length,
      removed: t.removed.length,
      held: t.held.length,
      garbage: t.garbage.removed.length,
      chunksRemoved: t.chunks?.removed ?? 0,
      chunksLeft: t.chunks?.left ?? 0,
      ...(t.chunks?.skipped ? { chunkSweepSkipped: t.chunks.skipped.marker } : {}),
      rails: t.rails.map((r) => r.rail),
    })),
  });
  return result;
}

/** One target's plan, made before any target deletes. */
interface TargetPlan {
  target: Target;
  outcome: PruneTargetOutcome;
  /** Undefined when the target could not be listed or has no policy. */
  catalog?: TargetCatalog;
  verifyRecord?: VerifyRecord;
  /** Why the verify record could not be read: then no copy on the target is known to be good. */
  verifyRecordError?: { key: string; message: string; damaged: boolean };
  /** What the target's policy and rails keep, a refusal aside. */
  wanted: Set<string>;
  /** What this run removes. */
  remove: string[];
}

async function planTarget(target: Target, deps: PruneDeps, request: PruneRequest, now: Date, log: Logger): Promise<TargetPlan> {
  const retention = deps.retention.policies.get(target.name);
  const outcome: PruneTargetOutcome = {
    target: target.name,
    ok: false,
    policy: retention?.source ?? 'none',
    snapshots: 0,
    kept: [],
    removed: [],
    held: [],
    left: [],
    rails: [],
    refused: null,
    garbage: { removed: [], held: [], staleUploads: 0 },
    chunks: null,
    failures: [],
  };
  const plan: TargetPlan = { target, outcome, wanted: new Set(), remove: [] };
  if (!retention) {
    outcome.error = `no retention policy was loaded for target "${target.name}"`;
    return plan;
  }
  const signal = request.signal;
  try {
    plan.catalog = await readTargetCatalog(target, deps.database, { signal });
  } catch (e) {
    if (signal?.aborted) throw e;
    outcome.error = `listing failed: ${errorMessage(e)}`;
    outcome.refused = applySafetyRails(
      { keep: [], remove: [] },
      [],
      { ...deps.retention.rails, force: false, listingComplete: false, target: target.name },
      now,
    ).refused;
    log.error('prune.listing_failed', { target: target.name, error: errorMessage(e) });
    return plan;
  }
  const catalog = plan.catalog;

  // A copy whose last re-read did not match its manifest is not verified, whatever its listing says. A record
  // that cannot be read may hold such a verdict: then every copy here is unknown, never taken for good.
  try {
    plan.verifyRecord = await readVerifyRecord(target, deps.database, signal);
  } catch (e) {
    if (signal?.aborted) throw e;
    plan.verifyRecordError = { key: verifyRecordKey(deps.database), message: withoutHint(e), damaged: !(e instanceof TargetError) };
    log.error('prune.verify_record_unreadable', { target: target.name, record: verifyRecordKey(deps.database), error: errorMessage(e) });
  }
  const snapshots: RailSnapshot[] = catalog.snapshots.map((s) => ({
    id: s.id,
    time: s.time,
    tags: s.manifest?.tags ?? [],
    verified: copyStatus(plan, s.id) === 'good',
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
  const refusedIds = new Set(guarded.refused?.ids ?? []);
  plan.wanted = new Set(guarded.keep.map((k) => k.id).filter((id) => !refusedIds.has(id)));
  if (plan.verifyRecordError !== undefined) {
    refuseUnknownCopies(plan, guarded.refused ? guarded.refused.ids : guarded.remove);
    return plan;
  }

  // Without its manifest, a snapshot's tags (a pin) are unknown: it stays until it is repaired.
  const unreadable = new Map(catalog.snapshots.filter((s) => s.manifestError).map((s) => [s.id, s.manifestError!]));
  for (const [id, error] of unreadable) outcome.failures.push(`snapshot ${id}: ${error}`);
  plan.remove = guarded.remove.filter((id) => !unreadable.has(id));
  for (const id of guarded.remove.filter((x) => unreadable.has(x)))
    outcome.kept.push({ id, reasons: ['manifest unreadable: kept until repaired'] });
  return plan;
}

/**
 * 'good': complete as listed, and its last re-read (if any) matched, a copy replicate could restore others
 * from; 'bad': incomplete, or its last re-read did not match; 'unknown': complete, but whether its bytes
 * still match cannot be said (the verify record could not be read, or the last re-read could not get the
 * bytes). Only a good copy lets another target delete its own; a good or unknown one may be the last good
 * copy, and stays.
 */
function copyStatus(plan: TargetPlan, id: string): 'good' | 'bad' | 'unknown' {
  if (!plan.catalog?.byId.get(id)?.complete) return 'bad';
  if (plan.verifyRecordError) return 'unknown';
  const state = copyState(plan.verifyRecord, id).state;
  return state === 'failed' ? 'bad' : state === 'unreadable' ? 'unknown' : 'good';
}

/**
 * A target whose verify record cannot be read deletes no snapshot: any of its copies may be the last good
 * one, and a copy it would delete may be the one others count on. The run fails; the other targets go on,
 * counting none of this target's copies as good (see keepLastGoodCopies).
 */
function refuseUnknownCopies(plan: TargetPlan, ids: string[]): void {
  const name = plan.target.name;
  const { key, message, damaged } = plan.verifyRecordError!;
  const check = damaged
    ? `run "tcab-backup verify --target ${name}": it re-reads every snapshot there and writes a new record; then run prune again`
    : `the reachability of target "${name}" and that the function app may read ${key} there, then run prune again`;
  // A rail that refused first (max-delete-share) keeps its say: the operator must hear of both.
  const earlier = plan.outcome.refused;
  plan.outcome.refused = {
    rail: 'verify-record',
    ids,
    message:
      `Retention refused on target "${name}": its verify record ${key} could not be read (${message}), so whether its copies are good is unknown; nothing is removed there (the plan would remove ${ids.length}), and no other target removes a snapshot on the strength of its copies. Check: ${check}` +
      (earlier ? `. The ${earlier.rail} rail refused this run too: ${earlier.message}` : ''),
  };
  const refused = new Set(ids);
  plan.outcome.kept = plan.outcome.kept.filter((k) => !refused.has(k.id));
  for (const id of ids) plan.outcome.kept.push({ id, reasons: ['run refused (verify-record)'] });
  plan.remove = [];
}

/** An error's message without its "Check:" part, to quote inside a message that has its own. */
function withoutHint(e: unknown): string {
  const message = errorMessage(e);
  const tail = e instanceof TcabError && e.hint ? `. Check: ${e.hint}` : '';
  return tail && message.endsWith(tail) ? message.slice(0, -tail.length) : message;
}

/** Why the target wants a snapshot it has no good copy of, in words that follow 'target "b"'. */
function lackOf(plan: TargetPlan, id: string): string {
  if (!plan.catalog) return 'would keep it but could not be listed, so its copy is unknown';
  const own = plan.catalog.byId.get(id);
  if (!own) return 'keeps it but has no copy';
  if (!own.complete) return `keeps it but its copy is damaged (${own.problem})`;
  if (plan.verifyRecordError)
    return `keeps it but its verify record ${plan.verifyRecordError.key} could not be read, so whether its copy is good is unknown`;
  const state = copyState(plan.verifyRecord, id);
  if (state.state === 'unreadable')
    return `keeps it but verify could not read its copy, so whether it is good is unknown${state.error ? ` (${state.error})` : ''}`;
  return `keeps it but its copy failed verify${state.error ? ` (${state.error})` : ''}`;
}

/** The last-good-copy rail (see the header): moves snapshots from "remove" to "keep" across targets. */
function keepLastGoodCopies(plans: TargetPlan[], retention: RetentionConfig, now: Date): void {
  // With a policy, a plan has either a catalog or a failed listing (an unknown target, with an empty catalog).
  const taking = plans.filter((p) => retention.policies.has(p.target.name));
  if (taking.length < 2) return;
  // What replicate would copy to each target: what it lacks or holds incomplete, that its policy keeps.
  const catalogs = taking.map((p) => p.catalog ?? { target: p.target, snapshots: [], byId: new Map(), orphans: [] });
  const restorable = new Map(planReplication(catalogs, { retention, now }).map((d) => [d.destination, new Set(d.copies.map((c) => c.id))]));
  const lacking = (p: TargetPlan, id: string) =>
    restorable.get(p.target.name)!.has(id) || (p.wanted.has(id) && copyStatus(p, id) !== 'good');
  const removing = new Map(taking.map((p) => [p, new Set(p.remove)]));
  const keptGood = (id: string) => taking.some((p) => p.catalog?.byId.has(id) && !removing.get(p)!.has(id) && copyStatus(p, id) === 'good');

  for (const plan of taking) {
    if (plan.remove.length === 0) continue;
    const where = `target "${plan.target.name}"`;
    const kept: Array<{ id: string; reason: string }> = [];
    for (const id of plan.remove) {
      if (copyStatus(plan, id) === 'bad' || keptGood(id)) continue;
      const others = taking.filter((p) => p !== plan && lacking(p, id));
      if (others.length === 0) continue;
      kept.push({ id, reason: `last good copy: ${others.map((p) => `target "${p.target.name}" ${lackOf(p, id)}`).join('; ')}` });
    }
    if (kept.length === 0) continue;
    const ids = new Set(kept.map((k) => k.id));
    plan.remove = plan.remove.filter((id) => !ids.has(id));
    for (const k of kept) plan.outcome.kept.push({ id: k.id, reasons: [k.reason] });
    plan.outcome.rails.push({
      rail: 'last-good-copy',
      ids: kept.map((k) => k.id),
      message: `Kept ${kept.length} snapshot(s) on ${where} that the policy would remove, because another target keeps them without a good copy and no target keeping them has one: ${kept.map((k) => `${k.id} (${k.reason.replace(/^last good copy: /, '')})`).join(', ')}. Check: run tcab-backup replicate to copy them there (it also repairs copies that failed verify)`,
    });
  }
}

/**
 * Deletes what the plan removes (manifest first, then data), then collects garbage, then chunks. A refused
 * target deletes no snapshot and no garbage, but its chunks are still collected: the rails judge snapshots,
 * and an unreferenced chunk older than the grace is garbage by construction.
 */
async function carryOut(plan: TargetPlan, deps: PruneDeps, request: PruneRequest, now: Date, log: Logger): Promise<PruneTargetOutcome> {
  const { outcome, catalog } = plan;
  if (!catalog) return finish(outcome);
  if (!outcome.refused) await removeAndCollect(plan, deps, request, now, log);
  await collectChunks(plan, deps, request, log);
  return finish(outcome);
}

async function removeAndCollect(plan: TargetPlan, deps: PruneDeps, request: PruneRequest, now: Date, log: Logger): Promise<void> {
  const { target, outcome } = plan;
  const catalog = plan.catalog!;
  const signal = request.signal;
  for (const id of plan.remove) {
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
      log.info('prune.snapshot', {
        target: target.name,
        id,
        status: done.status,
        ...(done.status !== 'removed' ? { detail: done.detail } : {}),
      });
    } catch (e) {
      if (signal?.aborted) throw e;
      outcome.failures.push(`removing snapshot ${id} failed: ${errorMessage(e)}`);
    }
  }
  await collectGarbage(target, deps.database, catalog, outcome, request, now, log);
}

/**
 * The chunk sweep (chunks.ts), after the target's deletions. A dry run deleted no snapshot, so it does not
 * count the chunk lists of the snapshots it would remove: it reports what a real run would collect (and writes
 * no sweep marker). A sweep whose marker could not be written, or whose referenced set could not be made whole,
 * deleted nothing and fails the run, naming what it could not write or read. A sweep that found another prune's
 * marker younger than 2J did not sweep: a warning, not a failure.
 */
async function collectChunks(plan: TargetPlan, deps: PruneDeps, request: PruneRequest, log: Logger): Promise<void> {
  const { target, outcome } = plan;
  const grace = deps.chunkGrace ?? loadChunkGrace({});
  try {
    outcome.chunks = await sweepChunks(target, {
      database: deps.database,
      graceMs: grace.graceMs,
      jobTimeoutMs: grace.jobTimeoutMs,
      dryRun: Boolean(request.dryRun),
      ...(request.dryRun ? { ignore: new Set(plan.remove) } : {}),
      now: () => deps.now?.() ?? new Date(),
      ...(deps.sweepClock ? { clock: deps.sweepClock } : {}),
      ...(deps.sweepRetryDelay ? { retryDelayMs: deps.sweepRetryDelay } : {}),
      ...(request.signal ? { signal: request.signal } : {}),
    });
  } catch (e) {
    if (request.signal?.aborted) throw e;
    outcome.chunks = { ...emptySweep(), error: errorMessage(e) };
    outcome.failures.push(errorMessage(e));
    log.error('prune.chunks_failed', { target: target.name, error: errorMessage(e) });
    return;
  }
  const s = outcome.chunks;
  outcome.failures.push(...s.markerErrors);
  for (const error of s.markerErrors) log.error('prune.sweep_marker_left', { target: target.name, error });
  for (const detail of s.markersHeld) log.warn('prune.sweep_marker_held', { target: target.name, detail });
  if (s.skipped) {
    // Not a failure: the other sweep collects, or the next prune does.
    log.warn('prune.sweep_skipped', {
      target: target.name,
      marker: s.skipped.marker,
      markerWritten: s.skipped.lastModified,
      ...(s.retriedAfterMs !== undefined ? { retriedAfterMs: s.retriedAfterMs } : {}),
      summary: describeSweep(s, false),
    });
    return;
  }
  outcome.failures.push(...s.failures);
  if (s.failed > s.failures.length) outcome.failures.push(`and ${s.failed - s.failures.length} more chunk delete(s) failed`);
  if (s.listed === 0) return;
  // A delete not answered is left for the next prune, not a failure; but a target that leaves deletes unanswered is worth a look.
  (s.failed || s.unanswered ? log.warn : log.info).call(log, 'prune.chunks', {
    target: target.name,
    dryRun: Boolean(request.dryRun),
    listed: s.listed,
    referenced: s.referenced,
    young: s.young,
    removed: s.removed,
    removedBytes: s.removedBytes,
    held: s.held,
    left: s.left,
    leftBytes: s.leftBytes,
    unanswered: s.unanswered,
    failed: s.failed,
    ...(s.retriedAfterMs !== undefined ? { retriedAfterMs: s.retriedAfterMs } : {}),
    summary: describeSweep(s, Boolean(request.dryRun)),
  });
}

async function collectGarbage(
  target: Target,
  database: string,
  catalog: TargetCatalog,
  outcome: PruneTargetOutcome,
  request: PruneRequest,
  now: Date,
  log: Logger,
): Promise<void> {
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
      log.info('prune.garbage', {
        target: target.name,
        key: orphan.key,
        status: done.status,
        ...(done.status !== 'removed' ? { detail: done.detail } : {}),
      });
    } catch (e) {
      if (signal?.aborted) throw e;
      outcome.failures.push(`removing garbage ${orphan.key} failed: ${errorMessage(e)}`);
    }
  }
  if (request.dryRun || !target.abortStaleUploads) return;
  try {
    outcome.garbage.staleUploads = await target.abortStaleUploads(cutoff, { signal });
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
  // Not a policy decision: the target could not say which of its copies are good.
  const unknown = refused.filter((t) => t.refused!.rail === 'verify-record');
  const failed = result.targets.filter((t) => t.error || t.failures.length || unknown.includes(t));
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
      : [
          'the named target (reachability, permissions); an unreadable manifest must be repaired (replicate rewrites it from another target) or removed by hand',
          ...(unknown.length ? ['a target whose verify record cannot be read removes nothing until it can be read again'] : []),
        ].join('; '),
  });
}
