/**
 * The snapshot job: ask the agent for a snapshot, stream the artifact into every target at once, read each
 * copy back and check its sha256, then write the manifest (the commit marker) on each target that holds a
 * verified copy, and remove the staged file from the agent.
 *
 * A target that fails does not stop the others; the job then throws naming every failed target, after the
 * healthy targets have their snapshot. Nothing is half-visible: data without a manifest is not a snapshot.
 */
import { PassThrough, pipeline } from 'node:stream';
import type { Compression, SnapshotDescription } from '../../agent/protocol.js';
import { artifactKey } from '../../catalog/layout.js';
import { MANIFEST_FORMAT_VERSION, PIN_TAG, type ManifestV1, type Trigger } from '../../catalog/manifest.js';
import { writeManifest } from '../../catalog/catalog.js';
import { IntegrityError, TcabError, errorMessage } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import type { Target } from '../../targets/target.js';
import { HashingStream, fanOut, hashStream } from '../../util/streams.js';
import type { Readable } from 'node:stream';
import type { SnapshotDescriptionV2 } from '../../agent/protocol.js';
import { LOST_CHUNKS_HINT, lostChunksMessage } from '../renewals.js';
import { runSnapshotV2, type ChunkSource, type ChunkTiming, type SnapshotResultV2, type TargetOutcomeV2 } from './v2.js';

export { UPLOADS_IN_FLIGHT, type ChunkTiming, type SnapshotResultV2, type TargetOutcomeV2 } from './v2.js';

/** What the job needs from the agent (AgentClient implements it). */
export interface SnapshotSource {
  createSnapshot(options?: { compression?: Compression; signal?: AbortSignal }): Promise<SnapshotDescription>;
  openSnapshot(id: string, options?: { signal?: AbortSignal }): Promise<{ body: Readable; bytes: number; etag: string }>;
  deleteSnapshot(id: string, options?: { signal?: AbortSignal }): Promise<void>;
}

export interface SnapshotRequest {
  trigger: Trigger;
  pin?: boolean;
  tags?: string[];
  compression?: Compression | 'auto';
  /** 1 (one artifact) or 2 (deduplicated chunks, docs/format-2.md). Default 1 here; the CLI and the functions pass TCAB_BACKUP_FORMAT (default 2). */
  format?: 1 | 2;
  signal?: AbortSignal;
}

/** Format 2 also needs the agent's chunk routes and the chunk clock (G and J). */
export interface SnapshotDepsV2 {
  agent: SnapshotSource & ChunkSource;
  targets: Target[];
  database: string;
  logger?: Logger;
  timing: ChunkTiming;
}

export interface TargetOutcome {
  target: string;
  ok: boolean;
  key: string;
  bytes?: number;
  uploadMs?: number;
  verifyMs?: number;
  error?: string;
}

export interface SnapshotResult {
  manifest: ManifestV1;
  targets: TargetOutcome[];
  totalMs: number;
}

export class SnapshotFailedError extends TcabError {
  readonly result: Partial<SnapshotResult> | Partial<SnapshotResultV2>;
  constructor(
    message: string,
    result: Partial<SnapshotResult> | Partial<SnapshotResultV2>,
    options: { hint?: string; cause?: unknown } = {},
  ) {
    super(message, { code: 'SNAPSHOT_FAILED', ...options });
    this.name = 'SnapshotFailedError';
    this.result = result;
  }
}

export function runSnapshot(
  deps: { agent: SnapshotSource; targets: Target[]; database: string; logger?: Logger },
  request: SnapshotRequest & { format?: 1 },
): Promise<SnapshotResult>;
export function runSnapshot(deps: SnapshotDepsV2, request: SnapshotRequest & { format: 2 }): Promise<SnapshotResultV2>;
export function runSnapshot(deps: SnapshotDepsV2, request: SnapshotRequest): Promise<SnapshotResult | SnapshotResultV2>;
export async function runSnapshot(
  deps: { agent: SnapshotSource; targets: Target[]; database: string; logger?: Logger; timing?: ChunkTiming },
  request: SnapshotRequest,
): Promise<SnapshotResult | SnapshotResultV2> {
  if (deps.targets.length === 0) throw new TcabError('No targets configured', { hint: 'set TCAB_BACKUP_TARGETS' });
  if (request.format === 2) {
    if (!deps.timing) throw new TcabError('A format-2 snapshot needs the chunk timing (TCAB_BACKUP_CHUNK_GRACE, TCAB_BACKUP_JOB_TIMEOUT)');
    return runFormat2({ ...(deps as SnapshotDepsV2), timing: deps.timing }, request);
  }
  return runFormat1(deps, request);
}

