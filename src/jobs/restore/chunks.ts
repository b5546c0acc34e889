/**
 * Reading a format-2 snapshot (docs/format-2.md, "Restoring"), for restore (written to a file) and the drill
 * (checked as it streams, or sent to the agent's application drill): read the chunk list and check it
 * against the manifest before fetching anything, then fetch the chunks in parallel while writing them in
 * order, each decompressed on its own (Node's zstd decompressor stops at the end of the first frame of a write)
 * and checked against its lengths and its frame's content checksum (and its sha256 when chunkSha256 is on, as
 * in the drill, or when the frame carries no checksum), and the whole file against the manifest's bytes and
 * sha256.
 *
 * Memory is bounded by construction, whatever the size of the database: at most IN_FLIGHT chunks are being
 * fetched or waiting to be used, each read into a buffer only up to the stored size its chunk-list line
 * gives (plus one byte, to tell a longer object), and decompressed to at most its plain length (at most the
 * chunking's maximum, 256 KiB): IN_FLIGHT x (256 KiB + a frame of at most about 256 KiB) = 16 MiB at most,
 * whatever the database's size. Nothing else is held but the chunk list's lines (about 140 bytes a chunk)
 * and, in restore, the writes under way (WRITE_BATCH_BYTES twice). The file is written with positional writes
 * and synced before the caller checks it with SQLite.
 *
 * A read that went wrong after the target answered (the body broke off, or the bytes failed a check: stored
 * length, decompression, plain length, sha256) is read again, up to READS_PER_CHUNK reads in all with a short
 * backoff, each re-read reported (logger and onReread) naming the chunk's key, its line and what failed: a
 * transfer damaged on the way heals, a chunk damaged at rest fails every read and stops the restore, naming
 * the chunk and saying how often it was read. A missing chunk (NotFound) is not read again, nor is a GET the
 * target refused for good (auth, a bad request); a GET that failed to start for a transient reason is the
 * target's retry layer's (src/targets/retry.ts, five retries with backoff) and is not multiplied here.
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { manifestChunkListKey } from '../../catalog/catalog.js';
import { ChunkBodyError, frameTooLong, readStoredChunk } from '../../catalog/chunk-store.js';
import { IntegrityError, NotFoundError, TcabError, errorMessage, isPermanent } from '../../errors.js';
import { decompressChunk } from '../../format/chunk-codec.js';
import { chunkKey } from '../../format/chunk-key.js';
import type { ManifestV2 } from '../../catalog/manifest-v2.js';
import { readChunkList, type ChunkRefV2 } from '../../format/chunk-list.js';
import { silentLogger, type Logger } from '../../log.js';
import { sleep } from '../../targets/retry.js';
import { syncFile, writeAllAt } from './destination.js';
import type { Target } from '../../targets/target.js';

/**
 * Chunks fetched at once. A cloud GET waits tens of milliseconds before its first byte, so with chunks of
 * 80 KB on average 8 in flight cap a restore near 8 x 80 KB / 40 ms = 16 MB/s; 32 hide that latency (and keep
 * the thread pool busy decompressing and hashing on a file target) for at most 16 MiB of memory (above).
 */
export const IN_FLIGHT = 32;

/** Reads of one chunk before a restore gives up on it: the first and two more. */
export const READS_PER_CHUNK = 3;
/** Wait before re-read n (1-based): 100 ms, then 400 ms. */
const rereadDelayMs = (n: number) => 100 * 4 ** (n - 1);

/** A chunk read again after a bad read. */
export interface ChunkReread {
  /** The chunk's key on the target. */
  key: string;
  /** Its line of the chunk list (1-based). */
  line: number;
  /** The read that failed (1-based) and the reads allowed in all. */
  read: number;
  of: number;
  /** What failed. */
  error: string;
  /** One sentence for a warning: the chunk, its line, the snapshot, the target and what failed. */
  message: string;
}

