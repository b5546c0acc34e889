/**
 * Drill records: one JSON document per drill and target at drills/<database>/<drill id>.json, on the target
 * that was drilled. They are the evidence that a restore works and how much it would lose; the monitor and
 * the status page read the recent ones.
 */
import { z } from 'zod';
import { drillKey, drillsPrefix } from './layout.js';
import { readRecord, writeRecord } from './records.js';
import type { Target } from '../targets/target.js';
import { errorMessage } from '../errors.js';

export const DRILL_RECORD_FORMAT_VERSION = 1;
export const DRILL_ID_RE = /^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$/;
/** About a year of daily drills; older records are removed by the drill that writes a new one. */
export const DRILL_RECORDS_KEPT = 400;

const Iso = z.string().datetime({ offset: true });

/**
 * The checks a drill can make: the artifact's sha256 (format 1), the chunk list's sha256 against the manifest
 * and every chunk's plain sha256 against its line of the list (format 2), the whole decompressed file's
 * sha256, PRAGMA integrity_check, row counts. Names are only ever added, so older records stay readable.
 */
export const DRILL_CHECKS = [
  'artifact-sha256',
  'snapshot-sha256',
  'integrity-check',
  'row-counts',
  'chunk-list-sha256',
  'chunk-sha256',
] as const;
export type DrillCheck = (typeof DRILL_CHECKS)[number];

export const DrillChecksSchema = z.object({
  /** restore: written to the work folder and opened with SQLite; stream: checked as it streamed, nothing written. */
  method: z.enum(['restore', 'stream']),
  /** What the drill itself checked. */
  ran: z.array(z.enum(DRILL_CHECKS)),
  /**
   * Checks the agent made when it took the snapshot, on the very bytes the drill decompressed (their sha256 is
   * the manifest's), taken from the manifest rather than run again.
   */
  fromSnapshot: z.array(z.enum(DRILL_CHECKS)),
  /** Why the drill streamed instead of restoring. */
  reason: z.string().optional(),
});
export type DrillChecks = z.infer<typeof DrillChecksSchema>;

/**
 * What a successful drill proved, in words, for the CLI and the status page. Records without `checks` restored
 * a format-1 artifact; a record whose checks name the chunks drilled a format-2 (chunked) snapshot.
 */
export function provenText(checks: DrillChecks | null | undefined): string {
  const chunked = checks?.ran.includes('chunk-sha256') ?? false;
  const stored = chunked ? "chunk list, every chunk's and the database's sha256" : 'artifact and database sha256';
  if (!checks || checks.method === 'restore') return `restored to a file: ${stored}, integrity_check and row counts`;
  return `verified as it streamed, nothing written: ${stored} equal the manifest's, so integrity_check and row counts are the agent's on the same bytes`;
}

/**
 * The application drill (TCAB_BACKUP_DRILL_APP=true): the target's artifact streamed to the agent, restored on
 * the VM, and the backend started on the copy and asked for /healthz and /runs (docs/agent-protocol.md,
 * "POST /v1/drills: the application drill"). Absent in records of drills without it.
 */
export const AppDrillRecordSchema = z.object({
  passed: z.boolean(),
  /**
   * The first step that failed: one of the agent's (receive, snapshot-sha256, integrity, start, healthz, runs,
   * stop), or `agent` when the agent refused before receiving (busy, no space, no backend command) or could not
   * be asked. Null when passed.
   */
  failedStep: z.string().nullable(),
  /** host:port of the agent, or null when none could be asked. */
  agent: z.string().nullable(),
  runs: z.object({ inFile: z.number().int().nullable(), served: z.number().int().nullable(), comparison: z.string().nullable() }),
  /** The agent's checks in order, each with its time. */
  checks: z.array(z.object({ name: z.string(), ok: z.boolean(), ms: z.number().nonnegative(), detail: z.string() })),
  /** start + /healthz + /runs: how long the backend took from being started to serving the runs. */
  startToServingMs: z.number().nonnegative().nullable(),
  /** The agent's whole drill, from the first byte received to the backend stopped and its files removed. */
  totalMs: z.number().nonnegative().nullable(),
  /** The backend's last output lines, when a step after its start failed. */
  backendLog: z.array(z.string()).optional(),
  /** What went wrong, with what to check; absent when passed. */
  error: z.string().optional(),
});
export type AppDrillRecord = z.infer<typeof AppDrillRecordSchema>;

/** "backend started and served N runs in ..." for the CLI, the status page and the monitor's summary. */
export function appDrillText(app: AppDrillRecord): string {
  const ms = (name: string) => app.checks.find((c) => c.name === name)?.ms;
  if (app.passed) {
    return (
      `backend started and served ${app.runs.served ?? 0} runs in ${app.startToServingMs ?? 0} ms ` +
      `(start ${ms('start') ?? '-'} ms, /healthz ${ms('healthz') ?? '-'} ms, /runs ${ms('runs') ?? '-'} ms; ${app.runs.inFile ?? '-'} runs in the file; whole drill on the agent ${app.totalMs ?? '-'} ms)`
    );
  }
  return `application drill FAILED at step ${app.failedStep ?? 'unknown'}: ${app.error ?? 'no reason recorded'}`;
}

