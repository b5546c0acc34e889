/**
 * The `pg drill` job: one tick. For every configured server it sweeps old drill servers, then advances the
 * server's current PITR drill by one step, or starts a new drill when the last one is older than
 * TCAB_BACKUP_PG_DRILL_INTERVAL. Everything the drill knows lives in its record on the target, so any
 * invocation (a timer on another instance, the CLI) can take the next step.
 */
import type { TokenCredential } from '@azure/identity';
import { PreconditionFailedError, TcabError, errorMessage } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { Target } from '../targets/target.js';
import { armClientFactory, type ArmClientOptions } from './arm.js';
import type { PgDrillConfig } from './config.js';
import { DrillHandle, type DrillContext } from './drill-handle.js';
import { newDrillId } from '../catalog/layout.js';
import { drillServerName } from './drill-server.js';
import { advanceDrill, type StepAction } from './drill-steps.js';
import {
  PG_RECORD_FORMAT_VERSION,
  PgCurrentDrillSchema,
  PgDrillRecordSchema,
  pgCurrentDrillKey,
  pgDrillKey,
  readRecord,
  writeRecord,
  type PgCurrentDrill,
  type PgDrillRecord,
  type PgDrillSummary,
  type Stored,
} from './records.js';
import { serverId } from './resource-id.js';
import { sweepDrillServers, type SweepResult } from './sweeper.js';

export interface PgJobDeps {
  /** Where drill records and status records are kept (one target: the records are the lock). */
  target: Target;
  /** The managed identity in Azure; also signs in to the drill server when TCAB_BACKUP_PG_DRILL_AUTH=entra. */
  credential: TokenCredential;
  logger?: Logger;
  now?: () => Date;
  arm?: ArmClientOptions;
  signal?: AbortSignal;
}

export interface PgDrillOptions {
  /** Start a new drill even if the interval has not passed (never while one is running). */
  force?: boolean;
}

/** A drill as the CLI and the status document show it. */
export interface PgDrillView {
  drillId: string;
  state: PgDrillRecord['state'];
  outcome: 'succeeded' | 'failed' | undefined;
  drillServer: string;
  requestedAt: string;
  restorePoint: string;
  restorePointClamped: boolean;
  recoveryTimeMs: number | undefined;
  recoveryPointMs: number | undefined;
  finishedAt: string | undefined;
  failure: string | undefined;
}

export interface PgDrillServerResult {
  server: string;
  serverId: string;
  /** What this tick did for the server. */
  action: StepAction | 'not-due' | 'backed-off' | 'error';
  detail: string;
  /** True when this tick requested a new drill (and took its first step). */
  newDrill: boolean;
  drill: PgDrillView | null;
  nextDrillDueAt: string | undefined;
}

export interface PgDrillResult {
  at: string;
  ok: boolean;
  servers: PgDrillServerResult[];
  sweep: SweepResult;
}

/** Thrown when a drill failed, a step could not be taken, or the sweeper could not delete; carries the result. */
export class PgDrillError extends TcabError {
  constructor(
    readonly result: PgDrillResult,
    problems: string[],
  ) {
    super(`Postgres PITR drill: ${problems.length} problem(s):\n  - ${problems.join('\n  - ')}`, {
      code: 'PG_DRILL_FAILED',
      hint: 'each line says what failed and what to check; tcab-backup pg drill --json shows every drill record',
    });
    this.name = 'PgDrillError';
  }
}

export function drillView(r: PgDrillRecord): PgDrillView {
  return {
    drillId: r.drillId,
    state: r.state,
    outcome: r.outcome,
    drillServer: r.drillServer.name,
    requestedAt: r.requestedAt,
    restorePoint: r.restorePoint.used ?? r.restorePoint.requested,
    restorePointClamped: r.restorePoint.clamped ?? false,
    recoveryTimeMs: r.recoveryTimeMs,
    recoveryPointMs: r.recoveryPointMs,
    finishedAt: r.finishedAt,
    failure: r.failure ? `${r.failure.message}. Check: ${r.failure.hint}` : undefined,
  };
}

