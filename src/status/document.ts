/**
 * The status document (status/<database>.json on every target, GET /api/status, `tcab-backup status --json`):
 * what the monitor found per target and Postgres server, judged ok, warn or critical against the age
 * thresholds. Building it is a pure function of the facts read and `now`.
 * The judgement: docs/architecture.md, "Monitor and status".
 */
import { storedBytes, storedCompression, type Manifest } from '../catalog/manifest.js';
import type { PgServerStatus } from '../postgres/status.js';
import { formatDuration } from '../util/duration.js';
import { appDrillText, type DrillChecks, type DrillRecord } from '../catalog/drill-record.js';
import { verdictOf, type VerifyRecord } from '../catalog/verify-record.js';

/** An age judged against two limits (the monitor's *_WARN_AGE and *_CRITICAL_AGE settings). */
export interface AgeThreshold {
  warnMs: number;
  criticalMs: number;
}

export interface MonitorThresholds {
  snapshot: AgeThreshold;
  drill: AgeThreshold;
  verify: AgeThreshold;
  pgCheck: AgeThreshold;
  pgDrill: AgeThreshold;
}

export const STATUS_FORMAT_VERSION = 1;
export type State = 'ok' | 'warn' | 'critical';
const RANK: Record<State, number> = { ok: 0, warn: 1, critical: 2 };
/** Snapshots listed in the timeline of each target (newest); the count and sizes cover all of them. */
export const TIMELINE_LIMIT = 500;
/** Drills shown in the recovery-time trend. */
export const RECENT_DRILLS = 14;

export function worst(...states: State[]): State {
  return states.reduce<State>((a, b) => (RANK[b] > RANK[a] ? b : a), 'ok');
}

export interface Problem {
  state: 'warn' | 'critical';
  /** Which check: reachability, snapshot, drill, verify, status-write, pg-check, pg-drill, postgres. */
  check: string;
  target?: string;
  server?: string;
  message: string;
  hint: string;
}

export interface DrillSummary {
  drillId: string;
  finishedAt: string;
  ok: boolean;
  snapshotId: string | null;
  recoveryTimeMs: number | null;
  /** How the drill proved the snapshot: restored (SQLite checks here) or streamed (sha256 here, SQLite checks the agent's). */
  checks: DrillChecks | null;
  snapshotAgeMs: number | null;
  runsSince: number | null;
  liveAvailable: boolean;
  warnings: string[];
  error?: string;
  /** The application drill (TCAB_BACKUP_DRILL_APP), when this drill ran one: the backend brought up on the copy. */
  app?: {
    passed: boolean;
    failedStep: string | null;
    runsServed: number | null;
    runsInFile: number | null;
    startToServingMs: number | null;
    text: string;
  };
}

export interface TargetStatus {
  name: string;
  url: string;
  state: State;
  reachable: boolean;
  error?: string;
  snapshots: {
    state: State;
    count: number;
    /**
     * The bytes the target stores for the database's snapshots, from listings alone (no object is read): the
     * format-1 artifacts, the format-2 chunk lists, and every chunk under chunks/<database>/ once, however many
     * snapshots share it (chunks no snapshot names any more, until prune collects them, included). Manifests
     * and records are not counted. Without the chunk listing (chunks null), artifacts and chunk lists only.
     */
    storedBytes: number;
    /** The chunk store's listing: its chunks and their stored bytes; null when it could not be listed (chunksError). */
    chunks: { count: number; bytes: number } | null;
    chunksError?: string;
    newest: {
      id: string;
      createdAt: string;
      ageMs: number;
      artifactBytes: number | null;
      bytes: number | null;
      compression: string | null;
    } | null;
    oldest: { id: string; time: string } | null;
    /** Newest first, at most TIMELINE_LIMIT. */
    timeline: Array<{
      id: string;
      time: string;
      /** Format 1: the artifact's size; null when neither an artifact nor a chunk list is listed (data missing). */
      artifactBytes: number | null;
      /** Format 2: the chunk list's size (its chunks are shared with other snapshots and counted in storedBytes). */
      chunkListBytes?: number;
    }>;
  };
  /** Age of the newest snapshot: what a restore from this target would lose at least, right now. */
  recoveryPointNowMs: number | null;
  drill: {
    state: State;
    /** Age of the newest successful drill. */
    ageMs: number | null;
    lastSucceeded: DrillSummary | null;
    lastFailed: DrillSummary | null;
    /** Newest first, at most RECENT_DRILLS. */
    recent: DrillSummary[];
  };
  verify: {
    state: State;
    /** Age of the last run that found no damage. */
    ageMs: number | null;
    lastCleanRunAt: string | null;
    lastRun: { finishedAt: string; all: boolean; checked: number; failed: number; bytes: number } | null;
    /** Stored snapshots whose last re-read found them damaged. */
    failing: Array<{ id: string; checkedAt: string; failingSince: string | null; error: string }>;
    /** Stored snapshots whose last re-read could not get their bytes: neither good nor damaged. */
    unreadable: Array<{ id: string; checkedAt: string; failingSince: string | null; error: string }>;
    /** Stored snapshots re-read at least once by verify. */
    reread: number;
  };
}

