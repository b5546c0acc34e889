/**
 * The verify record on each target (status/<database>.verify.json): per stored snapshot, when it was last
 * re-read and the verdict, `ok`, `damaged` or `unreadable`. Reads older entries that carry only `ok`, and
 * writes `ok` beside the verdict (false for unreadable) so such readers never take an unreadable copy as good.
 * Its readers and what each verdict means to them: docs/architecture.md, "Verify".
 */
import { z } from 'zod';
import { verifyRecordKey } from './layout.js';
import { PreconditionFailedError, TargetError, isAbortError } from '../errors.js';
import { readRecord, writeRecord } from './records.js';
import type { Target } from '../targets/target.js';

export const VERIFY_RECORD_FORMAT_VERSION = 1;
/** One entry per stored snapshot (about 150 bytes): room for some 100,000 snapshots on a target. */
const MAX_VERIFY_RECORD_BYTES = 16 * 1024 * 1024;
const Iso = z.string().datetime({ offset: true });

export const VerdictSchema = z.enum(['ok', 'damaged', 'unreadable']);
export type Verdict = z.infer<typeof VerdictSchema>;

export const VerifyEntrySchema = z.object({
  checkedAt: Iso,
  ok: z.boolean(),
  /** Absent in entries written before verdicts: then `ok` alone says it ('damaged' when false). */
  verdict: VerdictSchema.optional(),
  /** Bytes read; on a mismatch, what was found. */
  bytes: z.number().int().nonnegative().optional(),
  error: z.string().optional(),
  /** First of the consecutive checks with this same verdict (not ok), so the page can say for how long. */
  failingSince: Iso.optional(),
});
export type VerifyEntry = z.infer<typeof VerifyEntrySchema>;

/** The entry's verdict. An entry whose `ok` and verdict disagree never reads as good. */
export function verdictOf(entry: Pick<VerifyEntry, 'ok' | 'verdict'>): Verdict {
  if (!entry.ok) return entry.verdict === 'unreadable' ? 'unreadable' : 'damaged';
  return entry.verdict === undefined || entry.verdict === 'ok' ? 'ok' : entry.verdict;
}

export const VerifyRunSchema = z.object({
  startedAt: Iso,
  finishedAt: Iso,
  /** True for `verify --all`: every snapshot was read, not a rotating subset. */
  all: z.boolean(),
  snapshots: z.number().int().nonnegative(),
  checked: z.number().int().nonnegative(),
  /** Copies found damaged (before verdicts: every check that did not pass). */
  failed: z.number().int().nonnegative(),
  /** Copies the target did not deliver; absent before verdicts. */
  unreadable: z.number().int().nonnegative().optional(),
  bytes: z.number().int().nonnegative(),
  durationMs: z.number().nonnegative(),
  failures: z.array(z.object({ id: z.string(), error: z.string(), verdict: VerdictSchema.optional() })),
});
export type VerifyRun = z.infer<typeof VerifyRunSchema>;

export const VerifyRecordSchema = z.object({
  formatVersion: z.literal(VERIFY_RECORD_FORMAT_VERSION),
  kind: z.literal('verify-record'),
  database: z.string(),
  target: z.string(),
  updatedAt: Iso,
  /** Snapshot id -> the last check of its stored copy. Entries of snapshots that are gone are dropped. */
  snapshots: z.record(z.string(), VerifyEntrySchema),
  lastRun: VerifyRunSchema.optional(),
  /** The last run that found every snapshot it read intact (an unreadable one keeps a run from being clean). */
  lastCleanRun: VerifyRunSchema.optional(),
  lastFailedRun: VerifyRunSchema.optional(),
});
export type VerifyRecord = z.infer<typeof VerifyRecordSchema>;

/** The target's verify record, or undefined when verify never ran there. A damaged record throws. */
export async function readVerifyRecord(target: Target, database: string, signal?: AbortSignal): Promise<VerifyRecord | undefined> {
  return (await readRecord(target, verifyRecordKey(database), VerifyRecordSchema, signal, MAX_VERIFY_RECORD_BYTES))?.value;
}

/**
 * How a stored copy stands: 'failed' when its last re-read did not match its manifest (prune must not count
 * it as verified), 'ok' when it did, 'unreadable' when the last re-read could not get its bytes (neither
 * good nor damaged), 'unchecked' when no run has re-read it yet (it was read back when stored).
 */
export function copyState(
  record: VerifyRecord | undefined,
  id: string,
): { state: 'ok' | 'failed' | 'unreadable' | 'unchecked'; checkedAt?: string; error?: string } {
  const entry = record?.snapshots[id];
  if (!entry) return { state: 'unchecked' };
  const verdict = verdictOf(entry);
  if (verdict === 'ok') return { state: 'ok', checkedAt: entry.checkedAt };
  return {
    state: verdict === 'damaged' ? 'failed' : 'unreadable',
    checkedAt: entry.checkedAt,
    ...(entry.error ? { error: entry.error } : {}),
  };
}

