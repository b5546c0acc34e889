/**
 * The PITR drill's state machine, one step per tick:
 *
 *   requested -> restoring -> validating -> deleting -> done
 *        \___________\_____________\__________/ -> failed   (a failed drill still deletes its server)
 *
 * No step waits for Azure: a step starts a long-running operation and keeps the SDK poller's serialized
 * state in the record, and a later tick resumes it. Any step that acts on Azure first claims the record
 * (If-Match), then acts, so two overlapping ticks cannot both restore or both delete. A claim whose
 * invocation died before acting is taken over once it is older than CLAIM_STALE_MS.
 */
import type { Server } from '@azure/arm-postgresql-flexible';
import { TcabError } from '../errors.js';
import { formatDuration } from '../util/duration.js';
import { armHint, describeArmFailure, isArmNotFound } from './arm.js';
import { VALIDATION_WINDOW_MS } from './config.js';
import { deleteRefusal, drillTags } from './drill-server.js';
import type { DrillHandle } from './drill-handle.js';
import { judgeRestoredData, queryDrillServer } from './drill-validate.js';

/** An invocation that claimed a step and has not recorded acting on it within this long is presumed dead. */
export const CLAIM_STALE_MS = 5 * 60_000;

export type StepAction =
  | 'restore-started'
  | 'restoring'
  | 'waiting'
  | 'ready'
  | 'validation-retry'
  | 'validated'
  | 'failing'
  | 'delete-started'
  | 'deleting'
  | 'finished';

export interface StepResult {
  action: StepAction;
  detail: string;
}

export async function advanceDrill(h: DrillHandle): Promise<StepResult> {
  switch (h.record.state) {
    case 'requested':
      return startRestore(h);
    case 'restoring':
      return followRestore(h);
    case 'validating':
      return validate(h);
    case 'deleting':
      return deleteDrillServer(h);
    case 'done':
    case 'failed':
      return { action: 'finished', detail: `drill ${h.record.drillId} already ended ${h.record.state}` };
  }
}

// Transport failures (throttling, 5xx, connection resets) are RestErrors and worth retrying on the next
// tick; a long-running operation that Azure reports as failed is a plain Error and is final.
function isRestError(e: unknown): boolean {
  return (e as { name?: string } | null)?.name === 'RestError';
}

function armError(what: string, e: unknown, h: DrillHandle, role: string): TcabError {
  return new TcabError(`${what}: ${describeArmFailure(e)}`, { hint: armHint(e, { resourceGroup: h.ctx.source.resourceGroup, role }) });
}

function where(h: DrillHandle): string {
  return `drill server "${h.record.drillServer.name}" (drill ${h.record.drillId} of "${h.ctx.source.name}")`;
}

async function startRestore(h: DrillHandle): Promise<StepResult> {
  const { client, source } = h.ctx;
  const signal = h.ctx.signal;
  let src: Server;
  try {
    src = await client.servers.get(source.resourceGroup, source.name, { abortSignal: signal });
  } catch (e) {
    throw armError(`Reading source server "${source.name}" to start drill ${h.record.drillId}`, e, h, 'Reader');
  }
  const now = h.ctx.now();
  const earliest = src.backup?.earliestRestoreDate ? new Date(src.backup.earliestRestoreDate) : undefined;
  if (!earliest || Number.isNaN(earliest.getTime()) || earliest.getTime() > now.getTime()) {
    await h.fail(
      'requested',
      `source server "${source.name}" reports ${earliest ? `an earliest restore point in the future (${earliest.toISOString()})` : 'no earliest restore point'}, so there is nothing to restore`,
      'run tcab-backup pg check; a new server has a restore point after its first backup',
    );
    return { action: 'failing', detail: h.record.failure!.message };
  }
  // A restore point before the earliest one Azure still holds is moved up to it (and recorded as such):
  // the drill then still proves that point-in-time restore works, and the clamping shows in the record.
  const requested = new Date(h.record.restorePoint.requested);
  const clamped = earliest.getTime() > requested.getTime();
  const used = clamped ? earliest : requested;
  await h.save({
    state: 'restoring',
    restorePoint: { ...h.record.restorePoint, used: used.toISOString(), earliestRestorePoint: earliest.toISOString(), clamped },
    restore: { startedAt: h.record.restore.startedAt ?? now.toISOString(), claimedAt: now.toISOString() },
  });
  if (clamped) {
    h.ctx.logger.warn('pg.drill.restore-point-clamped', {
      drillId: h.record.drillId,
      server: source.name,
      requested: requested.toISOString(),
      earliestRestorePoint: earliest.toISOString(),
    });
  }
  let poller;
  try {
    poller = await client.servers.beginCreateOrUpdate(
      source.resourceGroup,
      h.record.drillServer.name,
      {
        location: src.location,
        createMode: 'PointInTimeRestore',
        sourceServerResourceId: src.id ?? source.id,
        pointInTimeUTC: used,
        tags: drillTags(source, h.record.drillId, now),
      },
      { abortSignal: signal },
    );
  } catch (e) {
    if (isRestError(e) && !(armStatus(e) >= 400 && armStatus(e) < 500)) {
      // Unknown whether Azure took the request: the next tick finds the server or, once the claim is stale, sends it again.
      throw armError(`Sending the point-in-time restore for ${where(h)}`, e, h, 'Contributor');
    }
    await h.fail(
      'restoring',
      `Azure refused the point-in-time restore of "${source.name}" at ${used.toISOString()} to ${where(h)}: ${describeArmFailure(e)}`,
      isRestError(e)
        ? armHint(e, { resourceGroup: source.resourceGroup, role: 'Contributor' })
        : `the Activity log of resource group "${source.resourceGroup}"`,
    );
    return { action: 'failing', detail: h.record.failure!.message };
  }
  await h.save({ restore: { ...h.record.restore, poller: poller.toString() } });
  h.ctx.logger.info('pg.drill.restore-started', {
    drillId: h.record.drillId,
    server: source.name,
    drillServer: h.record.drillServer.name,
    pointInTime: used.toISOString(),
    clamped,
  });
  return {
    action: 'restore-started',
    detail: `restoring "${source.name}" at ${used.toISOString()}${clamped ? ' (the earliest restore point)' : ''} to "${h.record.drillServer.name}"`,
  };
}

