/**
 * The monitor, the dead-man's switch: a timer that never runs never fails, so this job looks for what did
 * not happen. It reads every target (snapshot listing, the newest manifest, recent drill records, the verify
 * record), judges the ages against the thresholds (src/status/document.ts), writes the status document to every
 * target it can reach, logs `monitor.status` with `state`, and throws when the state is critical so the
 * invocation fails and the alert fires. An unreachable target is critical.
 */
import { listCatalog, readManifest } from '../../catalog/catalog.js';
import { statusKey } from '../../catalog/layout.js';
import { listChunks } from '../../catalog/chunk-store.js';
import { TcabError, errorMessage } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import { writeRecord } from '../../catalog/records.js';
import { pgStatusSummary } from '../../postgres/status.js';
import type { ServerRef } from '../../postgres/resource-id.js';
import type { Target } from '../../targets/target.js';
import { readRecentDrills } from '../../catalog/drill-record.js';
import {
  RECENT_DRILLS,
  addProblem,
  buildStatusDocument,
  type MonitorThresholds,
  type PostgresFacts,
  type StatusDocument,
  type TargetFacts,
} from '../../status/document.js';
import { readVerifyRecord } from '../../catalog/verify-record.js';

/** Drill records read per target: enough to find the last success behind a run of failures. */
const DRILLS_READ = RECENT_DRILLS * 2;
/** A target that has not answered within this long counts as unreachable; the monitor must not hang. */
const TARGET_TIMEOUT_MS = 120_000;

export interface MonitorDeps {
  targets: Target[];
  database: string;
  thresholds: MonitorThresholds;
  /** Postgres servers to report on and the target their records are on; or why they cannot be read. */
  postgres?: { servers: Array<Pick<ServerRef, 'id' | 'name'>>; recordsTarget: Target } | { error: string; recordsTarget?: string };
  logger?: Logger;
  now?: () => Date;
}

export interface MonitorOptions {
  /** Write status/<database>.json to every reachable target. Default true. */
  write?: boolean;
  /** Throw MonitorCriticalError when the state is critical (the timer). Default true; the status page passes false. */
  throwOnCritical?: boolean;
  signal?: AbortSignal;
  /** Per-target time limit; default 120 s. */
  targetTimeoutMs?: number;
}

export class MonitorCriticalError extends TcabError {
  constructor(readonly status: StatusDocument) {
    const critical = status.problems.filter((p) => p.state === 'critical');
    super(`Backups of database "${status.database}" are critical: ${critical.map((p) => p.message).join('; ')}`, {
      code: 'MONITOR_CRITICAL',
      hint:
        critical
          .map((p) => p.hint)
          .filter((h, i, all) => all.indexOf(h) === i)
          .join('; ') + '. "tcab-backup status" shows the whole picture',
    });
    this.name = 'MonitorCriticalError';
  }
}