export interface VerifyUpdate {
  /** Ids listed on the target by this run (entries of other, older ids are dropped as pruned). */
  listed: string[];
  /** What this run found. */
  results: Record<string, VerifyEntry>;
  run: VerifyRun;
  /** The stored record is damaged (not JSON, wrong format): replace it instead of merging into it. */
  replaceDamaged?: boolean;
}

function mergeResults(snapshots: Record<string, VerifyEntry>, results: Record<string, VerifyEntry>): void {
  for (const [id, result] of Object.entries(results)) {
    const previous = snapshots[id];
    const was = previous && verdictOf(previous);
    const is = verdictOf(result);
    // A newer read by a concurrent run wins, except that a found mismatch is never hidden by a read that
    // did not find one.
    if (previous && previous.checkedAt > result.checkedAt && (was === 'damaged' || is !== 'damaged')) continue;
    // Not being able to read a damaged copy does not make it any less damaged: it stays to be repaired.
    if (was === 'damaged' && is === 'unreadable') continue;
    snapshots[id] =
      is === 'ok'
        ? result
        : { ...result, failingSince: previous && was === is ? (previous.failingSince ?? previous.checkedAt) : result.checkedAt };
  }
}

function apply(base: VerifyRecord | undefined, database: string, target: string, update: VerifyUpdate): VerifyRecord {
  const listed = new Set(update.listed);
  const newestListed = update.listed.reduce((a, b) => (b > a ? b : a), '');
  const snapshots: Record<string, VerifyEntry> = {};
  // A snapshot newer than this run's listing may have been verified by a concurrent run: keep it.
  for (const [id, entry] of Object.entries(base?.snapshots ?? {})) if (listed.has(id) || id > newestListed) snapshots[id] = entry;
  mergeResults(snapshots, update.results);
  const run = update.run;
  const newer = (a: VerifyRun | undefined) => (a && a.finishedAt > run.finishedAt ? a : run);
  const clean = run.failed === 0 && !run.unreadable;
  return {
    formatVersion: VERIFY_RECORD_FORMAT_VERSION,
    kind: 'verify-record',
    database,
    target,
    updatedAt: new Date().toISOString(),
    snapshots,
    lastRun: newer(base?.lastRun),
    ...(clean ? { lastCleanRun: newer(base?.lastCleanRun) } : base?.lastCleanRun ? { lastCleanRun: base.lastCleanRun } : {}),
    ...(!clean ? { lastFailedRun: newer(base?.lastFailedRun) } : base?.lastFailedRun ? { lastFailedRun: base.lastFailedRun } : {}),
  };
}

/**
 * Merges this run's results into the record. Conditional writes keep a concurrent run (the timer and an
 * operator's CLI) from wiping out each other's results: on a conflict the record is read again and merged.
 */
export async function recordVerifyResults(
  target: Target,
  database: string,
  update: VerifyUpdate,
  signal?: AbortSignal,
): Promise<VerifyRecord> {
  const key = verifyRecordKey(database);
  for (let attempt = 0; ; attempt++) {
    let stored: Awaited<ReturnType<typeof readRecord<VerifyRecord>>>;
    let condition: { ifMatch: string } | { ifNoneMatch: '*' } | Record<string, never> = {};
    try {
      stored = await readRecord(target, key, VerifyRecordSchema, signal, MAX_VERIFY_RECORD_BYTES);
      condition = stored ? { ifMatch: stored.etag } : { ifNoneMatch: '*' };
    } catch (e) {
      if (!update.replaceDamaged || e instanceof TargetError || isAbortError(e)) throw e;
      stored = undefined;
    }
    const next = apply(stored?.value, database, target.name, update);
    try {
      await writeRecord(target, key, next, condition, signal);
      return next;
    } catch (e) {
      if (!(e instanceof PreconditionFailedError) || attempt >= 4) throw e;
    }
  }
}

/**
 * Records copies that replicate stored again over a damaged one: their bytes were hashed against the manifest
 * as they were written, which is as good as a re-read, so each entry becomes ok. Only the entries change: the
 * runs stay as verify left them, because no verify run happened. Same conditional write and merge as
 * recordVerifyResults, so a verify run finishing meanwhile keeps a mismatch it found after the copy. Without
 * a record there is nothing that says the copies failed, and nothing is written.
 */
export async function recordRewrittenCopies(
  target: Target,
  database: string,
  results: Record<string, VerifyEntry>,
  signal?: AbortSignal,
): Promise<VerifyRecord | undefined> {
  const key = verifyRecordKey(database);
  for (let attempt = 0; ; attempt++) {
    const stored = await readRecord(target, key, VerifyRecordSchema, signal, MAX_VERIFY_RECORD_BYTES);
    if (!stored) return undefined;
    const snapshots = { ...stored.value.snapshots };
    mergeResults(snapshots, results);
    const next: VerifyRecord = { ...stored.value, snapshots, updatedAt: new Date().toISOString() };
    try {
      await writeRecord(target, key, next, { ifMatch: stored.etag }, signal);
      return next;
    } catch (e) {
      if (!(e instanceof PreconditionFailedError) || attempt >= 4) throw e;
    }
  }
}
