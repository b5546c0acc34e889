/** Picking a snapshot on a target: by id, as of a time, or the latest. */
import { listCatalog, readManifest } from './catalog.js';
import type { Manifest } from './manifest.js';
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
export async function selectSnapshot(
  target: Target,
  database: string,
  selector: SnapshotSelector,
  signal?: AbortSignal,
): Promise<Manifest> {
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
  // Ids sort by creation second only; snapshots made within the same second are ordered by their
  // manifests' createdAt (milliseconds), so read every candidate of the first second that qualifies.
  const candidates = snapshots.filter((s) => s.time.getTime() <= limit);
  let i = 0;
  while (i < candidates.length) {
    const second = candidates[i]!.time.getTime();
    const group: Manifest[] = [];
    for (; i < candidates.length && candidates[i]!.time.getTime() === second; i++) {
      group.push(await readManifest(target, database, candidates[i]!.id, opts));
    }
    const best = group.filter((m) => Date.parse(m.createdAt) <= limit).sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt))[0];
    if (best) return best;
  }
  throw new NotFoundError(
    `${describeSelector(selector)} of database "${database}" on target "${target.name}" (${target.url}); it holds ${snapshots.length} snapshot(s)`,
  );
}

export function parseAtTime(text: string): Date {
  const d = new Date(text);
  if (!/^\d{4}-\d{2}-\d{2}/.test(text) || Number.isNaN(d.getTime())) {
    throw new TcabError(`--at "${text}" is not an ISO time`, { hint: 'use e.g. 2026-11-24T16:00:00Z' });
  }
  return d;
}