function armStatus(e: unknown): number {
  return (e as { statusCode?: number } | null)?.statusCode ?? 0;
}

async function followRestore(h: DrillHandle): Promise<StepResult> {
  const { client, source, config } = h.ctx;
  const r = h.record;
  const now = h.ctx.now();
  const startedAt = new Date(r.restore.startedAt ?? r.requestedAt);
  const timedOut = now.getTime() - startedAt.getTime() > config.timeoutMs;
  const timeout = async (): Promise<StepResult> => {
    await h.fail(
      'restoring',
      `${where(h)} was not ready ${formatDuration(config.timeoutMs)} after its restore started (${startedAt.toISOString()})`,
      `TCAB_BACKUP_PG_DRILL_TIMEOUT, and the Activity log of resource group "${source.resourceGroup}" for a stuck restore`,
    );
    return { action: 'failing', detail: h.record.failure!.message };
  };

  if (r.restore.poller) {
    let poller;
    try {
      // With resumeFrom the SDK sends no new request: it polls the operation the record names.
      poller = await client.servers.beginCreateOrUpdate(
        source.resourceGroup,
        r.drillServer.name,
        { location: '' },
        { resumeFrom: r.restore.poller, abortSignal: h.ctx.signal },
      );
    } catch (e) {
      if (isRestError(e)) {
        if (timedOut) return timeout();
        throw armError(`Polling the restore of ${where(h)}`, e, h, 'Reader');
      }
      await h.fail(
        'restoring',
        `the point-in-time restore of "${source.name}" to ${where(h)} failed: ${describeArmFailure(e)}`,
        `the Activity log of resource group "${source.resourceGroup}"; the source server's backups with tcab-backup pg check`,
      );
      return { action: 'failing', detail: h.record.failure!.message };
    }
    if (poller.isDone()) {
      const server = poller.getResult();
      if (server && isReady(server)) return markReady(h, server.fullyQualifiedDomainName!);
      // Done but not Ready yet: follow the server's own state from here on.
      await h.save({ restore: { ...r.restore, poller: undefined } });
      return {
        action: 'restoring',
        detail: `the restore finished; waiting for ${where(h)} to be Ready (it is ${server?.state ?? 'unknown'})`,
      };
    }
    if (timedOut) return timeout();
    await h.save({ restore: { ...r.restore, poller: poller.toString() } });
    return { action: 'restoring', detail: `restore of ${where(h)} in progress for ${formatDuration(now.getTime() - startedAt.getTime())}` };
  }

  let server: Server | undefined;
  try {
    server = await client.servers.get(source.resourceGroup, r.drillServer.name, { abortSignal: h.ctx.signal });
  } catch (e) {
    if (!isArmNotFound(e)) throw armError(`Reading ${where(h)}`, e, h, 'Reader');
  }
  if (server) {
    if (isReady(server)) return markReady(h, server.fullyQualifiedDomainName!);
    if (['disabled', 'inaccessible', 'dropping'].includes(server.state?.toLowerCase() ?? '')) {
      await h.fail(
        'restoring',
        `${where(h)} is ${server.state} instead of becoming Ready`,
        `the Activity log of resource group "${source.resourceGroup}"`,
      );
      return { action: 'failing', detail: h.record.failure!.message };
    }
    if (timedOut) return timeout();
    return { action: 'restoring', detail: `${where(h)} is ${server.state ?? 'in an unknown state'}` };
  }
  if (timedOut) return timeout();
  const claimAgeMs = now.getTime() - new Date(r.restore.claimedAt ?? r.requestedAt).getTime();
  if (claimAgeMs < CLAIM_STALE_MS)
    return { action: 'waiting', detail: `another invocation is sending the restore request for ${where(h)}` };
  h.ctx.logger.warn('pg.drill.claim-taken-over', { drillId: r.drillId, step: 'restoring', claimAgeMs });
  return startRestore(h);
}

