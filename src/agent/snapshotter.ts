/**
 * Makes one snapshot at a time: VACUUM INTO a work file (in a worker thread), integrity_check and row counts of
 * the result, then one pass over the plain file while the check runs:
 *   - format 1: the pass hashes the file, compresses it, hashes the compressed bytes and writes the artifact
 *     (read -> sha256 -> compressor -> sha256 -> file), and finally the plain file is removed;
 *   - format 2: the pass hashes the file and cuts it into chunks (src/format/chunker.ts, FORMAT2_CHUNKING),
 *     writing the chunk list `<id>.chunks` (`<sha256> <offset> <length>` a line); the plain file stays staged
 *     as `<id>.sqlite`, and chunks are compressed only when a client asks for them (POST .../chunk-data).
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { errorMessage } from '../errors.js';
import { CutFinder } from '../format/chunker.js';
import { FORMAT2_CHUNKING, FORMAT2_CHUNKING_DESCRIPTION } from '../format/params.js';
import type { Logger } from '../log.js';
import { createCompressor, zstdFileCompressor, type CompressionSupport } from './compression.js';
import {
  chunkListLine,
  type AnySnapshotDescription,
  type Compression,
  type SnapshotDescription,
  type SnapshotDescriptionV2,
} from './protocol.js';
import { prepareSqliteWorker, runSqliteTask, SqliteTaskError, type SnapshotFacts, type Vacuumed } from './sqlite-worker.js';
import type { FreeBytes, Staging } from './staging.js';

/** Free staging space needed, as a multiple of the database size (plain snapshot plus its compressed form). */
export const STAGING_HEADROOM = 1.2;
const READ_CHUNK = 1024 * 1024;

