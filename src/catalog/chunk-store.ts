/**
 * The writer's side of format 2 on one target (docs/format-2.md, "Writing"): what chunks the target holds,
 * storing a chunk, and committing a snapshot (chunk list, then manifest, then the check that every chunk it
 * names is there). The snapshot and replicate jobs drive these; the reasoning about concurrent prunes (when to
 * renew a chunk, when to check again) is theirs, following the doc.
 *
 * Here in src/catalog rather than src/format: it writes catalog objects at the catalog's keys (layout.ts), and
 * the catalog already reads format-2 manifests, so src/format stays the pure encodings below both.
 */
import { createHash } from 'node:crypto';
import { PreconditionFailedError, TcabError, errorMessage } from '../errors.js';
import { chunkKey, chunksPrefix, parseChunkKey } from '../format/chunk-key.js';
import { chunkListBody } from '../format/chunk-list.js';
import { zstdFrameBound } from '../format/params.js';
import type { ManifestV2 } from './manifest-v2.js';
import type { Target } from '../targets/target.js';
import { manifestChunkListKey, writeManifest } from './catalog.js';

export interface StoredChunk {
  /** Stored (compressed) size. */
  bytes: number;
  lastModified: Date;
}

/**
 * Every chunk of `database` on the target, by sha256: one complete listing of chunks/<database>/ (a failed page
 * throws, never a partial answer). Objects there that are not chunk keys (a file target's temporary files)
 * are left out.
 */
export async function listChunks(
  target: Target,
  database: string,
  options: { signal?: AbortSignal } = {},
): Promise<Map<string, StoredChunk>> {
  const out = new Map<string, StoredChunk>();
  const prefix = chunksPrefix(database);
  try {
    for await (const info of target.list(prefix, options)) {
      const parsed = parseChunkKey(info.key);
      if (parsed && parsed.database === database) out.set(parsed.sha256, { bytes: info.size, lastModified: info.lastModified });
    }
  } catch (e) {
    if (options.signal?.aborted) throw e;
    throw new TcabError(
      `Listing the chunks of "${database}" (${prefix}) on target "${target.name}" (${target.url}) failed: ${errorMessage(e)}`,
      {
        hint: 'check that the target is reachable and the credentials may list; nothing was written',
        cause: e,
      },
    );
  }
  return out;
}

/**
 * Stores one chunk's frame (chunk-codec.ts) at its content address. Without `renew` the write is create-only
 * (If-None-Match: *): when the key exists, another job stored the same bytes, which counts as stored
 * ('exists'). With `renew` it overwrites, which gives an old chunk a new last-modified time (docs/format-2.md:
 * a chunk older than G/2 is written again rather than reused).
 */