function isReady(server: Server): boolean {
  return server.state?.toLowerCase() === 'ready' && Boolean(server.fullyQualifiedDomainName);
}

async function markReady(h: DrillHandle, fqdn: string): Promise<StepResult> {
  const now = h.ctx.now();
  const r = h.record;
  await h.save({
    state: 'validating',
    restore: { ...r.restore, poller: undefined, readyAt: now.toISOString(), fullyQualifiedDomainName: fqdn },
    recoveryTimeMs: now.getTime() - Date.parse(r.requestedAt),
    restoreDurationMs: now.getTime() - Date.parse(r.restore.startedAt ?? r.requestedAt),
  });
  h.ctx.logger.info('pg.drill.ready', {
    drillId: r.drillId,
    server: h.ctx.source.name,
    drillServer: r.drillServer.name,
    recoveryTimeMs: h.record.recoveryTimeMs,
  });
  return { action: 'ready', detail: `${where(h)} is Ready after ${formatDuration(h.record.recoveryTimeMs!)}` };
}

async function validate(h: DrillHandle): Promise<StepResult> {
  const { config, source } = h.ctx;
  const r = h.record;
  const now = h.ctx.now();
  const fqdn = r.restore.fullyQualifiedDomainName!;
  const attempts = r.validation.attempts + 1;
  const outcome = await queryDrillServer(config, fqdn, h.ctx.credential);
  switch (outcome.kind) {
    case 'refused':
      await h.fail('validating', `validating ${where(h)}: ${outcome.error}`, outcome.hint, { validation: { ...r.validation, attempts } });
      return { action: 'failing', detail: h.record.failure!.message };
    case 'unreachable': {
      const waitedMs = now.getTime() - Date.parse(r.restore.readyAt ?? r.updatedAt);
      if (waitedMs <= VALIDATION_WINDOW_MS) {
        await h.save({ validation: { ...r.validation, attempts, lastError: outcome.error } });
        return { action: 'validation-retry', detail: `cannot connect to ${where(h)} yet (${outcome.error}); the next tick retries` };
      }
      await h.fail(
        'validating',
        `cannot connect to ${where(h)} at ${fqdn}:${config.port} as "${config.user}" (database "${config.database}") for ${formatDuration(waitedMs)}: ${outcome.error}`,
        "that the function app can reach the server (the restored server copies the source's network and firewall rules), TCAB_BACKUP_PG_DRILL_USER, and its password or Microsoft Entra role",
        { validation: { ...r.validation, attempts, lastError: outcome.error } },
      );
      return { action: 'failing', detail: h.record.failure!.message };
    }
    case 'query-failed':
      await h.fail(
        'validating',
        `the validation SQL failed on ${where(h)}, database "${config.database}": ${outcome.error}`,
        'TCAB_BACKUP_PG_VALIDATION_SQL (one row with columns runs and newest_published_at) and TCAB_BACKUP_PG_DRILL_DATABASE',
        { validation: { ...r.validation, attempts, lastError: outcome.error } },
      );
      return { action: 'failing', detail: h.record.failure!.message };
    case 'ran': {
      const restorePoint = new Date(r.restorePoint.used ?? r.restorePoint.requested);
      const { checks, recoveryPointMs } = judgeRestoredData(outcome.runs, outcome.newestPublishedAt, restorePoint, config.maxDataAgeMs);
      const failed = checks.filter((c) => !c.ok);
      const validation = {
        attempts,
        checkedAt: now.toISOString(),
        runs: outcome.runs,
        newestPublishedAt: outcome.newestPublishedAt ? outcome.newestPublishedAt.toISOString() : null,
        checks,
      };
      const measured = recoveryPointMs === undefined ? {} : { recoveryPointMs };
      if (failed.length) {
        await h.fail(
          'validating',
          `the data restored to ${where(h)} failed validation: ${failed.map((c) => c.detail).join('; ')}`,
          "the source server's data and backups; TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE if runs are published less often",
          { validation, ...measured },
        );
        return { action: 'failing', detail: h.record.failure!.message };
      }
      await h.save({ state: 'deleting', outcome: 'succeeded', validation, ...measured });
      h.ctx.logger.info('pg.drill.validated', { drillId: r.drillId, server: source.name, runs: outcome.runs, recoveryPointMs });
      return {
        action: 'validated',
        detail: `${where(h)} holds ${outcome.runs} runs; the newest is ${formatDuration(Math.max(0, recoveryPointMs ?? 0))} before the restore point`,
      };
    }
  }
}

