/**
 * Restore: download a snapshot, check the artifact's sha256 against the manifest while it streams,
 * decompress, check the plain file's sha256 and PRAGMA integrity_check, and only then move it into place.
 * A format-2 snapshot is its chunk list and chunks instead of one artifact (chunks.ts); everything after the
 * file is written (the SQLite checks, the move into place) is the same for both formats.
 * The file is written beside the destination under a temporary name and renamed at the end, so a failed
 * restore leaves the destination as it was (and never replaces an existing file without `force`).
 *
 * SQLite reads the files beside a database when it opens it: it replays a `-wal` over whatever file is at
 * the path, and rolls a hot `-journal` back into it. A restored file renamed next to the `-wal` of the
 * database it replaces would open as that old database. So restore refuses while any of them is there, and
 * with `force` moves the old database and those files aside together, never deleting them: after a crash
 * the `-wal` holds the newest writes, possibly ones no snapshot has, and it means something only next to
 * the database file it belongs to (opened under its new name, the set is the old database as it was).
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { type FileHandle, link, lstat, mkdir, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { manifestArtifactKey, manifestDataKey } from '../../catalog/catalog.js';
import type { Manifest, ManifestV1 } from '../../catalog/manifest.js';
import { IntegrityError, NotFoundError, TargetError, TcabError, errorMessage } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import type { Target } from '../../targets/target.js';
import { firstColumn, firstValue, openDatabase } from '../../util/sqlite.js';
import { HashingStream, decompressor } from '../../util/streams.js';
import { describeSelector, selectSnapshot, type SnapshotSelector } from '../../catalog/select.js';
import { writeChunkedSnapshot, type ChunkReread } from './chunks.js';
import { DestinationError, FileSink } from './destination.js';

export interface RestoreRequest {
  selector: SnapshotSelector;
  outPath: string;
  force?: boolean;
  signal?: AbortSignal;
  /** Called as bytes arrive (compressed bytes read from the target). */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
  /** Format 2: called for each chunk read again after a bad read (also logged as "chunk.reread"). */
  onReread?: (reread: ChunkReread) => void;
  /**
   * Format 2: also check each chunk's sha256 (the drill, which records that it did). Without it a chunk is
   * checked by zstd's content checksum and the whole file's sha256, and named by a second pass should the
   * whole file differ (src/jobs/restore/chunks.ts, `chunkSha256`).
   */
  checkEachChunk?: boolean;
}

export interface RestoreResult {
  id: string;
  target: string;
  path: string;
  createdAt: string;
  artifactBytes: number;
  bytes: number;
  tables: Record<string, number>;
  /** Download to verified file, in milliseconds: the recovery time of this restore. */
  durationMs: number;
  /** Targets tried before this one and why they failed. */
  skipped: Array<{ target: string; error: string }>;
  /**
   * With `force`: what was at the destination (the old database, its -wal, -shm, -journal) and where it
   * was moved, in that order. Empty when the destination was free.
   */
  movedAside: Array<{ from: string; to: string }>;
}

/** Files SQLite reads beside a database `path` when it opens it (`path` + suffix). */
export const SQLITE_COMPANION_SUFFIXES = ['-wal', '-shm', '-journal'] as const;

/** Tries the targets in order and restores from the first that has the snapshot and passes every check. */
export async function runRestore(
  deps: { targets: Target[]; database: string; logger?: Logger },
  request: RestoreRequest,
): Promise<RestoreResult> {
  const log = deps.logger ?? silentLogger;
  const outPath = resolve(request.outPath);
  if (!request.force) await refuseOccupied(outPath, 'already exists');
  await mkdir(dirname(outPath), { recursive: true });
  const skipped: RestoreResult['skipped'] = [];
  for (const target of deps.targets) {
    try {
      const manifest = await selectSnapshot(target, deps.database, request.selector, request.signal);
      const result = await restoreFromTarget(target, manifest, outPath, request, log);
      return { ...result, skipped };
    } catch (e) {
      if (request.signal?.aborted || e instanceof DestinationError) throw e;
      skipped.push({ target: target.name, error: errorMessage(e) });
      log.warn('restore.target_failed', { target: target.name, error: errorMessage(e) });
    }
  }
  throw new TcabError(
    `Restore of ${describeSelector(request.selector)} failed on every target: ${skipped.map((s) => `"${s.target}": ${s.error}`).join('; ')}`,
    { hint: `nothing was written at ${outPath}; run "tcab-backup list" to see what each target holds` },
  );
}