/** The checks both formats make on the agent's description before anything is stored. */
async function checkDescription(
  agent: SnapshotSource,
  database: string,
  desc: { id: string; database: { name: string }; integrity: string },
) {
  if (desc.database.name !== database) {
    await agent.deleteSnapshot(desc.id).catch(() => undefined);
    throw new TcabError(`The agent snapshots database "${desc.database.name}" but this function app backs up "${database}"`, {
      hint: 'TCAB_BACKUP_DATABASE (function app) must equal TCAB_AGENT_DATABASE_NAME (agent)',
    });
  }
  if (desc.integrity !== 'ok') {
    await agent.deleteSnapshot(desc.id).catch(() => undefined);
    throw new IntegrityError(`The agent's snapshot ${desc.id} failed PRAGMA integrity_check: ${desc.integrity.slice(0, 300)}`, {
      hint: 'the source database itself may be damaged: run PRAGMA integrity_check on the VM and keep the existing snapshots',
    });
  }
}

async function runFormat2(deps: SnapshotDepsV2, request: SnapshotRequest): Promise<SnapshotResultV2> {
  const log = deps.logger ?? silentLogger;
  log.debug('snapshot.requesting', { database: deps.database, format: 2, targets: deps.targets.map((t) => t.name) });
  const result = await runSnapshotV2({ ...deps, logger: log }, request, (desc: SnapshotDescriptionV2) =>
    checkDescription(deps.agent, deps.database, desc),
  ).catch((e: unknown) => {
    if (e instanceof TcabError && e.code === 'SNAPSHOT_SOURCE_FAILED') {
      const targets = (e as unknown as { targets: TargetOutcomeV2[] }).targets;
      throw new SnapshotFailedError(e.message, { targets }, { hint: e.hint ?? '', cause: e });
    }
    throw e;
  });
  const failed = result.targets.filter((o) => !o.ok);
  for (const o of failed) log.error('snapshot.target_failed', { id: result.manifest?.id, target: o.target, error: o.error });
  // An earlier renewal's check that failed, or found chunks gone it could not write again: said whatever else failed.
  const renewalProblems = result.targets.flatMap((o) =>
    o.renewals?.error
      ? [`checking the renewal records on "${o.target}" failed: ${o.renewals.error}`]
      : o.renewals?.lost.length
        ? [lostChunksMessage(o.target, o.renewals.lost)]
        : [],
  );
  const lost = result.targets.some((o) => o.renewals?.lost.length);
  if (failed.length) {
    const stored = result.targets.filter((o) => o.ok).map((o) => o.target);
    throw new SnapshotFailedError(
      `Snapshot ${failed[0]!.key} failed on ${failed.length} of ${result.targets.length} target(s): ${failed.map((o) => `"${o.target}" (${o.error})`).join('; ')}` +
        (stored.length ? `; stored on ${stored.map((s) => `"${s}"`).join(', ')}` : '') +
        (renewalProblems.length ? `; besides, ${renewalProblems.join('; ')}` : ''),
      result,
      {
        hint: `check the named target (reachability, credentials, permissions, room); the next snapshot uploads only the chunks it still lacks${lost ? `. For the missing chunks: ${LOST_CHUNKS_HINT}` : ''}`,
      },
    );
  }
  if (renewalProblems.length) {
    throw new SnapshotFailedError(`Snapshot ${result.manifest.id} was stored on every target, but ${renewalProblems.join('; ')}`, result, {
      hint: lost
        ? LOST_CHUNKS_HINT
        : 'check the named target (reachability, credentials); the renewal records stay, and the next run checks them again',
    });
  }
  log.info('snapshot.completed', {
    database: deps.database,
    id: result.manifest.id,
    format: 2,
    createdAt: result.manifest.createdAt,
    trigger: request.trigger.kind,
    pinned: result.manifest.tags.includes(PIN_TAG),
    snapshotBytes: result.manifest.snapshot.bytes,
    uploadedBytes: Object.fromEntries(result.targets.map((o) => [o.target, o.uploadedBytes])),
    targets: result.targets.map((o) => o.target),
    totalMs: result.totalMs,
  });
  return result;
}

