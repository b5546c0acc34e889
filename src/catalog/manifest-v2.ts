/**
 * The manifest of a format-2 (deduplicated) snapshot (docs/format-2.md, "A snapshot"): the commit marker of a
 * snapshot whose data is a chunk list and shared chunks. Beside the format-1 manifest (manifest.ts); the
 * catalog reads both (catalog.ts's readManifest). The chunk list's own format is src/format/chunk-list.ts.
 *
 * It carries everything a v1 manifest does (the agent's description of the database, its tables and row
 * counts, the integrity check, the plain file's bytes and sha256, timings, trigger, tags, when stored, where
 * replicated from) except the single artifact, which becomes:
 *   - `chunkList`: the key, bytes, sha256 and line count of the snapshot's chunk list object
 *     (`snapshots/<db>/<YYYY>/<MM>/<DD>/<id>.chunks`, layout.ts), which names the chunks;
 *   - `chunking`: the chunker and its parameters. Restore does not need them (it only concatenates), but the
 *     snapshot job must cut with the same ones to deduplicate against what a target already holds;
 *   - `encoding`: each chunk is stored as one zstd frame (src/format/chunk-codec.ts) at this level;
 *   - `stored.bytes`: the sum of the stored chunk sizes: what restoring this snapshot downloads. It is not what
 *     the snapshot added to a target; that depends on what the target held before.
 * So the manifest stays a few KB whatever the size of the database: prune, status and replicate read every
 * manifest, while only restore, verify and the chunk collection read chunk lists.
 */
import { z } from 'zod';
import { SnapshotDescriptionSchema } from '../agent/protocol.js';
import { TcabError } from '../errors.js';
import { ChunkingDescriptionSchema, type ChunkingDescription } from '../format/params.js';
import { TriggerSchema } from './manifest.js';

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a lower-case hex sha256');

export const MANIFEST_V2_FORMAT_VERSION = 2;

/** The chunker and its parameters (src/format/params.ts's schema, shared with the agent's description). */
export const ChunkingSchema = ChunkingDescriptionSchema;
export type Chunking = ChunkingDescription;

export const ChunkEncodingSchema = z.object({ compression: z.literal('zstd'), level: z.number().int().min(1).max(19) }).strict();

export const ChunkListInfoSchema = z
  .object({
    /** The chunk list's key, relative to the target prefix (checked against the layout by the catalog). */
    key: z.string().min(1),
    /** Size and sha256 of the chunk list object. */
    bytes: z.number().int().positive(),
    sha256: Sha256Hex,
    /** Its number of lines: the chunks of the file, repeats included. */
    count: z.number().int().positive(),
  })
  .strict();
export type ChunkListInfo = z.infer<typeof ChunkListInfoSchema>;

export const ManifestV2Schema = SnapshotDescriptionSchema.omit({ artifact: true })
  .extend({
    formatVersion: z.literal(MANIFEST_V2_FORMAT_VERSION),
    /** Database name used in keys; equals database.name. */
    databaseName: z.string(),
    trigger: TriggerSchema,
    tags: z.array(z.string().min(1).max(64)),
    /** When the manifest was written to this target. */
    storedAt: z.string().datetime({ offset: true }),
    /** Set on copies made by replication: the target the chunks and manifest came from. */
    replicatedFrom: z.string().optional(),
    chunking: ChunkingSchema,
    encoding: ChunkEncodingSchema,
    /** The sum of the chunk list's stored lengths: what a restore downloads. */
    stored: z.object({ bytes: z.number().int().positive() }).strict(),
    chunkList: ChunkListInfoSchema,
  })
  .superRefine((m, ctx) => {
    if (m.databaseName !== m.database.name) {
      ctx.addIssue({
        code: 'custom',
        path: ['databaseName'],
        message: `databaseName "${m.databaseName}" differs from database.name "${m.database.name}"`,
      });
    }
    const { count } = m.chunkList;
    const { minBytes, maxBytes } = m.chunking;
    // Every chunk but the last is minBytes..maxBytes long, the last 1..maxBytes.
    if (m.snapshot.bytes > count * maxBytes || m.snapshot.bytes < (count - 1) * minBytes + 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['chunkList', 'count'],
        message: `${count} chunks of ${minBytes}..${maxBytes} bytes cannot make the snapshot's ${m.snapshot.bytes} bytes`,
      });
    }
  });
export type ManifestV2 = z.infer<typeof ManifestV2Schema>;

/**
 * Parses and checks a v2 manifest's JSON. `where` names it (key and target) in the error, which lists every
 * problem with its path.
 */
export function parseManifestV2(text: string, where: string): ManifestV2 {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TcabError(`The manifest ${where} is not JSON: ${(e as Error).message}`, {
      hint: 'the object is damaged or not a manifest',
      code: 'MANIFEST_INVALID',
    });
  }
  const result = ManifestV2Schema.safeParse(json);
  if (!result.success) throw invalidManifestV2(result.error.issues, where);
  return result.data;
}

/** The error for a manifest that does not pass ManifestV2Schema, naming it and its problems with their paths. */
export function invalidManifestV2(issues: z.ZodError['issues'], where: string): TcabError {
  const problems = issues.slice(0, 10).map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`);
  const more = issues.length > 10 ? `; and ${issues.length - 10} more` : '';
  return new TcabError(`The manifest ${where} is not a valid format-2 manifest: ${problems.join('; ')}${more}`, {
    hint: 'the object is damaged, or was written by a newer or older tcab-backup; restore it with the version that wrote it',
    code: 'MANIFEST_INVALID',
  });
}

/** The manifest's JSON (checked first: an invalid manifest is never produced). */
export function serializeManifestV2(m: ManifestV2): string {
  return `${JSON.stringify(ManifestV2Schema.parse(m), null, 2)}\n`;
}