async function restoreFromTarget(
  target: Target,
  manifest: Manifest,
  outPath: string,
  request: RestoreRequest,
  log: Logger,
): Promise<Omit<RestoreResult, 'skipped'>> {
  const started = Date.now();
  // Checked before anything is created: a manifest that points elsewhere is refused at once.
  manifestDataKey(manifest);
  const tmp = join(dirname(outPath), `.${basename(outPath)}.restore-${randomBytes(4).toString('hex')}.tmp`);
  try {
    // The file first: a destination that cannot take it is found before anything is downloaded.
    const file = await open(tmp, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY, 0o600).catch((e: unknown) => {
      throw new DestinationError(`Restore cannot create its temporary file ${tmp} beside ${outPath} (${errorMessage(e)})`, {
        hint: `check that ${dirname(outPath)} exists, is writable and has room for the database; nothing was changed there`,
        cause: e,
      });
    });
    let written: { storedBytes: number; plainBytes: number };
    try {
      written =
        manifest.formatVersion === 1
          ? await writeArtifact(target, manifest, file, tmp, request)
          : await writeChunkedSnapshot(target, manifest, file, tmp, {
              logger: log,
              ...(request.signal ? { signal: request.signal } : {}),
              ...(request.onProgress ? { onProgress: request.onProgress } : {}),
              ...(request.onReread ? { onReread: request.onReread } : {}),
              chunkSha256: request.checkEachChunk ?? false,
            });
    } finally {
      await file.close().catch(() => undefined);
    }
    const tables = checkDatabase(tmp, manifest, target.name);
    let movedAside: RestoreResult['movedAside'] = [];
    if (request.force) {
      movedAside = await moveAside(outPath, log);
      try {
        await rename(tmp, outPath);
      } catch (e) {
        await putBack(movedAside, log);
        throw new DestinationError(`Restore could not move the verified file into place at ${outPath} (${errorMessage(e)})`, {
          hint: `${movedAside.length ? 'what was there has been moved back; ' : ''}check that the folder is writable`,
          cause: e,
        });
      }
    } else {
      // Checked again: a database may have been opened there during the download.
      await refuseOccupied(outPath, 'appeared during the restore');
      await publishNoClobber(tmp, outPath, log);
    }
    // The renames are durable only once the folder is: a power cut must not bring the old database back.
    await syncFolder(dirname(outPath));
    const result = {
      id: manifest.id,
      target: target.name,
      path: outPath,
      createdAt: manifest.createdAt,
      artifactBytes: written.storedBytes,
      bytes: written.plainBytes,
      tables,
      durationMs: Date.now() - started,
      movedAside,
    };
    log.info('restore.completed', { ...result, formatVersion: manifest.formatVersion });
    return result;
  } finally {
    await Promise.all([tmp, `${tmp}-wal`, `${tmp}-shm`, `${tmp}-journal`].map((p) => rm(p, { force: true })));
  }
}

/**
 * Format 1: streams the artifact into `file` (at `path`), checking its sha256 as it arrives, decompressing,
 * and checking the plain file's sha256. The sink fsyncs the file once the last byte is written.
 */
