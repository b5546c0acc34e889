/** Picking a snapshot on a target: by id, as of a time, or the latest. */
import { listCatalog, readManifest } from '../catalog/catalog.js';
import type { Manifest } from '../catalog/manifest.js';
import { NotFoundError, TcabError } from '../errors.js';
import type { Target } from '../targets/target.js';

export type SnapshotSelector = { id: string } | { at: Date } | { latest: true };

export function describeSelector(s: SnapshotSelector): string {
  if ('id' in s) return `snapshot ${s.id}`;
  if ('at' in s) return `the newest snapshot at or before ${s.at.toISOString()}`;
  return 'the latest snapshot';
}

/**
 * The manifest of the selected snapshot on one target. `at` compares against the manifest's createdAt (the
 * moment the snapshot's read transaction began), so the result holds the database as it was at that time.
 */
export async function selectSnapshot(target: Target, database: string, selector: SnapshotSelector, signal?: AbortSignal): Promise<Manifest> {
  const opts = signal ? { signal } : {};
  if ('id' in selector) {
    try {
      return await readManifest(target, database, selector.id, opts);
    } catch (e) {
      if (e instanceof NotFoundError) throw new NotFoundError(`snapshot ${selector.id} on target "${target.name}" (${target.url})`);
      throw e;
    }
  }
  const { snapshots } = await listCatalog(target, database, opts);
  const limit = 'at' in selector ? selector.at.getTime() : Infinity;
  // Ids sort by creation second; createdAt has milliseconds, so check candidates in order.
  for (const s of snapshots) {
    if (s.time.getTime() > limit) continue;
    const manifest = await readManifest(target, database, s.id, opts);
    if (Date.parse(manifest.createdAt) <= limit) return manifest;
  }
  throw new NotFoundError(`${describeSelector(selector)} of database "${database}" on target "${target.name}" (${target.url}); it holds ${snapshots.length} snapshot(s)`);
}

export function parseAtTime(text: string): Date {
  const d = new Date(text);
  if (!/^\d{4}-\d{2}-\d{2}/.test(text) || Number.isNaN(d.getTime())) {
    throw new TcabError(`--at "${text}" is not an ISO time`, { hint: 'use e.g. 2026-11-24T16:00:00Z' });
  }
  return d;
}