export interface ReadChunksOptions {
  signal?: AbortSignal;
  /** Where each re-read is logged as a warning ("chunk.reread"). */
  logger?: Logger;
  /** Called for each re-read, e.g. to put it among a drill record's warnings. */
  onReread?: (reread: ChunkReread) => void;
  /**
   * Check each chunk's plain sha256 against its line (default true). Restore sets false: a chunk whose frame
   * carries zstd's content checksum is then checked by its decompression, its length and the whole file's
   * sha256, which a wrong chunk fails too; should the whole file's sha256 differ, every chunk is read again
   * with its sha256 to name the one at fault. Measured in docs/benchmarks.md, "Restore of format 2".
   */
  chunkSha256?: boolean;
}

const DAMAGED_HINT = 'the stored copy is damaged; restore from another target (--target) and run "tcab-backup verify"';

/** A failed read of a chunk: what failed (without the snapshot), what to check, and whether to read it again. */
class ChunkReadFailure extends Error {
  constructor(
    readonly detail: string,
    readonly options: { hint: string; cause?: unknown; integrity: boolean; again: boolean },
  ) {
    super(detail, { cause: options.cause });
  }
}

const UNREADABLE_HINT = 'check that the target is reachable, then run the restore again';

/** One chunk of a format-2 snapshot, fetched and checked, in file order. */
export interface CheckedChunk {
  /** 0-based position in the chunk list. */
  index: number;
  /** Its content address on the target. */
  key: string;
  /** The stored zstd frame, exactly the chunk list's stored length. */
  stored: Buffer;
  /** Its plain bytes: the list's length, and its sha256 when that was checked (see chunkSha256). */
  plain: Buffer;
}

/**
 * Reads the chunk list of the snapshot `manifest` describes from `target` and checks it against the manifest
 * before a single chunk is fetched; then yields its chunks in file order, up to IN_FLIGHT fetched ahead, each
 * checked (stored length, decompression with zstd's checksum, plain length; sha256 as chunkSha256 says). After the last chunk, the whole file's
 * bytes and sha256 are checked against the manifest: a failure there is thrown by the last step of the
 * iteration, so a consumer acts on the file only once the iteration has ended. Errors name the snapshot, the
 * target, the object (the chunk's key and line) and what to do. Stopping the iteration early stops the fetches.
 */
