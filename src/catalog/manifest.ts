/**
 * The manifest: the agent's snapshot description plus what the functions know (format version, database,
 * trigger, tags, key). A snapshot exists on a target only when its manifest does.
 */
import { z } from 'zod';
import { SnapshotDescriptionSchema } from '../agent/protocol.js';

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
export type Manifest = z.infer<typeof ManifestSchema>;

export function isPinned(m: Pick<Manifest, 'tags'>): boolean {
  return m.tags.includes(PIN_TAG);
}
