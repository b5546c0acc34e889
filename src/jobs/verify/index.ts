/**
 * Verify rotation: each run re-reads the least recently verified share of the stored copies (all of them
 * with `--all`) so that every copy is re-read within TCAB_BACKUP_VERIFY_WITHIN, and writes the verdicts to
 * each target's verify record (src/catalog/verify-record.ts). A damaged copy fails the run.
 * What a run picks and why: docs/architecture.md, "Verify".
 */
import { listCatalog } from '../../catalog/catalog.js';
import { TcabError, TargetError, errorMessage, isAbortError } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import type { Target } from '../../targets/target.js';
import { formatDuration } from '../../util/duration.js';
import { listRenewalRecords } from '../../catalog/renewals.js';
import { loadChunkGrace } from '../settings.js';
import { ChunkVerdicts, verifyStoredSnapshot, type VerifyOutcome } from './check.js';
import {
  readVerifyRecord,
  recordVerifyResults,
  verdictOf,
  type VerifyEntry,
  type VerifyRecord,
  type VerifyRun,
} from '../../catalog/verify-record.js';

export interface RotationCandidate {
  id: string;
  /** When the manifest was written to this target. */
  storedAt: Date;
  /** Size of the stored artifact (format 2: of the chunk list); undefined when the data object is missing. */
  artifactBytes: number | undefined;
}

export type SelectionReason = 'all' | 'failed-before' | 'unreadable-before' | 'missing-artifact' | 'due' | 'share';

export interface RotationPlan {
  selected: Array<{ id: string; reason: SelectionReason }>;
  /** Runs of the schedule that fit in the window. */
  runsPerWindow: number;
  countShare: number;
  byteShare: number;
}

export interface RotationOptions {
  now: Date;
  withinMs: number;
  /** The longest gap between two verify runs. */
  intervalMs: number;
  all?: boolean;
}

/**
 * When the snapshot's bytes were last read on this target. For a copy whose last read failed (damaged or
 * unreadable) that is the failed attempt: such a copy is read on every run until it reads well, and every
 * one of those runs fails, so it is the failure, not the window, that keeps it loud.
 */
export function lastReadAt(candidate: RotationCandidate, entry: VerifyEntry | undefined): number {
  return entry ? Date.parse(entry.checkedAt) : candidate.storedAt.getTime();
}

