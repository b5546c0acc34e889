/**
 * Reading and writing the catalog on one target: which snapshots exist (a manifest is the commit marker),
 * which data objects have no manifest (orphans), and the manifests themselves.
 */
import { text } from 'node:stream/consumers';
import { NotFoundError, TargetError, TcabError, errorMessage, isAbortError } from '../errors.js';
import type { ObjectInfo, Target } from '../targets/target.js';
import { ManifestV2Schema, invalidManifestV2, serializeManifestV2, type ManifestV2 } from './manifest-v2.js';
import {
  artifactKey,
  chunkListKey,
  idTime,
  manifestKey,
  parseArtifactKey,
  parseChunkListKey,
  parseManifestKey,
  snapshotsPrefix,
} from './layout.js';
import { ManifestSchema, type Manifest, type ManifestV1 } from './manifest.js';

export interface CatalogListing {
  /** Snapshots that have a manifest, newest first (by id, which starts with the creation time). */
  snapshots: Array<{
    id: string;
    time: Date;
    manifest: ObjectInfo;
    /** Format 1's data object. */
    artifact: ObjectInfo | undefined;
    /** Format 2's data object (the chunk list; the chunks live under chunks/, shared). */
    chunkList: ObjectInfo | undefined;
  }>;
  /** Data objects (artifacts, chunk lists) without a manifest: in-flight uploads or garbage, depending on their age. */
  orphans: ObjectInfo[];
}

/** One complete listing of the snapshots folder; a failure on any page throws (never a partial listing). */
export async function listCatalog(target: Target, database: string, options: { signal?: AbortSignal } = {}): Promise<CatalogListing> {
  const manifests = new Map<string, ObjectInfo>();
  const artifacts = new Map<string, ObjectInfo>();
  const chunkLists = new Map<string, ObjectInfo>();
  for await (const info of target.list(snapshotsPrefix(database), options)) {
    const m = parseManifestKey(info.key);
    if (m && m.database === database) {
      manifests.set(m.id, info);
      continue;
    }
    const a = parseArtifactKey(info.key);
    if (a && a.database === database) {
      artifacts.set(a.id, info);
      continue;
    }
    const c = parseChunkListKey(info.key);
    if (c && c.database === database) chunkLists.set(c.id, info);
  }
  const snapshots = [...manifests.entries()]
    .map(([id, manifest]) => ({ id, time: idTime(id), manifest, artifact: artifacts.get(id), chunkList: chunkLists.get(id) }))
    .sort((x, y) => (x.id < y.id ? 1 : x.id > y.id ? -1 : 0));
  const orphans = [...artifacts.entries(), ...chunkLists.entries()]
    .filter(([id]) => !manifests.has(id))
    .map(([, info]) => info)
    .sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : 0));
  return { snapshots, orphans };
}

export async function readManifest(
  target: Target,
  database: string,
  id: string,
  options: { signal?: AbortSignal } = {},
): Promise<Manifest> {
  const key = manifestKey(database, id);
  const { body } = await target.get(key, options);
  let raw: string;
  try {
    raw = await text(body);
  } catch (e) {
    if (isAbortError(e) || options.signal?.aborted || e instanceof TargetError) throw e;
    // A body that breaks off mid-read is a raw stream error ("Premature close"): name the manifest it was.
    throw new TargetError({
      target: target.name,
      url: target.url,
      operation: 'read of manifest',
      key,
      detail: `its body broke off: ${errorMessage(e)}`,
      hint: 'run the job again; if it keeps failing, check the target (reachability, the object) or use another target',
      transient: true,
      cause: e,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (e) {
    throw new TcabError(`Manifest ${key} on target "${target.name}" is not valid JSON`, {
      hint: 'the object was damaged or written by something else; restore from another target and let replicate rewrite it',
      cause: e,
    });
  }
  const version = (json as { formatVersion?: unknown } | null)?.formatVersion;
  let manifest: Manifest;
  if (version === 2) {
    const parsed = ManifestV2Schema.safeParse(json);
    if (!parsed.success) throw invalidManifestV2(parsed.error.issues, `${key} on target "${target.name}"`);
    manifest = parsed.data;
  } else {
    const parsed = ManifestSchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new TcabError(
        `Manifest ${key} on target "${target.name}" does not match format version 1: ${issue?.path.join('.')}: ${issue?.message}`,
        {
          hint: 'was it written by a newer tcab-backup? Upgrade, or restore from another target',
        },
      );
    }
    manifest = parsed.data;
  }
  if (manifest.id !== id) {
    throw new TcabError(`Manifest ${key} on target "${target.name}" describes snapshot ${manifest.id}, not ${id}`, {
      hint: 'the manifest was copied to the wrong key; delete it and run replicate',
    });
  }
  return manifest;
}

export async function writeManifest(target: Target, manifest: Manifest, options: { signal?: AbortSignal } = {}): Promise<void> {
  const text = manifest.formatVersion === 2 ? serializeManifestV2(manifest) : JSON.stringify(manifest, null, 2) + '\n';
  await target.put(manifestKey(manifest.databaseName, manifest.id), Buffer.from(text), {
    ...options,
    contentType: 'application/json',
  });
}

/** The artifact key recorded in a manifest, cross-checked against the layout so a bad manifest cannot point elsewhere. */
export function manifestArtifactKey(manifest: ManifestV1): string {
  const expected = artifactKey(manifest.databaseName, manifest.id, manifest.artifact.compression);
  if (manifest.key !== expected) {
    throw new TcabError(`Manifest of snapshot ${manifest.id} names artifact "${manifest.key}", expected "${expected}"`, {
      hint: 'the manifest was edited or damaged; restore from another target',
    });
  }
  return expected;
}

/** The chunk list key recorded in a format-2 manifest, cross-checked against the layout like manifestArtifactKey. */
export function manifestChunkListKey(manifest: ManifestV2): string {
  const expected = chunkListKey(manifest.databaseName, manifest.id);
  if (manifest.chunkList.key !== expected) {
    throw new TcabError(`Manifest of snapshot ${manifest.id} names chunk list "${manifest.chunkList.key}", expected "${expected}"`, {
      hint: 'the manifest was edited or damaged; restore from another target',
    });
  }
  return expected;
}

/** The key of the snapshot's data object: the artifact (format 1) or the chunk list (format 2), checked. */
export function manifestDataKey(manifest: Manifest): string {
  return manifest.formatVersion === 1 ? manifestArtifactKey(manifest) : manifestChunkListKey(manifest);
}

/** The size the manifest gives its data object (the artifact, or the chunk list). */
export function manifestDataBytes(manifest: Manifest): number {
  return manifest.formatVersion === 1 ? manifest.artifact.bytes : manifest.chunkList.bytes;
}

/** Reads the manifests of the listed snapshots with bounded concurrency, newest first. */
export async function readManifests(
  target: Target,
  database: string,
  ids: string[],
  options: { signal?: AbortSignal; concurrency?: number } = {},
): Promise<Array<{ id: string; manifest?: Manifest; error?: Error }>> {
  const out: Array<{ id: string; manifest?: Manifest; error?: Error }> = new Array(ids.length);
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const i = next++;
      const id = ids[i]!;
      try {
        out[i] = { id, manifest: await readManifest(target, database, id, options) };
      } catch (e) {
        if (e instanceof NotFoundError)
          out[i] = {
            id,
            error: new TcabError(`Snapshot ${id} vanished from target "${target.name}" while listing (pruned concurrently?)`),
          };
        else out[i] = { id, error: e as Error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency ?? 8, ids.length) }, worker));
  return out;
}
