/**
 * Makes one snapshot at a time: VACUUM INTO a work file (in a worker thread), integrity_check and row counts of
 * the result, then one pass over the plain file that hashes it, compresses it, hashes the compressed bytes and
 * writes the artifact (read -> sha256 -> compressor -> sha256 -> file), and finally removes the plain file.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { createCompressor, zstdFileCompressor, type CompressionSupport } from './compression.js';
import type { Compression, SnapshotDescription } from './protocol.js';
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
  async create(compression: Compression): Promise<SnapshotDescription> {
    if (this.running) throw new SnapshotBusyError(this.retryAfterSeconds());
    const startedMs = Date.now();
    const work = this.make(compression);
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

  private async make(compression: Compression): Promise<SnapshotDescription> {
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
      // The worker runs integrity_check and the counts on the finished file while zstd compresses it and this
      // thread hashes it: the three read the same cached pages on different cores. A failed check stops the
      // compression; a failed compression waits for the check to end before the file is removed.
      const stop = new AbortController();
      sqlite.catch(() => stop.abort());
      const t0 = performance.now();
      const [checked, written] = await Promise.allSettled([
        sqlite,
        this.writeArtifact(workPath, artifactPath, compression, stop.signal).then((digests) => ({ digests, ms: performance.now() - t0 })),
      ]);
      if (checked.status === 'rejected') throw checked.reason;
      if (written.status === 'rejected') {
        const err = written.reason as NodeJS.ErrnoException;
        throw new SnapshotStepError('compress', err?.code, err);
      }
      const facts = checked.value;
      const { digests, ms: compressMs } = written.value;
      if (compression === 'none') await rename(workPath, artifactPath);
      const description: SnapshotDescription = {
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
        artifact: { ...digests.artifact, compression },
        timings: { vacuumMs: Math.round(facts.vacuumMs), checkMs: Math.round(facts.checkMs), compressMs: Math.round(compressMs) },
      };
      staging.add(description, artifactPath);
      logger[facts.integrity === 'ok' ? 'info' : 'error']('snapshot.created', {
        snapshot: id,
        integrity: facts.integrity,
        bytes: digests.plain.bytes,
        artifactBytes: digests.artifact.bytes,
        compression,
        ...description.timings,
      });
      answered = true;
      return description;
    } catch (err) {
      if (artifactPath) await rm(`${artifactPath}.partial`, { force: true });
      if (artifactPath && compression === 'none') await rm(artifactPath, { force: true });
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

/** sha256 and byte count of whatever flows through `tap()`. */
export class Digest {
  private readonly hash: Hash = createHash('sha256');
  private bytes = 0;
  private hex: string | undefined;

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
