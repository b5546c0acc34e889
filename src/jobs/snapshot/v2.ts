/**
 * The snapshot job for format 2 (docs/format-2.md, "Writing"): the agent stages the plain file cut into chunks;
 * each target is listed, and only the chunks a target lacks (or holds older than G/2, which are written again
 * to renew them) are asked of the agent, checked (decompressed to their sha256 and length, through one reused
 * context: ChunkChecker) and uploaded, at
 * most UPLOADS_IN_FLIGHT at a time, reading the agent's answer no faster than the targets take it. Then each
 * target gets its chunk list and manifest, and the check that every chunk the manifest names is there; missing
 * ones are uploaded again from the agent. A target that fails does not stop the others. Old chunks renewed near G
 * are recorded on the target before its manifest, and a later run checks them; this run checks the records
 * earlier runs left that are due, writing again what went missing (docs/format-2.md, "Renewal records").
 */
import { MAX_CHUNK_REQUEST_BYTES, type SnapshotDescriptionV2 } from '../../agent/protocol.js';
import { checkChunks, commitSnapshotV2, listChunks, putChunk, type StoredChunk } from '../../catalog/chunk-store.js';
import { chunkListKey, manifestKey } from '../../catalog/layout.js';
import { PIN_TAG } from '../../catalog/manifest.js';
import { MANIFEST_V2_FORMAT_VERSION, type ManifestV2 } from '../../catalog/manifest-v2.js';
import { IntegrityError, TcabError, errorMessage } from '../../errors.js';
import { CHUNK_ZSTD_LEVEL, ChunkChecker } from '../../format/chunk-codec.js';
import { ChunkListWriter } from '../../format/chunk-list.js';
import type { Logger } from '../../log.js';
import { isRetryable } from '../../targets/retry.js';
import { writeRenewalRecord } from '../../catalog/renewals.js';
import { emptyRenewalOutcome, scanRenewals, settleRenewals, type DueRenewal, type RenewalOutcome } from '../renewals.js';
import type { Target } from '../../targets/target.js';
import type { SnapshotRequest } from './index.js';

/** Chunk uploads in flight at once, over all targets: the frames held in memory. */
export const UPLOADS_IN_FLIGHT = 8;
/** Hashes per chunk-data request: 64 hex digits and a newline each, within the agent's bound. */
const HASHES_PER_REQUEST = Math.floor(MAX_CHUNK_REQUEST_BYTES / 65);

/** What the format-2 job needs from the agent (AgentClient implements it). */
export interface ChunkSource {
  createSnapshot(options: { format: 2; signal?: AbortSignal }): Promise<SnapshotDescriptionV2>;
  chunkList(id: string, options?: { signal?: AbortSignal }): AsyncIterable<{ sha256: string; length: number }>;
  chunkData(id: string, hashes: readonly string[], options?: { signal?: AbortSignal }): AsyncIterable<{ sha256: string; frame: Buffer }>;
  deleteSnapshot(id: string, options?: { signal?: AbortSignal }): Promise<void>;
}

export interface ChunkTiming {
  /** G: TCAB_BACKUP_CHUNK_GRACE. */
  graceMs: number;
  /** J: TCAB_BACKUP_JOB_TIMEOUT, the longest a writing or pruning job runs. */
  jobTimeoutMs: number;
}

export interface TargetOutcomeV2 {
  target: string;
  ok: boolean;
  /** The manifest's key. */
  key: string;
  chunks?: { total: number; distinct: number; new: number; reused: number; renewed: number; rewritten: number };
  /** Bytes of chunks written to this target by this snapshot (new, renewed and rewritten after the check). */
  uploadedBytes?: number;
  error?: string;
  /**
   * The renewal records on this target: those earlier runs left, checked when due, and the key of the one this
   * run wrote. A chunk lost there (`lost`) fails the job even when this snapshot was stored.
   */
  renewals?: RenewalOutcome & { recorded?: string };
}