export async function putChunk(
  target: Target,
  database: string,
  sha256: string,
  frame: Buffer,
  options: { renew?: boolean; signal?: AbortSignal } = {},
): Promise<{ key: string; status: 'stored' | 'exists'; bytes: number }> {
  const key = chunkKey(database, sha256);
  try {
    await target.put(key, frame, {
      contentLength: frame.length,
      contentType: 'application/zstd',
      ...(options.renew ? {} : { ifNoneMatch: '*' as const }),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return { key, status: 'stored', bytes: frame.length };
  } catch (e) {
    if (e instanceof PreconditionFailedError && !options.renew) return { key, status: 'exists', bytes: frame.length };
    if (options.signal?.aborted) throw e;
    throw new TcabError(
      `Storing chunk ${key} (${frame.length} bytes) on target "${target.name}" (${target.url}) failed: ${errorMessage(e)}`,
      {
        hint: 'check that the target is reachable, writable and has room; the snapshot is not stored there until every chunk is',
        cause: e,
      },
    );
  }
}

export interface CommitResult {
  /** Distinct chunks the chunk list names. */
  chunks: number;
  /**
   * Chunks named by the list that the check after the manifest did not find (at any size): the caller
   * writes them again (putChunk with renew) and checks again (checkChunks) before counting the snapshot stored.
   */
  missing: Array<{ sha256: string; key: string; bytes: number }>;
}

/**
 * Commits a format-2 snapshot on one target whose chunks have been stored: writes the chunk list (streamed
 * from `chunkListLines`, ChunkListWriter's lines, and checked on the way against the manifest's chunkList
 * bytes, sha256 and count before the manifest is written), then the manifest (the commit marker), then lists
 * the chunk folder once and reports every chunk the list names that is not there.
 */
export async function commitSnapshotV2(
  target: Target,
  manifest: ManifestV2,
  chunkListLines: Iterable<string> | AsyncIterable<string>,
  options: { signal?: AbortSignal } = {},
): Promise<CommitResult> {
  const signal = options.signal ? { signal: options.signal } : {};
  const key = manifestChunkListKey(manifest);
  const where = `snapshot ${manifest.id} on target "${target.name}" (${target.url})`;
  const named = new Map<string, number>();
  const hash = createHash('sha256');
  let bytes = 0;
  let count = 0;
  const bad: string[] = [];
  async function* checked(): AsyncGenerator<string> {
    for await (const line of chunkListLines) {
      hash.update(line, 'latin1');
      bytes += line.length;
      count++;
      const [sha256, , stored] = line.trimEnd().split(' ');
      if (!sha256 || !/^[0-9a-f]{64}$/.test(sha256) || !stored) bad.push(`line ${count}`);
      else named.set(sha256, Number(stored));
      yield line;
    }
  }
  try {
    await target.put(key, chunkListBody(checked()), {
      ...signal,
      contentLength: manifest.chunkList.bytes,
      contentType: 'text/plain',
      sha256: manifest.chunkList.sha256,
    });
  } catch (e) {
    if (options.signal?.aborted) throw e;
    throw new TcabError(`Writing the chunk list ${key} of ${where} failed: ${errorMessage(e)}`, {
      hint: 'check that the target is reachable and writable; no manifest was written, so the snapshot does not exist there',
      cause: e,
    });
  }
  const sha256 = hash.digest('hex');
  if (bad.length || count !== manifest.chunkList.count || bytes !== manifest.chunkList.bytes || sha256 !== manifest.chunkList.sha256) {
    throw new TcabError(
      `The chunk list written for ${where} is not the manifest's: ${count} lines, ${bytes} bytes, sha256 ${sha256}${bad.length ? `, malformed ${bad.slice(0, 3).join(', ')}` : ''}; the manifest says ${manifest.chunkList.count} lines, ${manifest.chunkList.bytes} bytes, ${manifest.chunkList.sha256}`,
      {
        hint: 'a bug in the writer (the lines and the manifest were made from different chunks); no manifest was written, and the next prune removes the list',
      },
    );
  }
  try {
    await writeManifest(target, manifest, signal);
  } catch (e) {
    if (options.signal?.aborted) throw e;
    throw new TcabError(`Writing the manifest of ${where} failed: ${errorMessage(e)}`, {
      hint: 'check that the target is reachable and writable; without its manifest the snapshot does not exist there (its chunk list is an orphan the next prune removes)',
      cause: e,
    });
  }
  try {
    return { chunks: named.size, missing: await checkChunks(target, manifest.databaseName, named, options) };
  } catch (e) {
    if (options.signal?.aborted) throw e;
    throw new TcabError(
      `The manifest of ${where} was written, but the check that every chunk it names is there failed: ${errorMessage(e)}`,
      {
        hint: `run "tcab-backup verify --all --target ${target.name}": it shows whether the snapshot there is whole`,
        cause: e,
      },
    );
  }
}

/**
 * The chunks of `named` (sha256 -> stored bytes as listed) that one listing of the target does not show, at
 * any size (readStoredChunk says why a size may differ).
 * What commitSnapshotV2 does after the manifest, and what a caller repeats after writing missing ones again.
 */
export async function checkChunks(
  target: Target,
  database: string,
  named: ReadonlyMap<string, number>,
  options: { signal?: AbortSignal } = {},
): Promise<CommitResult['missing']> {
  const held = await listChunks(target, database, options);
  const missing: CommitResult['missing'] = [];
  for (const [sha256, bytes] of named) {
    const found = held.get(sha256);
    // Any size: another writer's zstd may have made the frame the key holds (readStoredChunk).
    if (!found) missing.push({ sha256, key: chunkKey(database, sha256), bytes });
  }
  return missing;
}

/**
 * The body of a chunk's GET broke off after the target answered: the object is there and was readable, so
 * reading it again may well succeed (restore does, src/jobs/restore/chunks.ts). The message is the cause's.
 */
export class ChunkBodyError extends Error {
  constructor(override readonly cause: unknown) {
    super(errorMessage(cause));
    this.name = 'ChunkBodyError';
  }
}

/**
 * Reads one stored chunk into a buffer. `listed` is its chunk-list line (`[sha256, plain bytes, stored bytes]`).
 *
 * The frame a key holds need not be the size the line gives: zstd's output is not the same from version to
 * version, so a chunk renewed, or stored first, by a writer with another zstd holds a frame of another size with
 * the same content. Its content is what is checked (decompressChunk: zstd's checksum, the plain length, the
 * sha256), not its size. The read is bounded all the same: first by the listed size plus one byte (the usual
 * case, one read), and when the object is longer, read again up to zstd's bound for a chunk of that plain
 * length (zstdFrameBound). An object longer than that bound cannot be a frame of the chunk: then a buffer of
 * bound + 1 bytes comes back, and the caller reports it (frameTooLong). Memory stays bounded whatever the
 * object holds.
 *
 * Target errors of the GET, NotFoundError included, are passed on as they are, so the caller can tell a
 * missing chunk from one that could not be read; a body that breaks off afterwards is a ChunkBodyError
 * (unless `signal` aborted it).
 */
export async function readStoredChunk(
  target: Target,
  database: string,
  listed: readonly [sha256: string, plainBytes: number, storedBytes: number],
  options: { signal?: AbortSignal } = {},
): Promise<Buffer> {
  const [sha256, plainBytes, storedBytes] = listed;
  const bound = zstdFrameBound(plainBytes);
  const first = await readUpTo(target, chunkKey(database, sha256), Math.min(storedBytes, bound), options);
  if (first.length <= storedBytes || storedBytes >= bound) return first;
  return readUpTo(target, chunkKey(database, sha256), bound, options);
}

/** Whether a frame read by readStoredChunk is longer than any frame of a chunk of `plainBytes` can be. */
export function frameTooLong(frame: Buffer, plainBytes: number): boolean {
  return frame.length > zstdFrameBound(plainBytes);
}

/** The object at `key`, or its first `maxBytes` + 1 bytes when it is longer (one spare byte tells it apart). */
async function readUpTo(target: Target, key: string, maxBytes: number, options: { signal?: AbortSignal }): Promise<Buffer> {
  // A backend that reads a small object whole (a folder) does it without a stream; its failures are the
  // target's (and its retry wrapper's), like a get that did not start.
  if (target.readSmall) return target.readSmall(key, maxBytes, { signal: options.signal });
  const { body } = await target.get(key, { signal: options.signal });
  const parts: Buffer[] = [];
  let length = 0;
  try {
    for await (const data of body) {
      const buf = data as Buffer;
      length += buf.length;
      if (length > maxBytes) break;
      parts.push(buf);
    }
  } catch (e) {
    if (options.signal?.aborted) throw e;
    throw new ChunkBodyError(e);
  } finally {
    body.destroy();
  }
  if (length > maxBytes) return Buffer.alloc(maxBytes + 1);
  // A file target reads a chunk in one piece: no copy then.
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, length);
}