async function deleteDrillServer(h: DrillHandle): Promise<StepResult> {
  const { client, source, config } = h.ctx;
  const r = h.record;
  const rg = source.resourceGroup;
  if (r.deletion.poller) {
    let poller;
    try {
      poller = await client.servers.beginDelete(rg, r.drillServer.name, { resumeFrom: r.deletion.poller, abortSignal: h.ctx.signal });
    } catch (e) {
      if (isRestError(e)) throw armError(`Polling the deletion of ${where(h)}`, e, h, 'Reader');
      // Forget the failed operation so that the next tick looks at the server afresh and deletes again.
      await h.save({ deletion: {} });
      throw new TcabError(`Deleting ${where(h)} failed: ${describeArmFailure(e)}`, {
        hint: `the next run retries; if it keeps failing, delete the server in resource group "${rg}" by hand (it is tagged tcab-backup-drill=true)`,
      });
    }
    if (poller.isDone()) return finish(h);
    await h.save({ deletion: { ...r.deletion, poller: poller.toString() } });
    return { action: 'deleting', detail: `${where(h)} is being deleted` };
  }

  let server: Server | undefined;
  try {
    server = await client.servers.get(rg, r.drillServer.name, { abortSignal: h.ctx.signal });
  } catch (e) {
    if (!isArmNotFound(e)) throw armError(`Reading ${where(h)} before deleting it`, e, h, 'Reader');
  }
  if (!server) return finish(h);
  if (server.state?.toLowerCase() === 'dropping') return { action: 'deleting', detail: `${where(h)} is being deleted` };
  const refusal = deleteRefusal(server, source, config.servers);
  if (refusal) return finish(h, refusal);
  const now = h.ctx.now();
  if (r.deletion.claimedAt && now.getTime() - Date.parse(r.deletion.claimedAt) < CLAIM_STALE_MS) {
    return { action: 'waiting', detail: `another invocation is deleting ${where(h)}` };
  }
  await h.save({ deletion: { claimedAt: now.toISOString() } });
  let poller;
  try {
    poller = await client.servers.beginDelete(rg, r.drillServer.name, { abortSignal: h.ctx.signal });
  } catch (e) {
    if (isArmNotFound(e)) return finish(h);
    await h.save({ deletion: {} });
    throw armError(`Deleting ${where(h)}`, e, h, 'Contributor');
  }
  if (poller.isDone()) return finish(h);
  await h.save({ deletion: { ...h.record.deletion, poller: poller.toString() } });
  h.ctx.logger.info('pg.drill.delete-started', { drillId: r.drillId, drillServer: r.drillServer.name });
  return { action: 'delete-started', detail: `deleting ${where(h)}` };
}

/** Ends the drill: done when it succeeded and its server is gone, failed otherwise (the caller raises it). */
async function finish(h: DrillHandle, refusal?: string): Promise<StepResult> {
  const now = h.ctx.now();
  const r = h.record;
  const failure = refusal
    ? {
        step: 'deleting' as const,
        message: `refused to delete ${where(h)}: ${refusal}`,
        hint: 'inspect the server in the Azure portal; delete it by hand only if it is a drill server',
      }
    : r.failure;
  const outcome = !refusal && r.outcome === 'succeeded' ? 'succeeded' : 'failed';
  await h.save({
    state: outcome === 'succeeded' ? 'done' : 'failed',
    outcome,
    failure,
    finishedAt: now.toISOString(),
    deletion: { ...r.deletion, poller: undefined, ...(refusal ? {} : { deletedAt: now.toISOString() }) },
  });
  const fields = {
    drillId: r.drillId,
    server: h.ctx.source.name,
    drillServer: r.drillServer.name,
    outcome,
    recoveryTimeMs: r.recoveryTimeMs,
    recoveryPointMs: r.recoveryPointMs,
  };
  if (outcome === 'succeeded') h.ctx.logger.info('pg.drill.completed', fields);
  else h.ctx.logger.error('pg.drill.failed', { ...fields, failure: failure?.message });
  return {
    action: 'finished',
    detail:
      outcome === 'succeeded'
        ? `drill ${r.drillId} succeeded and ${r.drillServer.name} is deleted`
        : `drill ${r.drillId} failed: ${failure?.message ?? 'unknown'}`,
  };
}