export async function runPgDrill(config: PgDrillConfig, deps: PgJobDeps, options: PgDrillOptions = {}): Promise<PgDrillResult> {
  const logger = deps.logger ?? silentLogger;
  const now = deps.now ?? (() => new Date());
  const clientFor = armClientFactory(config, deps.credential, deps.arm);
  const sweep = await sweepDrillServers({
    sources: config.servers,
    maxAgeMs: config.maxAgeMs,
    clientFor,
    logger,
    now: now(),
    signal: deps.signal,
  });
  const problems = [...sweep.errors];
  const servers: PgDrillServerResult[] = [];
  for (const source of config.servers) {
    const ctx: DrillContext = {
      config,
      source,
      client: clientFor(source.subscriptionId),
      credential: deps.credential,
      target: deps.target,
      logger: logger.child({ server: source.name }),
      now,
      signal: deps.signal,
    };
    const result = await tickServer(ctx, options).catch((e): PgDrillServerResult => {
      problems.push(`server "${source.name}": ${errorMessage(e)}`);
      return {
        server: source.name,
        serverId: source.id,
        action: 'error',
        detail: errorMessage(e),
        newDrill: false,
        drill: null,
        nextDrillDueAt: undefined,
      };
    });
    if (result.action === 'finished' && result.drill?.outcome === 'failed') {
      problems.push(`server "${source.name}": drill ${result.drill.drillId} failed: ${result.drill.failure ?? 'unknown reason'}`);
    }
    servers.push(result);
  }
  const result: PgDrillResult = { at: now().toISOString(), ok: problems.length === 0, servers, sweep };
  if (problems.length) throw new PgDrillError(result, problems);
  return result;
}

async function tickServer(ctx: DrillContext, options: PgDrillOptions): Promise<PgDrillServerResult> {
  const { source, target, config } = ctx;
  const base = { server: source.name, serverId: source.id, newDrill: false };
  const pointerKey = pgCurrentDrillKey(source.name);
  let pointer = await readRecord(target, pointerKey, PgCurrentDrillSchema, ctx.signal);
  let handle: DrillHandle | undefined;
  if (pointer) {
    const stored = await readRecord(target, pgDrillKey(source.name, pointer.value.drillId), PgDrillRecordSchema, ctx.signal);
    if (stored) handle = new DrillHandle(ctx, stored.value, stored.etag);
    else ctx.logger.warn('pg.drill.record-missing', { drillId: pointer.value.drillId, key: pointerKey });
  }
  try {
    if (handle && !isFinished(handle.record)) {
      const step = await advanceDrill(handle);
      if (isFinished(handle.record)) pointer = await noteFinished(ctx, pointerKey, pointer!, handle.record);
      return { ...base, ...step, drill: drillView(handle.record), nextDrillDueAt: undefined };
    }
    if (handle && pointer) pointer = await noteFinished(ctx, pointerKey, pointer, handle.record);
    const dueAt = pointer ? new Date(Date.parse(pointer.value.requestedAt) + config.intervalMs) : ctx.now();
    if (!options.force && ctx.now().getTime() < dueAt.getTime()) {
      return {
        ...base,
        action: 'not-due',
        detail: `the next drill is due at ${dueAt.toISOString()}`,
        drill: handle ? drillView(handle.record) : null,
        nextDrillDueAt: dueAt.toISOString(),
      };
    }
    handle = await requestDrill(ctx, pointerKey, pointer);
    const step = await advanceDrill(handle);
    return { ...base, ...step, newDrill: true, drill: drillView(handle.record), nextDrillDueAt: undefined };
  } catch (e) {
    if (!(e instanceof PreconditionFailedError)) throw e;
    ctx.logger.info('pg.drill.backed-off', { drillId: handle?.record.drillId });
    return {
      ...base,
      action: 'backed-off',
      detail: 'another invocation advanced the drill at the same time; this one backed off',
      drill: handle ? drillView(handle.record) : null,
      nextDrillDueAt: undefined,
    };
  }
}

function isFinished(r: PgDrillRecord): boolean {
  return r.state === 'done' || r.state === 'failed';
}

