/**
 * The agent's staging folder: finished artifacts waiting to be downloaded (format 1), plain snapshots and their
 * chunk lists `<id>.chunks` waiting to be read chunk by chunk (format 2), and the work files of the snapshot
 * being made. Finished snapshots are known in memory only, so after a restart every file the agent made is a
 * leftover and is removed at start. Only files named the way this agent names them are ever touched: an
 * operator who points the staging folder somewhere shared (or at the database's own folder) loses nothing.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { COMPRESSION_EXT, type AnySnapshotDescription, type Compression } from './protocol.js';

const OWN_FILE_RE =
  /^(?:(?:work|drill)-[0-9a-f]{16}\.sqlite(?:-journal|-wal|-shm)?|[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}(?:\.sqlite(?:\.gz|\.zst)?|\.chunks)(?:\.partial)?)$/;

export interface StagedSnapshot {
  description: AnySnapshotDescription;
  /** The artifact (format 1) or the plain file (format 2). */
  path: string;
  /** Format 2: the chunk list, `<sha256> <offset> <length>` a line. */
  chunkListPath?: string;
  stagedAtMs: number;
}

export type FreeBytes = (dir: string) => Promise<number>;

export const statfsFreeBytes: FreeBytes = async (dir) => {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
};

export class Staging {
  readonly dir: string;
  private readonly logger: Logger;
  private readonly staged = new Map<string, StagedSnapshot>();

  constructor(dir: string, logger: Logger) {
    this.dir = dir;
    this.logger = logger;
  }

  /** Creates the folder (private to the agent's user) and removes what an earlier run left behind. */
  async prepare(): Promise<number> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    let removed = 0;
    for (const name of await readdir(this.dir)) {
      if (!OWN_FILE_RE.test(name)) continue;
      await rm(join(this.dir, name), { force: true });
      removed++;
    }
    if (removed) this.logger.info('staging.leftovers_removed', { files: removed });
    return removed;
  }

  /** A fresh path for VACUUM INTO to write to (it refuses to overwrite, so every attempt gets a new name). */
  newWorkPath(): string {
    return join(this.dir, `work-${randomBytes(8).toString('hex')}.sqlite`);
  }

  /** A fresh scratch path for an application drill's restored copy. */
  newDrillPath(): string {
    return join(this.dir, `drill-${randomBytes(8).toString('hex')}.sqlite`);
  }

  artifactPath(id: string, compression: Compression): string {
    return join(this.dir, `${id}.sqlite${COMPRESSION_EXT[compression]}`);
  }

  /** Where a format-2 snapshot's chunk list is kept. */
  chunkListPath(id: string): string {
    return join(this.dir, `${id}.chunks`);
  }

  add(description: AnySnapshotDescription, path: string, chunkListPath?: string, nowMs = Date.now()): void {
    this.staged.set(description.id, { description, path, stagedAtMs: nowMs, ...(chunkListPath ? { chunkListPath } : {}) });
  }

  /** `id` must already match SNAPSHOT_ID_RE: the caller validates before anything reaches the file system. */
  get(id: string): StagedSnapshot | undefined {
    return this.staged.get(id);
  }

  get count(): number {
    return this.staged.size;
  }

  async remove(id: string): Promise<boolean> {
    const entry = this.staged.get(id);
    if (!entry) return false;
    this.staged.delete(id);
    // A download still streaming from this file keeps reading it: unlinking an open file is safe on POSIX.
    await rm(entry.path, { force: true });
    if (entry.chunkListPath) await rm(entry.chunkListPath, { force: true });
    return true;
  }

  /** Removes snapshots staged longer than `ttlMs` ago; returns their ids. */
  async sweep(ttlMs: number, nowMs = Date.now()): Promise<string[]> {
    const expired = [...this.staged.values()].filter((s) => nowMs - s.stagedAtMs >= ttlMs).map((s) => s.description.id);
    for (const id of expired) await this.remove(id);
    if (expired.length) this.logger.info('staging.expired_removed', { snapshots: expired });
    return expired;
  }

  async removeAll(): Promise<void> {
    for (const id of [...this.staged.keys()]) await this.remove(id);
  }
}