export async function* readCheckedChunks(
  target: Target,
  manifest: ManifestV2,
  options: ReadChunksOptions = {},
): AsyncGenerator<CheckedChunk, { storedBytes: number; plainBytes: number }, undefined> {
  const log = options.logger ?? silentLogger;
  const snapshot = `Snapshot ${manifest.id} on target "${target.name}" (${target.url})`;
  const listKey = manifestChunkListKey(manifest);
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  // 1. The chunk list, read to the end and checked against the manifest before a single chunk is fetched.
  const refs: ChunkRefV2[] = [];
  try {
    const { body } = await target.get(listKey, { signal });
    for await (const ref of readChunkList(body, manifest, `${listKey} on target "${target.name}"`)) refs.push(ref);
  } catch (e) {
    if (options.signal?.aborted) throw e;
    if (e instanceof NotFoundError) {
      throw new TcabError(`${snapshot}: its chunk list ${listKey} is missing`, {
        hint: 'the snapshot is incomplete there (a prune or an interrupted copy); restore from another target (--target)',
        cause: e,
      });
    }
    if (e instanceof IntegrityError) {
      throw new IntegrityError(`${snapshot}: ${e.message}`, { hint: DAMAGED_HINT, cause: e });
    }
    throw new TcabError(`${snapshot}: reading its chunk list ${listKey} failed: ${errorMessage(e)}`, {
      hint: 'check that the target is reachable, then run the restore again',
      cause: e,
    });
  }

  // 2. The chunks: up to IN_FLIGHT fetched ahead, written strictly in order.
  /** One read of a chunk, checked; a ChunkReadFailure says whether reading it again may help. */
  const readOnce = async (index: number, where: string): Promise<{ stored: Buffer; plain: Buffer }> => {
    const ref = refs[index]!;
    let stored: Buffer;
    try {
      stored = await readStoredChunk(target, manifest.databaseName, ref, { signal });
    } catch (e) {
      if (signal.aborted) throw e;
      if (e instanceof NotFoundError) {
        throw new ChunkReadFailure(`chunk ${where} is missing`, {
          hint: 'the target lost a chunk this snapshot needs (a prune that did not see the manifest?); restore from another target (--target) and run "tcab-backup verify"',
          cause: e,
          integrity: false,
          again: false,
        });
      }
      // A GET that did not start was the target's retry layer's to repeat; a body that broke off is repeated here.
      const broke = e instanceof ChunkBodyError;
      const cause = broke ? e.cause : e;
      throw new ChunkReadFailure(`reading chunk ${where} failed: ${errorMessage(cause)}`, {
        hint: UNREADABLE_HINT,
        cause,
        integrity: false,
        again: broke && !isPermanent(cause),
      });
    }
    // Another size than the list's is fine (another zstd made the frame); longer than any frame of it is not.
    if (frameTooLong(stored, ref[1])) {
      throw new ChunkReadFailure(`chunk ${where} is longer than any zstd frame of a ${ref[1]}-byte chunk can be`, {
        hint: DAMAGED_HINT,
        integrity: true,
        again: true,
      });
    }
    try {
      const plain = await decompressChunk(
        stored,
        { sha256: ref[0], bytes: ref[1] },
        `${where}, of snapshot ${manifest.id} on target "${target.name}"`,
        { sha256: options.chunkSha256 !== false },
      );
      return { stored, plain };
    } catch (e) {
      throw new ChunkReadFailure(`chunk ${where} is damaged: ${errorMessage(e)}`, {
        hint: DAMAGED_HINT,
        cause: e,
        integrity: true,
        again: true,
      });
    }
  };

  const fetchChunk = async (index: number): Promise<{ stored: Buffer; plain: Buffer }> => {
    const key = chunkKey(manifest.databaseName, refs[index]![0]);
    const where = `${key}, line ${index + 1} of the chunk list`;
    for (let read = 1; ; read++) {
      try {
        return await readOnce(index, where);
      } catch (e) {
        if (signal.aborted || !(e instanceof ChunkReadFailure)) throw e;
        const { hint, cause, integrity, again } = e.options;
        const Kind = integrity ? IntegrityError : TcabError;
        if (!again) throw new Kind(`${snapshot}: ${e.detail}`, { hint, cause });
        if (read >= READS_PER_CHUNK) {
          throw new Kind(`${snapshot}: ${e.detail} (read ${READS_PER_CHUNK} times, every read failed)`, {
            hint: integrity
              ? 'the stored copy is damaged, not one transfer of it; restore from another target (--target) and run "tcab-backup verify"'
              : hint,
            cause,
          });
        }
        const delayMs = rereadDelayMs(read);
        const reread: ChunkReread = {
          key,
          line: index + 1,
          read,
          of: READS_PER_CHUNK,
          error: e.detail,
          message: `chunk ${key}, line ${index + 1} of the chunk list of snapshot ${manifest.id} on target "${target.name}": read ${read} of ${READS_PER_CHUNK} failed (${e.detail}); reading it again`,
        };
        // "object", not "key": the logger masks fields named like credentials.
        log.warn('chunk.reread', {
          target: target.name,
          snapshot: manifest.id,
          object: key,
          line: index + 1,
          read,
          of: READS_PER_CHUNK,
          delayMs,
          error: e.detail,
        });
        options.onReread?.(reread);
        await sleep(delayMs, signal);
      }
    }
  };

  const pending: Array<Promise<{ stored: Buffer; plain: Buffer }> | undefined> = new Array(refs.length);
  let started = 0;
  const startUpTo = (limit: number) => {
    for (; started < Math.min(limit, refs.length); started++) {
      const p = fetchChunk(started);
      // Handled where it is awaited; this keeps a failure of a chunk fetched ahead from going unhandled meanwhile.
      p.catch(() => undefined);
      pending[started] = p;
    }
  };
  const whole = createHash('sha256');
  let position = 0;
  let storedBytes = 0;
  try {
    for (let i = 0; i < refs.length; i++) {
      startUpTo(i + IN_FLIGHT);
      const { stored, plain } = await pending[i]!;
      pending[i] = undefined;
      whole.update(plain);
      position += plain.length;
      storedBytes += stored.length;
      yield { index: i, key: chunkKey(manifest.databaseName, refs[i]![0]), stored, plain };
    }
  } finally {
    // Also when the consumer stops early: nothing fetched ahead outlives the iteration.
    stop.abort();
    await Promise.allSettled(pending.filter(Boolean));
  }
  const sha256 = whole.digest('hex');
  if (position !== manifest.snapshot.bytes || sha256 !== manifest.snapshot.sha256) {
    const differs = `the chunks make a file of ${position} bytes with sha256 ${sha256}, the manifest says ${manifest.snapshot.bytes} bytes with ${manifest.snapshot.sha256}`;
    if (options.chunkSha256 === false) {
      // Name the chunk at fault: every chunk read again, each checked against its sha256 this time.
      log.warn('chunk.whole_file_differs', { target: target.name, snapshot: manifest.id, error: differs });
      const again = readCheckedChunks(target, manifest, { ...options, chunkSha256: true });
      // A chunk that fails its checks is thrown as such, naming it (the warning above keeps the whole file's
      // figures); a second pass that could not read every chunk says what it was looking for.
      try {
        for await (const _chunk of again) {
          // Only the checks matter here.
        }
      } catch (e) {
        if (options.signal?.aborted || e instanceof IntegrityError) throw e;
        throw new IntegrityError(`${snapshot}: ${differs}; reading every chunk again to name the one at fault failed: ${errorMessage(e)}`, {
          hint: DAMAGED_HINT,
          cause: e,
        });
      }
      throw new IntegrityError(`${snapshot}: ${differs}; read again, every chunk matched its sha256`, {
        hint: 'a read was damaged on the way in a way zstd did not see: run the restore again, or restore from another target (--target)',
      });
    }
    throw new IntegrityError(`${snapshot}: ${differs}`, { hint: DAMAGED_HINT });
  }
  return { storedBytes, plainBytes: position };
}