/** Which snapshots this run reads; pure, so the coverage guarantee can be tested over simulated months. */
export function planVerifyRotation(
  candidates: RotationCandidate[],
  entries: Record<string, VerifyEntry>,
  options: RotationOptions,
): RotationPlan {
  const runsPerWindow = Math.max(1, Math.floor(options.withinMs / options.intervalMs));
  const totalBytes = candidates.reduce((n, c) => n + (c.artifactBytes ?? 0), 0);
  const countShare = Math.ceil(candidates.length / runsPerWindow);
  const byteShare = Math.ceil(totalBytes / runsPerWindow);
  if (options.all) return { selected: candidates.map((c) => ({ id: c.id, reason: 'all' })), runsPerWindow, countShare, byteShare };
  // A timer run may start a little late; do not let a snapshot's deadline fall in that slack.
  const slackMs = Math.min(options.intervalMs / 10, 3_600_000);
  const nextRun = options.now.getTime() + options.intervalMs + slackMs;
  const ordered = [...candidates].sort(
    (a, b) => lastReadAt(a, entries[a.id]) - lastReadAt(b, entries[b.id]) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
  const selected: RotationPlan['selected'] = [];
  const rest: RotationCandidate[] = [];
  let count = 0;
  let bytes = 0;
  for (const c of ordered) {
    const entry = entries[c.id];
    const reason: SelectionReason | undefined =
      entry && !entry.ok
        ? verdictOf(entry) === 'unreadable'
          ? 'unreadable-before'
          : 'failed-before'
        : c.artifactBytes === undefined
          ? 'missing-artifact'
          : lastReadAt(c, entry) + options.withinMs <= nextRun
            ? 'due'
            : undefined;
    if (!reason) {
      rest.push(c);
      continue;
    }
    selected.push({ id: c.id, reason });
    count++;
    bytes += c.artifactBytes ?? 0;
  }
  for (const c of rest) {
    if (count >= countShare && bytes >= byteShare) break;
    selected.push({ id: c.id, reason: 'share' });
    count++;
    bytes += c.artifactBytes ?? 0;
  }
  return { selected, runsPerWindow, countShare, byteShare };
}

export interface TargetVerifyResult {
  target: string;
  url: string;
  /** False when the target could not be listed or its record not written; `error` says why. */
  reachable: boolean;
  error?: string;
  snapshots: number;
  checked: number;
  /** Copies found damaged. */
  failed: number;
  /** Copies the target did not deliver: neither good nor damaged, read again next run. */
  unreadable: number;
  bytes: number;
  /** The longest any snapshot on the target had gone unread, after this run. */
  longestUnreadMs: number;
  selected: RotationPlan['selected'];
  /**
   * Format 2: renewal records waiting for their check (docs/format-2.md, "Renewal records"), and when the
   * oldest was written. One older than G means no snapshot or replicate run has reached the target since.
   */
  renewals?: { pending: number; oldest: string };
}

export interface VerifyRotationResult {
  database: string;
  all: boolean;
  checked: number;
  /** Copies found damaged. */
  failed: number;
  /** Copies that could not be read. */
  unreadable: number;
  bytes: number;
  durationMs: number;
  targets: TargetVerifyResult[];
  /** One per snapshot read, every target. */
  outcomes: VerifyOutcome[];
}

export interface VerifyRotationRequest {
  withinMs: number;
  intervalMs: number;
  all?: boolean;
  signal?: AbortSignal;
  /** Snapshots read at once per target. Default 2. */
  concurrency?: number;
}

const DAMAGED_HINT =
  'restore from a target whose copy verifies; the next replicate run (or "tcab-backup replicate" now) copies a good one over the damaged copy and marks it verified';
const UNREADABLE_HINT =
  'for a copy that could not be read, the reachability and health of its target: it counts as neither good nor damaged (prune keeps it, replicate does not replace it) until the next verify run reads it again';

export class VerifyFailedError extends TcabError {
  constructor(
    message: string,
    readonly result: VerifyRotationResult,
  ) {
    const damaged = result.failed > 0 || result.targets.some((t) => !t.reachable);
    super(message, {
      code: 'VERIFY_FAILED',
      hint: [...(damaged || result.unreadable === 0 ? [DAMAGED_HINT] : []), ...(result.unreadable > 0 ? [UNREADABLE_HINT] : [])].join('; '),
    });
    this.name = 'VerifyFailedError';
  }
}

export async function runVerifyRotation(
  deps: {
    targets: Target[];
    database: string;
    logger?: Logger;
    now?: () => Date;
    /** G: a renewal record older than this is reported (warning). TCAB_BACKUP_CHUNK_GRACE's default when absent. */
    chunkGraceMs?: number;
  },
  request: VerifyRotationRequest,
): Promise<VerifyRotationResult> {
  const log = deps.logger ?? silentLogger;
  const now = deps.now ?? (() => new Date());
  const started = Date.now();
  const outcomes: VerifyOutcome[] = [];
  const graceMs = deps.chunkGraceMs ?? loadChunkGrace({}).graceMs;
  const targets = await Promise.all(
    deps.targets.map((target) => verifyTarget(target, deps.database, request, now, log, outcomes, graceMs)),
  );
  outcomes.sort((a, b) => a.target.localeCompare(b.target) || (a.id < b.id ? 1 : -1));
  const result: VerifyRotationResult = {
    database: deps.database,
    all: Boolean(request.all),
    checked: outcomes.length,
    failed: outcomes.filter((o) => o.verdict === 'damaged').length,
    unreadable: outcomes.filter((o) => o.verdict === 'unreadable').length,
    bytes: outcomes.reduce((n, o) => n + (o.bytes ?? 0), 0),
    durationMs: Date.now() - started,
    targets,
    outcomes,
  };
  const problems = [
    ...targets.filter((t) => !t.reachable).map((t) => `target "${t.target}" (${t.url}): ${t.error}`),
    ...outcomes.filter((o) => o.verdict === 'damaged').map((o) => `target "${o.target}" snapshot ${o.id}: ${o.error}`),
    ...outcomes.filter((o) => o.verdict === 'unreadable').map((o) => `target "${o.target}" snapshot ${o.id} ${o.error}`),
  ];
  if (problems.length) {
    throw new VerifyFailedError(
      `Verify of database "${deps.database}" failed: ${problems.slice(0, 5).join('; ')}${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}`,
      result,
    );
  }
  log.info('verify.completed', {
    database: deps.database,
    all: result.all,
    checked: result.checked,
    bytes: result.bytes,
    durationMs: result.durationMs,
    targets: targets.map((t) => ({ target: t.target, snapshots: t.snapshots, checked: t.checked, longestUnreadMs: t.longestUnreadMs })),
  });
  return result;
}

async function verifyTarget(
  target: Target,
  database: string,
  request: VerifyRotationRequest,
  now: () => Date,
  log: Logger,
  outcomes: VerifyOutcome[],
  graceMs: number,
): Promise<TargetVerifyResult> {
  const signal = request.signal;
  const base: TargetVerifyResult = {
    target: target.name,
    url: target.url,
    reachable: true,
    snapshots: 0,
    checked: 0,
    failed: 0,
    unreadable: 0,
    bytes: 0,
    longestUnreadMs: 0,
    selected: [],
  };
  const startedAt = now();
  let record: VerifyRecord | undefined;
  let damaged = false;
  let all = Boolean(request.all);
  let candidates: RotationCandidate[];
  try {
    const listing = await listCatalog(target, database, { signal });
    candidates = listing.snapshots.map((s) => ({
      id: s.id,
      storedAt: s.manifest.lastModified,
      artifactBytes: (s.artifact ?? s.chunkList)?.size,
    }));
  } catch (e) {
    if (signal?.aborted) throw e;
    return { ...base, reachable: false, error: `listing failed: ${errorMessage(e)}` };
  }
  try {
    record = await readVerifyRecord(target, database, signal);
  } catch (e) {
    if (signal?.aborted) throw e;
    // Not delivered is not damaged: a record that could not be read is never replaced (it may hold verdicts).
    if (e instanceof TargetError || isAbortError(e))
      return { ...base, reachable: false, error: `reading the verify record failed: ${errorMessage(e)}` };
    // A damaged record cannot say what was read when: read everything once and start a new one.
    log.warn('verify.record_damaged', {
      target: target.name,
      error: errorMessage(e),
      note: 'this run reads every snapshot and replaces the record',
    });
    all = true;
    damaged = true;
  }
  const plan = planVerifyRotation(candidates, record?.snapshots ?? {}, {
    now: startedAt,
    withinMs: request.withinMs,
    intervalMs: request.intervalMs,
    all,
  });
  const results: Record<string, VerifyEntry> = {};
  const mine: VerifyOutcome[] = [];
  let next = 0;
  // Format 2: a chunk that several snapshots of this run name is read once, and each gets its verdict.
  const chunks = new ChunkVerdicts(target, database);
  const worker = async () => {
    while (next < plan.selected.length) {
      const { id } = plan.selected[next++]!;
      const outcome = await verifyStoredSnapshot(target, database, id, signal, chunks);
      mine.push(outcome);
      results[id] = {
        checkedAt: now().toISOString(),
        ok: outcome.ok,
        verdict: outcome.verdict,
        ...(outcome.bytes !== undefined ? { bytes: outcome.bytes } : {}),
        ...(outcome.error ? { error: outcome.error } : {}),
      };
      if (outcome.verdict === 'damaged') log.error('verify.mismatch', { database, target: target.name, id, error: outcome.error });
      if (outcome.verdict === 'unreadable') log.error('verify.unreadable', { database, target: target.name, id, error: outcome.error });
    }
  };
  await Promise.all(Array.from({ length: Math.min(request.concurrency ?? 2, Math.max(plan.selected.length, 1)) }, worker));
  outcomes.push(...mine);
  const finishedAt = now();
  const failures = mine.filter((o) => !o.ok);
  const unreadable = failures.filter((o) => o.verdict === 'unreadable').length;
  const run: VerifyRun = {
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    all,
    snapshots: candidates.length,
    checked: mine.length,
    failed: failures.length - unreadable,
    unreadable,
    bytes: mine.reduce((n, o) => n + (o.bytes ?? 0), 0),
    durationMs: finishedAt.getTime() - startedAt.getTime(),
    failures: failures.slice(0, 20).map((o) => ({ id: o.id, error: o.error ?? 'unknown', verdict: o.verdict })),
  };
  const summary: TargetVerifyResult = {
    ...base,
    snapshots: candidates.length,
    checked: run.checked,
    failed: run.failed,
    unreadable,
    bytes: run.bytes,
    selected: plan.selected,
  };
  try {
    const updated = await recordVerifyResults(
      target,
      database,
      { listed: candidates.map((c) => c.id), results, run, replaceDamaged: damaged },
      signal,
    );
    summary.longestUnreadMs = Math.max(0, ...candidates.map((c) => finishedAt.getTime() - lastReadAt(c, updated.snapshots[c.id])));
  } catch (e) {
    if (signal?.aborted) throw e;
    return { ...summary, reachable: false, error: `writing the verify record failed: ${errorMessage(e)}` };
  }
  // Renewal records still waiting: reported, never acted on (a snapshot or replicate run checks them).
  try {
    const records = await listRenewalRecords(target, database, signal ? { signal } : {});
    if (records.length) {
      const oldest = records.reduce((a, r) => (r.lastModified < a ? r.lastModified : a), records[0]!.lastModified);
      summary.renewals = { pending: records.length, oldest: oldest.toISOString() };
      if (finishedAt.getTime() - oldest.getTime() > graceMs) {
        log.warn('verify.renewals_overdue', {
          target: target.name,
          pending: records.length,
          oldest: oldest.toISOString(),
          note: 'a renewed chunk has waited longer than TCAB_BACKUP_CHUNK_GRACE for its check: run "tcab-backup snapshot" or "tcab-backup replicate" against this target',
        });
      }
    }
  } catch (e) {
    if (signal?.aborted) throw e;
    log.warn('verify.renewals_unlisted', { target: target.name, error: errorMessage(e) });
  }
  if (summary.longestUnreadMs > request.withinMs) {
    log.warn('verify.window_exceeded', {
      target: target.name,
      longestUnread: formatDuration(summary.longestUnreadMs),
      within: formatDuration(request.withinMs),
    });
  }
  return summary;
}