async function writeArtifact(
  target: Target,
  manifest: ManifestV1,
  file: FileHandle,
  path: string,
  request: RestoreRequest,
): Promise<{ storedBytes: number; plainBytes: number }> {
  const key = manifestArtifactKey(manifest);
  const artifactHash = new HashingStream();
  const plainHash = new HashingStream();
  let lastReport = 0;
  if (request.onProgress) {
    artifactHash.on('data', () => {
      const now = Date.now();
      if (now - lastReport > 250) {
        lastReport = now;
        request.onProgress!(artifactHash.bytes, manifest.artifact.bytes);
      }
    });
  }
  let decompressFailed = false;
  let bodyError: Error | undefined;
  let inflate: Duplex | undefined;
  const sink = new FileSink(file, path);
  try {
    inflate = decompressor(manifest.artifact.compression);
    // A body that breaks off reaches the decompressor too (as the body's error, or as "Premature close" when it
    // was destroyed without one): only an error of the decompressor's own says the bytes are damaged.
    inflate.once('error', (err: NodeJS.ErrnoException) => {
      if (err !== bodyError && err.code !== 'ERR_STREAM_PREMATURE_CLOSE') decompressFailed = true;
    });
    // Nothing between the get and the pipeline can fail: the pipeline closes the body whatever happens.
    const { body } = await target.get(key, request.signal ? { signal: request.signal } : {});
    body.once('error', (err) => (bodyError ??= err));
    // The sink fsyncs the file at its end, so the rename that publishes it publishes durable bytes.
    await pipeline(body, artifactHash, inflate, plainHash, sink, request.signal ? { signal: request.signal } : {});
  } catch (e) {
    // A get that failed leaves the decompressor unused (for zstd on older Node, a child process waiting).
    inflate?.destroy();
    // The local disk's failure reaches every stream of the pipeline: it is not the stored copy's.
    if (sink.failure) throw sink.failure;
    // A damaged artifact usually fails decompression first; name the real cause when the hash says so.
    if (artifactHash.bytes === manifest.artifact.bytes && artifactHash.digest() !== manifest.artifact.sha256) {
      throw new IntegrityError(
        `Snapshot ${manifest.id} on target "${target.name}": artifact sha256 ${artifactHash.digest()} does not match the manifest's ${manifest.artifact.sha256}`,
        { cause: e },
      );
    }
    if (request.signal?.aborted || e instanceof NotFoundError) throw e;
    if (!decompressFailed) {
      if (e instanceof TargetError) throw e;
      throw new TargetError({
        target: target.name,
        url: target.url,
        operation: 'read of artifact',
        key,
        detail: `its body broke off after ${artifactHash.bytes} of ${manifest.artifact.bytes} bytes: ${errorMessage(e)}`,
        hint: 'nothing was written; check that the target is reachable and run the restore again (or restore from another target with --target)',
        transient: true,
        cause: e,
      });
    }
    throw new IntegrityError(
      `Snapshot ${manifest.id} on target "${target.name}": the ${manifest.artifact.compression} artifact does not decompress (${errorMessage(e)})`,
      {
        hint: 'the stored copy is damaged; restore from another target (--target) and run "tcab-backup verify"',
        cause: e,
      },
    );
  }
  request.onProgress?.(artifactHash.bytes, manifest.artifact.bytes);
  if (artifactHash.bytes !== manifest.artifact.bytes || artifactHash.digest() !== manifest.artifact.sha256) {
    throw new IntegrityError(
      `Snapshot ${manifest.id} on target "${target.name}": artifact is ${artifactHash.bytes} bytes with sha256 ${artifactHash.digest()}, the manifest says ${manifest.artifact.bytes} bytes with ${manifest.artifact.sha256}`,
      {
        hint: 'the stored copy is damaged; restore from another target (--target) and run "tcab-backup verify"',
      },
    );
  }
  if (plainHash.bytes !== manifest.snapshot.bytes || plainHash.digest() !== manifest.snapshot.sha256) {
    throw new IntegrityError(
      `Snapshot ${manifest.id} on target "${target.name}": decompressed file is ${plainHash.bytes} bytes with sha256 ${plainHash.digest()}, the manifest says ${manifest.snapshot.bytes} bytes with ${manifest.snapshot.sha256}`,
      {
        hint: 'the artifact does not decompress to the snapshot the agent made; restore from another target',
      },
    );
  }
  return { storedBytes: artifactHash.bytes, plainBytes: plainHash.bytes };
}