/** Plain bytes gathered into one positional write (writev), so that a write is not a system call per chunk. */
export const WRITE_BATCH_BYTES = 4 << 20;

/**
 * Writes the snapshot `manifest` describes from `target` into `file` (empty, just created, at `path`: a write
 * or flush it refuses is a DestinationError naming it). Resolves with the
 * bytes read from the target and written to the file once both the chunks and the whole file match.
 *
 * Chunks are gathered up to WRITE_BATCH_BYTES and written with one writev while the next batch is gathered:
 * at most two batches are held, and the fetches never wait for the disk unless it is slower than they are.
 */
export async function writeChunkedSnapshot(
  target: Target,
  manifest: ManifestV2,
  file: FileHandle,
  path: string,
  options: ReadChunksOptions & { onProgress?: (bytesRead: number, totalBytes: number) => void },
): Promise<{ storedBytes: number; plainBytes: number }> {
  let position = 0;
  let storedBytes = 0;
  let lastReport = 0;
  let batch: Buffer[] = [];
  let batchBytes = 0;
  let writing: Promise<void> = Promise.resolve();
  const flush = async () => {
    await writing;
    const buffers = batch;
    const at = position - batchBytes;
    const bytes = batchBytes;
    batch = [];
    batchBytes = 0;
    writing = writeAllAt(file, path, buffers, bytes, at);
    // Awaited before the next batch starts and at the end; this keeps a failure from going unhandled meanwhile.
    writing.catch(() => undefined);
  };
  const { onProgress, ...readOptions } = options;
  try {
    // The whole file's check is the iteration's last step: the loop ends only once it has passed.
    for await (const { plain, stored } of readCheckedChunks(target, manifest, readOptions)) {
      batch.push(plain);
      batchBytes += plain.length;
      position += plain.length;
      if (batchBytes >= WRITE_BATCH_BYTES) await flush();
      storedBytes += stored.length;
      const now = Date.now();
      if (onProgress && now - lastReport > 250) {
        lastReport = now;
        onProgress(storedBytes, manifest.stored.bytes);
      }
    }
    await flush();
  } finally {
    // Also on a failure: no write outlives the call (the caller closes and removes the file).
    await writing.catch(() => undefined);
  }
  await writing;
  onProgress?.(storedBytes, manifest.stored.bytes);
  await syncFile(file, path);
  return { storedBytes, plainBytes: position };
}