export interface PostgresServerStatus extends PgServerStatus {
  state: State;
  checkAgeMs: number | null;
  drillAgeMs: number | null;
}

export interface PostgresStatus {
  state: State;
  /** The target the Postgres jobs keep their records on. */
  recordsTarget: string | null;
  error?: string;
  servers: PostgresServerStatus[];
}

export interface StatusDocument {
  formatVersion: typeof STATUS_FORMAT_VERSION;
  kind: 'tcab-backup-status';
  database: string;
  generatedAt: string;
  state: State;
  thresholds: Record<keyof MonitorThresholds, { warn: string; critical: string; warnMs: number; criticalMs: number }>;
  /** Everything not ok, critical first. */
  problems: Problem[];
  targets: TargetStatus[];
  /** Present when Postgres servers are configured (TCAB_BACKUP_PG_SERVERS). */
  postgres?: PostgresStatus;
}

/** What the monitor read from one target. */
export interface TargetFacts {
  name: string;
  url: string;
  /** Set when the target could not be listed: nothing else is known. */
  error?: string;
  /** Newest first. */
  snapshots: Array<{ id: string; time: Date; artifactBytes: number | undefined; chunkListBytes?: number }>;
  /** The listing of chunks/<database>/ (format 2): how many chunks and their stored bytes. */
  chunks?: { count: number; bytes: number };
  chunksError?: string;
  newestManifest?: Manifest;
  newestManifestError?: string;
  /** Newest first. */
  drills: Array<{ drillId: string; record?: DrillRecord; error?: string }>;
  verify?: VerifyRecord;
  verifyError?: string;
}

export type PostgresFacts = { recordsTarget: string; servers: PgServerStatus[] } | { recordsTarget: string | null; error: string };

function ageState(ageMs: number | null, t: AgeThreshold): State {
  if (ageMs === null) return 'ok';
  return ageMs > t.criticalMs ? 'critical' : ageMs > t.warnMs ? 'warn' : 'ok';
}

function limits(t: AgeThreshold): string {
  return `warn after ${formatDuration(t.warnMs)}, critical after ${formatDuration(t.criticalMs)}`;
}

function summarizeDrill(r: DrillRecord): DrillSummary {
  return {
    drillId: r.drillId,
    finishedAt: r.finishedAt,
    ok: r.ok,
    snapshotId: r.snapshot?.id ?? null,
    recoveryTimeMs: r.recoveryTimeMs,
    checks:
      r.checks ??
      (r.ok ? { method: 'restore', ran: ['artifact-sha256', 'snapshot-sha256', 'integrity-check', 'row-counts'], fromSnapshot: [] } : null),
    snapshotAgeMs: r.recoveryPoint?.snapshotAgeMs ?? null,
    runsSince: r.recoveryPoint?.runsSince ?? null,
    liveAvailable: r.live.available,
    warnings: r.warnings,
    ...(r.error ? { error: r.error } : {}),
    ...(r.app
      ? {
          app: {
            passed: r.app.passed,
            failedStep: r.app.failedStep,
            runsServed: r.app.runs.served,
            runsInFile: r.app.runs.inFile,
            startToServingMs: r.app.startToServingMs,
            text: appDrillText(r.app),
          },
        }
      : {}),
  };
}

