/**
 * One target's catalog as replicate and prune need it: every snapshot with its manifest read and checked
 * against the listing, so both jobs agree on what "this target has snapshot X" means: a readable manifest
 * whose artifact is listed at the size the manifest gives.
 */
import { listCatalog, manifestDataBytes, manifestDataKey, readManifest } from './catalog.js';
import { idTime } from './layout.js';
import type { Manifest } from './manifest.js';
import { NotFoundError, errorMessage } from '../errors.js';
import type { ObjectInfo, Target } from '../targets/target.js';
import { forEachLimit } from '../util/pool.js';

export interface StoredSnapshot {
  id: string;
  /** The manifest's createdAt; the time in the id when the manifest cannot be read. */
  time: Date;
  manifestObject: ObjectInfo;
  /** The data object as listed: the artifact (format 1) or the chunk list (format 2). */
  artifactObject: ObjectInfo | undefined;
  manifest: Manifest | undefined;
  /** Why the manifest cannot be used (unreadable, invalid, pointing elsewhere). */
  manifestError: string | undefined;
  /**
   * The manifest is valid and its data object (artifact, or format 2's chunk list) is listed at the size it
   * gives. For format 2 the chunks themselves are not looked at here (they are shared; see docs/format-2.md). Every manifest is written only
   * after the bytes under it were hashed and matched, so a complete snapshot counts as verified.
   */
  complete: boolean;
  /** Why the snapshot is not complete. */
  problem: string | undefined;
}

export interface TargetCatalog {
  target: Target;
  /** Newest first. */
  snapshots: StoredSnapshot[];
  byId: Map<string, StoredSnapshot>;
  /** Data objects without a manifest. */
  orphans: ObjectInfo[];
}

/** Lists the target completely (a failed page throws) and reads every manifest. */
export async function readTargetCatalog(
  target: Target,
  database: string,
  options: { signal?: AbortSignal; concurrency?: number } = {},
): Promise<TargetCatalog> {
  const signalOption = options.signal ? { signal: options.signal } : {};
  const listing = await listCatalog(target, database, signalOption);
  const read: Array<StoredSnapshot | undefined> = new Array(listing.snapshots.length);
  await forEachLimit(listing.snapshots, options.concurrency ?? 8, async (listed, i) => {
    let manifest: Manifest | undefined;
    let manifestError: string | undefined;
    try {
      manifest = await readManifest(target, database, listed.id, signalOption);
      manifestDataKey(manifest);
      if (manifest.databaseName !== database) throw new Error(`it describes database "${manifest.databaseName}", not "${database}"`);
    } catch (e) {
      if (options.signal?.aborted) throw e;
      // Removed between the listing and the read (a concurrent prune): the snapshot is simply gone.
      if (e instanceof NotFoundError) return;
      manifest = undefined;
      manifestError = errorMessage(e);
    }
    const artifact = manifest ? (manifest.formatVersion === 1 ? listed.artifact : listed.chunkList) : (listed.artifact ?? listed.chunkList);
    const what = manifest?.formatVersion === 2 ? 'chunk list' : 'artifact';
    const problem = manifestError
      ? `manifest unusable: ${manifestError}`
      : !artifact
        ? `manifest without ${what} (${manifestDataKey(manifest!)} is missing)`
        : artifact.size !== manifestDataBytes(manifest!)
          ? `${what} ${artifact.key} is ${artifact.size} bytes, the manifest says ${manifestDataBytes(manifest!)}`
          : undefined;
    const createdAt = manifest ? new Date(manifest.createdAt) : undefined;
    read[i] = {
      id: listed.id,
      time: createdAt && !Number.isNaN(createdAt.getTime()) ? createdAt : idTime(listed.id),
      manifestObject: listed.manifest,
      artifactObject: artifact,
      manifest,
      manifestError,
      complete: problem === undefined,
      problem,
    };
  });
  const snapshots = read.filter((s): s is StoredSnapshot => s !== undefined);
  return { target, snapshots, byId: new Map(snapshots.map((s) => [s.id, s])), orphans: listing.orphans };
}
