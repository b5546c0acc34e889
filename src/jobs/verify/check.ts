/**
 * Re-reading one stored artifact and checking it against its manifest (size and sha256), so that silent
 * corruption on a target is found while another copy still exists. index.ts (the verify job) decides which
 * snapshots each run reads.
 *
 * Two ways a check does not pass, kept apart because they call for opposite actions: 'damaged' (the bytes,
 * or the manifest, were read and are wrong or gone: replicate copies a good one over it) and 'unreadable'
 * (the target did not deliver them: the copy may be intact, so it is neither replaced nor counted as good,
 * and the next run reads it again).
 */
import { manifestArtifactKey, manifestChunkListKey, readManifest } from '../../catalog/catalog.js';
import { frameTooLong, readStoredChunk } from '../../catalog/chunk-store.js';
import type { ManifestV2 } from '../../catalog/manifest-v2.js';
import { IntegrityError, NotFoundError, TargetError, TcabError, errorMessage } from '../../errors.js';
import { decompressChunk } from '../../format/chunk-codec.js';
import { chunkKey } from '../../format/chunk-key.js';
import { readChunkList, type ChunkRefV2 } from '../../format/chunk-list.js';
import type { Target } from '../../targets/target.js';
import { forEachLimit } from '../../util/pool.js';
import { hashStream } from '../../util/streams.js';
import type { Verdict } from '../../catalog/verify-record.js';

export interface VerifyOutcome {
  target: string;
  id: string;
  /** True when the verdict is 'ok'. */
  ok: boolean;
  verdict: Verdict;
  bytes?: number;
  error?: string;
  /** Format 2: the distinct chunks the snapshot names, and how many of them this check was the first to read. */
  chunks?: { distinct: number; read: number };
}

/** What one re-read of a stored chunk found. */
export interface ChunkVerdict {
  verdict: Verdict;
  /** The chunk's key and what is wrong with it (not for 'ok'). */
  error?: string;
}

/** Chunks of one snapshot re-read at once. */
export const CHUNKS_IN_FLIGHT = 8;

/**
 * The verdict on each chunk of one target re-read during one verify run: a chunk that several snapshots of the
 * run name is read once, and every one of them gets its verdict. Holds one small entry per distinct chunk.
 */
export class ChunkVerdicts {
  private readonly verdicts = new Map<string, Promise<ChunkVerdict>>();
  /** Chunk reads made, and their stored bytes. */
  reads = 0;
  bytes = 0;

  constructor(
    readonly target: Target,
    readonly database: string,
  ) {}

  /** The verdict on the chunk `ref` names, reading it unless this run already did; `first` when this call read it. */
  check(ref: ChunkRefV2, signal?: AbortSignal): { verdict: Promise<ChunkVerdict>; first: boolean } {
    const id = ref.join(' ');
    const known = this.verdicts.get(id);
    if (known) return { verdict: known, first: false };
    const verdict = this.read(ref, signal);
    this.verdicts.set(id, verdict);
    return { verdict, first: true };
  }

  private async read([sha256, plainBytes, storedBytes]: ChunkRefV2, signal?: AbortSignal): Promise<ChunkVerdict> {
    const key = chunkKey(this.database, sha256);
    const where = `target "${this.target.name}"`;
    let frame: Buffer;
    this.reads++;
    try {
      frame = await readStoredChunk(this.target, this.database, [sha256, plainBytes, storedBytes], signal ? { signal } : {});
    } catch (e) {
      if (signal?.aborted) throw e;
      if (e instanceof NotFoundError) return { verdict: 'damaged', error: `chunk ${key} is missing on ${where}` };
      return { verdict: 'unreadable', error: `reading chunk ${key} on ${where} failed: ${errorMessage(e)}` };
    }
    // Another size than the list's is fine (another zstd made the frame: readStoredChunk); its content is checked.
    if (frameTooLong(frame, plainBytes)) {
      this.bytes += frame.length - 1; // the bound: the one spare byte only told the object apart
      return { verdict: 'damaged', error: `chunk ${key} on ${where} is longer than any zstd frame of a ${plainBytes}-byte chunk can be` };
    }
    this.bytes += frame.length;
    try {
      await decompressChunk(frame, { sha256, bytes: plainBytes }, `${key} on ${where}`);
    } catch (e) {
      return { verdict: 'damaged', error: errorMessage(e) };
    }
    return { verdict: 'ok' };
  }
}

/**
 * A failure that says something about the stored copy (missing, invalid, pointing elsewhere) is damage;
 * anything else, a target error or a stream that broke off, only says the copy could not be read.
 */
function verdictOfFailure(e: unknown): Verdict {
  if (e instanceof NotFoundError) return 'damaged';
  return e instanceof TcabError && !(e instanceof TargetError) ? 'damaged' : 'unreadable';
}

/**
 * Checks one stored snapshot; returns the outcome instead of throwing so one bad copy does not hide others.
 * A format-2 snapshot takes its chunks' verdicts from `chunks` (one per target and run; a fresh one if none).
 */
