/**
 * Copies one format-2 snapshot from one target to another (docs/format-2.md, "Writing"): the source's chunk
 * list, read to the end and checked against the manifest; each chunk the destination lacks (or holds older
 * than G/2, which is written again to renew it) read from the source, checked to decompress to its length and
 * sha256, and stored; then the chunk list and the manifest (with replicatedFrom); then the check that every
 * chunk is there, writing again any that went missing. A damaged source chunk is never copied: the copy fails
 * on the source's side, naming the chunk, and replicate tries the next source.
 *
 * What a destination holds is listed once per run (DestinationChunks), and a chunk that several snapshots of
 * the run share is copied once: a second copy that needs it waits for the first. Memory: CHUNKS_IN_FLIGHT
 * chunks per copy, each read only up to the stored size its chunk-list line gives (at most 256 KiB plain
 * once decompressed), plus the chunk list's lines (about 140 bytes a chunk).
 */
import { manifestChunkListKey } from '../../catalog/catalog.js';
import {
  checkChunks,
  commitSnapshotV2,
  listChunks,
  putChunk,
  frameTooLong,
  readStoredChunk,
  type CommitResult,
  type StoredChunk,
} from '../../catalog/chunk-store.js';
import { manifestKey } from '../../catalog/layout.js';
import { writeRenewalRecord } from '../../catalog/renewals.js';
import type { ManifestV2 } from '../../catalog/manifest-v2.js';
import { IntegrityError, NotFoundError, errorMessage } from '../../errors.js';
import { decompressChunk } from '../../format/chunk-codec.js';
import { chunkKey } from '../../format/chunk-key.js';
import { chunkListLine, readChunkList, type ChunkRefV2 } from '../../format/chunk-list.js';
import type { Target } from '../../targets/target.js';
import { isRetryable } from '../../targets/retry.js';
import { forEachLimit } from '../../util/pool.js';
import { loadChunkGrace } from '../settings.js';
import { CopyError, type CopyResult } from './copy.js';

/** Chunks of one copy read and written at once. */
export const CHUNKS_IN_FLIGHT = 8;

/**
 * The grace period G of docs/format-2.md when the caller names none: TCAB_BACKUP_CHUNK_GRACE's declared
 * default. A chunk the destination holds is reused while younger than G/2 and written again when older.
 */
export const DEFAULT_CHUNK_GRACE_MS = loadChunkGrace({}).graceMs;
/** J of docs/format-2.md when the caller names none: TCAB_BACKUP_JOB_TIMEOUT's declared default. */
export const DEFAULT_CHUNK_JOB_TIMEOUT_MS = loadChunkGrace({}).jobTimeoutMs;

/** One destination's chunks during one replicate run: listed once, and every chunk this run stored there. */
export class DestinationChunks {
  private listing: Promise<Map<string, StoredChunk>> | undefined;
  /** When the listing began (Date.now()): renewal records due by then are checked against it. */
  listedAt = 0;
  /** Chunks being stored right now, so a copy that needs the same chunk waits instead of copying it again. */
  readonly inFlight = new Map<string, Promise<void>>();
  /** Chunks this run stored (or renewed) there: fresh whatever the listing said. */
  readonly written = new Set<string>();

  constructor(
    readonly target: Target,
    readonly database: string,
    private readonly signal: AbortSignal | undefined,
  ) {}

  /** The listing of the destination's chunk folder, made on first use and kept for the run (a failure too). */
  held(): Promise<Map<string, StoredChunk>> {
    if (!this.listing) this.listedAt = Date.now();
    this.listing ??= listChunks(this.target, this.database, this.signal ? { signal: this.signal } : {});
    return this.listing;
  }
}

export interface CopyV2Result extends CopyResult {
  chunks: {
    /** Distinct chunks the snapshot names. */
    distinct: number;
    /** Stored by this copy because the destination lacked them (or had them at another size). */
    copied: number;
    /** Written again because the destination's copy was older than G/2 (or, for a repair, not trusted). */
    renewed: number;
    /** Already there: held and young enough, or stored earlier in this run. */
    reused: number;
  };
}

export interface CopyV2Options {
  graceMs: number;
  /** J: a renewed chunk older than G - 2J when listed is recorded for a later run's check. DEFAULT_CHUNK_JOB_TIMEOUT_MS when absent. */
  jobTimeoutMs?: number;
  signal?: AbortSignal;
  /** Called once every chunk has been read from the source and stored: the next copy may start reading. */
  onStreamed?: () => void;
  /**
   * The destination's copy of this snapshot failed verify: its chunks there are not trusted, so each is written
   * again from the source unless this run already stored it.
   */
  repair?: boolean;
  now?: () => number;
}

