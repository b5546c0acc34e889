/**
 * Collecting format-2 chunks on one target (docs/format-2.md, "Collecting chunks (prune)"): a chunk is deleted
 * only when no manifest references it and it is older than the grace G.
 *   1. list the chunk folder (keys and last-modified times), *then*
 *   2. list the manifests and read every format-2 snapshot's chunk list: the referenced set,
 *   3. delete the chunks 2 does not reference whose time in 1 is older than G before that listing, and stop
 *      deleting once the sweep has run for J (what is left waits for the next prune).
 * The order of 1 and 2 is what the proof rests on: a manifest written after the chunk listing is read in 2,
 * so a chunk it reuses is kept. So does this: sweeps of one target and database never overlap (a marker under
 * `sweeps/<database>/`, sweep-marker.ts, written before 1 and removed once every delete has settled), and a
 * sweep sends at most one delete request per chunk (no retry: a delete not answered leaves the chunk for the
 * next prune), so a chunk a writer found absent and uploaded again is not deleted by a prune that listed the
 * old object. A referenced set that cannot be made whole (a manifest or chunk list that
 * cannot be read) stops the sweep before it deletes anything: a chunk is never deleted on a guess.
 *
 * The max-delete-share rail does not apply here: an unreferenced chunk older than G is garbage by construction
 * (no snapshot can restore from it, and no writer may reuse it), whatever its share of the folder.
 */
import { manifestChunkListKey } from '../../catalog/catalog.js';
import { listChunks } from '../../catalog/chunk-store.js';
import { manifestKey, parseSweepMarkerKey } from '../../catalog/layout.js';
import type { ManifestV2 } from '../../catalog/manifest-v2.js';
import { readTargetCatalog } from '../../catalog/target-catalog.js';
import { NotFoundError, ObjectHeldError, TcabError, errorMessage } from '../../errors.js';
import { isRetryable, sleep } from '../../targets/retry.js';
import { chunkKey, chunksPrefix, parseChunkKey } from '../../format/chunk-key.js';
import { readChunkList } from '../../format/chunk-list.js';
import { formatDuration } from '../../util/duration.js';
import { forEachLimit } from '../../util/pool.js';
import type { Target } from '../../targets/target.js';
import { claimSweep, removeMarker, type MarkerLeft } from './sweep-marker.js';

/** Chunk lists read, and chunks deleted, at once. */
const CONCURRENCY = 8;
/** The wait before claiming once more after stepping back for a marker written at the same time: random in this range. */
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 3000;

export interface ChunkSweepOptions {
  database: string;
  /** G: an unreferenced chunk is deleted only once it is older than this at the listing. */
  graceMs: number;
  /** J: the sweep stops deleting once it has run this long. */
  jobTimeoutMs: number;
  /** Count what would be deleted; delete nothing. */
  dryRun: boolean;
  /** Snapshots whose chunk lists do not count as references: those a dry run would remove. */
  ignore?: ReadonlySet<string>;
  /** The time of the chunk listing (the storage's clock is what counts; tests move it). */
  now: () => Date;
  /** Milliseconds since some origin, for the J limit (tests make it jump). */
  clock?: () => number;
  /**
   * How long to wait before claiming once more after stepping back for a marker written at about the same
   * time; a random 0.5 to 3 s when absent (tests choose).
   */
  retryDelayMs?: () => number;
  signal?: AbortSignal;
}