/** PRAGMA integrity_check and row counts of the restored file, compared with the manifest. */
export function checkDatabase(path: string, manifest: Manifest, targetName: string): Record<string, number> {
  let db: ReturnType<typeof openDatabase>;
  try {
    db = openDatabase(path, { readOnly: true, immutable: true });
  } catch (e) {
    throw new IntegrityError(`Snapshot ${manifest.id} from target "${targetName}" is not a SQLite database: ${errorMessage(e)}`);
  }
  try {
    const verdict = firstColumn<string>(db, 'PRAGMA integrity_check').join('; ');
    if (verdict !== 'ok')
      throw new IntegrityError(
        `Snapshot ${manifest.id} from target "${targetName}" fails PRAGMA integrity_check: ${verdict.slice(0, 300)}`,
      );
    const tables: Record<string, number> = {};
    for (const name of Object.keys(manifest.database.tables)) {
      const exists = firstValue(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name);
      tables[name] = exists ? firstValue<number>(db, `SELECT count(*) FROM "${name.replace(/"/g, '""')}"`)! : -1;
      if (tables[name] !== manifest.database.tables[name]) {
        throw new IntegrityError(
          `Snapshot ${manifest.id} from target "${targetName}": table ${name} has ${tables[name]} rows, the manifest says ${manifest.database.tables[name]}`,
        );
      }
    }
    return tables;
  } finally {
    db.close();
  }
}

/** The database file at `path` and the companions beside it that exist, database first. */
async function occupants(path: string): Promise<string[]> {
  const all = [path, ...SQLITE_COMPANION_SUFFIXES.map((s) => `${path}${s}`)];
  const present = await Promise.all(all.map(exists));
  return all.filter((_, i) => present[i]);
}

/** Without --force: refuse while a database, or a file SQLite would read with one, is at the destination. */
async function refuseOccupied(outPath: string, what: string): Promise<void> {
  const found = await occupants(outPath);
  if (found.length === 0) return;
  const companions = found.filter((f) => f !== outPath);
  const aside = `${outPath}.replaced-<time>`;
  if (companions.length === 0) {
    throw new DestinationError(`Restore destination ${outPath} ${what}`, {
      hint: `choose another -o path, or pass --force to replace it once the restore is verified (the old file is kept as ${aside})`,
    });
  }
  throw new DestinationError(
    `Restore destination ${outPath} ${found.includes(outPath) ? `${what}, with ${companions.join(', ')} beside it` : `has ${companions.join(', ')} beside it`}: ` +
      'SQLite would replay them over the restored database, which would then open as the old one',
    {
      hint:
        `stop every process that uses ${outPath} (after a crash these files hold its newest writes); then choose another -o path, ` +
        `or pass --force to move them aside once the restore is verified: they are kept together, never deleted, as ${found.map((f) => `${basename(aside)}${f.slice(outPath.length)}`).join(', ')}`,
    },
  );
}

/**
 * Moves the database at `outPath` and its companions aside under one free name, so that they stay a set
 * SQLite opens as the old database. The database goes first: a crash between the renames then leaves at
 * most a companion at the path, which the next restore refuses or moves aside too.
 */