export async function runMonitor(deps: MonitorDeps, options: MonitorOptions = {}): Promise<StatusDocument> {
  const log = deps.logger ?? silentLogger;
  const now = deps.now ?? (() => new Date());
  const timeoutMs = options.targetTimeoutMs ?? TARGET_TIMEOUT_MS;
  const facts = await Promise.all(
    deps.targets.map((t) => readTargetFacts(t, deps.database, bounded(options.signal, timeoutMs), timeoutMs)),
  );
  const postgres = deps.postgres ? await readPostgresFacts(deps.postgres, bounded(options.signal, timeoutMs)) : undefined;
  const doc = buildStatusDocument({
    database: deps.database,
    now: now(),
    thresholds: deps.thresholds,
    targets: facts,
    ...(postgres ? { postgres } : {}),
  });

  if (options.write ?? true) {
    const body = doc;
    await Promise.all(
      deps.targets.map(async (target, i) => {
        if (facts[i]!.error) return;
        try {
          await writeRecord(target, statusKey(deps.database), body, {}, bounded(options.signal, timeoutMs));
        } catch (e) {
          if (options.signal?.aborted) throw e;
          addProblem(doc, {
            state: 'critical',
            check: 'status-write',
            target: target.name,
            message: `target "${target.name}": the status document could not be written: ${errorMessage(e)}`,
            hint: 'that the function app may write to the target (role assignment, access key, bucket policy)',
          });
        }
      }),
    );
  }

  const fields = {
    database: deps.database,
    state: doc.state,
    targets: Object.fromEntries(doc.targets.map((t) => [t.name, t.state])),
    // What the newest successful drill of each target proved: restore (SQLite checks run by the drill) or stream.
    drills: Object.fromEntries(doc.targets.map((t) => [t.name, t.drill.lastSucceeded?.checks?.method ?? 'none'])),
    // The newest drill's application drill, where one ran: passed, or the step it failed at (a failed one is a failed drill above).
    appDrills: Object.fromEntries(
      doc.targets.flatMap((t) => {
        const app = t.drill.recent[0]?.app;
        return app ? [[t.name, app.passed ? 'passed' : `failed at ${app.failedStep ?? 'unknown'}`]] : [];
      }),
    ),
    ...(doc.postgres ? { postgres: doc.postgres.state } : {}),
    problems: doc.problems.map((p) => `${p.state}: ${p.message}`),
  };
  if (doc.state === 'ok') log.info('monitor.status', fields);
  else if (doc.state === 'warn') log.warn('monitor.status', fields);
  else log.error('monitor.status', fields);
  if (doc.state === 'critical' && (options.throwOnCritical ?? true)) throw new MonitorCriticalError(doc);
  return doc;
}

function bounded(signal: AbortSignal | undefined, ms: number): AbortSignal {
  return signal ? AbortSignal.any([signal, AbortSignal.timeout(ms)]) : AbortSignal.timeout(ms);
}

async function readTargetFacts(target: Target, database: string, signal: AbortSignal, timeoutMs: number): Promise<TargetFacts> {
  const facts: TargetFacts = { name: target.name, url: target.url, snapshots: [], drills: [] };
  try {
    const listing = await listCatalog(target, database, { signal });
    facts.snapshots = listing.snapshots.map((s) => ({
      id: s.id,
      time: s.time,
      artifactBytes: s.artifact?.size,
      ...(s.chunkList ? { chunkListBytes: s.chunkList.size } : {}),
    }));
  } catch (e) {
    facts.error = signal.aborted ? `no answer within ${Math.round(timeoutMs / 1000)} s` : errorMessage(e);
    return facts;
  }
  const newest = facts.snapshots[0];
  await Promise.all([
    newest &&
      readManifest(target, database, newest.id, { signal }).then(
        (m) => {
          facts.newestManifest = m;
        },
        (e: unknown) => {
          facts.newestManifestError = errorMessage(e);
        },
      ),
    readRecentDrills(target, database, DRILLS_READ, signal).then(
      (d) => {
        facts.drills = d;
      },
      (e: unknown) => {
        facts.drills = [{ drillId: '(listing)', error: errorMessage(e) }];
      },
    ),
    // One listing of the chunk store (no chunk is read), so the status counts what the target really stores.
    listChunks(target, database, { signal }).then(
      (chunks) => {
        let bytes = 0;
        for (const c of chunks.values()) bytes += c.bytes;
        facts.chunks = { count: chunks.size, bytes };
      },
      (e: unknown) => {
        facts.chunksError = errorMessage(e);
      },
    ),
    readVerifyRecord(target, database, signal).then(
      (v) => {
        if (v) facts.verify = v;
      },
      (e: unknown) => {
        facts.verifyError = errorMessage(e);
      },
    ),
  ]);
  return facts;
}

async function readPostgresFacts(source: NonNullable<MonitorDeps['postgres']>, signal: AbortSignal): Promise<PostgresFacts> {
  if ('error' in source) return { recordsTarget: source.recordsTarget ?? null, error: source.error };
  try {
    return { recordsTarget: source.recordsTarget.name, servers: await pgStatusSummary(source.recordsTarget, source.servers, signal) };
  } catch (e) {
    return { recordsTarget: source.recordsTarget.name, error: errorMessage(e) };
  }
}