function summary(r: PgDrillRecord): PgDrillSummary {
  return {
    drillId: r.drillId,
    outcome: r.outcome ?? 'failed',
    requestedAt: r.requestedAt,
    finishedAt: r.finishedAt ?? r.updatedAt,
    ...(r.recoveryTimeMs !== undefined ? { recoveryTimeMs: r.recoveryTimeMs } : {}),
    ...(r.recoveryPointMs !== undefined ? { recoveryPointMs: r.recoveryPointMs } : {}),
    ...(r.failure ? { failure: r.failure.message } : {}),
  };
}

/**
 * Copies a finished drill's summary into the pointer (for status). Losing a race here changes nothing that
 * matters: whoever won wrote the same summary, or a later tick writes it. So it never makes a tick back off,
 * which would hide the failure of the drill that just finished.
 */
async function noteFinished(
  ctx: DrillContext,
  key: string,
  pointer: Stored<PgCurrentDrill>,
  record: PgDrillRecord,
): Promise<Stored<PgCurrentDrill>> {
  if (pointer.value.drillId !== record.drillId || pointer.value.lastFinished?.drillId === record.drillId) return pointer;
  const s = summary(record);
  const value: PgCurrentDrill = { ...pointer.value, lastFinished: s, ...(s.outcome === 'succeeded' ? { lastSucceeded: s } : {}) };
  try {
    const etag = await writeRecord(ctx.target, key, value, { ifMatch: pointer.etag }, ctx.signal);
    return { value, etag };
  } catch (e) {
    if (!(e instanceof PreconditionFailedError)) throw e;
    const fresh = await readRecord(ctx.target, key, PgCurrentDrillSchema, ctx.signal);
    if (!fresh) throw e;
    return fresh;
  }
}

/** Creates a drill record, then makes it current; losing the pointer race removes the record again. */
async function requestDrill(ctx: DrillContext, pointerKey: string, pointer: Stored<PgCurrentDrill> | undefined): Promise<DrillHandle> {
  const { source, config, target } = ctx;
  const now = ctx.now();
  const drillId = newDrillId(now);
  const name = drillServerName(source.name, drillId);
  const at = now.toISOString();
  const record: PgDrillRecord = {
    formatVersion: PG_RECORD_FORMAT_VERSION,
    kind: 'pg-pitr-drill',
    drillId,
    source: { id: source.id, name: source.name, subscriptionId: source.subscriptionId, resourceGroup: source.resourceGroup },
    drillServer: { name, id: serverId(source.subscriptionId, source.resourceGroup, name) },
    state: 'requested',
    requestedAt: at,
    restorePoint: { requested: new Date(now.getTime() - config.restoreLagMs).toISOString() },
    restore: {},
    validation: { attempts: 0, checks: [] },
    deletion: {},
    history: [{ state: 'requested', at }],
    updatedAt: at,
  };
  const key = pgDrillKey(source.name, drillId);
  const etag = await writeRecord(target, key, record, { ifNoneMatch: '*' }, ctx.signal);
  const next: PgCurrentDrill = {
    formatVersion: PG_RECORD_FORMAT_VERSION,
    kind: 'pg-current-drill',
    sourceServerId: source.id,
    drillId,
    requestedAt: at,
    ...(pointer?.value.lastFinished ? { lastFinished: pointer.value.lastFinished } : {}),
    ...(pointer?.value.lastSucceeded ? { lastSucceeded: pointer.value.lastSucceeded } : {}),
  };
  try {
    await writeRecord(target, pointerKey, next, pointer ? { ifMatch: pointer.etag } : { ifNoneMatch: '*' }, ctx.signal);
  } catch (e) {
    if (e instanceof PreconditionFailedError) {
      await target
        .delete(key, { signal: ctx.signal })
        .catch((err) => ctx.logger.warn('pg.drill.orphan-record', { key, error: errorMessage(err) }));
    }
    throw e;
  }
  ctx.logger.info('pg.drill.requested', { drillId, drillServer: name, restorePoint: record.restorePoint.requested });
  return new DrillHandle(ctx, record, etag);
}