export const DrillRecordSchema = z.object({
  formatVersion: z.literal(DRILL_RECORD_FORMAT_VERSION),
  kind: z.literal('sqlite-drill'),
  drillId: z.string().regex(DRILL_ID_RE),
  database: z.string(),
  target: z.string(),
  startedAt: Iso,
  finishedAt: Iso,
  ok: z.boolean(),
  snapshot: z
    .object({
      id: z.string(),
      createdAt: Iso,
      artifactBytes: z.number().int().nonnegative(),
      bytes: z.number().int().nonnegative(),
      compression: z.string(),
    })
    .nullable(),
  /**
   * Download to verified file (both sha256 sums, decompression, integrity_check, row counts), in ms; for a
   * streamed drill, download to verified bytes (nothing written, SQLite not opened). With the application
   * drill, plus the backend's start to serving the runs (app.startToServingMs): the file a recovery restores
   * on the VM, then the backend brought up on it. The upload to the agent is not counted (a real recovery
   * downloads onto the VM once: that is the file part).
   */
  recoveryTimeMs: z.number().nonnegative().nullable(),
  /** The application drill, when TCAB_BACKUP_DRILL_APP=true; absent in older records and without it. */
  app: AppDrillRecordSchema.optional(),
  /** What this drill proved and how; absent in records from before drills could stream (those always restored). */
  checks: DrillChecksSchema.optional(),
  recoveryPoint: z
    .object({
      /** How old the snapshot was when the drill compared it with the live database. */
      snapshotAgeMs: z.number(),
      /** Runs in the live database minus runs in the snapshot: what restoring it would lose. Null without the agent. */
      runsSince: z.number().int().nullable(),
      newestPublishedAt: z.object({ snapshot: z.string().nullable(), live: z.string().nullable() }),
      /** Newest published run live minus newest in the snapshot, in ms. */
      publishedGapMs: z.number().nullable(),
    })
    .nullable(),
  tables: z.record(
    z.string(),
    z.object({
      snapshot: z.number().int().nullable(),
      live: z.number().int().nullable(),
      /** live minus snapshot. */
      difference: z.number().int().nullable(),
    }),
  ),
  live: z.object({
    available: z.boolean(),
    checkedAt: Iso.optional(),
    agent: z.string().optional(),
    error: z.string().optional(),
  }),
  warnings: z.array(z.string()),
  error: z.string().optional(),
});
export type DrillRecord = z.infer<typeof DrillRecordSchema>;

export async function writeDrillRecord(target: Target, record: DrillRecord, signal?: AbortSignal): Promise<void> {
  await writeRecord(target, drillKey(record.database, record.drillId), record, { ifNoneMatch: '*' }, signal);
}

async function listDrillIds(target: Target, database: string, signal?: AbortSignal): Promise<string[]> {
  const prefix = drillsPrefix(database);
  const ids: string[] = [];
  for await (const info of target.list(prefix, signal ? { signal } : {})) {
    const name = info.key.slice(prefix.length);
    if (name.endsWith('.json') && DRILL_ID_RE.test(name.slice(0, -5))) ids.push(name.slice(0, -5));
  }
  return ids.sort();
}

/** The newest `limit` drill records, newest first. A damaged record is reported in its place, never skipped silently. */
export async function readRecentDrills(
  target: Target,
  database: string,
  limit: number,
  signal?: AbortSignal,
): Promise<Array<{ drillId: string; record?: DrillRecord; error?: string }>> {
  const all = (await listDrillIds(target, database, signal)).reverse();
  // Read past the limit while ids share the last one's second: which of those is newer is known only from the records.
  let end = Math.min(limit, all.length);
  while (end > 0 && end < all.length && all[end]!.slice(0, 16) === all[end - 1]!.slice(0, 16)) end++;
  const ids = all.slice(0, end);
  const read = await Promise.all(
    ids.map(async (drillId) => {
      try {
        const stored = await readRecord(target, drillKey(database, drillId), DrillRecordSchema, signal);
        return stored ? { drillId, record: stored.value } : { drillId, error: 'vanished while being read' };
      } catch (e) {
        return { drillId, error: errorMessage(e) };
      }
    }),
  );
  // Ids have second precision; drills started within one second are ordered by when they started.
  const at = (r: (typeof read)[number]) => r.record?.startedAt ?? r.drillId;
  return read
    .sort((a, b) =>
      a.drillId.slice(0, 16) !== b.drillId.slice(0, 16) ? (a.drillId < b.drillId ? 1 : -1) : at(a) < at(b) ? 1 : at(a) > at(b) ? -1 : 0,
    )
    .slice(0, limit);
}

/** Removes the oldest records beyond DRILL_RECORDS_KEPT; returns how many went. */
export async function trimDrillRecords(target: Target, database: string, keep = DRILL_RECORDS_KEPT, signal?: AbortSignal): Promise<number> {
  const ids = await listDrillIds(target, database, signal);
  const old = ids.slice(0, Math.max(0, ids.length - keep));
  for (const id of old) await target.delete(drillKey(database, id), signal ? { signal } : {});
  return old.length;
}
