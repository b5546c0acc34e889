/**
 * Snapshot triggers: on a timer (TCAB_BACKUP_SNAPSHOT_SCHEDULE) and on demand (POST /api/snapshots, function
 * key). Both run the snapshot job; a failure throws so the invocation fails and the alert rules fire.
 */
import functions from '@azure/functions';
import type { HttpRequest, HttpResponseInit, InvocationContext, Timer } from '@azure/functions';
import { z } from 'zod';
import { AgentError } from '../agent/client.js';
import { ConfigError, errorMessage } from '../errors.js';
import { backupConfig, invocation, JobTimeoutError, json, problem, type Invocation } from '../host/context.js';
import { loadChunkGrace } from '../jobs/settings.js';
import {
  runSnapshot,
  SnapshotFailedError,
  type SnapshotRequest,
  type SnapshotResult,
  type SnapshotResultV2,
} from '../jobs/snapshot/index.js';
import { openAgent, openTargets } from '../runtime.js';

const { app } = functions;

/** One snapshot at a time per instance; the agent enforces one at a time across instances (409). */
let running = false;

async function snapshotOnce(
  { logger, bounded }: Invocation,
  request: Omit<SnapshotRequest, 'compression' | 'format' | 'signal'>,
): Promise<SnapshotResult | SnapshotResultV2> {
  const config = backupConfig();
  // The chunk clock is read only for format 2, so a format-1 deployment is not held to its settings.
  const timing = config.snapshotFormat === 2 ? loadChunkGrace() : undefined;
  return bounded('snapshot', (signal) =>
    runSnapshot(
      {
        agent: openAgent(config.agent, logger),
        targets: openTargets(config, logger),
        database: config.database,
        logger,
        ...(timing ? { timing } : {}),
      } as Parameters<typeof runSnapshot>[0] & { timing: NonNullable<typeof timing> },
      { ...request, compression: config.agent.compression, format: config.snapshotFormat, signal },
    ),
  );
}

export async function snapshotTimer(timer: Timer, context: InvocationContext): Promise<void> {
  const run = invocation(context);
  const { logger } = run;
  if (timer.isPastDue) logger.warn('snapshot.timer_past_due', { note: 'the previous run was late or the app was stopped' });
  if (running)
    throw new Error(
      'A snapshot is still running on this instance; this timer run is skipped and counts as failed so a stuck job is noticed',
    );
  running = true;
  try {
    await snapshotOnce(run, { trigger: { kind: 'timer' } });
  } finally {
    running = false;
  }
}

const ManualSnapshotBody = z
  .object({
    reason: z.string().trim().min(1, 'reason must not be empty').max(500, 'reason is at most 500 characters').optional(),
    pin: z.boolean({ message: 'pin must be true or false' }).optional(),
  })
  .strict();

export async function snapshotHttp(request: HttpRequest, context: InvocationContext): Promise<HttpResponseInit> {
  const run = invocation(context);
  const { logger } = run;
  const raw = await request.text();
  let body: unknown = {};
  if (raw.trim()) {
    if (raw.length > 16 * 1024)
      return problem(413, 'Request body too large', 'The body is at most 16 KiB of JSON: {"reason"?: string, "pin"?: boolean}');
    try {
      body = JSON.parse(raw);
    } catch {
      return problem(400, 'Invalid JSON', 'The body must be JSON: {"reason"?: string, "pin"?: boolean}');
    }
  }
  const parsed = ManualSnapshotBody.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return problem(
      400,
      'Invalid request body',
      `${issue.path.join('.') || 'body'}: ${issue.message}. Expected {"reason"?: string, "pin"?: boolean}`,
    );
  }
  if (running)
    return {
      ...problem(409, 'A snapshot is already running', 'Try again when it has finished'),
      headers: { 'Content-Type': 'application/problem+json', 'Cache-Control': 'no-store', 'Retry-After': '30' },
    };
  running = true;
  try {
    const result = await snapshotOnce(run, {
      trigger: { kind: 'manual', ...(parsed.data.reason ? { reason: parsed.data.reason } : {}) },
      pin: parsed.data.pin ?? false,
    });
    return json(201, { manifest: result.manifest, targets: result.targets });
  } catch (e) {
    logger.error('snapshot.failed', { trigger: 'manual', error: errorMessage(e) });
    if (e instanceof AgentError && e.status === 409) {
      return {
        ...problem(409, 'A snapshot is already running', 'The agent is making another snapshot; try again shortly'),
        headers: {
          'Content-Type': 'application/problem+json',
          'Cache-Control': 'no-store',
          'Retry-After': String((e as AgentError & { retryAfterSeconds?: number }).retryAfterSeconds ?? 30),
        },
      };
    }
    if (e instanceof JobTimeoutError) return problem(504, 'The snapshot did not finish in time', errorMessage(e));
    if (e instanceof AgentError) return problem(502, 'The snapshot agent failed', errorMessage(e));
    if (e instanceof SnapshotFailedError) return problem(502, 'The snapshot failed', errorMessage(e), { targets: e.result.targets });
    if (e instanceof ConfigError) return problem(500, 'The function app is misconfigured', errorMessage(e));
    return problem(500, 'The snapshot failed', errorMessage(e));
  } finally {
    running = false;
  }
}

app.timer('snapshotTimer', { schedule: '%TCAB_BACKUP_SNAPSHOT_SCHEDULE%', runOnStartup: false, useMonitor: true, handler: snapshotTimer });
app.http('snapshotHttp', { methods: ['POST'], route: 'snapshots', authLevel: 'function', handler: snapshotHttp });