async function runFormat1(
  deps: { agent: SnapshotSource; targets: Target[]; database: string; logger?: Logger },
  request: SnapshotRequest,
): Promise<SnapshotResult> {
  const log = deps.logger ?? silentLogger;
  const started = Date.now();
  const signal = request.signal;

  const compression = request.compression && request.compression !== 'auto' ? request.compression : undefined;
  log.debug('snapshot.requesting', { database: deps.database, targets: deps.targets.map((t) => t.name) });
  const desc = await deps.agent.createSnapshot({ ...(compression ? { compression } : {}), signal });
  log.info('snapshot.created', {
    id: desc.id,
    database: desc.database.name,
    bytes: desc.snapshot.bytes,
    artifactBytes: desc.artifact.bytes,
    compression: desc.artifact.compression,
    timings: desc.timings,
  });
  await checkDescription(deps.agent, deps.database, desc);

  const key = artifactKey(deps.database, desc.id, desc.artifact.compression);
  const outcomes: TargetOutcome[] = deps.targets.map((t) => ({ target: t.name, ok: false, key }));
  try {
    await uploadToAll(deps.agent, deps.targets, desc, key, outcomes, log, signal);
    await Promise.all(
      deps.targets.map(async (target, i) => {
        const outcome = outcomes[i]!;
        if (outcome.error) return;
        const t0 = Date.now();
        try {
          const { body, size } = await target.get(key, { signal });
          const got = await hashStream(body, signal);
          if (got.sha256 !== desc.artifact.sha256 || got.bytes !== desc.artifact.bytes || size !== desc.artifact.bytes) {
            throw new IntegrityError(
              `read back ${got.bytes} bytes with sha256 ${got.sha256}, expected ${desc.artifact.bytes} bytes with ${desc.artifact.sha256}`,
            );
          }
          outcome.verifyMs = Date.now() - t0;
        } catch (e) {
          // Name the object: a read that broke off is otherwise only "Premature close".
          outcome.error = `verification (reading back ${key}) failed: ${errorMessage(e)}`;
          await target.delete(key).catch(() => undefined);
        }
      }),
    );
  } catch (e) {
    // The source failed (agent gone, bad bytes): no target gets a manifest.
    await Promise.all(deps.targets.map((t) => t.delete(key).catch(() => undefined)));
    await deps.agent.deleteSnapshot(desc.id).catch(() => undefined);
    throw new SnapshotFailedError(
      `Snapshot ${desc.id}: download from the agent failed: ${errorMessage(e)}`,
      { targets: outcomes },
      {
        hint: 'check the agent service on the VM (journalctl -u tcab-backup-agent) and the network path; no snapshot was recorded',
        cause: e,
      },
    );
  }

  const manifest: ManifestV1 = {
    formatVersion: MANIFEST_FORMAT_VERSION,
    ...desc,
    databaseName: deps.database,
    trigger: request.trigger,
    tags: [...new Set([...(request.tags ?? []), ...(request.pin ? [PIN_TAG] : [])])],
    key,
    storedAt: new Date().toISOString(),
  };
  await Promise.all(
    deps.targets.map(async (target, i) => {
      const outcome = outcomes[i]!;
      if (outcome.error) return;
      try {
        await writeManifest(target, { ...manifest, storedAt: new Date().toISOString() }, { signal });
        outcome.ok = true;
      } catch (e) {
        outcome.error = `manifest write failed: ${errorMessage(e)}`;
      }
    }),
  );

  await deps.agent.deleteSnapshot(desc.id).catch((e) => {
    log.warn('snapshot.staging_cleanup_failed', {
      id: desc.id,
      error: errorMessage(e),
      note: 'the agent removes staged files after its TTL',
    });
  });

  const result: SnapshotResult = { manifest, targets: outcomes, totalMs: Date.now() - started };
  const failed = outcomes.filter((o) => !o.ok);
  for (const o of failed) log.error('snapshot.target_failed', { id: desc.id, target: o.target, error: o.error });
  if (failed.length) {
    const stored = outcomes.filter((o) => o.ok).map((o) => o.target);
    throw new SnapshotFailedError(
      `Snapshot ${desc.id} failed on ${failed.length} of ${outcomes.length} target(s): ${failed.map((o) => `"${o.target}" (${o.error})`).join('; ')}` +
        (stored.length ? `; stored on ${stored.map((s) => `"${s}"`).join(', ')}` : ''),
      result,
      { hint: 'check the named target (reachability, credentials, permissions); replicate copies the snapshot there once it is healthy' },
    );
  }
  log.info('snapshot.completed', {
    database: deps.database,
    id: desc.id,
    createdAt: desc.createdAt,
    trigger: request.trigger.kind,
    pinned: manifest.tags.includes(PIN_TAG),
    artifactBytes: desc.artifact.bytes,
    snapshotBytes: desc.snapshot.bytes,
    targets: outcomes.map((o) => o.target),
    totalMs: result.totalMs,
  });
  return result;
}

