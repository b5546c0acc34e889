/**
 * The manifest: the agent's snapshot description plus what the functions know (format version, database,
 * trigger, tags, key). A snapshot exists on a target only when its manifest does.
 */
import { z } from 'zod';
import { SnapshotDescriptionSchema } from '../agent/protocol.js';
// Type only: manifest-v2.ts imports TriggerSchema from here.
import type { ManifestV2 } from './manifest-v2.js';

export type { ManifestV2 } from './manifest-v2.js';

export const MANIFEST_FORMAT_VERSION = 1;
export const PIN_TAG = 'pinned';

export const TriggerSchema = z.object({
  /** What started it: the timer, the HTTP function, the CLI, or a replication copy. */
  kind: z.enum(['timer', 'manual', 'cli']),
  reason: z.string().max(500).optional(),
});
export type Trigger = z.infer<typeof TriggerSchema>;

export const ManifestSchema = SnapshotDescriptionSchema.extend({
  formatVersion: z.literal(MANIFEST_FORMAT_VERSION),
  /** Database name used in keys; equals database.name. */
  databaseName: z.string(),
  trigger: TriggerSchema,
  tags: z.array(z.string().min(1).max(64)),
  /** The artifact's key, relative to the target prefix. */
  key: z.string().min(1),
  /** When the manifest was written to this target. */
  storedAt: z.string().datetime({ offset: true }),
  /** Set on copies made by replication: the target the bytes came from. */
  replicatedFrom: z.string().optional(),
});
/** A format-1 manifest: the snapshot is one artifact. */
export type ManifestV1 = z.infer<typeof ManifestSchema>;
/** A manifest of either format, told apart by formatVersion (catalog.ts's readManifest returns this). */
export type Manifest = ManifestV1 | ManifestV2;

/** The size of the snapshot's data when stored: the artifact (format 1), the sum of its chunks (format 2). */
export function storedBytes(m: Manifest): number {
  return m.formatVersion === 1 ? m.artifact.bytes : m.stored.bytes;
}

/** How the stored data is compressed: the artifact's compression, or "zstd chunks" for format 2. */
export function storedCompression(m: Manifest): string {
  return m.formatVersion === 1 ? m.artifact.compression : `${m.encoding.compression} chunks`;
}

export function isPinned(m: Pick<Manifest, 'tags'>): boolean {
  return m.tags.includes(PIN_TAG);
}
