/**
 * One chunk sweep per target and database at a time (docs/format-2.md, "Collecting chunks (prune)"), without a
 * lock service: each sweep writes its own marker create-only under `sweeps/<database>/`, then lists the folder.
 * A marker's key carries its prune's J. A sweep that sees another marker younger than 2 x the longer of the two
 * prunes' J does not sweep (it removes its own marker). Of two sweeps whose markers are both written, the later
 * listing shows the other's marker, so at most one of them sweeps (both may step back: the next prune sweeps).
 * A marker outlives its sweep only when the prune crashed or was aborted; older than 2 x the longer J (a sweep
 * stops deleting at its own J) it is stale, ignored, and removed by the next sweep. A marker whose J cannot be
 * read from its key is never stale (stepping back is safe); one written before keys carried J is judged by
 * this prune's own J.
 * Ages compare stored last-modified times with each other (this sweep's own marker against the others), so
 * neither the prune's clock nor its `now` enters.
 */
import { randomBytes } from 'node:crypto';
import { parseSweepMarkerKey, sweepMarkerKey, sweepsPrefix } from '../../catalog/layout.js';
import { NotFoundError, ObjectHeldError, TcabError, errorMessage } from '../../errors.js';
import type { ObjectInfo, Target } from '../../targets/target.js';

export interface SweepMarker {
  kind: 'tcab-backup.sweep';
  version: 1;
  database: string;
  /** The prune's time when it wrote the marker (its `now`). */
  startedAt: string;
  /** The prune's J: its sweep stops deleting this long after it began. */
  jobTimeoutMs: number;
  /** A short id of the prune run, to tell two runs apart in the log. */
  runId: string;
}

export type SweepClaim =
  /** This sweep may go on; `stale` are markers older than 2 x the longer J, to remove. Call `release` once every delete has settled. */
  | { status: 'claimed'; key: string; stale: ObjectInfo[] }
  /** Another sweep's marker younger than 2 x the longer J: this sweep's own marker was removed again (`releaseError` if that failed). */
  | {
      status: 'busy';
      key: string;
      other: { key: string; lastModified: Date };
      release?: MarkerLeft;
      /**
       * No other young marker is older than this sweep's own: they were written at about the same time (two
       * prunes started together), none of them by a sweep well under way. Claiming once more after a random
       * wait lets one of them sweep.
       */
      together: boolean;
    };

/** A marker that could not be deleted: `held` when an immutability lock keeps it (not a failure). */
export interface MarkerLeft {
  message: string;
  held: boolean;
}

/**
 * Writes this sweep's marker and looks for others. Throws (a TcabError naming the target and the key) when the
 * marker cannot be written or the folder cannot be listed: then the target is not swept.
 */
