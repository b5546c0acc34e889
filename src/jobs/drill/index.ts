/**
 * The restore drill: per target, proves its newest snapshot restorable (restored as `tcab-backup restore`
 * does, or checked as it streams: TCAB_BACKUP_DRILL_METHOD), compares it with the live database through the
 * agent, optionally runs the application drill on the agent, and writes a drill record with recovery point
 * and recovery time. A failed restore or application drill fails that target's drill; an agent that cannot
 * be asked only for the live comparison is a warning.
 * Why: docs/architecture.md, "Drill".
 */
import { mkdir, mkdtemp, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { AppDrillArtifact } from '../../agent/client.js';
import type { AppDrillResult, AgentStatus } from '../../agent/protocol.js';
import { manifestArtifactKey } from '../../catalog/catalog.js';
import { toIsoTime } from '../../util/time.js';
import { storedBytes, type Manifest } from '../../catalog/manifest.js';
import { NotFoundError, TcabError, errorMessage } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import { newDrillId } from '../../catalog/layout.js';
import type { Target } from '../../targets/target.js';
import {
  DRILL_RECORD_FORMAT_VERSION,
  trimDrillRecords,
  writeDrillRecord,
  type AppDrillRecord,
  type DrillCheck,
  type DrillRecord,
} from '../../catalog/drill-record.js';
import { runRestore } from '../restore/index.js';
import { readCheckedChunks, type ChunkReread } from '../restore/chunks.js';
import { firstValue, openDatabase } from '../../util/sqlite.js';
import { verifyByStreaming, verifyChunksByStreaming } from './stream.js';
import type { DrillMethodSetting } from '../settings.js';
import { selectSnapshot } from '../../catalog/select.js';

/** What the drill needs from the agent (AgentClient implements it). */
export interface LiveStatusSource {
  /** host:port of the agent, for records and messages. */
  readonly agent: string;
  status(options?: { signal?: AbortSignal }): Promise<AgentStatus>;
}

/** What the application drill needs from the agent (AgentClient implements it). */
export interface AppDrillSource {
  readonly agent: string;
  appDrill(of: AppDrillArtifact, body: Readable, options?: { signal?: AbortSignal }): Promise<AppDrillResult>;
}

export interface DrillDeps {
  targets: Target[];
  database: string;
  /** The agent, or why it cannot be asked (e.g. its settings are missing); the drill then warns. */
  live: LiveStatusSource | { unavailable: string };
  /** Folder to restore into (a fresh subfolder is made and removed). */
  workDir: string;
  /** restore, stream, or auto (restore when workDir has room for the database, else stream). Default auto. */
  method?: DrillMethodSetting;
  /**
   * The application drill (TCAB_BACKUP_DRILL_APP=true): the agent to run it on, or why none can be asked (the
   * drill of every target then fails). Undefined: no application drill.
   */
  app?: AppDrillSource | { unavailable: string };
  logger?: Logger;
  now?: () => Date;
}

export interface DrillResult {
  database: string;
  drillId: string;
  ok: boolean;
  targets: DrillRecord[];
}

/** Drills that passed whose record could not be written: the target's write failed, not the stored copy. */
const unrecorded = new WeakSet<DrillRecord>();

export class DrillFailedError extends TcabError {
  constructor(
    message: string,
    readonly result: DrillResult,
  ) {
    // A copy that could not be read or was refused on its way to the agent is the stored copy's problem.
    const failed = result.targets.filter((r) => !r.ok);
    const fileFailed = failed.some((r) => !unrecorded.has(r) && !(r.app && !r.app.passed && r.app.failedStep !== 'receive'));
    super(message, {
      code: 'DRILL_FAILED',
      hint: fileFailed
        ? 'the stored copy named is damaged or unreadable: restore from another target, run "tcab-backup verify --all --target <name>", and let replicate copy a good snapshot back'
        : failed.every((r) => unrecorded.has(r))
          ? 'the drill passed, but its record could not be stored: check that the target named is reachable and writable; the next drill is recorded again'
          : "the application drill's step named above: on the VM, TCAB_AGENT_DRILL_BACKEND_COMMAND, the backend's last log lines (in the drill record and the agent's log, journalctl -u tcab-backup-agent), and that this backend version starts on the stored database",
    });
    this.name = 'DrillFailedError';
  }
}

/** Free space the restored file needs beyond its size (SQLite opens it read-only; nothing else is written). */
const SPACE_MARGIN = 1.05;

export async function runDrill(deps: DrillDeps, options: { signal?: AbortSignal } = {}): Promise<DrillResult> {
  const log = deps.logger ?? silentLogger;
  const now = deps.now ?? (() => new Date());
  if (deps.targets.length === 0) throw new TcabError('No targets configured', { hint: 'set TCAB_BACKUP_TARGETS' });
  const drillId = newDrillId(now());
  const live = await askLive(deps.live, options.signal, now);
  if (live.error)
    log.warn('drill.live_unavailable', {
      database: deps.database,
      error: live.error,
      note: 'the restore is still checked; the comparison with the live database is skipped',
    });
  await mkdir(deps.workDir, { recursive: true });
  const records: DrillRecord[] = [];
  // One target at a time: each restore needs the database's full size on local disk.
  for (const target of deps.targets) {
    const record = await drillTarget(target, deps, drillId, live, now, log, options.signal);
    records.push(record);
  }
  const failed = records.filter((r) => !r.ok);
  const result: DrillResult = { database: deps.database, drillId, ok: failed.length === 0, targets: records };
  if (failed.length) {
    throw new DrillFailedError(
      `Restore drill ${drillId} of database "${deps.database}" failed on ${failed.length} of ${records.length} target(s): ${failed.map((r) => r.error).join('; ')}`,
      result,
    );
  }
  return result;
}

interface LiveFacts {
  status?: AgentStatus;
  checkedAt: Date;
  agent?: string;
  error?: string;
}

async function askLive(source: DrillDeps['live'], signal: AbortSignal | undefined, now: () => Date): Promise<LiveFacts> {
  if ('unavailable' in source) return { checkedAt: now(), error: source.unavailable };
  try {
    const status = await source.status({ signal });
    return { status, checkedAt: now(), agent: source.agent };
  } catch (e) {
    if (signal?.aborted) throw e;
    return { checkedAt: now(), agent: source.agent, error: errorMessage(e) };
  }
}

async function drillTarget(
  target: Target,
  deps: DrillDeps,
  drillId: string,
  live: LiveFacts,
  now: () => Date,
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<DrillRecord> {
  const startedAt = now();
  const record: DrillRecord = {
    formatVersion: DRILL_RECORD_FORMAT_VERSION,
    kind: 'sqlite-drill',
    drillId,
    database: deps.database,
    target: target.name,
    startedAt: startedAt.toISOString(),
    finishedAt: startedAt.toISOString(),
    ok: false,
    snapshot: null,
    recoveryTimeMs: null,
    recoveryPoint: null,
    tables: {},
    live: { available: false },
    warnings: [],
  };
  let manifest: Manifest | undefined;
  const scratch = await mkdtemp(join(deps.workDir, 'tcab-drill-'));
  try {
    try {
      manifest = await selectSnapshot(target, deps.database, { latest: true }, signal);
    } catch (e) {
      if (e instanceof NotFoundError)
        throw new TcabError(`target "${target.name}" (${target.url}) holds no snapshot of "${deps.database}" to drill`);
      throw e;
    }
    record.snapshot = {
      id: manifest.id,
      createdAt: manifest.createdAt,
      artifactBytes: storedBytes(manifest),
      bytes: manifest.snapshot.bytes,
      compression: manifest.formatVersion === 1 ? manifest.artifact.compression : `${manifest.encoding.compression} chunks`,
    };
    const method = await chooseMethod(deps.method ?? 'auto', deps.workDir, scratch, manifest);
    if (method.method === 'restore') {
      const path = join(scratch, `${manifest.id}.sqlite`);
      const restored = await runRestore(
        { targets: [target], database: deps.database, logger: log },
        // checkEachChunk: the record says every chunk's sha256 was checked; a plain restore leaves it to the whole file's.
        { selector: { id: manifest.id }, outPath: path, signal, onReread: (r) => record.warnings.push(r.message), checkEachChunk: true },
      ).catch((e: unknown) => {
        throw new TcabError(restoreFailure(e, manifest!.id, target.name, target.url));
      });
      record.recoveryTimeMs = restored.durationMs;
      record.checks = {
        method: 'restore',
        ran: [...storedChecks(manifest), 'snapshot-sha256', 'integrity-check', 'row-counts'],
        fromSnapshot: [],
      };
      compareWithLive(record, manifest, restored.tables, newestPublishedAt(path), live, deps.database);
    } else {
      log.info('drill.streaming', { database: deps.database, target: target.name, snapshot: manifest.id, reason: method.reason });
      const streamed =
        manifest.formatVersion === 1
          ? await verifyByStreaming(target, manifest, signal)
          : await verifyChunksByStreaming(target, manifest, signal, {
              logger: log,
              onReread: (r) => record.warnings.push(r.message),
            }).catch((e: unknown) => {
              throw signal?.aborted ? e : new TcabError(withoutSnapshotPrefix(e, manifest!.id, target), { cause: e });
            });
      record.recoveryTimeMs = streamed.durationMs;
      record.checks = {
        method: 'stream',
        ran: [...storedChecks(manifest), 'snapshot-sha256'],
        fromSnapshot: ['integrity-check', 'row-counts'],
        reason: method.reason,
      };
      // The counts are the agent's, of these very bytes; the newest published run is not known without opening the file.
      compareWithLive(record, manifest, manifest.database.tables, null, live, deps.database);
    }
    if (deps.app) {
      const fileMs = record.recoveryTimeMs;
      const app = await appDrill(target, manifest, deps.app, log, signal, (r) => record.warnings.push(r.message));
      record.app = app;
      if (!app.passed) throw new TcabError(app.error!);
      if (fileMs !== null && app.startToServingMs !== null) record.recoveryTimeMs = fileMs + app.startToServingMs;
    }
    record.ok = true;
  } catch (e) {
    if (signal?.aborted) throw e;
    const detail = errorMessage(e);
    record.error = manifest
      ? `target "${target.name}" (${target.url}) snapshot ${manifest.id}: ${detail}`
      : detail.startsWith('target "')
        ? detail
        : `target "${target.name}" (${target.url}): ${detail}`;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  record.finishedAt = now().toISOString();
  try {
    await writeDrillRecord(target, record, signal);
  } catch (e) {
    if (signal?.aborted) throw e;
    if (record.ok) unrecorded.add(record);
    const why = `the drill record ${record.drillId} could not be written: ${errorMessage(e)}`;
    record.error = record.error ? `${record.error}; ${why}` : `target "${target.name}" (${target.url}): ${why}`;
    record.ok = false;
  }
  const fields = {
    database: deps.database,
    target: target.name,
    drillId,
    snapshot: record.snapshot?.id,
    recoveryTimeMs: record.recoveryTimeMs,
    snapshotAgeMs: record.recoveryPoint?.snapshotAgeMs,
    runsSince: record.recoveryPoint?.runsSince,
    publishedGapMs: record.recoveryPoint?.publishedGapMs,
    liveAvailable: record.live.available,
    method: record.checks?.method,
    checks: record.checks?.ran,
    fromSnapshot: record.checks?.fromSnapshot,
    warnings: record.warnings,
    ...(record.app
      ? {
          app: record.app.passed ? 'passed' : 'failed',
          appFailedStep: record.app.failedStep,
          runsServed: record.app.runs.served,
          startToServingMs: record.app.startToServingMs,
        }
      : {}),
  };
  if (record.ok) log.info('drill.completed', fields);
  else log.error('drill.failed', { ...fields, error: record.error });
  if (record.ok) {
    await trimDrillRecords(target, deps.database, undefined, signal).catch((e: unknown) => {
      log.warn('drill.trim_failed', { target: target.name, error: errorMessage(e), note: 'old drill records stay until the next drill' });
    });
  }
  return record;
}

/** What to check when a step of the application drill fails, by step. */
const APP_STEP_HINTS: Record<string, string> = {
  receive:
    'the stored artifact against its manifest ("tcab-backup verify --all --target <name>"), and the network between the function app and the VM',
  'snapshot-sha256':
    'the stored artifact decompresses to a file other than the manifest\'s: run "tcab-backup verify --all --target <name>"',
  integrity: 'the restored database is damaged: run "tcab-backup verify --all --target <name>" and drill another target',
  start: "TCAB_AGENT_DRILL_BACKEND_COMMAND on the VM, and that the agent's user may run it",
  healthz:
    "the backend's last log lines (below and in the drill record), TCAB_AGENT_DRILL_BACKEND_COMMAND and TCAB_AGENT_DRILL_HEALTH_TIMEOUT on the VM, and that this backend version starts on the stored database (its migrations)",
  runs: "that the backend serves every run of the restored database: its version against the stored schema, and the backend's last log lines",
  stop: "the backend's handling of SIGTERM, and TCAB_AGENT_DRILL_STOP_GRACE on the VM",
};

/**
 * Streams the target's artifact (format 2: its stored chunks in order, checked as they go) to the agent's
 * POST /v1/drills and turns the answer, or the refusal, into the record's `app` part. Never throws but for a
 * cancellation: every failure is a failed application drill.
 */
async function appDrill(
  target: Target,
  manifest: Manifest,
  source: AppDrillSource | { unavailable: string },
  log: Logger,
  signal: AbortSignal | undefined,
  onReread: (reread: ChunkReread) => void,
): Promise<AppDrillRecord> {
  const empty = { runs: { inFile: null, served: null, comparison: null }, checks: [], startToServingMs: null, totalMs: null };
  if ('unavailable' in source) {
    return {
      passed: false,
      failedStep: 'agent',
      agent: null,
      ...empty,
      error: `the application drill (TCAB_BACKUP_DRILL_APP=true) needs the agent, which cannot be asked: ${source.unavailable}. Check: TCAB_BACKUP_AGENT_URL and its key, or set TCAB_BACKUP_DRILL_APP=false`,
    };
  }
  let result: AppDrillResult;
  let reading = true;
  /** Format 2: a chunk that could not be read or failed its check while streaming to the agent. */
  let chunkFailure: unknown;
  /** Format 1: the artifact's stream from the target broke while it was being sent. */
  let readFailure: unknown;
  try {
    let of: AppDrillArtifact;
    let body: Readable;
    if (manifest.formatVersion === 1) {
      ({ body } = await target.get(manifestArtifactKey(manifest), { signal }));
      // The target's stream breaking mid-upload is the target's failure, not the agent's.
      body.once('error', (e) => {
        readFailure ??= e;
      });
      of = { snapshotId: manifest.id, artifact: manifest.artifact, snapshot: manifest.snapshot };
    } else {
      // The stored chunks in order, one zstd stream; each checked as it passes, so a damaged chunk cuts the
      // upload (the agent then stops and cleans up, having started nothing) and is named here.
      const chunks = readCheckedChunks(target, manifest, { logger: log, onReread, ...(signal ? { signal } : {}) });
      body = Readable.from(
        (async function* () {
          try {
            for await (const chunk of chunks) yield chunk.stored;
          } catch (e) {
            chunkFailure = e;
            throw e;
          }
        })(),
        { objectMode: false },
      );
      of = {
        format: 2,
        snapshotId: manifest.id,
        chunkList: { sha256: manifest.chunkList.sha256 },
        stored: manifest.stored,
        snapshot: manifest.snapshot,
      };
    }
    reading = false;
    log.info('drill.app_started', {
      target: target.name,
      snapshot: manifest.id,
      agent: source.agent,
      formatVersion: manifest.formatVersion,
      artifactBytes: storedBytes(manifest),
    });
    result = await source.appDrill(of, body, { signal });
  } catch (e) {
    if (signal?.aborted) throw e;
    if (chunkFailure !== undefined) {
      return {
        passed: false,
        failedStep: 'receive',
        agent: source.agent,
        ...empty,
        error: `application drill on the agent at ${source.agent} failed at step receive: the upload was stopped, the agent started nothing: ${withoutSnapshotPrefix(chunkFailure, manifest.id, target)}`,
      };
    }
    if (readFailure !== undefined) {
      return {
        passed: false,
        failedStep: 'receive',
        agent: source.agent,
        ...empty,
        error: `application drill on the agent at ${source.agent} failed at step receive: reading the artifact from target "${target.name}" broke off during the upload, so the agent started nothing: ${errorMessage(readFailure)}`,
      };
    }
    const status = e instanceof TcabError && 'status' in e ? (e as { status?: number }).status : undefined;
    const step = reading || status === 422 ? 'receive' : 'agent';
    const what = reading
      ? 'reading the artifact from the target failed'
      : status === 409
        ? 'the agent is busy with another application drill'
        : status === 422
          ? 'the agent refused the artifact before starting anything'
          : 'the agent did not run it';
    return {
      passed: false,
      failedStep: step,
      agent: source.agent,
      ...empty,
      error: `application drill on the agent at ${source.agent} failed at step ${step}: ${what}: ${errorMessage(e)}`,
    };
  }
  const ms = (name: string) => result.checks.find((c) => c.name === name)?.ms ?? 0;
  const app: AppDrillRecord = {
    passed: result.passed,
    failedStep: result.failedStep,
    agent: source.agent,
    runs: result.runs,
    checks: result.checks,
    startToServingMs: result.passed ? ms('start') + ms('healthz') + ms('runs') : null,
    totalMs: result.totalMs,
    ...(result.backendLog ? { backendLog: result.backendLog } : {}),
  };
  if (!result.passed) {
    const step = result.failedStep ?? 'unknown';
    const failed = result.checks.find((c) => !c.ok);
    const lines = (result.backendLog ?? []).filter((l) => l.trim()).slice(-5);
    app.error =
      `application drill on the agent at ${source.agent} failed at step ${step}: ${failed?.detail ?? 'no detail'}. ` +
      `Check: ${APP_STEP_HINTS[step] ?? "the agent's log on the VM"}` +
      (lines.length ? `. The backend's last log lines: ${lines.join(' | ')}` : '');
  }
  return app;
}

/** What a drill checked of the stored bytes themselves, before the whole file's sha256: by format. */
function storedChecks(manifest: Manifest): DrillCheck[] {
  return manifest.formatVersion === 1 ? ['artifact-sha256'] : ['chunk-list-sha256', 'chunk-sha256'];
}

/** A chunked read's message without the "Snapshot <id> on target ... (<url>): " the drill's own error adds. */
function withoutSnapshotPrefix(e: unknown, id: string, target: Target): string {
  const message = errorMessage(e);
  const prefix = `Snapshot ${id} on target "${target.name}" (${target.url}): `;
  return message.startsWith(prefix) ? message.slice(prefix.length) : message;
}

/** runRestore's message names every target tried; here there is one, so keep only what went wrong. */
function restoreFailure(e: unknown, id: string, targetName: string, targetUrl: string): string {
  let message = errorMessage(e);
  if (e instanceof TcabError && e.hint && message.endsWith(`. Check: ${e.hint}`)) message = message.slice(0, -`. Check: ${e.hint}`.length);
  const prefix = `Restore of snapshot ${id} failed on every target: "${targetName}": `;
  if (message.startsWith(prefix)) message = message.slice(prefix.length);
  // The drill's own message names the target and snapshot already.
  for (const named of [
    `Snapshot ${id} on target "${targetName}" (${targetUrl}): `,
    `Snapshot ${id} on target "${targetName}": `,
    `Snapshot ${id} from target "${targetName}": `,
    `Snapshot ${id} from target "${targetName}" `,
  ]) {
    if (message.startsWith(named)) return message.slice(named.length);
  }
  return message;
}

/** restore when asked, or (auto) when the folder has room for the database; otherwise stream, saying why. */
async function chooseMethod(
  setting: DrillMethodSetting,
  workDir: string,
  scratch: string,
  manifest: Manifest,
): Promise<{ method: 'restore' } | { method: 'stream'; reason: string }> {
  if (setting === 'stream') return { method: 'stream', reason: 'TCAB_BACKUP_DRILL_METHOD=stream' };
  const fs = await statfs(scratch);
  const free = fs.bavail * fs.bsize;
  const needed = Math.ceil(manifest.snapshot.bytes * SPACE_MARGIN);
  if (free >= needed) return { method: 'restore' };
  const why = `the drill folder ${workDir} has ${free} bytes free, restoring the ${manifest.snapshot.bytes}-byte database needs ${needed}`;
  if (setting === 'restore') {
    throw new TcabError(`${why} (TCAB_BACKUP_DRILL_METHOD=restore)`, {
      hint: 'point TCAB_BACKUP_DRILL_WORK_DIR at a disk with room for the uncompressed database (such as a mounted Azure Files share), or set TCAB_BACKUP_DRILL_METHOD=auto to verify by streaming when it has none',
    });
  }
  return { method: 'stream', reason: why };
}

/** Newest published_at of runs in the restored file, or null when it has no such column or no runs. */
function newestPublishedAt(path: string): string | null {
  const db = openDatabase(path, { readOnly: true, immutable: true });
  try {
    const hasColumn = firstValue(db, "SELECT 1 FROM pragma_table_info('runs') WHERE name = 'published_at'");
    if (!hasColumn) return null;
    return toIsoTime(firstValue<string | number | null>(db, 'SELECT max(published_at) FROM runs') ?? null);
  } finally {
    db.close();
  }
}

function compareWithLive(
  record: DrillRecord,
  manifest: Manifest,
  restored: Record<string, number>,
  snapshotNewest: string | null,
  live: LiveFacts,
  database: string,
): void {
  const at = live.checkedAt.getTime();
  const status = live.status;
  let liveError = live.error;
  if (status && status.database.name !== database) {
    liveError = `the agent at ${live.agent} serves database "${status.database.name}", not "${database}"`;
  }
  const usable = status && !liveError ? status : undefined;
  record.live = usable
    ? { available: true, checkedAt: live.checkedAt.toISOString(), ...(live.agent ? { agent: live.agent } : {}) }
    : { available: false, ...(live.agent ? { agent: live.agent } : {}), error: liveError ?? 'unknown' };
  if (!usable) record.warnings.push(`live comparison unavailable: ${liveError}`);
  const names = new Set([...Object.keys(restored), ...Object.keys(usable?.database.tables ?? {})]);
  for (const name of [...names].sort()) {
    const snap = restored[name] ?? null;
    const liveCount = usable ? (usable.database.tables[name] ?? null) : null;
    const difference = snap !== null && liveCount !== null ? liveCount - snap : null;
    record.tables[name] = { snapshot: snap, live: liveCount, difference };
    // The runs database is append-mostly: fewer rows live than in a backup means deletions, or another database.
    if (difference !== null && difference < 0) {
      record.warnings.push(
        `table ${name} has ${liveCount} rows live but ${snap} in snapshot ${manifest.id}: rows were deleted since, or the agent reads another database file`,
      );
    }
  }
  const liveNewest = usable?.database.newestPublishedAt ?? null;
  const gap =
    liveNewest && snapshotNewest && !Number.isNaN(Date.parse(liveNewest)) && !Number.isNaN(Date.parse(snapshotNewest))
      ? Date.parse(liveNewest) - Date.parse(snapshotNewest)
      : null;
  record.recoveryPoint = {
    snapshotAgeMs: at - Date.parse(manifest.createdAt),
    runsSince: record.tables.runs?.difference ?? null,
    newestPublishedAt: { snapshot: snapshotNewest, live: liveNewest },
    publishedGapMs: gap,
  };
}