function judgeTarget(f: TargetFacts, t: MonitorThresholds, now: number, problems: Problem[]): TargetStatus {
  const add = (state: State, check: string, message: string, hint: string) => {
    if (state !== 'ok') problems.push({ state, check, target: f.name, message: `target "${f.name}": ${message}`, hint });
    return state;
  };
  const newestSnapshot = f.snapshots[0];
  const oldestSnapshot = f.snapshots[f.snapshots.length - 1];
  const newestTime = f.newestManifest ? Date.parse(f.newestManifest.createdAt) : newestSnapshot?.time.getTime();
  const snapshotAge = newestTime === undefined ? null : now - newestTime;
  // Before the first drill or verify, the oldest snapshot says how long the evidence has been missing.
  const sinceFirstSnapshot = oldestSnapshot ? now - oldestSnapshot.time.getTime() : null;
  const status: TargetStatus = {
    name: f.name,
    url: f.url,
    state: 'ok',
    reachable: !f.error,
    ...(f.error ? { error: f.error } : {}),
    snapshots: {
      state: 'ok',
      count: f.snapshots.length,
      storedBytes: f.snapshots.reduce((n, s) => n + (s.artifactBytes ?? 0) + (s.chunkListBytes ?? 0), 0) + (f.chunks?.bytes ?? 0),
      chunks: f.chunks ?? null,
      ...(f.chunksError ? { chunksError: f.chunksError } : {}),
      newest: newestSnapshot
        ? {
            id: newestSnapshot.id,
            createdAt: f.newestManifest?.createdAt ?? newestSnapshot.time.toISOString(),
            ageMs: snapshotAge!,
            artifactBytes: (f.newestManifest && storedBytes(f.newestManifest)) ?? newestSnapshot.artifactBytes ?? null,
            bytes: f.newestManifest?.snapshot.bytes ?? null,
            compression: f.newestManifest ? storedCompression(f.newestManifest) : null,
          }
        : null,
      oldest: oldestSnapshot ? { id: oldestSnapshot.id, time: oldestSnapshot.time.toISOString() } : null,
      timeline: f.snapshots.slice(0, TIMELINE_LIMIT).map((s) => ({
        id: s.id,
        time: s.time.toISOString(),
        artifactBytes: s.artifactBytes ?? null,
        ...(s.chunkListBytes !== undefined ? { chunkListBytes: s.chunkListBytes } : {}),
      })),
    },
    recoveryPointNowMs: snapshotAge,
    drill: { state: 'ok', ageMs: null, lastSucceeded: null, lastFailed: null, recent: [] },
    verify: { state: 'ok', ageMs: null, lastCleanRunAt: null, lastRun: null, failing: [], unreadable: [], reread: 0 },
  };
  if (f.error) {
    status.state = add(
      'critical',
      'reachability',
      `cannot be read: ${f.error}`,
      "the target's reachability and credentials (TCAB_BACKUP_TARGETS and its TCAB_BACKUP_TARGET_<NAME>_* settings); until it answers, nothing proves its backups exist",
    );
    status.snapshots.state = status.drill.state = status.verify.state = 'critical';
    return status;
  }

  // Snapshots.
  if (!newestSnapshot) {
    status.snapshots.state = add(
      'critical',
      'snapshot',
      'holds no snapshot',
      'that snapshotTimer runs and succeeds (Application Insights > Failures), or run "tcab-backup snapshot"',
    );
  } else {
    const s = ageState(snapshotAge, t.snapshot);
    status.snapshots.state = add(
      s,
      'snapshot',
      `the newest snapshot ${newestSnapshot.id} is ${formatDuration(snapshotAge!)} old (${limits(t.snapshot)})`,
      'that snapshotTimer runs and succeeds, that the agent answers, and that this target accepts writes (replicate copies missed snapshots)',
    );
    if (f.newestManifestError) {
      status.snapshots.state = worst(
        status.snapshots.state,
        add(
          'warn',
          'snapshot',
          `the manifest of the newest snapshot ${newestSnapshot.id} cannot be read: ${f.newestManifestError}`,
          'run "tcab-backup verify --all" and restore from another target if it is damaged',
        ),
      );
    }
  }

  // Drills.
  const records = f.drills.filter((d) => d.record).map((d) => d.record!);
  status.drill.recent = records.slice(0, RECENT_DRILLS).map(summarizeDrill);
  const lastSucceeded = records.find((r) => r.ok);
  const lastFailed = records.find((r) => !r.ok);
  status.drill.lastSucceeded = lastSucceeded ? summarizeDrill(lastSucceeded) : null;
  status.drill.lastFailed = lastFailed ? summarizeDrill(lastFailed) : null;
  status.drill.ageMs = lastSucceeded ? now - Date.parse(lastSucceeded.finishedAt) : null;
  const drillHint = 'that drillTimer runs (Application Insights > Failures), or run "tcab-backup drill"';
  let drillState: State = 'ok';
  const newestDrill = records[0];
  if (newestDrill && !newestDrill.ok) {
    // A backend that did not come up on a good file is as failed a drill as a file that did not restore.
    const appFailed = newestDrill.app && !newestDrill.app.passed;
    drillState = add(
      'critical',
      'drill',
      `the last restore drill ${newestDrill.drillId} failed: ${newestDrill.error ?? 'no reason recorded'}`,
      appFailed
        ? "the application drill's failed step and the backend's last log lines in the drill record; on the VM, TCAB_AGENT_DRILL_BACKEND_COMMAND and the agent's log; \"tcab-backup drill --app\" once fixed"
        : 'restore from another target; run "tcab-backup verify --all" to find damaged copies, and "tcab-backup drill" once fixed',
    );
  }
  if (lastSucceeded) {
    drillState = worst(
      drillState,
      add(
        ageState(status.drill.ageMs, t.drill),
        'drill',
        `the last successful restore drill was ${formatDuration(status.drill.ageMs!)} ago (${limits(t.drill)})`,
        drillHint,
      ),
    );
    if (newestDrill === lastSucceeded && !lastSucceeded.live.available) {
      drillState = worst(
        drillState,
        add(
          'warn',
          'drill',
          `the last drill restored snapshot ${lastSucceeded.snapshot?.id} but could not compare it with the live database: ${lastSucceeded.live.error ?? 'unknown'}`,
          'that the agent answers GET /v1/status (TCAB_BACKUP_AGENT_URL, key, network path)',
        ),
      );
    }
  } else if (sinceFirstSnapshot !== null) {
    drillState = worst(
      drillState,
      add(
        ageState(sinceFirstSnapshot, t.drill),
        'drill',
        `no restore drill has succeeded since the oldest snapshot, ${formatDuration(sinceFirstSnapshot)} ago (${limits(t.drill)})`,
        drillHint,
      ),
    );
  }
  const damagedDrills = f.drills.filter((d) => d.error);
  if (damagedDrills.length) {
    drillState = worst(
      drillState,
      add(
        'warn',
        'drill',
        `${damagedDrills.length} drill record(s) cannot be read, e.g. ${damagedDrills[0]!.drillId}: ${damagedDrills[0]!.error}`,
        'the records under drills/ on this target; move damaged ones away',
      ),
    );
  }
  status.drill.state = drillState;

  // Verify.
  const v = f.verify;
  const listed = new Set(f.snapshots.map((s) => s.id));
  let verifyState: State = 'ok';
  if (v) {
    status.verify.lastCleanRunAt = v.lastCleanRun?.finishedAt ?? null;
    status.verify.lastRun = v.lastRun
      ? {
          finishedAt: v.lastRun.finishedAt,
          all: v.lastRun.all,
          checked: v.lastRun.checked,
          failed: v.lastRun.failed,
          bytes: v.lastRun.bytes,
        }
      : null;
    const withVerdict = (verdict: 'damaged' | 'unreadable') =>
      Object.entries(v.snapshots)
        .filter(([id, e]) => verdictOf(e) === verdict && listed.has(id))
        .map(([id, e]) => ({
          id,
          checkedAt: e.checkedAt,
          failingSince: e.failingSince ?? null,
          error: e.error ?? (verdict === 'damaged' ? 'mismatch' : 'could not be read'),
        }))
        .sort((a, b) => (a.id < b.id ? 1 : -1));
    status.verify.failing = withVerdict('damaged');
    status.verify.unreadable = withVerdict('unreadable');
    status.verify.reread = Object.entries(v.snapshots).filter(([id, e]) => e.ok && listed.has(id)).length;
  }
  for (const bad of status.verify.failing) {
    verifyState = worst(
      verifyState,
      add(
        'critical',
        'verify',
        `snapshot ${bad.id} failed verification at ${bad.checkedAt}: ${bad.error}`,
        'this copy is damaged: the next replicate run (or "tcab-backup replicate" now) copies a good one over it from a healthy target',
      ),
    );
  }
  for (const unknown of status.verify.unreadable) {
    verifyState = worst(
      verifyState,
      add(
        'warn',
        'verify',
        `snapshot ${unknown.id} could not be read by verify at ${unknown.checkedAt}${unknown.failingSince && unknown.failingSince !== unknown.checkedAt ? ` (since ${unknown.failingSince})` : ''}, so whether it is intact is unknown: ${unknown.error}`,
        'the reachability and health of this target; the next verify run (or "tcab-backup verify") reads it again; until then prune keeps it and replicate does not replace it',
      ),
    );
  }
  const verifyHint = 'that verifyTimer runs (Application Insights > Failures), or run "tcab-backup verify"';
  if (status.verify.lastCleanRunAt) {
    status.verify.ageMs = now - Date.parse(status.verify.lastCleanRunAt);
    verifyState = worst(
      verifyState,
      add(
        ageState(status.verify.ageMs, t.verify),
        'verify',
        `the last verify run without damage finished ${formatDuration(status.verify.ageMs)} ago (${limits(t.verify)})`,
        verifyHint,
      ),
    );
  } else if (sinceFirstSnapshot !== null) {
    verifyState = worst(
      verifyState,
      add(
        ageState(sinceFirstSnapshot, t.verify),
        'verify',
        `no verify run has finished without damage since the oldest snapshot, ${formatDuration(sinceFirstSnapshot)} ago (${limits(t.verify)})`,
        verifyHint,
      ),
    );
  }
  if (f.verifyError)
    verifyState = worst(
      verifyState,
      add(
        'warn',
        'verify',
        `the verify record cannot be read: ${f.verifyError}`,
        'the next verify run replaces a damaged record after re-reading every snapshot',
      ),
    );
  status.verify.state = verifyState;

  status.state = worst(status.snapshots.state, status.drill.state, status.verify.state);
  return status;
}