export async function verifyStoredSnapshot(
  target: Target,
  database: string,
  id: string,
  signal?: AbortSignal,
  chunks: ChunkVerdicts = new ChunkVerdicts(target, database),
): Promise<VerifyOutcome> {
  const base = { target: target.name, id };
  let reading: { key: string; size: number } | undefined;
  try {
    const manifest = await readManifest(target, database, id, { signal });
    if (manifest.formatVersion === 2) return await verifyChunkedSnapshot(target, manifest, chunks, signal);
    const key = manifestArtifactKey(manifest);
    const { body, size } = await target.get(key, { signal });
    reading = { key, size };
    const got = await hashStream(body, signal);
    if (got.bytes < size) {
      // The target said how big the object is and sent less: the transfer broke, not the copy.
      return {
        ...base,
        ok: false,
        verdict: 'unreadable',
        bytes: got.bytes,
        error: `could not be read, so whether it matches is unknown: ${key} on target "${target.name}" is ${size} bytes but the answer ended after ${got.bytes}`,
      };
    }
    if (got.bytes !== manifest.artifact.bytes || got.sha256 !== manifest.artifact.sha256) {
      return {
        ...base,
        ok: false,
        verdict: 'damaged',
        bytes: got.bytes,
        error: `artifact is ${got.bytes} bytes with sha256 ${got.sha256}, the manifest says ${manifest.artifact.bytes} bytes with ${manifest.artifact.sha256}`,
      };
    }
    return { ...base, ok: true, verdict: 'ok', bytes: got.bytes };
  } catch (e) {
    if (signal?.aborted) throw e;
    const verdict = verdictOfFailure(e);
    if (verdict === 'damaged') return { ...base, ok: false, verdict, error: errorMessage(e) };
    // A stream that broke off says only "aborted" or "socket hang up": say what was being read, and where.
    const detail =
      reading && !(e instanceof TcabError)
        ? `reading ${reading.key} (${reading.size} bytes) from target "${target.name}" broke off: ${errorMessage(e).replace(/\.$/, '')}`
        : errorMessage(e);
    return { ...base, ok: false, verdict, error: `could not be read, so whether it matches is unknown: ${detail}` };
  }
}

/**
 * A format-2 snapshot: its chunk list, read to the end and checked against the manifest, then every distinct
 * chunk it names (stored length, decompression to its plain length, sha256), each through `chunks`, so a chunk
 * already read this run is not read again. A damaged or missing chunk makes the snapshot damaged, naming the
 * chunk's key; one that could not be read, unreadable. `bytes` is what this check read itself: the chunk list
 * and the chunks no earlier check of the run had read.
 */
async function verifyChunkedSnapshot(
  target: Target,
  manifest: ManifestV2,
  chunks: ChunkVerdicts,
  signal: AbortSignal | undefined,
): Promise<VerifyOutcome> {
  const base = { target: target.name, id: manifest.id };
  const listKey = manifestChunkListKey(manifest);
  const distinct = new Map<string, ChunkRefV2>();
  let listBytes = 0;
  try {
    const { body } = await target.get(listKey, { signal });
    for await (const ref of readChunkList(body, manifest, `${listKey} on target "${target.name}"`)) distinct.set(ref.join(' '), ref);
    listBytes = manifest.chunkList.bytes;
  } catch (e) {
    if (signal?.aborted) throw e;
    if (e instanceof NotFoundError) return { ...base, ok: false, verdict: 'damaged', error: `its chunk list ${listKey} is missing` };
    if (e instanceof IntegrityError) return { ...base, ok: false, verdict: 'damaged', error: errorMessage(e) };
    return {
      ...base,
      ok: false,
      verdict: 'unreadable',
      error: `could not be read, so whether it matches is unknown: reading its chunk list ${listKey} on target "${target.name}" failed: ${errorMessage(e)}`,
    };
  }
  const damaged: string[] = [];
  const unreadable: string[] = [];
  let read = 0;
  let readBytes = 0;
  await forEachLimit([...distinct.values()], CHUNKS_IN_FLIGHT, async (ref) => {
    const { verdict, first } = chunks.check(ref, signal);
    const found = await verdict;
    if (first) {
      read++;
      readBytes += ref[2];
    }
    if (found.verdict === 'damaged') damaged.push(found.error!);
    else if (found.verdict === 'unreadable') unreadable.push(found.error!);
  });
  const summary = { bytes: listBytes + readBytes, chunks: { distinct: distinct.size, read } };
  const some = (list: string[]) => `${list.slice(0, 3).join('; ')}${list.length > 3 ? `; and ${list.length - 3} more` : ''}`;
  if (damaged.length > 0) {
    return {
      ...base,
      ok: false,
      verdict: 'damaged',
      ...summary,
      error: `${damaged.length} of its ${distinct.size} chunks ${damaged.length === 1 ? 'is' : 'are'} damaged or missing (every snapshot that names ${damaged.length === 1 ? 'it' : 'them'} fails with it): ${some(damaged)}`,
    };
  }
  if (unreadable.length > 0) {
    return {
      ...base,
      ok: false,
      verdict: 'unreadable',
      ...summary,
      error: `could not be read, so whether it matches is unknown: ${unreadable.length} of its ${distinct.size} chunks could not be read: ${some(unreadable)}`,
    };
  }
  return { ...base, ok: true, verdict: 'ok', ...summary };
}