export interface ChunkSweepOutcome {
  /** Chunks the listing of step 1 found, and their stored bytes. */
  listed: number;
  listedBytes: number;
  /** Distinct chunks the manifests reference (those listed or not). */
  referenced: number;
  /** Format-2 snapshots whose chunk lists were read. */
  snapshots: number;
  /** Unreferenced chunks younger than G: kept (a job may be writing or about to reference them). */
  young: number;
  youngBytes: number;
  /** Deleted (with dryRun: would be deleted). */
  removed: number;
  removedBytes: number;
  /** Under an immutability lock or legal hold. */
  held: number;
  /**
   * Unreferenced and older than G, not deleted because the sweep had run for J, or because a delete was not
   * answered (`unanswered`, not repeated): the next prune takes them.
   */
  left: number;
  leftBytes: number;
  /** Deletes that failed for a reason that may pass (or whose answer was lost): sent once, never repeated; in `left`. */
  unanswered: number;
  /**
   * Set when the first claim stepped back for a marker written at about the same time (two prunes started
   * together) and the sweep claimed once more after this wait (ms); `skipped` tells how that second claim went.
   */
  retriedAfterMs?: number;
  /** Set when another prune's sweep marker, younger than 2 x the longer of the two prunes' J, was found: this target was not swept (nothing was listed). */
  skipped?: { marker: string; lastModified: string };
  /** Markers this sweep could not delete (its own, a stale one), each naming the key. */
  markerErrors: string[];
  /** Markers an immutability lock keeps (not failures), each naming the key. */
  markersHeld: string[];
  /** Set when the sweep stopped early (J reached): how long it had run. */
  stoppedAfterMs?: number;
  /** Set when the referenced set could not be made whole: nothing was deleted. */
  error?: string;
  /** Chunks whose delete failed, and the first few of them, each naming the key. */
  failed: number;
  failures: string[];
}

export function emptySweep(): ChunkSweepOutcome {
  return {
    listed: 0,
    listedBytes: 0,
    referenced: 0,
    snapshots: 0,
    young: 0,
    youngBytes: 0,
    removed: 0,
    removedBytes: 0,
    held: 0,
    left: 0,
    leftBytes: 0,
    unanswered: 0,
    markerErrors: [],
    markersHeld: [],
    failed: 0,
    failures: [],
  };
}

/**
 * Runs steps 1 to 3 on one target, between writing its sweep marker and deleting it (not on a dry run). Throws
 * (a TcabError naming the target and the object) when the marker cannot be written, or a listing, a manifest
 * or a chunk list cannot be read: then nothing was deleted. Another sweep's marker younger than 2J (the longer J): nothing is
 * listed or deleted, and `skipped` names it. Failed deletes are reported, not thrown.
 */
export async function sweepChunks(target: Target, options: ChunkSweepOptions): Promise<ChunkSweepOutcome> {
  const { database, signal } = options;
  const clock = options.clock ?? (() => performance.now());
  const started = clock();
  const out = emptySweep();
  if (options.dryRun) return sweep(target, options, out, started, clock);
  // No chunk at all (a format-1 target): nothing to delete, so no marker either.
  if (!(await anyChunk(target, database, signal))) return out;
  const claimOnce = () =>
    claimSweep(target, {
      database,
      jobTimeoutMs: options.jobTimeoutMs,
      startedAt: options.now(),
      ...(signal ? { signal } : {}),
    });
  let claim = await claimOnce();
  // Two prunes started together (a timer and a scheduled CLI) would each see the other's marker and step back
  // every time: one more claim after a random wait lets the first to wake sweep. A marker older than this
  // sweep's own belongs to a sweep under way: no retry. Nor when this sweep's own marker is still there.
  if (claim.status === 'busy' && claim.together && !claim.release) {
    const wait = Math.round(options.retryDelayMs?.() ?? RETRY_MIN_MS + Math.random() * (RETRY_MAX_MS - RETRY_MIN_MS));
    await sleep(wait, signal);
    out.retriedAfterMs = wait;
    claim = await claimOnce();
  }
  if (claim.status === 'busy') {
    out.skipped = { marker: claim.other.key, lastModified: claim.other.lastModified.toISOString() };
    if (claim.release) noteMarker(out, claim.release);
    return out;
  }
  for (const stale of claim.stale) {
    const left = await removeMarker(target, stale.key, signal, true);
    if (left) noteMarker(out, left);
  }
  try {
    await sweep(target, options, out, started, clock);
  } catch (e) {
    // Aborted, deletes may still be on their way: the marker stays (stale after 2J).
    if (signal?.aborted) throw e;
    const left = await removeMarker(target, claim.key, signal);
    if (left && !left.held) throw new TcabError(`${errorMessage(e)}; and ${left.message}`, { cause: e });
    throw e;
  }
  // Every delete has settled (each was sent once): another sweep may begin.
  const left = await removeMarker(target, claim.key, signal);
  if (left) noteMarker(out, left);
  return out;
}

