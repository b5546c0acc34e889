/**
 * Replicate: makes every target hold every snapshot that any target holds (as planned by plan.ts), each copy
 * checked against the manifest while it streams, and repairs copies that verify found damaged. Idempotent,
 * and safe to run alongside itself and prune without a lock. Throws after the run, naming what failed.
 * Why it is safe: docs/architecture.md, "Replicate".
 */
import { TcabError, errorMessage } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import type { RetentionConfig } from '../../retention/settings.js';
import { backoffMs, isRetryable, sleep, type RetryOptions } from '../../targets/retry.js';
import type { Target } from '../../targets/target.js';
import type { Manifest } from '../../catalog/manifest.js';
import { copySnapshot, CopyError, type CopyResult } from './copy.js';
import { copySnapshotV2, DEFAULT_CHUNK_GRACE_MS, DEFAULT_CHUNK_JOB_TIMEOUT_MS, DestinationChunks, type CopyV2Result } from './copy-v2.js';
import { checkRenewalsOn } from './renewals.js';
import { lostChunksMessage, type RenewalOutcome } from '../renewals.js';
import { planReplication, type DestinationPlan, type SkippedCopy } from './plan.js';
import { readTargetCatalog, type TargetCatalog } from '../../catalog/target-catalog.js';
import { forEachLimit, Gate } from '../../util/pool.js';
import { readVerifyRecord, recordRewrittenCopies, type VerifyEntry, type VerifyRecord } from '../../catalog/verify-record.js';

export interface ReplicateDeps {
  targets: Target[];
  database: string;
  logger?: Logger;
  /** The targets' retention: snapshots a destination's policy would remove at once are not copied there. */
  retention?: RetentionConfig;
  /** The current time (tests). */
  now?: () => Date;
  /**
   * G of docs/format-2.md: a format-2 chunk the destination holds is reused while younger than G/2, written
   * again when older. Default DEFAULT_CHUNK_GRACE_MS (7 days).
   */
  chunkGraceMs?: number;
  /** J of docs/format-2.md (TCAB_BACKUP_JOB_TIMEOUT): when a renewal is recorded, and when a record is due. */
  chunkJobTimeoutMs?: number;
}

export interface ReplicateRequest {
  /** List what would be copied; copy nothing. */
  dryRun?: boolean;
  signal?: AbortSignal;
  /** Copies in flight at once, across all destinations. Default 2. */
  concurrency?: number;
  /** Retries of a whole copy after a transient failure (a stream cannot be resumed). Default 2 retries. */
  retry?: RetryOptions;
}

export interface CopiedSnapshot {
  id: string;
  from: string;
  bytes: number;
  ms: number;
  /** When the stored bytes were last hashed against the manifest: the end of this copy. */
  checkedAt: string;
  /** What was wrong with the destination's own copy, when this copy replaced a damaged one. */
  repaired?: string;
  /** Sources tried first and given up (a corrupt copy, a read that broke off). */
  refusedSources?: Array<{ source: string; error: string }>;
  /** Format 2: what happened to the snapshot's distinct chunks (`bytes` is what the copied and renewed ones weigh). */
  chunks?: CopyV2Result['chunks'];
}

export interface FailedCopy {
  id: string;
  error: string;
  /** Every source tried, and why it was given up. */
  attempts: Array<{ source: string; error: string }>;
}

export interface DestinationOutcome {
  target: string;
  ok: boolean;
  /** Set when the target could not be listed: it was neither source nor destination this run. */
  error?: string;
  /** Complete snapshots it already held. */
  present: number;
  /** What this run copies (or, with dryRun, would copy): id, first source, bytes. */
  planned: Array<{ id: string; from: string; bytes: number; repairs?: string }>;
  copied: CopiedSnapshot[];
  skipped: SkippedCopy[];
  failed: FailedCopy[];
  bytes: number;
  /** Format 2: the renewal records on this target checked this run (docs/format-2.md, "Renewal records"). */
  renewals?: RenewalOutcome;
}