/** Streams the artifact once from the agent into every target; records per-target failures in `outcomes`. */
async function uploadToAll(
  agent: SnapshotSource,
  targets: Target[],
  desc: SnapshotDescription,
  key: string,
  outcomes: TargetOutcome[],
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<void> {
  const t0 = Date.now();
  const download = await agent.openSnapshot(desc.id, { signal });
  if (download.bytes !== desc.artifact.bytes) {
    download.body.destroy();
    throw new IntegrityError(`the agent offers ${download.bytes} bytes for ${desc.id}, its description says ${desc.artifact.bytes}`);
  }
  const hasher = new HashingStream();
  const pipes = targets.map(() => new PassThrough({ highWaterMark: 1 << 20 }));
  const puts = targets.map((target, i) =>
    target.put(key, pipes[i]!, { contentLength: desc.artifact.bytes, contentType: 'application/octet-stream', signal }).then(
      (r) => {
        outcomes[i]!.bytes = r.size;
        outcomes[i]!.uploadMs = Date.now() - t0;
        // A put that returns before reading its body to the end would hold the other targets back for good.
        if (!pipes[i]!.readableEnded)
          pipes[i]!.destroy(new Error(`target "${target.name}" said the upload was stored before it had read all of it`));
      },
      (e: unknown) => {
        // The target's own error says more than the fan-out's view of its stream stopping.
        outcomes[i]!.error = `upload failed: ${errorMessage(e)}`;
        pipes[i]!.destroy(e instanceof Error ? e : new Error(String(e)));
      },
    ),
  );
  // Whichever side stops first, the other is stopped too: a download nobody reads any more is closed, and
  // one that closes early fails the copy instead of leaving it waiting for an end that never comes.
  const source = pipeline(download.body, hasher, () => undefined);
  try {
    await fanOut(
      source,
      pipes,
      (i, err) => {
        outcomes[i]!.error ??= `upload failed: ${errorMessage(err)}`;
        log.warn('snapshot.target_upload_failed', { target: targets[i]!.name, id: desc.id, error: errorMessage(err) });
      },
      {
        beforeEnd: () => {
          if (hasher.bytes !== desc.artifact.bytes || hasher.digest() !== desc.artifact.sha256) {
            return new IntegrityError(
              `downloaded ${hasher.bytes} bytes with sha256 ${hasher.digest()}, the agent promised ${desc.artifact.bytes} bytes with ${desc.artifact.sha256}`,
            );
          }
          return undefined;
        },
        signal,
      },
    );
  } finally {
    await Promise.all(puts);
  }
}