/** Whether the chunk folder holds anything: the first item of a listing, no more. */
async function anyChunk(target: Target, database: string, signal: AbortSignal | undefined): Promise<boolean> {
  const prefix = chunksPrefix(database);
  try {
    for await (const info of target.list(prefix, signal ? { signal } : {})) if (parseChunkKey(info.key)?.database === database) return true;
    return false;
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new TcabError(
      `Listing the chunks of "${database}" (${prefix}) on target "${target.name}" (${target.url}) failed: ${errorMessage(e)}`,
      { hint: 'check that the target is reachable and the credentials may list; nothing was deleted', cause: e },
    );
  }
}

function noteMarker(out: ChunkSweepOutcome, left: MarkerLeft): void {
  (left.held ? out.markersHeld : out.markerErrors).push(left.message);
}

async function sweep(
  target: Target,
  options: ChunkSweepOptions,
  out: ChunkSweepOutcome,
  started: number,
  clock: () => number,
): Promise<ChunkSweepOutcome> {
  const { database, signal } = options;
  const where = `target "${target.name}" (${target.url})`;

  // 1. The chunks, with their ages, before anything else is read.
  const listedAt = options.now();
  const chunks = await listChunks(target, database, signal ? { signal } : {});
  out.listed = chunks.size;
  for (const c of chunks.values()) out.listedBytes += c.bytes;
  if (chunks.size === 0) return out;

  // 2. The manifests, listed after the chunks, and the chunk list of every format-2 one.
  const catalog = await readTargetCatalog(target, database, signal ? { signal } : {});
  const unreadable = catalog.snapshots.filter((s) => s.manifestError !== undefined);
  if (unreadable.length) {
    const s = unreadable[0]!;
    throw new TcabError(
      `Collecting the chunks of "${database}" on ${where} stopped before deleting any: the manifest ${manifestKey(database, s.id)} cannot be read (${s.manifestError}), so the chunks it references are unknown${unreadable.length > 1 ? ` (and ${unreadable.length - 1} more manifest(s))` : ''}`,
      {
        hint: 'repair the manifest (replicate rewrites it from another target) or remove the snapshot by hand; chunks are collected again on the next prune',
      },
    );
  }
  const v2 = catalog.snapshots
    .filter((s) => s.manifest?.formatVersion === 2 && !options.ignore?.has(s.id))
    .map((s) => s.manifest as ManifestV2);
  const referenced = new Set<string>();
  await forEachLimit(v2, CONCURRENCY, async (manifest) => {
    for await (const sha256 of chunkListHashes(target, manifest, where, signal)) referenced.add(sha256);
  });
  out.snapshots = v2.length;
  out.referenced = referenced.size;

  // 3. Unreferenced and older than G at the listing: deleted, until the sweep has run for J.
  const cutoff = listedAt.getTime() - options.graceMs;
  const garbage: Array<{ sha256: string; bytes: number }> = [];
  for (const [sha256, c] of chunks) {
    if (referenced.has(sha256)) continue;
    if (c.lastModified.getTime() >= cutoff) {
      out.young++;
      out.youngBytes += c.bytes;
    } else garbage.push({ sha256, bytes: c.bytes });
  }
  let stopped = false;
  await forEachLimit(garbage, CONCURRENCY, async ({ sha256, bytes }) => {
    if (stopped || clock() - started >= options.jobTimeoutMs) {
      if (!stopped) out.stoppedAfterMs = Math.round(clock() - started);
      stopped = true;
      out.left++;
      out.leftBytes += bytes;
      return;
    }
    if (signal?.aborted) throw signal.reason;
    const key = chunkKey(database, sha256);
    if (!options.dryRun) {
      try {
        // Once: a repeat after a lost answer could delete the chunk a writer uploaded again meanwhile.
        await target.delete(key, { once: true, ...(signal ? { signal } : {}) });
      } catch (e) {
        if (signal?.aborted) throw e;
        // Gone already (a sweep that stopped short, by hand): done all the same.
        if (!(e instanceof NotFoundError)) {
          if (e instanceof ObjectHeldError) out.held++;
          else if (isRetryable(e)) {
            // Maybe applied, maybe not: not asked again; the next prune finds it gone or deletes it.
            out.unanswered++;
            out.left++;
            out.leftBytes += bytes;
          } else {
            out.failed++;
            if (out.failures.length < 3) out.failures.push(`deleting chunk ${key} failed: ${errorMessage(e)}`);
          }
          return;
        }
      }
    }
    out.removed++;
    out.removedBytes += bytes;
  });
  return out;
}