export interface ReplicateResult {
  database: string;
  dryRun: boolean;
  targets: DestinationOutcome[];
  copied: number;
  failed: number;
  bytes: number;
  durationMs: number;
}

export class ReplicateFailedError extends TcabError {
  readonly result: ReplicateResult;
  constructor(message: string, result: ReplicateResult, hint: string) {
    super(message, { code: 'REPLICATE_FAILED', hint });
    this.name = 'ReplicateFailedError';
    this.result = result;
  }
}

/**
 * The run was stopped by its signal while copying: `result` holds the copies completed and checked before
 * that (each with its manifest, written after its chunks or artifact); a copy under way left no manifest.
 */
export class ReplicateStoppedError extends TcabError {
  readonly result: ReplicateResult;
  constructor(result: ReplicateResult, cause: unknown) {
    super(`Replicate of "${result.database}" was stopped after ${result.copied} completed copies: ${errorMessage(cause)}`, {
      code: 'REPLICATE_STOPPED',
      hint: 'run replicate again: it copies only what is still missing',
      cause,
    });
    this.name = 'ReplicateStoppedError';
    this.result = result;
  }
}

/** A destination that failed this many copies in a row gets no more attempts this run. */
const DESTINATION_GIVE_UP = 3;
const DEFAULT_COPY_RETRY: RetryOptions = { retries: 2, baseDelayMs: 1_000, maxDelayMs: 20_000 };

export async function runReplicate(deps: ReplicateDeps, request: ReplicateRequest = {}): Promise<ReplicateResult> {
  const log = deps.logger ?? silentLogger;
  const started = Date.now();
  const now = deps.now?.() ?? new Date();
  const signal = request.signal;
  if (deps.targets.length === 0) throw new TcabError('No targets configured', { hint: 'set TCAB_BACKUP_TARGETS' });

  const outcomes = new Map<string, DestinationOutcome>(
    deps.targets.map((t) => [
      t.name,
      {
        target: t.name,
        ok: true,
        present: 0,
        planned: [],
        copied: [],
        skipped: [],
        failed: [],
        bytes: 0,
      },
    ]),
  );
  const catalogs: TargetCatalog[] = [];
  await Promise.all(
    deps.targets.map(async (target) => {
      try {
        catalogs.push(await readTargetCatalog(target, deps.database, { signal }));
      } catch (e) {
        if (signal?.aborted) throw e;
        const outcome = outcomes.get(target.name)!;
        outcome.ok = false;
        outcome.error = `listing failed: ${errorMessage(e)}`;
        log.error('replicate.listing_failed', { target: target.name, error: errorMessage(e) });
      }
    }),
  );
  catalogs.sort((a, b) => deps.targets.indexOf(a.target) - deps.targets.indexOf(b.target));
  const verifyRecords = await readVerifyRecords(catalogs, deps.database, log, signal);

  const plans = planReplication(catalogs, { ...(deps.retention ? { retention: deps.retention } : {}), now, verifyRecords });
  for (const plan of plans) {
    const outcome = outcomes.get(plan.destination)!;
    outcome.present = plan.present;
    outcome.skipped.push(...plan.skipped);
    outcome.failed.push(...plan.unrepairable.map((u) => ({ id: u.id, error: u.reason, attempts: [] })));
    for (const u of plan.unrepairable) log.error('replicate.unrepairable', { id: u.id, target: plan.destination, error: u.reason });
    outcome.planned = plan.copies.map((c) => ({
      id: c.id,
      from: c.sources[0]!,
      bytes: c.bytes,
      ...(c.repairs ? { repairs: c.repairs } : {}),
    }));
  }
  const summary = (): ReplicateResult => {
    const targets = [...outcomes.values()];
    return {
      database: deps.database,
      dryRun: Boolean(request.dryRun),
      targets,
      copied: targets.reduce((n, t) => n + t.copied.length, 0),
      failed: targets.reduce((n, t) => n + t.failed.length, 0),
      bytes: targets.reduce((n, t) => n + t.bytes, 0),
      durationMs: Date.now() - started,
    };
  };
  if (!request.dryRun) {
    try {
      await copyAll(catalogs, plans, outcomes, log, request, deps.database, {
        graceMs: deps.chunkGraceMs ?? DEFAULT_CHUNK_GRACE_MS,
        jobTimeoutMs: deps.chunkJobTimeoutMs ?? DEFAULT_CHUNK_JOB_TIMEOUT_MS,
      });
      await recordRepairs(catalogs, verifyRecords, outcomes, deps.database, log, signal);
    } catch (e) {
      // Stopped (an interrupt, a job timeout): what was copied and checked by then is said, with the cause.
      if (signal?.aborted) throw new ReplicateStoppedError(summary(), e);
      throw e;
    }
  }

  const result = summary();
  const targets = result.targets;
  for (const t of targets) t.ok = !t.error && t.failed.length === 0 && !t.renewals?.error && !t.renewals?.lost.length;
  throwIfFailed(result);
  log.info('replicate.completed', {
    database: deps.database,
    dryRun: result.dryRun,
    copied: result.copied,
    bytes: result.bytes,
    durationMs: result.durationMs,
    planned: targets.reduce((n, t) => n + t.planned.length, 0),
    skipped: targets.reduce((n, t) => n + t.skipped.length, 0),
  });
  return result;
}