export class SnapshotBusyError extends Error {
  readonly retryAfterSeconds: number;
  constructor(retryAfterSeconds: number) {
    super('another snapshot is being made');
    this.name = 'SnapshotBusyError';
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export class InsufficientStagingError extends Error {
  readonly freeBytes: number;
  readonly neededBytes: number;
  constructor(freeBytes: number, neededBytes: number) {
    super(
      `staging has ${freeBytes} bytes free, a snapshot of this database needs about ${neededBytes} (database size x ${STAGING_HEADROOM})`,
    );
    this.name = 'InsufficientStagingError';
    this.freeBytes = freeBytes;
    this.neededBytes = neededBytes;
  }
}

/**
 * Making the snapshot on the agent failed at a step (open, vacuum, compress...); the server answers 500 with the
 * step. `step` and `code` are safe to show a client; `message` may hold paths and goes to the log.
 */
export class SnapshotStepError extends Error {
  readonly step: string;
  readonly code: string | undefined;
  constructor(step: string, code: string | undefined, cause: unknown) {
    super(`snapshot failed at step "${step}"${code ? ` (${code})` : ''}: ${errorMessage(cause)}`, { cause });
    this.name = 'SnapshotStepError';
    this.step = step;
    this.code = code;
  }
}

/** What to make: a format-1 snapshot with its artifact's compression, or a format-2 (chunked) one. */
export type SnapshotRequest = { format: 1; compression: Compression } | { format: 2 };

/** Lines of the chunk list written to disk at a time. */
const LIST_BATCH = 256;

export interface SnapshotterOptions {
  dbPath: string;
  databaseName: string;
  staging: Staging;
  compressions: CompressionSupport;
  freeBytes: FreeBytes;
  logger: Logger;
}

/** Bytes of the database as it stands: the main file plus its WAL (which VACUUM INTO also reads). */
export async function databaseBytes(dbPath: string): Promise<number> {
  const main = await stat(dbPath);
  const wal = await stat(`${dbPath}-wal`).catch(() => undefined);
  return main.size + (wal?.size ?? 0);
}

/** `20261124T161300Z-3f9a1c2e`: the creation time to the second, UTC, and 32 random bits. */
export function snapshotId(createdAtMs: number): string {
  const iso = new Date(createdAtMs).toISOString();
  return `${iso.slice(0, 19).replace(/[-:]/g, '')}Z-${randomBytes(4).toString('hex')}`;
}

export class Snapshotter {
  private readonly options: SnapshotterOptions;
  private running: { startedMs: number; settled: Promise<void> } | undefined;
  private lastDurationMs: number | undefined;
  /** Removals of plain work files still running after their snapshot was answered. */
  private readonly cleanups = new Set<Promise<void>>();

  constructor(options: SnapshotterOptions) {
    this.options = options;
  }

  get busy(): boolean {
    return this.running !== undefined;
  }

  /**
   * Resolves when no snapshot is being made and the plain files of answered ones are removed (used on
   * shutdown, so no work file is left half-written or behind).
   */
  async idle(): Promise<void> {
    await this.running?.settled;
    await Promise.all(this.cleanups);
  }

  /**
   * Makes a snapshot. Throws SnapshotBusyError at once (before any await) while another is running, so two
   * requests arriving together can never both start one.
   */
  async create(compression: Compression): Promise<SnapshotDescription>;
  async create(request: SnapshotRequest): Promise<AnySnapshotDescription>;
  async create(what: Compression | SnapshotRequest): Promise<AnySnapshotDescription> {
    if (this.running) throw new SnapshotBusyError(this.retryAfterSeconds());
    const request: SnapshotRequest = typeof what === 'string' ? { format: 1, compression: what } : what;
    const startedMs = Date.now();
    const work = this.make(request);
    this.running = {
      startedMs,
      settled: work.then(
        () => {},
        () => {},
      ),
    };
    try {
      return await work;
    } finally {
      this.running = undefined;
      this.lastDurationMs = Date.now() - startedMs;
    }
  }

  /** A guess at when the running snapshot will be done: the last one's duration minus the time spent so far. */
  private retryAfterSeconds(): number {
    const elapsed = this.running ? Date.now() - this.running.startedMs : 0;
    const left = this.lastDurationMs === undefined ? 5_000 : this.lastDurationMs - elapsed;
    return Math.max(1, Math.ceil((left > 0 ? left : 5_000) / 1000));
  }

  private async make(request: SnapshotRequest): Promise<AnySnapshotDescription> {
    // Format 2 keeps the plain file as it is, the way format 1 does for compression 'none'.
    const compression: Compression = request.format === 2 ? 'none' : request.compression;
    const { dbPath, staging, logger } = this.options;
    let dbBytes: number;
    try {
      dbBytes = await databaseBytes(dbPath);
    } catch (err) {
      throw new SnapshotStepError('open', (err as NodeJS.ErrnoException).code, err);
    }
    const needed = Math.ceil(dbBytes * STAGING_HEADROOM);
    let free = await this.options.freeBytes(staging.dir);
    if (free < needed && this.cleanups.size > 0) {
      // The last snapshot's plain file may still be going: its space counts once it has gone.
      await Promise.all(this.cleanups);
      free = await this.options.freeBytes(staging.dir);
    }
    if (free < needed) throw new InsufficientStagingError(free, needed);

    const workPath = staging.newWorkPath();
    let artifactPath: string | undefined;
    let chunkListPath: string | undefined;
    let sqlite: Promise<SnapshotFacts> | undefined;
    let answered = false;
    try {
      let onVacuumed!: (v: Vacuumed) => void;
      const vacuumed = new Promise<Vacuumed>((resolve) => {
        onVacuumed = resolve;
      });
      sqlite = runSqliteTask({ kind: 'snapshot', dbPath, outPath: workPath }, { onVacuumed }).catch((err: unknown) => {
        throw err instanceof SqliteTaskError ? new SnapshotStepError(err.step, err.code, err) : err;
      });
      // A failed VACUUM rejects `sqlite` before any `vacuumed` message.
      const v = await Promise.race([vacuumed, sqlite]);
      const id = snapshotId(v.createdAtMs);
      artifactPath = staging.artifactPath(id, compression);
      if (request.format === 2) chunkListPath = staging.chunkListPath(id);
      // The worker runs integrity_check and the counts on the finished file while zstd compresses it and this
      // thread hashes it: the three read the same cached pages on different cores. A failed check stops the
      // compression; a failed compression waits for the check to end before the file is removed.
      const stop = new AbortController();
      sqlite.catch(() => stop.abort());
      const t0 = performance.now();
      type Sum = { bytes: number; sha256: string };
      const pass: Promise<{ plain: Sum; artifact?: Sum; list?: SnapshotDescriptionV2['chunks'] }> =
        request.format === 2
          ? chunkListPass(workPath, chunkListPath!, stop.signal)
          : this.writeArtifact(workPath, artifactPath, compression, stop.signal);
      const [checked, written] = await Promise.allSettled([sqlite, pass.then((digests) => ({ digests, ms: performance.now() - t0 }))]);
      if (checked.status === 'rejected') throw checked.reason;
      if (written.status === 'rejected') {
        const err = written.reason as NodeJS.ErrnoException;
        throw new SnapshotStepError(request.format === 2 ? 'chunk' : 'compress', err?.code, err);
      }
      const facts = checked.value;
      const { digests, ms: passMs } = written.value;
      if (compression === 'none') await rename(workPath, artifactPath);
      const common = {
        id,
        createdAt: new Date(facts.createdAtMs).toISOString(),
        database: {
          name: this.options.databaseName,
          sqliteVersion: facts.sqliteVersion,
          pageSize: facts.pageSize,
          pageCount: facts.pageCount,
          journalMode: facts.journalMode,
          userVersion: facts.userVersion,
          tables: facts.tables,
        },
        integrity: facts.integrity,
        snapshot: digests.plain,
      };
      const timings = { vacuumMs: Math.round(facts.vacuumMs), checkMs: Math.round(facts.checkMs) };
      let description: AnySnapshotDescription;
      if (request.format === 2) {
        description = {
          ...common,
          format: 2,
          chunking: { ...FORMAT2_CHUNKING_DESCRIPTION },
          chunks: digests.list!,
          timings: { ...timings, chunkMs: Math.round(passMs) },
        } satisfies SnapshotDescriptionV2;
      } else {
        description = {
          ...common,
          artifact: { ...digests.artifact!, compression },
          timings: { ...timings, compressMs: Math.round(passMs) },
        } satisfies SnapshotDescription;
      }
      staging.add(description, artifactPath, chunkListPath);
      logger[facts.integrity === 'ok' ? 'info' : 'error']('snapshot.created', {
        snapshot: id,
        integrity: facts.integrity,
        bytes: digests.plain.bytes,
        ...(request.format === 2 ? { format: 2, chunks: digests.list!.count } : { artifactBytes: digests.artifact!.bytes, compression }),
        ...description.timings,
      });
      answered = true;
      return description;
    } catch (err) {
      if (artifactPath) await rm(`${artifactPath}.partial`, { force: true });
      if (artifactPath && compression === 'none') await rm(artifactPath, { force: true });
      if (chunkListPath) {
        await rm(`${chunkListPath}.partial`, { force: true });
        await rm(chunkListPath, { force: true });
      }
      throw err;
    } finally {
      const cleanup = (async () => {
        // The worker may still be reading the file when the compression failed: let it finish first.
        await sqlite?.catch(() => undefined);
        await rm(workPath, { force: true });
        await rm(`${workPath}-journal`, { force: true });
      })();
      // Removing a plain file of 100 MB takes about 30 ms: an answer need not wait for it; a failure does,
      // so that the error it reports is the last thing the snapshot did.
      const tracked = this.track(cleanup);
      if (!answered) await tracked;
    }
  }

  /** Runs the removal of a work file to its end, logging (not throwing) a failure, and then starts a spare SQLite thread. */
  private track(cleanup: Promise<void>): Promise<void> {
    const tracked: Promise<void> = cleanup
      .then(
        () => prepareSqliteWorker(),
        (err: unknown) => {
          this.options.logger.warn('snapshot.cleanup_failed', {
            error: errorMessage(err),
            note: 'the agent removes leftover work files from staging when it next starts',
          });
        },
      )
      .finally(() => this.cleanups.delete(tracked));
    this.cleanups.add(tracked);
    return tracked;
  }

  /**
   * The single pass over the plain file; for 'none' the plain file itself becomes the artifact (the caller
   * renames it once the check is done with it). `signal` stops the pass and any compressor.
   */
  private async writeArtifact(workPath: string, artifactPath: string, compression: Compression, signal: AbortSignal) {
    const plain = new Digest();
    if (compression === 'none') {
      await pipeline(
        createReadStream(workPath, { highWaterMark: READ_CHUNK }),
        plain.tap(),
        async (source: AsyncIterable<Buffer>) => {
          for await (const _ of source);
        },
        { signal },
      );
      return { plain: plain.result(), artifact: plain.result() };
    }
    const artifact = new Digest();
    const partialPath = `${artifactPath}.partial`;
    const support = this.options.compressions;
    if (compression === 'zstd' && support.zstdSource === 'command') {
      // Two cores: the zstd process reads and compresses the file while this process hashes it.
      const compressor = zstdFileCompressor(support.zstdCommand, workPath);
      const onAbort = () => compressor.abort();
      signal.addEventListener('abort', onAbort, { once: true });
      try {
        await Promise.all([
          pipeline(
            createReadStream(workPath, { highWaterMark: READ_CHUNK }),
            plain.tap(),
            async (source: AsyncIterable<Buffer>) => {
              for await (const _ of source);
            },
            { signal },
          ),
          pipeline(compressor.output, artifact.tap(), createWriteStream(partialPath, { flags: 'wx', mode: 0o600 }), { signal }),
          compressor.done,
        ]);
      } catch (err) {
        compressor.abort();
        throw err;
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
      await rename(partialPath, artifactPath);
      return { plain: plain.result(), artifact: artifact.result() };
    }
    const compressor = createCompressor(compression, support);
    try {
      await pipeline(
        createReadStream(workPath, { highWaterMark: READ_CHUNK }),
        plain.tap(),
        compressor.stream,
        artifact.tap(),
        createWriteStream(partialPath, { flags: 'wx', mode: 0o600 }),
        { signal },
      );
      await compressor.done;
    } catch (err) {
      compressor.abort();
      throw err;
    }
    await rename(partialPath, artifactPath);
    return { plain: plain.result(), artifact: artifact.result() };
  }
}

/**
 * The format-2 pass: reads the plain file once, hashing it whole and cutting it into chunks, and writes the chunk
 * list (`<sha256> <offset> <length>` a line) to `listPath`. Returns the plain file's digest and what GET
 * .../chunks will send: its lines, bytes and sha256 (of the `<sha256> <length>` lines).
 *
 * The cut points are chunker.ts's (the same CutFinder that chunkStream uses), but no chunk is copied out of the
 * reads: each chunk's sha256 is fed the pieces of the reads it spans, so memory is the read buffer only.
 *
 * One read buffer, filled again for every read (each read is hashed and cut before the next): a read stream
 * allocates a fresh 1 MiB buffer per read, and the garbage collector frees those only after tens of MB of
 * them have piled up (measured at 1 GB: the agent's resident set rose by about 40 MB during this pass).
 */
async function chunkListPass(workPath: string, listPath: string, signal: AbortSignal) {
  const plain = new Digest();
  const served = createHash('sha256');
  let listBytes = 0;
  let count = 0;
  const partialPath = `${listPath}.partial`;
  await pipeline(
    async function* () {
      const finder = new CutFinder(FORMAT2_CHUNKING);
      let chunk = createHash('sha256');
      let length = 0;
      let offset = 0;
      let batch = '';
      let lines = 0;
      const cut = () => {
        const sha256 = chunk.digest('hex');
        const line = chunkListLine(sha256, length);
        served.update(line);
        listBytes += line.length;
        count++;
        batch += `${sha256} ${offset} ${length}\n`;
        lines++;
        offset += length;
        length = 0;
        chunk = createHash('sha256');
      };
      for await (const buf of readsInto(workPath, Buffer.allocUnsafe(READ_CHUNK), signal)) {
        plain.update(buf);
        let start = 0;
        while (start < buf.length) {
          const at = finder.scan(buf, start, buf.length);
          const end = at < 0 ? buf.length : at;
          chunk.update(buf.subarray(start, end));
          length += end - start;
          start = end;
          if (at >= 0) cut();
        }
        if (lines >= LIST_BATCH) {
          yield batch;
          batch = '';
          lines = 0;
        }
      }
      if (length > 0) cut();
      if (batch) yield batch;
    },
    createWriteStream(partialPath, { flags: 'wx', mode: 0o600 }),
    { signal },
  );
  await rename(partialPath, listPath);
  return { plain: plain.result(), list: { count, listSha256: served.digest('hex'), listBytes } };
}

/**
 * The file at `path` read front to back into `buffer`, yielding the filled part each time: the caller must be
 * done with one before asking for the next, which fills the same buffer again.
 */
async function* readsInto(path: string, buffer: Buffer, signal: AbortSignal): AsyncGenerator<Buffer> {
  const file = await open(path, 'r');
  try {
    for (;;) {
      signal.throwIfAborted();
      const { bytesRead } = await file.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) return;
      yield buffer.subarray(0, bytesRead);
    }
  } finally {
    await file.close();
  }
}

/** sha256 and byte count of whatever flows through `tap()` or is given to `update()`. */
export class Digest {
  private readonly hash: Hash = createHash('sha256');
  private bytes = 0;
  private hex: string | undefined;

  update(chunk: Buffer): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }

  tap(): Transform {
    return new Transform({
      transform: (chunk: Buffer, _enc, done) => {
        this.hash.update(chunk);
        this.bytes += chunk.length;
        done(null, chunk);
      },
    });
  }

  result(): { bytes: number; sha256: string } {
    this.hex ??= this.hash.digest('hex');
    return { bytes: this.bytes, sha256: this.hex };
  }
}