function judgePostgres(p: PostgresFacts, t: MonitorThresholds, now: number, problems: Problem[]): PostgresStatus {
  if ('error' in p) {
    problems.push({
      state: 'critical',
      check: 'postgres',
      message: `Postgres records cannot be read: ${p.error}`,
      hint: 'TCAB_BACKUP_PG_SERVERS and the records target',
    });
    return { state: 'critical', recordsTarget: p.recordsTarget, error: p.error, servers: [] };
  }
  const servers = p.servers.map((s): PostgresServerStatus => {
    const add = (state: State, check: string, message: string, hint: string) => {
      if (state !== 'ok') problems.push({ state, check, server: s.server, message: `Postgres server "${s.server}": ${message}`, hint });
      return state;
    };
    let state: State = 'ok';
    const checkAgeMs = s.check ? now - Date.parse(s.check.checkedAt) : null;
    if (!s.check)
      state = add('warn', 'pg-check', 'no backup-policy check recorded yet', 'that pgCheckTimer runs, or run "tcab-backup pg check"');
    else {
      state = worst(
        state,
        add(
          ageState(checkAgeMs, t.pgCheck),
          'pg-check',
          `the last backup-policy check was ${formatDuration(checkAgeMs!)} ago (${limits(t.pgCheck)})`,
          'that pgCheckTimer runs, or run "tcab-backup pg check"',
        ),
      );
      if (!s.check.ok)
        state = worst(
          state,
          add(
            'critical',
            'pg-check',
            `violates the backup policy: ${s.check.violations.join('; ')}`,
            'the server\'s backup settings in the Azure portal, or run "tcab-backup pg check --json" for details',
          ),
        );
    }
    const drillAgeMs = s.lastSucceededDrill ? now - Date.parse(s.lastSucceededDrill.finishedAt) : null;
    if (!s.lastSucceededDrill)
      state = worst(
        state,
        add(
          'warn',
          'pg-drill',
          'no point-in-time restore drill has succeeded yet',
          'that pgDrillTimer runs, or run "tcab-backup pg drill"',
        ),
      );
    else
      state = worst(
        state,
        add(
          ageState(drillAgeMs, t.pgDrill),
          'pg-drill',
          `the last successful point-in-time restore drill finished ${formatDuration(drillAgeMs!)} ago (${limits(t.pgDrill)})`,
          'that pgDrillTimer runs, or run "tcab-backup pg drill"',
        ),
      );
    const lastFinished = s.lastFinishedDrill;
    if (
      lastFinished &&
      lastFinished.outcome === 'failed' &&
      (!s.lastSucceededDrill || lastFinished.finishedAt > s.lastSucceededDrill.finishedAt)
    ) {
      state = worst(
        state,
        add(
          'critical',
          'pg-drill',
          `the last point-in-time restore drill ${lastFinished.drillId} failed: ${lastFinished.failure ?? 'no reason recorded'}`,
          'run "tcab-backup pg drill --json" for the drill record',
        ),
      );
    }
    return { ...s, state, checkAgeMs, drillAgeMs };
  });
  return { state: worst(...servers.map((s) => s.state)), recordsTarget: p.recordsTarget, servers };
}