export async function claimSweep(
  target: Target,
  options: { database: string; jobTimeoutMs: number; startedAt: Date; signal?: AbortSignal },
): Promise<SweepClaim> {
  const { database, jobTimeoutMs, startedAt, signal } = options;
  const where = `target "${target.name}" (${target.url})`;
  const key = sweepMarkerKey(database, startedAt, jobTimeoutMs);
  const marker: SweepMarker = {
    kind: 'tcab-backup.sweep',
    version: 1,
    database,
    startedAt: startedAt.toISOString(),
    jobTimeoutMs,
    runId: randomBytes(4).toString('hex'),
  };
  const hint =
    'the reachability of the target and that the function app may write, list and delete under sweeps/ there; the chunks are collected by the next prune';
  try {
    await target.put(key, Buffer.from(`${JSON.stringify(marker)}\n`), {
      ifNoneMatch: '*',
      contentType: 'application/json',
      ...(signal ? { signal } : {}),
    });
  } catch (e) {
    if (signal?.aborted) throw e;
    // A write whose answers were all lost may have landed: the key is this prune's alone, so deleting it is safe.
    const left = await removeMarker(target, key, signal);
    const after = left
      ? `; it may have landed all the same, and ${left.message}`
      : '; in case it had landed all the same, it was deleted again: no marker of this prune is left';
    throw new TcabError(
      `Collecting the chunks of "${database}" on ${where} did not start: its sweep marker ${key} could not be written (${errorMessage(e)}), and without it another prune could sweep at the same time${after}`,
      { hint, cause: e },
    );
  }
  let listed: ObjectInfo[];
  try {
    listed = [];
    for await (const o of target.list(sweepsPrefix(database), signal ? { signal } : {})) listed.push(o);
  } catch (e) {
    if (signal?.aborted) throw e;
    const left = (await removeMarker(target, key, signal))?.message;
    throw new TcabError(
      `Collecting the chunks of "${database}" on ${where} did not start: listing ${sweepsPrefix(database)} after writing its sweep marker ${key} failed (${errorMessage(e)}), so whether another prune is sweeping is unknown${left ? `; ${left}` : ''}`,
      { hint, cause: e },
    );
  }
  const own = listed.find((o) => o.key === key);
  if (!own) {
    const left = (await removeMarker(target, key, signal))?.message;
    throw new TcabError(
      `Collecting the chunks of "${database}" on ${where} did not start: its sweep marker ${key} was written, but the listing of ${sweepsPrefix(database)} does not show it${left ? `; ${left}` : ''}`,
      { hint },
    );
  }
  const others = listed.filter((o) => o.key !== key && parseSweepMarkerKey(o.key)?.database === database);
  const young = others.filter((o) => !isStale(o, own, jobTimeoutMs));
  if (young.length === 0) return { status: 'claimed', key, stale: others };
  const newest = young.reduce((a, b) => (b.lastModified > a.lastModified ? b : a));
  const together = young.every((o) => o.lastModified.getTime() >= own.lastModified.getTime());
  const release = await removeMarker(target, key, signal);
  return {
    status: 'busy',
    key,
    other: { key: newest.key, lastModified: newest.lastModified },
    ...(release ? { release } : {}),
    together,
  };
}

/**
 * Whether another marker is stale beside this sweep's own: older than 2 x the longer of the two prunes' J (its
 * sweep has stopped deleting). Its J comes from its key; a key without J (written before keys carried it)
 * counts as this prune's J; a key whose J cannot be read is never stale.
 */
function isStale(other: ObjectInfo, own: ObjectInfo, ownJobTimeoutMs: number): boolean {
  const parsed = parseSweepMarkerKey(other.key);
  if (!parsed || parsed.unknown) return false;
  const limit = 2 * Math.max(ownJobTimeoutMs, parsed.jobTimeoutMs ?? ownJobTimeoutMs);
  return own.lastModified.getTime() - other.lastModified.getTime() >= limit;
}

/**
 * Removes a marker (this sweep's own once its deletes have settled, or a stale one). Returns what went wrong,
 * naming the key, or undefined. Retried as any delete: no other job ever writes a marker's key again. A marker
 * an immutability lock holds stays until the lock expires: the sweeps of the next 2J step back for it, later
 * ones ignore it.
 */
export async function removeMarker(target: Target, key: string, signal?: AbortSignal, stale = false): Promise<MarkerLeft | undefined> {
  try {
    await target.delete(key, signal ? { signal } : {});
    return undefined;
  } catch (e) {
    if (signal?.aborted) throw e;
    if (e instanceof NotFoundError) return undefined; // gone already (or never written): nothing is left
    if (e instanceof ObjectHeldError)
      return {
        held: true,
        message: `the ${stale ? 'stale ' : ''}sweep marker ${key} is held by an immutability lock and stays until it expires${stale ? ' (it is ignored)' : ': prunes skip the chunk sweep of this target until it is 2 x TCAB_BACKUP_JOB_TIMEOUT old (the longer J of the two prunes)'}`,
      };
    const message = stale
      ? `the stale sweep marker ${key} could not be deleted (${errorMessage(e)}): it is ignored, and the next sweep tries again`
      : `the sweep marker ${key} could not be deleted (${errorMessage(e)}): prunes skip this target's chunk sweep until it is 2 x TCAB_BACKUP_JOB_TIMEOUT old (the longer of the two prunes' J), or delete it by hand`;
    return { held: false, message };
  }
}