async function moveAside(outPath: string, log: Logger): Promise<RestoreResult['movedAside']> {
  const found = await occupants(outPath);
  if (found.length === 0) return [];
  const stamp = new Date()
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  let base = `${outPath}.replaced-${stamp}`;
  for (let n = 2; (await occupants(base)).length > 0; n++) base = `${outPath}.replaced-${stamp}-${n}`;
  const moved: RestoreResult['movedAside'] = [];
  for (const from of found) {
    const to = `${base}${from.slice(outPath.length)}`;
    try {
      await rename(from, to);
    } catch (e) {
      await putBack(moved, log);
      throw new DestinationError(`Restore could not move ${from} aside to ${to} (${errorMessage(e)})`, {
        hint: `nothing was replaced${moved.length ? ' and what was moved has been moved back' : ''}; check that the folder is writable`,
        cause: e,
      });
    }
    moved.push({ from, to });
  }
  return moved;
}

/** Errors of link() that say the file system has no hard links (an SMB share, some FUSE mounts). */
const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EMLINK']);

/**
 * Puts the verified file `tmp` at `outPath`, which must not exist: never replace a file without --force.
 * link() fails if the destination appeared meanwhile. On a file system without hard links (an Azure Files
 * SMB share, which a drill's scratch folder may be), the name is reserved instead by creating it exclusively,
 * and the file renamed over that reservation: the only window is an empty file at a path that was free.
 * `linkFile` is node:fs's link, replaced only by the test of that fallback.
 */
export async function publishNoClobber(tmp: string, outPath: string, log: Logger, linkFile: typeof link = link): Promise<void> {
  const refuse = (e: NodeJS.ErrnoException) =>
    new DestinationError(
      `Restore destination ${outPath} ${e.code === 'EEXIST' ? 'appeared during the restore' : `cannot be created (${e.code ?? errorMessage(e)})`}`,
      { hint: 'pass --force to replace it, or choose another path', cause: e },
    );
  try {
    await linkFile(tmp, outPath);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (!NO_HARD_LINKS.has(code)) throw refuse(e as NodeJS.ErrnoException);
    log.info('restore.no_hard_links', { path: outPath, code, note: 'reserving the name and renaming instead' });
    const reservation = await open(outPath, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY, 0o600).catch((err: NodeJS.ErrnoException) => {
      throw refuse(err);
    });
    try {
      await reservation.close();
      await rename(tmp, outPath);
    } catch (err) {
      // The reservation is ours and empty: it must not be left to be taken for a database, or refused next time.
      await rm(outPath, { force: true }).catch((rmErr) =>
        log.error('restore.reservation_left', {
          path: outPath,
          error: errorMessage(rmErr),
          note: 'an empty file this restore created; remove it',
        }),
      );
      throw refuse(err as NodeJS.ErrnoException);
    }
    return;
  }
  await rm(tmp, { force: true });
}

/** Undoes moveAside as far as it can; what cannot be moved back is logged with both names. */
async function putBack(moved: RestoreResult['movedAside'], log: Logger): Promise<void> {
  for (const { from, to } of [...moved].reverse()) {
    await rename(to, from).catch((e) => log.error('restore.move_back_failed', { from: to, to: from, error: errorMessage(e) }));
  }
}

async function syncFolder(dir: string): Promise<void> {
  const handle = await open(dir, fsc.O_RDONLY);
  try {
    await handle.sync();
  } catch (e) {
    // Some file systems cannot sync a folder at all; there is nothing more to do there.
    if (!['EINVAL', 'ENOTSUP', 'EPERM', 'EISDIR'].includes((e as NodeJS.ErrnoException).code ?? '')) {
      throw new DestinationError(`Restore wrote ${dir} but could not flush the folder to disk (${errorMessage(e)})`, {
        hint: 'the restored file is in place but may not survive a power cut; check the disk (dmesg) and run the restore again',
        cause: e,
      });
    }
  } finally {
    await handle.close();
  }
}

/** Only "no such file" means absent: a path that cannot be looked at (EACCES, ELOOP) is not taken as free. */
async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new DestinationError(`Restore cannot tell whether ${path} exists (${errorMessage(e)})`, {
      hint: `check the permissions of ${dirname(path)}; nothing was changed there`,
      cause: e,
    });
  }
}