export interface SnapshotResultV2 {
  /** The manifest as written to the first target that stored it (stored bytes and chunk list may differ per target). */
  manifest: ManifestV2;
  targets: TargetOutcomeV2[];
  totalMs: number;
}

/** Per target: the chunks to write and the stored sizes of the chunk list. */
interface Plan {
  target: Target;
  outcome: TargetOutcomeV2;
  held: Map<string, StoredChunk> | undefined;
  /** Chunks to write: sha256 -> renew (overwrite) or create-only. */
  write: Map<string, boolean>;
  /** sha256 -> stored bytes on this target. */
  stored: Map<string, number>;
  /**
   * Chunks to renew that were older than G - 2J when listed, with their listed stored size: recorded before
   * any of them is renewed, checked by a later run.
   */
  lateRenewals: Map<string, number>;
  /** When the listing of the chunks began: renewal records due by then are checked against it. */
  listedAt: number;
  /** Renewal records of earlier runs due at this run's listing. */
  due: DueRenewal[];
  renewals: RenewalOutcome & { recorded?: string };
  uploadedBytes: number;
  counts: { new: number; reused: number; renewed: number; rewritten: number };
}

function fail(plan: Plan, what: string, e: unknown): void {
  plan.outcome.error ??= `${what}: ${errorMessage(e)}`;
}

/** A counting semaphore: at most `n` holders; acquire waits (which is the backpressure on the agent's answer). */
function limiter(n: number): { acquire(): Promise<void>; release(): void; idle(): Promise<void> } {
  let free = n;
  const waiting: Array<() => void> = [];
  const idlers: Array<() => void> = [];
  return {
    acquire: () =>
      free > 0
        ? Promise.resolve(void free--)
        : new Promise<void>((resolve) => {
            waiting.push(resolve);
          }),
    release() {
      const next = waiting.shift();
      if (next) next();
      else if (++free === n) for (const done of idlers.splice(0)) done();
    },
    idle: () => (free === n ? Promise.resolve() : new Promise<void>((resolve) => idlers.push(resolve))),
  };
}

/**
 * Asks the agent for `hashes` in batches, checks each frame against its sha256 and length, and writes it to
 * every plan that wants it. A target's failure is recorded in its outcome; a source failure throws.
 */