/**
 * Each listed target's verify record. One that cannot be read counts as none: no copy there is repaired this
 * run, and its copies may still serve as sources, which are checked against the manifest as they stream.
 */
async function readVerifyRecords(
  catalogs: TargetCatalog[],
  database: string,
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<Map<string, VerifyRecord | undefined>> {
  const records = new Map<string, VerifyRecord | undefined>();
  await Promise.all(
    catalogs.map(async (c) => {
      try {
        records.set(c.target.name, await readVerifyRecord(c.target, database, signal));
      } catch (e) {
        if (signal?.aborted) throw e;
        log.warn('replicate.verify_record_unreadable', {
          target: c.target.name,
          error: errorMessage(e),
          note: 'copies there whose last verify failed are not repaired this run',
        });
        records.set(c.target.name, undefined);
      }
    }),
  );
  return records;
}

/**
 * Marks as ok, in each destination's verify record, every copy this run stored over one recorded as failed:
 * otherwise the next run would repair it again and prune would keep holding the good copies elsewhere.
 */
async function recordRepairs(
  catalogs: TargetCatalog[],
  verifyRecords: Map<string, VerifyRecord | undefined>,
  outcomes: Map<string, DestinationOutcome>,
  database: string,
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<void> {
  await Promise.all(
    catalogs.map(async ({ target }) => {
      const record = verifyRecords.get(target.name);
      const outcome = outcomes.get(target.name)!;
      const rewritten = outcome.copied.filter((c) => record?.snapshots[c.id]?.ok === false);
      if (rewritten.length === 0) return;
      const entries: Record<string, VerifyEntry> = {};
      for (const c of rewritten) entries[c.id] = { checkedAt: c.checkedAt, ok: true, bytes: c.bytes };
      try {
        await recordRewrittenCopies(target, database, entries, signal);
        log.info('replicate.verify_record_updated', { target: target.name, ids: rewritten.map((c) => c.id) });
      } catch (e) {
        if (signal?.aborted) throw e;
        for (const c of rewritten) {
          outcome.failed.push({
            id: c.id,
            attempts: [],
            error: `was copied again, but marking it ok in the verify record failed (${errorMessage(e)}); the next replicate run copies it again`,
          });
        }
      }
    }),
  );
}

async function copyAll(
  catalogs: TargetCatalog[],
  plans: DestinationPlan[],
  outcomes: Map<string, DestinationOutcome>,
  log: Logger,
  request: ReplicateRequest,
  database: string,
  { graceMs, jobTimeoutMs }: { graceMs: number; jobTimeoutMs: number },
): Promise<void> {
  const byName = new Map(catalogs.map((c) => [c.target.name, c]));
  // Format 2: each destination's chunks are listed once this run, and a chunk shared by several copies is stored once.
  const chunkStates = new Map<string, DestinationChunks>();
  const chunksOf = (target: Target) => {
    let state = chunkStates.get(target.name);
    if (!state) chunkStates.set(target.name, (state = new DestinationChunks(target, database, request.signal)));
    return state;
  };
  // The renewal records earlier runs left on each listed target, checked when due; a recorded chunk gone is
  // copied again from another target. Before the copies: a copy may reuse such a chunk.
  await Promise.all(
    catalogs.map(async (c) => {
      const others = catalogs.filter((o) => o !== c).map((o) => chunksOf(o.target));
      const renewals = await checkRenewalsOn(chunksOf(c.target), others, jobTimeoutMs, log, request.signal);
      // A check that failed is reported too (the run fails on it), whether or not records were found.
      if (renewals.records || renewals.error) outcomes.get(c.target.name)!.renewals = renewals;
    }),
  );
  // Newest first across destinations: the snapshots a restore would want are copied before older ones.
  const tasks = plans
    .flatMap((p) => p.copies.map((copy) => ({ destination: byName.get(p.destination)!, copy })))
    .sort((a, b) => (a.copy.id < b.copy.id ? 1 : a.copy.id > b.copy.id ? -1 : 0));
  const failStreak = new Map<string, number>();
  const concurrency = Math.max(1, request.concurrency ?? 2);
  // `concurrency` copies read from their sources at once. A copy whose bytes have all been read and verified
  // gives its turn to the next while it finishes (last parts, completing the upload, manifest, check), so the
  // source never idles during a destination's slowest step; one finishing copy per reading one at most.
  const reading = new Gate(concurrency);

  await forEachLimit(tasks, concurrency * 2, async ({ destination, copy }) => {
    // The turn is taken before the destination's record is looked at: copies that failed meanwhile count.
    let first: (() => void) | undefined = await reading.acquire();
    const turn = async () => {
      const t = first;
      first = undefined;
      return t ?? reading.acquire();
    };
    try {
      await copyOne(destination, copy, turn);
    } finally {
      first?.();
    }
  });

  async function copyOne(
    destination: TargetCatalog,
    copy: DestinationPlan['copies'][number],
    turn: () => Promise<() => void>,
  ): Promise<void> {
    const name = destination.target.name;
    const outcome = outcomes.get(name)!;
    if ((failStreak.get(name) ?? 0) >= DESTINATION_GIVE_UP) {
      outcome.skipped.push({
        id: copy.id,
        reason: `not attempted: target "${name}" failed ${DESTINATION_GIVE_UP} copies in a row this run`,
      });
      return;
    }
    const attempts: FailedCopy['attempts'] = [];
    for (const sourceName of copy.sources) {
      const source = byName.get(sourceName)!;
      // The source's own manifest: its bytes are checked against what it claims, and that is what is copied.
      const manifest = source.byId.get(copy.id)!.manifest!;
      try {
        const done = await copyWithRetry(source.target, destination.target, manifest, request, log, turn, (release) =>
          manifest.formatVersion === 1
            ? copySnapshot(source.target, destination.target, manifest, request.signal, release)
            : copySnapshotV2(source.target, chunksOf(destination.target), manifest, {
                graceMs,
                jobTimeoutMs,
                repair: copy.repairs !== undefined,
                onStreamed: release,
                ...(request.signal ? { signal: request.signal } : {}),
              }),
        );
        outcome.copied.push({
          id: copy.id,
          from: sourceName,
          bytes: done.bytes,
          ms: done.ms,
          checkedAt: new Date().toISOString(),
          ...(copy.repairs ? { repaired: copy.repairs } : {}),
          ...(attempts.length ? { refusedSources: attempts } : {}),
          ...('chunks' in done ? { chunks: (done as CopyV2Result).chunks } : {}),
        });
        outcome.bytes += done.bytes;
        failStreak.set(name, 0);
        log.info('replicate.copied', {
          id: copy.id,
          from: sourceName,
          to: name,
          bytes: done.bytes,
          ms: done.ms,
          ...(copy.repairs ? { repaired: copy.repairs } : {}),
          ...('chunks' in done ? { chunks: (done as CopyV2Result).chunks } : {}),
        });
        return;
      } catch (e) {
        if (request.signal?.aborted) throw e;
        attempts.push({ source: sourceName, error: errorMessage(e) });
        const side = e instanceof CopyError ? e.side : 'destination';
        log.warn('replicate.copy_failed', { id: copy.id, from: sourceName, to: name, side, error: errorMessage(e) });
        if (side === 'destination') break;
      }
    }
    const last = attempts[attempts.length - 1];
    outcome.failed.push({ id: copy.id, error: last ? `from "${last.source}": ${last.error}` : 'no source could be read', attempts });
    failStreak.set(name, (failStreak.get(name) ?? 0) + 1);
  }
}

/**
 * A copy cannot resume a broken stream, so a transient failure repeats the whole copy from the same source
 * (format 2: again, but the chunks stored by the failed attempt count as stored).
 */
async function copyWithRetry(
  source: Target,
  destination: Target,
  manifest: Manifest,
  request: ReplicateRequest,
  log: Logger,
  turn: () => Promise<() => void>,
  copy: (release: () => void) => Promise<CopyResult | CopyV2Result>,
): Promise<CopyResult | CopyV2Result> {
  const retry = { ...DEFAULT_COPY_RETRY, ...request.retry };
  for (let attempt = 0; ; attempt++) {
    // A turn per attempt: a copy waiting out its backoff does not keep another from reading.
    const release = await turn();
    try {
      return await copy(release);
    } catch (e) {
      release();
      if (request.signal?.aborted) throw e;
      const cause = e instanceof CopyError ? e.cause : e;
      const transient = e instanceof CopyError ? !e.integrity && (e.brokeOff || isRetryable(cause)) : isRetryable(e);
      if (attempt >= (retry.retries ?? 0) || !transient) throw e;
      const delayMs = backoffMs(attempt, retry);
      log.warn('replicate.copy_retry', {
        id: manifest.id,
        from: source.name,
        to: destination.name,
        attempt: attempt + 1,
        delayMs: Math.round(delayMs),
        error: errorMessage(e),
      });
      await sleep(delayMs, request.signal);
    } finally {
      release();
    }
  }
}

function throwIfFailed(result: ReplicateResult): void {
  const problems: string[] = [];
  for (const t of result.targets) {
    if (t.error) problems.push(`target "${t.target}": ${t.error}`);
    for (const f of t.failed) problems.push(`snapshot ${f.id} to target "${t.target}" ${f.error}`);
    if (t.renewals?.error) problems.push(`checking the renewal records on target "${t.target}" failed: ${t.renewals.error}`);
    if (t.renewals?.lost.length) problems.push(lostChunksMessage(t.target, t.renewals.lost));
  }
  if (problems.length === 0) return;
  const lost = result.targets.some((t) => t.renewals?.lost.length);
  const shown = problems.slice(0, 5).join('; ') + (problems.length > 5 ? `; and ${problems.length - 5} more` : '');
  throw new ReplicateFailedError(
    `Replicate of "${result.database}" failed: ${shown}${result.copied ? ` (${result.copied} other copies succeeded)` : ''}`,
    result,
    (lost
      ? 'a renewed chunk no other target holds at its size cannot be copied back: run "tcab-backup verify" on that target, and delete the snapshots it names there if no target can repair them (their record goes once no manifest names the chunk). '
      : '') +
      'the named target (reachability, credentials, free space); a source whose copy does not match its manifest is damaged: run tcab-backup verify. A snapshot that cannot be repaired has no good copy left on any target: keep its copies, and check them with "tcab-backup verify --all" (a failed re-read may have been the storage, not the bytes). The next replicate run retries what failed',
  );
}