export async function copySnapshotV2(
  source: Target,
  destination: DestinationChunks,
  manifest: ManifestV2,
  options: CopyV2Options,
): Promise<CopyV2Result> {
  const started = Date.now();
  const now = options.now ?? Date.now;
  const signal = options.signal;
  const signalOption = signal ? { signal } : {};
  const database = manifest.databaseName;
  const to = destination.target;
  const what = `snapshot ${manifest.id} on target "${source.name}"`;
  const jobTimeoutMs = options.jobTimeoutMs ?? DEFAULT_CHUNK_JOB_TIMEOUT_MS;

  let held: Map<string, StoredChunk>;
  try {
    held = await destination.held();
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new CopyError('destination', `listing the chunks on target "${to.name}" failed: ${errorMessage(e)}`, { cause: e });
  }

  // 1. The source's chunk list, to the end and checked against its manifest before any chunk is copied.
  const listKey = manifestChunkListKey(manifest);
  const refs: ChunkRefV2[] = [];
  try {
    const { body } = await source.get(listKey, signalOption);
    for await (const ref of readChunkList(body, manifest, `${listKey} on target "${source.name}"`)) refs.push(ref);
  } catch (e) {
    if (signal?.aborted) throw e;
    if (e instanceof NotFoundError) {
      throw new CopyError('source', `the chunk list ${listKey} of ${what} is missing`, { cause: e, integrity: true });
    }
    if (e instanceof IntegrityError) throw new CopyError('source', errorMessage(e), { cause: e, integrity: true });
    throw new CopyError('source', `reading the chunk list ${listKey} of ${what} failed: ${errorMessage(e)}`, { cause: e, brokeOff: true });
  }
  const distinct = new Map<string, ChunkRefV2>();
  for (const ref of refs) if (!distinct.has(ref[0])) distinct.set(ref[0], ref);

  const counts = { distinct: distinct.size, copied: 0, renewed: 0, reused: 0 };
  let bytes = 0;

  // Old chunks this copy may renew that were older than G - 2J when listed: recorded before any is renewed
  // (docs/format-2.md, "Renewal records"), so that no manifest, this one or a later run's that reuses the renewed
  // chunk after this copy failed half-way, relies on such a renewal without its record.
  const late = [...distinct.values()].filter(
    ([sha256]) => !destination.written.has(sha256) && ageOf(held.get(sha256)) >= options.graceMs - 2 * jobTimeoutMs,
  );
  if (late.length) {
    try {
      await writeRenewalRecord(
        to,
        {
          database,
          snapshot: manifest.id,
          writer: 'replicate',
          jobTimeoutMs,
          chunks: late.map(([sha256, plainBytes, storedBytes]) => ({ sha256, plainBytes, storedBytes })),
        },
        signalOption,
      );
    } catch (e) {
      if (signal?.aborted) throw e;
      throw new CopyError('destination', errorMessage(e), { cause: e, brokeOff: transientWithin(e) });
    }
  }

  /** Reads one chunk from the source, checks it, and stores it on the destination. */
  const copyChunk = async (ref: ChunkRefV2, renew: boolean): Promise<void> => {
    const [sha256, plainBytes] = ref;
    const key = chunkKey(database, sha256);
    let frame: Buffer;
    try {
      frame = await readStoredChunk(source, database, ref, signalOption);
    } catch (e) {
      if (signal?.aborted) throw e;
      if (e instanceof NotFoundError) {
        throw new CopyError('source', `chunk ${key} of ${what} is missing there`, { cause: e, integrity: true });
      }
      throw new CopyError('source', `reading chunk ${key} of ${what} failed: ${errorMessage(e)}`, { cause: e, brokeOff: true });
    }
    // Another size than the list's is fine (another zstd made the frame: readStoredChunk); its content is checked.
    if (frameTooLong(frame, plainBytes)) {
      throw new CopyError(
        'source',
        `chunk ${key} of ${what} is longer than any zstd frame of a ${plainBytes}-byte chunk can be; it was not copied`,
        {
          integrity: true,
        },
      );
    }
    try {
      await decompressChunk(frame, { sha256, bytes: plainBytes }, `${key} of ${what}`);
    } catch (e) {
      throw new CopyError('source', `${errorMessage(e)}; it was not copied`, { cause: e, integrity: true });
    }
    try {
      await putChunk(to, database, sha256, frame, { renew, ...signalOption });
    } catch (e) {
      if (signal?.aborted) throw e;
      throw new CopyError('destination', errorMessage(e), { cause: e });
    }
    bytes += frame.length;
    destination.written.add(sha256);
    held.set(sha256, { bytes: frame.length, lastModified: new Date(now()) });
  };

  /** How long ago the listing says `chunk` was written (0 when the destination lacks it). */
  function ageOf(chunk: StoredChunk | undefined): number {
    return chunk ? now() - chunk.lastModified.getTime() : 0;
  }

  /** Makes sure the destination holds the chunk for this snapshot, copying it when it must. */
  const ensureChunk = async (ref: ChunkRefV2): Promise<void> => {
    const sha256 = ref[0];
    const pending = destination.inFlight.get(sha256);
    if (pending) {
      // Another copy of this run is storing it: its success is ours; its failure (another source) is not.
      const ok = await pending.then(
        () => true,
        () => false,
      );
      if (ok) {
        counts.reused++;
        return;
      }
    }
    if (destination.written.has(sha256)) {
      counts.reused++;
      return;
    }
    const found = held.get(sha256);
    const young = found !== undefined && now() - found.lastModified.getTime() < options.graceMs / 2;
    // At any size: the frame there may come from another zstd, with the same content (readStoredChunk).
    if (found && young && !options.repair) {
      counts.reused++;
      return;
    }
    const renew = found !== undefined;
    const copying = copyChunk(ref, renew);
    destination.inFlight.set(sha256, copying);
    try {
      await copying;
    } finally {
      if (destination.inFlight.get(sha256) === copying) destination.inFlight.delete(sha256);
    }
    if (renew) counts.renewed++;
    else counts.copied++;
  };

  // 2. The chunks. After the first failure no other chunk starts; those under way finish, then it is thrown.
  let failure: { error: unknown } | undefined;
  await forEachLimit([...distinct.values()], CHUNKS_IN_FLIGHT, async (ref) => {
    if (failure) return;
    try {
      await ensureChunk(ref);
    } catch (e) {
      failure ??= { error: e };
    }
  });
  if (failure) throw failure.error;
  options.onStreamed?.();

  // 3. Chunk list, manifest, and the check that every chunk is there.
  const stored: ManifestV2 = { ...manifest, storedAt: new Date().toISOString(), replicatedFrom: source.name };
  let missing: CommitResult['missing'];
  try {
    ({ missing } = await commitSnapshotV2(
      to,
      stored,
      refs.map((r) => chunkListLine(r)),
      signalOption,
    ));
  } catch (e) {
    if (signal?.aborted) throw e;
    // commitSnapshotV2 wraps the target's error: a transient one under it (a blip while the chunk list streamed,
    // its answer lost) makes the whole copy worth repeating, as a broken artifact stream does in format 1.
    throw new CopyError('destination', errorMessage(e), { cause: e, brokeOff: transientWithin(e) });
  }
  if (missing.length > 0) await rewriteMissing(missing);
  return { bytes, ms: Date.now() - started, chunks: counts };

  /** Chunks gone since they were stored or listed (a prune at the same time?): write them again, check again. */
  async function rewriteMissing(gone: CommitResult['missing']): Promise<void> {
    let problem: string;
    let cause: unknown;
    try {
      for (const m of gone) {
        destination.written.delete(m.sha256);
        await copyChunk(distinct.get(m.sha256)!, true);
        counts.renewed++;
      }
      const named = new Map([...distinct.values()].map((r) => [r[0], r[2]]));
      const still = await checkChunks(to, database, named, signalOption);
      if (still.length === 0) return;
      problem = `chunks ${still
        .slice(0, 3)
        .map((m) => m.key)
        .join(
          ', ',
        )}${still.length > 3 ? ` and ${still.length - 3} more` : ''} went missing after the manifest was written, and again after they were written again`;
    } catch (e) {
      if (signal?.aborted) throw e;
      cause = e;
      problem = `chunks ${gone
        .slice(0, 3)
        .map((m) => m.key)
        .join(', ')} went missing after the manifest was written, and writing them again failed: ${errorMessage(e)}`;
    }
    let withdrawn = 'its manifest was withdrawn';
    try {
      await to.delete(manifestKey(database, manifest.id), signalOption);
    } catch (e) {
      withdrawn = `withdrawing its manifest failed too (${errorMessage(e)}); the next replicate run repairs it`;
    }
    throw new CopyError(
      cause instanceof CopyError ? cause.side : 'destination',
      `copy of snapshot ${manifest.id} to target "${to.name}" is not valid: ${problem} (a prune ran at the same time?); ${withdrawn}`,
      { cause, integrity: cause instanceof CopyError && cause.integrity },
    );
  }
}

/** Whether `err` or one of its causes is a failure a retry may cure. */
function transientWithin(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 6; e = (e as { cause?: unknown }).cause, depth++) if (isRetryable(e)) return true;
  return false;
}