/** The hashes of one snapshot's chunk list, read to the end and checked against its manifest. */
async function* chunkListHashes(
  target: Target,
  manifest: ManifestV2,
  where: string,
  signal: AbortSignal | undefined,
): AsyncGenerator<string> {
  const key = manifestChunkListKey(manifest);
  const stop = (why: string, cause?: unknown): never => {
    throw new TcabError(
      `Collecting the chunks of "${manifest.databaseName}" on ${where} stopped before deleting any: the chunk list ${key} of snapshot ${manifest.id} ${why}, so the chunks it references are unknown`,
      {
        hint: 'repair the snapshot (replicate copies it again from another target) or remove it by hand; chunks are collected again on the next prune',
        ...(cause ? { cause } : {}),
      },
    );
  };
  let body: AsyncIterable<unknown>;
  try {
    body = (await target.get(key, signal ? { signal } : {})).body;
  } catch (e) {
    if (signal?.aborted) throw e;
    if (e instanceof NotFoundError && !(await manifestStillThere(target, manifest, signal))) return; // removed meanwhile
    return stop(e instanceof NotFoundError ? 'is missing' : `cannot be read (${errorMessage(e)})`, e);
  }
  const hashes: string[] = [];
  try {
    for await (const ref of readChunkList(body, manifest, `${key} on ${where}`)) hashes.push(ref[0]);
  } catch (e) {
    if (signal?.aborted) throw e;
    return stop(`cannot be read (${errorMessage(e)})`, e);
  }
  yield* hashes;
}

/** Whether the manifest is still on the target: when it is gone, its snapshot was removed meanwhile. */
async function manifestStillThere(target: Target, manifest: ManifestV2, signal: AbortSignal | undefined): Promise<boolean> {
  try {
    await target.head(manifestKey(manifest.databaseName, manifest.id), signal ? { signal } : {});
    return true;
  } catch (e) {
    if (e instanceof NotFoundError) return false;
    throw e;
  }
}

/** One line for the log and the CLI: what the sweep did. */
export function describeSweep(s: ChunkSweepOutcome, dryRun: boolean): string {
  if (s.error) return `chunks: ${s.error}`;
  if (s.skipped && parseSweepMarkerKey(s.skipped.marker)?.unknown)
    return `chunks: not swept: the sweep marker ${s.skipped.marker} (written ${s.skipped.lastModified}) does not say its prune's TCAB_BACKUP_JOB_TIMEOUT in a form this version reads, so it never counts as stale: delete it by hand once no prune of another version is running; the next prune then sweeps`;
  if (s.skipped)
    return `chunks: not swept: another prune's sweep marker ${s.skipped.marker} (written ${s.skipped.lastModified}) is younger than 2 x TCAB_BACKUP_JOB_TIMEOUT (the longer of the two prunes')${s.retriedAfterMs !== undefined ? `, also when claimed once more ${formatDuration(s.retriedAfterMs)} later (the two prunes started together)` : ''}; the next prune sweeps`;
  const parts = [
    `${dryRun ? 'would remove' : 'removed'} ${s.removed} chunk(s) (${s.removedBytes} bytes)`,
    `${s.listed} listed, ${s.referenced} referenced by ${s.snapshots} format-2 snapshot(s), ${s.young} unreferenced but younger than the grace kept`,
  ];
  if (s.held) parts.push(`${s.held} held`);
  if (s.left) {
    const why = [
      ...(s.left > s.unanswered ? [`the sweep stopped after ${formatDuration(s.stoppedAfterMs ?? 0)} (TCAB_BACKUP_JOB_TIMEOUT)`] : []),
      ...(s.unanswered ? [`${s.unanswered} delete(s) not answered, not sent again`] : []),
    ];
    parts.push(`${s.left} (${s.leftBytes} bytes) left for the next prune: ${why.join('; ')}`);
  }
  if (s.failed) parts.push(`${s.failed} delete(s) failed`);
  if (s.unanswered)
    parts.push(
      `WARNING: ${s.unanswered} chunk delete(s) went unanswered (a timeout, a server error, throttling or a lost answer): check the target's reachability if this recurs`,
    );
  return `chunks: ${parts.join('; ')}`;
}
