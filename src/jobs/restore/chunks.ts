/**
 * Reading a format-2 snapshot (docs/format-2.md, "Restoring"), for restore (written to a file) and the drill
 * (checked as it streams, or sent to the agent's application drill): read the chunk list and check it
 * against the manifest before fetching anything, then fetch the chunks in parallel while writing them in
 * order, each decompressed on its own (Node's zstd decompressor stops at the end of the first frame of a write)
 * and checked against its length and sha256, and the whole file against the manifest's bytes and sha256.
 *
 * Memory is bounded by construction, whatever the size of the database: at most IN_FLIGHT chunks are being
 * fetched or waiting to be used, each read into a buffer only up to the stored size its chunk-list line
 * gives (plus one byte, to tell a longer object), and decompressed to at most its plain length (at most the
 * chunking's maximum, 256 KiB); nothing else is held but the chunk list's lines (about 140 bytes a chunk).
 * The file is written with positional writes and synced before the caller checks it with SQLite.
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { manifestChunkListKey } from '../../catalog/catalog.js';
import { readStoredChunk } from '../../catalog/chunk-store.js';
import { IntegrityError, NotFoundError, TcabError, errorMessage } from '../../errors.js';
import { decompressChunk } from '../../format/chunk-codec.js';
import { chunkKey } from '../../format/chunk-key.js';
import type { ManifestV2 } from '../../catalog/manifest-v2.js';
import { readChunkList, type ChunkRefV2 } from '../../format/chunk-list.js';
import type { Target } from '../../targets/target.js';

/** Chunks fetched at once: enough to hide a request's latency, few enough that memory stays a few MB. */
export const IN_FLIGHT = 8;

const DAMAGED_HINT = 'the stored copy is damaged; restore from another target (--target) and run "tcab-backup verify"';

/** One chunk of a format-2 snapshot, fetched and checked, in file order. */
export interface CheckedChunk {
  /** 0-based position in the chunk list. */
  index: number;
  /** Its content address on the target. */
  key: string;
  /** The stored zstd frame, exactly the chunk list's stored length. */
  stored: Buffer;
  /** Its plain bytes: the list's length and sha256. */
  plain: Buffer;
}

/**
 * Reads the chunk list of the snapshot `manifest` describes from `target` and checks it against the manifest
 * before a single chunk is fetched; then yields its chunks in file order, up to IN_FLIGHT fetched ahead, each
 * checked (stored length, decompression, plain length and sha256). After the last chunk, the whole file's
 * bytes and sha256 are checked against the manifest: a failure there is thrown by the last step of the
 * iteration, so a consumer acts on the file only once the iteration has ended. Errors name the snapshot, the
 * target, the object (the chunk's key and line) and what to do. Stopping the iteration early stops the fetches.
 */
export async function* readCheckedChunks(
  target: Target,
  manifest: ManifestV2,
  options: { signal?: AbortSignal } = {},
): AsyncGenerator<CheckedChunk, { storedBytes: number; plainBytes: number }, undefined> {
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
  const fetchChunk = async (index: number): Promise<{ stored: Buffer; plain: Buffer }> => {
    const ref = refs[index]!;
    const key = chunkKey(manifest.databaseName, ref[0]);
    const where = `${key}, line ${index + 1} of the chunk list`;
    let stored: Buffer;
    try {
      stored = await readStoredChunk(target, manifest.databaseName, ref[0], ref[2], { signal });
    } catch (e) {
      if (signal.aborted) throw e;
      if (e instanceof NotFoundError) {
        throw new TcabError(`${snapshot}: chunk ${where} is missing`, {
          hint: 'the target lost a chunk this snapshot needs (a prune that did not see the manifest?); restore from another target (--target) and run "tcab-backup verify"',
          cause: e,
        });
      }
      throw new TcabError(`${snapshot}: reading chunk ${where} failed: ${errorMessage(e)}`, {
        hint: 'check that the target is reachable, then run the restore again',
        cause: e,
      });
    }
    if (stored.length !== ref[2]) {
      throw new IntegrityError(
        `${snapshot}: chunk ${where} is ${stored.length > ref[2] ? 'longer than' : `${stored.length} bytes, not`} the ${ref[2]} bytes the chunk list gives`,
        { hint: DAMAGED_HINT },
      );
    }
    try {
      const plain = await decompressChunk(
        stored,
        { sha256: ref[0], bytes: ref[1] },
        `${where}, of snapshot ${manifest.id} on target "${target.name}"`,
      );
      return { stored, plain };
    } catch (e) {
      throw new IntegrityError(`${snapshot}: chunk ${where} is damaged: ${errorMessage(e)}`, { hint: DAMAGED_HINT, cause: e });
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
      storedBytes += refs[i]![2];
      yield { index: i, key: chunkKey(manifest.databaseName, refs[i]![0]), stored, plain };
    }
  } finally {
    // Also when the consumer stops early: nothing fetched ahead outlives the iteration.
    stop.abort();
    await Promise.allSettled(pending.filter(Boolean));
  }
  const sha256 = whole.digest('hex');
  if (position !== manifest.snapshot.bytes || sha256 !== manifest.snapshot.sha256) {
    throw new IntegrityError(
      `${snapshot}: the chunks make a file of ${position} bytes with sha256 ${sha256}, the manifest says ${manifest.snapshot.bytes} bytes with ${manifest.snapshot.sha256}`,
      { hint: DAMAGED_HINT },
    );
  }
  return { storedBytes, plainBytes: position };
}

/**
 * Writes the snapshot `manifest` describes from `target` into `file` (empty, just created). Resolves with the
 * bytes read from the target and written to the file once both the chunks and the whole file match.
 */
export async function writeChunkedSnapshot(
  target: Target,
  manifest: ManifestV2,
  file: FileHandle,
  options: { signal?: AbortSignal; onProgress?: (bytesRead: number, totalBytes: number) => void },
): Promise<{ storedBytes: number; plainBytes: number }> {
  let position = 0;
  let storedBytes = 0;
  let lastReport = 0;
  // The whole file's check is the iteration's last step: the loop ends only once it has passed.
  for await (const { plain, stored } of readCheckedChunks(target, manifest, options.signal ? { signal: options.signal } : {})) {
    for (let at = 0; at < plain.length; ) {
      const { bytesWritten } = await file.write(plain, at, plain.length - at, position);
      at += bytesWritten;
      position += bytesWritten;
    }
    storedBytes += stored.length;
    const now = Date.now();
    if (options.onProgress && now - lastReport > 250) {
      lastReport = now;
      options.onProgress(storedBytes, manifest.stored.bytes);
    }
  }
  options.onProgress?.(storedBytes, manifest.stored.bytes);
  await file.sync();
  return { storedBytes, plainBytes: position };
}
