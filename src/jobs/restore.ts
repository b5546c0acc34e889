/**
 * Restore: download a snapshot, check the artifact's sha256 against the manifest while it streams,
 * decompress, check the plain file's sha256 and PRAGMA integrity_check, and only then move it into place.
 * The file is written beside the destination under a temporary name and renamed at the end, so a failed
 * restore leaves nothing at the destination (and never replaces an existing file without `force`).
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { access, link, mkdir, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { manifestArtifactKey } from '../catalog/catalog.js';
import type { Manifest } from '../catalog/manifest.js';
import { IntegrityError, TcabError, errorMessage } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { Target } from '../targets/target.js';
import { firstColumn, firstValue, openDatabase } from '../util/sqlite.js';
import { HashingStream, decompressor } from '../util/streams.js';
import { describeSelector, selectSnapshot, type SnapshotSelector } from './select.js';

export interface RestoreRequest {
  selector: SnapshotSelector;
  outPath: string;
  force?: boolean;
  signal?: AbortSignal;
  /** Called as bytes arrive (compressed bytes read from the target). */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
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
}

/** Tries the targets in order and restores from the first that has the snapshot and passes every check. */
export async function runRestore(
  deps: { targets: Target[]; database: string; logger?: Logger },
  request: RestoreRequest,
): Promise<RestoreResult> {
  const log = deps.logger ?? silentLogger;
  const outPath = resolve(request.outPath);
  if (!request.force && (await exists(outPath))) {
    throw new TcabError(`Restore destination ${outPath} already exists`, { hint: 'choose another -o path, or pass --force to replace it (the old file is replaced only after the restore is verified)' });
  }
  await mkdir(dirname(outPath), { recursive: true });
  const skipped: RestoreResult['skipped'] = [];
  for (const target of deps.targets) {
    try {
      const manifest = await selectSnapshot(target, deps.database, request.selector, request.signal);
      const result = await restoreFromTarget(target, manifest, outPath, request, log);
      return { ...result, skipped };
    } catch (e) {
      if (request.signal?.aborted) throw e;
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
  const key = manifestArtifactKey(manifest);
  const tmp = join(dirname(outPath), `.${basename(outPath)}.restore-${randomBytes(4).toString('hex')}.tmp`);
  try {
    const { body } = await target.get(key, request.signal ? { signal: request.signal } : {});
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
    const file = await open(tmp, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY, 0o600);
    try {
      const inflate = decompressor(manifest.artifact.compression);
      inflate.once('error', () => (decompressFailed = true));
      await pipeline(body, artifactHash, inflate, plainHash, file.createWriteStream(), request.signal ? { signal: request.signal } : {});
      await file.sync().catch(() => undefined);
    } catch (e) {
      // A damaged artifact usually fails decompression first; name the real cause when the hash says so.
      if (artifactHash.bytes === manifest.artifact.bytes && artifactHash.digest() !== manifest.artifact.sha256) {
        throw new IntegrityError(`Snapshot ${manifest.id} on target "${target.name}": artifact sha256 ${artifactHash.digest()} does not match the manifest's ${manifest.artifact.sha256}`, { cause: e });
      }
      if (request.signal?.aborted || !decompressFailed) throw e;
      throw new IntegrityError(`Snapshot ${manifest.id} on target "${target.name}": the ${manifest.artifact.compression} artifact does not decompress (${errorMessage(e)})`, {
        hint: 'the stored copy is damaged; restore from another target (--target) and run "tcab-backup verify"',
        cause: e,
      });
    } finally {
      await file.close().catch(() => undefined);
    }
    request.onProgress?.(artifactHash.bytes, manifest.artifact.bytes);
    if (artifactHash.bytes !== manifest.artifact.bytes || artifactHash.digest() !== manifest.artifact.sha256) {
      throw new IntegrityError(`Snapshot ${manifest.id} on target "${target.name}": artifact is ${artifactHash.bytes} bytes with sha256 ${artifactHash.digest()}, the manifest says ${manifest.artifact.bytes} bytes with ${manifest.artifact.sha256}`, {
        hint: 'the stored copy is damaged; restore from another target (--target) and run "tcab-backup verify"',
      });
    }
    if (plainHash.bytes !== manifest.snapshot.bytes || plainHash.digest() !== manifest.snapshot.sha256) {
      throw new IntegrityError(`Snapshot ${manifest.id} on target "${target.name}": decompressed file is ${plainHash.bytes} bytes with sha256 ${plainHash.digest()}, the manifest says ${manifest.snapshot.bytes} bytes with ${manifest.snapshot.sha256}`, {
        hint: 'the artifact does not decompress to the snapshot the agent made; restore from another target',
      });
    }
    const tables = checkDatabase(tmp, manifest, target.name);
    if (request.force) await rename(tmp, outPath);
    else {
      // link() fails if the destination appeared meanwhile: never replace a file without --force.
      await link(tmp, outPath).catch((e: NodeJS.ErrnoException) => {
        throw new TcabError(`Restore destination ${outPath} ${e.code === 'EEXIST' ? 'appeared during the restore' : `cannot be created (${e.code})`}`, { hint: 'pass --force to replace it, or choose another path', cause: e });
      });
      await rm(tmp, { force: true });
    }
    const result = {
      id: manifest.id, target: target.name, path: outPath, createdAt: manifest.createdAt,
      artifactBytes: manifest.artifact.bytes, bytes: plainHash.bytes, tables, durationMs: Date.now() - started,
    };
    log.info('restore.completed', { ...result });
    return result;
  } finally {
    await Promise.all([tmp, `${tmp}-wal`, `${tmp}-shm`, `${tmp}-journal`].map((p) => rm(p, { force: true })));
  }
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
    if (verdict !== 'ok') throw new IntegrityError(`Snapshot ${manifest.id} from target "${targetName}" fails PRAGMA integrity_check: ${verdict.slice(0, 300)}`);
    const tables: Record<string, number> = {};
    for (const name of Object.keys(manifest.database.tables)) {
      const exists = firstValue(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name);
      tables[name] = exists ? firstValue<number>(db, `SELECT count(*) FROM "${name.replace(/"/g, '""')}"`)! : -1;
      if (tables[name] !== manifest.database.tables[name]) {
        throw new IntegrityError(`Snapshot ${manifest.id} from target "${targetName}": table ${name} has ${tables[name]} rows, the manifest says ${manifest.database.tables[name]}`);
      }
    }
    return tables;
  } finally {
    db.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