export function buildStatusDocument(input: {
  database: string;
  now: Date;
  thresholds: MonitorThresholds;
  targets: TargetFacts[];
  postgres?: PostgresFacts;
}): StatusDocument {
  const now = input.now.getTime();
  const problems: Problem[] = [];
  const targets = input.targets.map((f) => judgeTarget(f, input.thresholds, now, problems));
  const postgres = input.postgres ? judgePostgres(input.postgres, input.thresholds, now, problems) : undefined;
  problems.sort((a, b) => RANK[b.state] - RANK[a.state]);
  const thresholds = Object.fromEntries(
    Object.entries(input.thresholds).map(([k, v]) => [
      k,
      { warn: formatDuration(v.warnMs), critical: formatDuration(v.criticalMs), warnMs: v.warnMs, criticalMs: v.criticalMs },
    ]),
  ) as StatusDocument['thresholds'];
  return {
    formatVersion: STATUS_FORMAT_VERSION,
    kind: 'tcab-backup-status',
    database: input.database,
    generatedAt: input.now.toISOString(),
    state: worst(...targets.map((x) => x.state), postgres?.state ?? 'ok'),
    thresholds,
    problems,
    targets,
    ...(postgres ? { postgres } : {}),
  };
}

/** Adds a problem found after the document was built (a status write that failed) and re-judges the state. */
export function addProblem(doc: StatusDocument, problem: Problem): void {
  doc.problems.push(problem);
  doc.problems.sort((a, b) => RANK[b.state] - RANK[a.state]);
  const target = problem.target ? doc.targets.find((x) => x.name === problem.target) : undefined;
  if (target) target.state = worst(target.state, problem.state);
  doc.state = worst(doc.state, problem.state);
}
