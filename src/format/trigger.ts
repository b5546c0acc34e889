/**
 * What started a snapshot, as every manifest records it (format 1 and format 2). Here, below the catalog, so
 * the format-2 manifest (manifest-v2.ts) can carry it without src/format importing src/catalog, which reads
 * manifests of both formats and so imports src/format.
 */
import { z } from 'zod';

export const TriggerSchema = z.object({
  /** What started it: the timer, the HTTP function, the CLI, or a replication copy. */
  kind: z.enum(['timer', 'manual', 'cli']),
  reason: z.string().max(500).optional(),
});
export type Trigger = z.infer<typeof TriggerSchema>;