async function transfer(
  agent: ChunkSource,
  id: string,
  database: string,
  hashes: string[],
  lengths: ReadonlyMap<string, number>,
  wants: (sha256: string) => Array<{ plan: Plan; renew: boolean }>,
  alive: () => boolean,
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<void> {
  const slots = limiter(UPLOADS_IN_FLIGHT);
  // One decompression context for every frame, the plain bytes hashed and dropped (chunk-codec.ts ChunkChecker).
  const checker = new ChunkChecker();
  try {
    batches: for (let at = 0; at < hashes.length; at += HASHES_PER_REQUEST) {
      const batch = hashes.slice(at, at + HASHES_PER_REQUEST);
      for await (const { sha256, frame } of resumingChunkData(agent, id, batch, log, signal)) {
        // Every target that wanted chunks has failed: stop reading (leaving the loop closes the agent's answer).
        if (!alive()) break batches;
        await checker.check(frame, { sha256, bytes: lengths.get(sha256)! }, `from the agent's snapshot ${id}`);
        const receivers = wants(sha256).filter((w) => !w.plan.outcome.error);
        for (const { plan, renew } of receivers) {
          await slots.acquire();
          if (plan.outcome.error) {
            slots.release();
            continue;
          }
          void putChunk(plan.target, database, sha256, frame, { renew, signal })
            .then(
              (r) => {
                plan.stored.set(sha256, r.bytes);
                plan.uploadedBytes += r.status === 'stored' ? r.bytes : 0;
              },
              (e: unknown) => {
                fail(plan, 'chunk upload failed', e);
                log.warn('snapshot.target_upload_failed', { target: plan.target.name, id, chunk: sha256, error: errorMessage(e) });
              },
            )
            .finally(() => slots.release());
        }
      }
    }
  } finally {
    // Also when the source failed: no upload outlives the job (each settles: stored, or failed and recorded).
    await slots.idle();
    await checker.close();
  }
}

/** Requests of one batch of chunks to the agent, the first and two that resume it after an answer broke off. */
export const CHUNK_DATA_REQUESTS = 3;

/**
 * The agent's chunk data for `hashes`, in its order. An answer that breaks off (a reset, a proxy timeout, the
 * agent restarting while the staged snapshot stays) is asked again for the chunks not yet received, after a
 * short wait, up to CHUNK_DATA_REQUESTS requests in all: the frames already received were checked and handed
 * on, so nothing is uploaded twice. A refusal (the agent's answer says the request itself is wrong) or a
 * damaged frame is not asked again.
 */
async function* resumingChunkData(
  agent: ChunkSource,
  id: string,
  hashes: string[],
  log: Logger,
  signal: AbortSignal | undefined,
): AsyncGenerator<{ sha256: string; frame: Buffer }, void, undefined> {
  let received = 0;
  for (let request = 1; ; request++) {
    try {
      for await (const chunk of agent.chunkData(id, received ? hashes.slice(received) : hashes, { signal })) {
        received++;
        yield chunk;
      }
      return;
    } catch (e) {
      const permanent = (e as { permanent?: unknown }).permanent === true;
      if (signal?.aborted || permanent || e instanceof IntegrityError || request >= CHUNK_DATA_REQUESTS) throw e;
      log.warn('snapshot.chunk_data_resumed', {
        id,
        received,
        of: hashes.length,
        request: request + 1,
        error: errorMessage(e),
        note: 'the answer broke off; asking the agent again for the chunks not received',
      });
      await sleep(250 * request, signal);
    }
  }
}

export async function runSnapshotV2(
  deps: { agent: ChunkSource; targets: Target[]; database: string; logger: Logger; timing: ChunkTiming },
  request: SnapshotRequest,
  checkDescription: (desc: SnapshotDescriptionV2) => Promise<void>,
): Promise<SnapshotResultV2> {
  const log = deps.logger;
  const { signal } = request;
  const started = Date.now();
  const { graceMs, jobTimeoutMs } = deps.timing;
  const desc = await deps.agent.createSnapshot({ format: 2, signal });
  log.info('snapshot.created', {
    id: desc.id,
    format: 2,
    database: desc.database.name,
    bytes: desc.snapshot.bytes,
    chunks: desc.chunks.count,
  });
  await checkDescription(desc);
  const key = manifestKey(deps.database, desc.id);
  const plans: Plan[] = deps.targets.map((target) => ({
    target,
    outcome: { target: target.name, ok: false, key },
    held: undefined,
    write: new Map(),
    stored: new Map(),
    lateRenewals: new Map(),
    listedAt: 0,
    due: [],
    renewals: emptyRenewalOutcome(),
    uploadedBytes: 0,
    counts: { new: 0, reused: 0, renewed: 0, rewritten: 0 },
  }));
  let manifest: ManifestV2 | undefined;
  try {
    // 1. What every target holds (in parallel), and the agent's list of the file's chunks.
    const listed = Promise.all(
      plans.map(async (plan) => {
        try {
          plan.listedAt = Date.now();
          plan.held = await listChunks(plan.target, deps.database, { signal });
        } catch (e) {
          fail(plan, 'listing its chunks failed', e);
          return;
        }
        // Renewal records of earlier runs due by this listing (docs/format-2.md, "Renewal records").
        try {
          const scan = await scanRenewals(plan.target, deps.database, plan.held, { listedAt: plan.listedAt, jobTimeoutMs, signal });
          plan.due = scan.due;
          plan.renewals.records = scan.records;
          plan.renewals.pending = scan.pending;
        } catch (e) {
          if (signal?.aborted) throw e;
          plan.renewals.error = errorMessage(e);
        }
      }),
    );
    // Awaited below, after the agent's chunk list; an abort meanwhile must not leave its rejection unobserved.
    listed.catch(() => undefined);
    // The list itself is small (a line per chunk: about 1.6 MB for a 1 GB database); the chunks are never held.
    const entries: Array<[string, number]> = [];
    const lengths = new Map<string, number>();
    let plainBytes = 0;
    for await (const e of deps.agent.chunkList(desc.id, { signal })) {
      entries.push([e.sha256, e.length]);
      lengths.set(e.sha256, e.length);
      plainBytes += e.length;
    }
    if (entries.length !== desc.chunks.count || plainBytes !== desc.snapshot.bytes) {
      throw new IntegrityError(
        `the agent's chunk list of ${desc.id} has ${entries.length} chunks of ${plainBytes} bytes, its description says ${desc.chunks.count} chunks of ${desc.snapshot.bytes} bytes`,
      );
    }
    await listed;

    // 2. Per target: new, renewed or reused.
    const now = Date.now();
    for (const plan of plans) {
      if (plan.outcome.error) continue;
      for (const sha256 of lengths.keys()) {
        const held = plan.held!.get(sha256);
        const age = held ? now - held.lastModified.getTime() : 0;
        if (!held) {
          plan.write.set(sha256, false);
          plan.counts.new++;
        } else if (age >= graceMs / 2) {
          plan.write.set(sha256, true);
          plan.counts.renewed++;
          if (age >= graceMs - 2 * jobTimeoutMs) plan.lateRenewals.set(sha256, held.bytes);
        } else {
          plan.stored.set(sha256, held.bytes);
          plan.counts.reused++;
        }
      }
      plan.held = undefined;
    }

    // Old chunks to renew near G: recorded before any of them is renewed, so that no manifest can rely on such a
    // renewal without its record, even one of a later run that reuses the renewed chunk after this job failed
    // half-way. A target whose record cannot be written gets no renewals and no manifest.
    await Promise.all(
      plans.map(async (plan) => {
        if (plan.outcome.error || plan.lateRenewals.size === 0) return;
        const chunks = [...plan.lateRenewals].map(([sha256, storedBytes]) => ({ sha256, plainBytes: lengths.get(sha256)!, storedBytes }));
        try {
          plan.renewals.recorded = await writeRenewalRecord(
            plan.target,
            { database: deps.database, snapshot: desc.id, writer: 'snapshot', jobTimeoutMs, chunks },
            { signal },
          );
        } catch (e) {
          if (signal?.aborted) throw e;
          fail(plan, 'recording its renewals failed', e);
          return;
        }
        log.info('snapshot.renewals_recorded', {
          target: plan.target.name,
          id: desc.id,
          key: plan.renewals.recorded,
          chunks: chunks.length,
        });
      }),
    );

    // 3. The union of what the targets need, in file order, from the agent once.
    const needed = [...lengths.keys()].filter((h) => plans.some((p) => !p.outcome.error && p.write.has(h)));
    const wants = (sha256: string) => plans.filter((p) => p.write.has(sha256)).map((plan) => ({ plan, renew: plan.write.get(sha256)! }));
    const alive = () => plans.some((p) => !p.outcome.error && p.write.size > 0);
    await transfer(deps.agent, desc.id, deps.database, needed, lengths, wants, alive, log, signal);

    // 4. Chunk list and manifest per target, then the check; missing chunks are written again from the agent.
    const base = {
      id: desc.id,
      createdAt: desc.createdAt,
      database: desc.database,
      integrity: desc.integrity,
      snapshot: desc.snapshot,
      timings: desc.timings,
      formatVersion: MANIFEST_V2_FORMAT_VERSION as typeof MANIFEST_V2_FORMAT_VERSION,
      databaseName: deps.database,
      trigger: request.trigger,
      tags: [...new Set([...(request.tags ?? []), ...(request.pin ? [PIN_TAG] : [])])],
      chunking: desc.chunking,
      encoding: { compression: 'zstd' as const, level: CHUNK_ZSTD_LEVEL },
    };
    const missingBy = new Map<Plan, Map<string, number>>();
    await Promise.all(
      plans.map(async (plan) => {
        if (plan.outcome.error) return;
        const writer = new ChunkListWriter();
        const lines = entries.map(([sha256, length]) => writer.line([sha256, length, plan.stored.get(sha256)!]));
        const list = writer.summary();
        const m: ManifestV2 = {
          ...base,
          storedAt: new Date().toISOString(),
          stored: { bytes: list.storedBytes },
          chunkList: { key: chunkListKey(deps.database, desc.id), bytes: list.bytes, sha256: list.sha256, count: list.count },
        };
        try {
          const { missing } = await commitRepeating(plan.target, m, lines, signal);
          manifest ??= m;
          if (missing.length) missingBy.set(plan, new Map(missing.map((x) => [x.sha256, x.bytes])));
          log.info('snapshot.chunks_committed', { target: plan.target.name, id: desc.id, missing: missing.length });
        } catch (e) {
          fail(plan, 'commit failed', e);
        }
      }),
    );
    await rewriteMissing(deps.agent, desc.id, deps.database, lengths, missingBy, log, signal);

    // 5. The due renewal records of earlier runs: a missing chunk this snapshot holds was uploaded in 3 as new
    // and found by the check in 4; what is left is named, and its record stays.
    await Promise.all(
      plans.map(async (plan) => {
        if (plan.outcome.error || plan.renewals.error || plan.due.length === 0) return;
        const restored = new Set<string>();
        for (const d of plan.due) for (const c of d.missing) if (lengths.has(c.sha256)) restored.add(c.sha256);
        plan.renewals.rewritten = restored.size;
        try {
          await settleRenewals(plan.target, deps.database, plan.due, restored, plan.renewals, signal);
        } catch (e) {
          if (signal?.aborted) throw e;
          plan.renewals.error = errorMessage(e);
        }
        log[plan.renewals.lost.length ? 'error' : 'info']('snapshot.renewals_checked', {
          target: plan.target.name,
          id: desc.id,
          records: plan.renewals.records,
          pending: plan.renewals.pending,
          settled: plan.renewals.settled,
          rewritten: plan.renewals.rewritten,
          lost: plan.renewals.lost.map((l) => l.key),
          ...(plan.renewals.error ? { error: plan.renewals.error } : {}),
        });
      }),
    );
  } catch (e) {
    // The source failed (agent gone, a bad frame): committed manifests stay only if their chunks are all there.
    await deps.agent.deleteSnapshot(desc.id).catch(() => undefined);
    if (e instanceof TcabError && e.code === 'SNAPSHOT_FAILED') throw e;
    throw new SnapshotSourceError(
      desc.id,
      plans.map((p) => p.outcome),
      e,
    );
  }

  await deps.agent.deleteSnapshot(desc.id).catch((e) => {
    log.warn('snapshot.staging_cleanup_failed', {
      id: desc.id,
      error: errorMessage(e),
      note: 'the agent removes staged files after its TTL',
    });
  });
  for (const plan of plans) {
    plan.outcome.chunks = { total: desc.chunks.count, distinct: plan.write.size + plan.counts.reused, ...plan.counts };
    plan.outcome.uploadedBytes = plan.uploadedBytes;
    plan.outcome.renewals = plan.renewals;
    if (!plan.outcome.error) plan.outcome.ok = true;
    log.info('snapshot.target_chunks', {
      id: desc.id,
      target: plan.target.name,
      ok: plan.outcome.ok,
      chunks: desc.chunks.count,
      new: plan.counts.new,
      reused: plan.counts.reused,
      renewed: plan.counts.renewed,
      rewritten: plan.counts.rewritten,
      uploadedBytes: plan.uploadedBytes,
      snapshotBytes: desc.snapshot.bytes,
    });
  }
  return { manifest: manifest!, targets: plans.map((p) => p.outcome), totalMs: Date.now() - started };

  /** Writes the chunks the check found missing again (from the agent), then checks those targets again. */
  async function rewriteMissing(
    agent: ChunkSource,
    id: string,
    database: string,
    lengths: ReadonlyMap<string, number>,
    missingBy: Map<Plan, Map<string, number>>,
    log: Logger,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    if (missingBy.size === 0) return;
    for (const [plan, missing] of missingBy) {
      plan.write = new Map([...missing.keys()].map((h) => [h, true]));
      plan.counts.rewritten += missing.size;
      log.warn('snapshot.chunks_missing_after_commit', { target: plan.target.name, id, chunks: missing.size });
    }
    const needed = [...new Set([...missingBy.values()].flatMap((m) => [...m.keys()]))];
    const wants = (sha256: string) => [...missingBy.keys()].filter((p) => p.write.has(sha256)).map((plan) => ({ plan, renew: true }));
    const alive = () => [...missingBy.keys()].some((p) => !p.outcome.error);
    await transfer(agent, id, database, needed, lengths, wants, alive, log, signal);
    await Promise.all(
      [...missingBy].map(async ([plan, missing]) => {
        if (plan.outcome.error) return;
        const named = new Map([...missing.keys()].map((h) => [h, plan.stored.get(h)!]));
        try {
          const still = await checkChunks(plan.target, database, named, { signal });
          if (still.length) {
            // A manifest naming chunks the target lacks is not a snapshot: take it back (the chunk list goes after it).
            const removed = await plan.target
              .delete(plan.outcome.key)
              .then(() => plan.target.delete(chunkListKey(database, id)))
              .then(
                () => 'its manifest was removed again',
                (e: unknown) => `removing its manifest failed too (${errorMessage(e)}): restore from another target`,
              );
            plan.outcome.error = `${still.length} chunk(s) still missing after writing them again (e.g. ${still[0]!.key}); ${removed}`;
          }
        } catch (e) {
          fail(plan, 'checking its chunks failed', e);
        }
      }),
    );
  }
}

/** Commits of one target tried at most this often when a transient failure is under the error. */
const COMMIT_ATTEMPTS = 3;

/**
 * commitSnapshotV2, repeated after a transient failure under it (a blip while the chunk list streamed, which
 * the retry wrapper cannot replay; its answer lost after the write): the lines are in memory and every write
 * of the commit may be made again, as replicate repeats a copy.
 */
async function commitRepeating(target: Target, m: ManifestV2, lines: string[], signal: AbortSignal | undefined) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await commitSnapshotV2(target, m, lines, { signal });
    } catch (e) {
      if (signal?.aborted || attempt >= COMMIT_ATTEMPTS || !transientWithin(e)) throw e;
      await sleep(50 * attempt, signal);
    }
  }
}

function transientWithin(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 6; e = (e as { cause?: unknown }).cause, depth++) if (isRetryable(e)) return true;
  return false;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener('abort', abort);
      resolve();
    }
    function abort() {
      clearTimeout(timer);
      reject(signal!.reason);
    }
    signal?.addEventListener('abort', abort, { once: true });
  });
}

/** The agent (the source) failed: no target has all of this snapshot's chunks from this run. */
export class SnapshotSourceError extends TcabError {
  readonly targets: TargetOutcomeV2[];
  constructor(id: string, targets: TargetOutcomeV2[], cause: unknown) {
    super(`Snapshot ${id}: reading the chunks from the agent failed: ${errorMessage(cause)}`, {
      code: 'SNAPSHOT_SOURCE_FAILED',
      hint: 'check the agent service on the VM (journalctl -u tcab-backup-agent) and the network path; a target counts this snapshot only if the job says it stored it there',
      cause,
    });
    this.name = 'SnapshotSourceError';
    this.targets = targets;
  }
}
