/**
 * Deleting from a target without ever leaving a manifest whose data is gone, even while replicate copies
 * to the same target: the manifest goes first, then the data; and afterwards the manifest key is looked at
 * once more. Replicate does the mirror image (data, manifest, then look at the data again; see
 * replicate/copy.ts). Whichever of the two acts last sees the other's work and withdraws a manifest whose
 * data is gone, so no interleaving ends with a visible snapshot that cannot be restored.
 */
import { manifestDataBytes, manifestDataKey, readManifest } from '../../catalog/catalog.js';
import { manifestKey, parseDataKey } from '../../catalog/layout.js';
import { NotFoundError, ObjectHeldError, TcabError, errorMessage } from '../../errors.js';
import type { ObjectInfo, Target } from '../../targets/target.js';
import type { StoredSnapshot } from '../../catalog/target-catalog.js';

export type RemoveOutcome =
  | { status: 'removed' }
  /** An immutability lock or legal hold kept some of it; `detail` says what. */
  | { status: 'held'; detail: string }
  /** Left in place: a concurrent replicate stored it again, or the object is no longer garbage. */
  | { status: 'left'; detail: string };

function signalOf(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return { signal };
}

/**
 * After our deletes: a manifest now at the key was written by a concurrent copy. If its data is there, the
 * copy is good and stays; if not, the manifest is withdrawn.
 */
async function settle(target: Target, database: string, id: string, signal: AbortSignal | undefined): Promise<'clear' | 'recreated'> {
  let manifest;
  try {
    manifest = await readManifest(target, database, id, signalOf(signal));
  } catch (e) {
    if (e instanceof NotFoundError) return 'clear';
    throw e;
  }
  const key = manifestDataKey(manifest);
  try {
    const info = await target.head(key, signalOf(signal));
    if (info.size === manifestDataBytes(manifest)) return 'recreated';
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
  }
  await target.delete(manifestKey(database, id), signalOf(signal));
  return 'clear';
}

/**
 * Removes one snapshot: manifest first (then it no longer exists), then its data object: the artifact, or
 * format 2's chunk list. A format-2 snapshot's chunks are shared with other snapshots and stay: the chunk
 * sweep after the target's deletions (chunks.ts; docs/format-2.md, "Collecting chunks") collects the ones no
 * manifest references once they are older than the grace.
 */
export async function removeSnapshot(
  target: Target,
  database: string,
  snapshot: StoredSnapshot,
  signal?: AbortSignal,
): Promise<RemoveOutcome> {
  const dataKeys = new Set<string>();
  if (snapshot.manifest) dataKeys.add(manifestDataKey(snapshot.manifest));
  if (snapshot.artifactObject) dataKeys.add(snapshot.artifactObject.key);
  try {
    await target.delete(manifestKey(database, snapshot.id), signalOf(signal));
  } catch (e) {
    if (e instanceof ObjectHeldError)
      return { status: 'held', detail: 'its manifest is under an immutability lock or legal hold; nothing was removed' };
    throw e;
  }
  const held: string[] = [];
  for (const key of dataKeys) {
    try {
      await target.delete(key, signalOf(signal));
    } catch (e) {
      if (e instanceof ObjectHeldError) held.push(key);
      else {
        throw new TcabError(
          `Snapshot ${snapshot.id} on target "${target.name}": the manifest was removed but deleting ${key} failed: ${errorMessage(e)}`,
          {
            hint: 'the data object is now garbage without a manifest; the next prune removes it once it is a day old',
            cause: e,
          },
        );
      }
    }
  }
  if ((await settle(target, database, snapshot.id, signal)) === 'recreated') {
    return { status: 'left', detail: 'a replicate run stored it again while it was being removed; the next prune decides again' };
  }
  if (held.length)
    return { status: 'held', detail: `its manifest was removed, but ${held.join(', ')} is under an immutability lock or legal hold` };
  return { status: 'removed' };
}

/** Removes a data object (artifact or chunk list) without a manifest, if it still is one and still older than `cutoff`. */
export async function removeOrphan(
  target: Target,
  database: string,
  orphan: ObjectInfo,
  cutoff: Date,
  signal?: AbortSignal,
): Promise<RemoveOutcome> {
  const parsed = parseDataKey(orphan.key);
  if (!parsed || parsed.database !== database) return { status: 'left', detail: 'not a data object of this database' };
  try {
    const now = await target.head(orphan.key, signalOf(signal));
    if (now.etag !== orphan.etag || now.lastModified.getTime() >= cutoff.getTime()) {
      return { status: 'left', detail: 'it changed since the listing (a copy in progress?)' };
    }
  } catch (e) {
    if (e instanceof NotFoundError) return { status: 'left', detail: 'already gone' };
    throw e;
  }
  try {
    await target.head(manifestKey(database, parsed.id), signalOf(signal));
    return { status: 'left', detail: 'its manifest has appeared since the listing' };
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
  }
  try {
    await target.delete(orphan.key, signalOf(signal));
  } catch (e) {
    if (e instanceof ObjectHeldError) return { status: 'held', detail: `${orphan.key} is under an immutability lock or legal hold` };
    throw e;
  }
  if ((await settle(target, database, parsed.id, signal)) === 'recreated') {
    return { status: 'left', detail: 'a replicate run stored the snapshot again meanwhile' };
  }
  return { status: 'removed' };
}
