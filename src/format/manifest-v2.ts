/**
 * The manifest of a format-2 (deduplicated) snapshot. Not wired in yet: this is the shape, its checks and its
 * serialization, for the snapshot, restore, replicate, verify and prune jobs to adopt.
 *
 * It carries everything a v1 manifest does (src/catalog/manifest.ts: the agent's description of the database,
 * its tables and row counts, the integrity check, the plain file's bytes and sha256, timings, trigger, tags,
 * when stored, where replicated from) except the single artifact, which becomes:
 *   - `chunking`: the chunker and its parameters. Restore does not need them (it only concatenates), but the
 *     snapshot job must cut with the same ones to deduplicate against what a target already holds.
 *   - `encoding`: each chunk is stored as one zstd frame (chunk-codec.ts) at this level.
 *   - `chunks`: the file in order, each `[sha256 of the plain bytes, plain length, stored length]`. Stored at
 *     chunk-key.ts's address. A hash may repeat (the same bytes twice in one file).
 *   - `stored.bytes`: the sum of the stored lengths: what restoring this snapshot downloads. It is not what
 *     the snapshot added to a target; that depends on what the target held before.
 *
 * Chunk refs are tuples, not objects, because they are most of the manifest: about 80 bytes of JSON each,
 * 65,000 of them for a 1 GB database (some 5 MB a manifest). serializeManifestV2 writes one per line after
 * every other field, so the manual restore can pick the hashes with sed (README recipe, tested in
 * test/format/manifest-v2.test.ts):
 *
 *   sed -n 's|^\["\([0-9a-f]\{64\}\)".*|\1|p' $ID.json | while read h; do cat chunks/tcab/$(echo $h | cut -c1-2)/$h.zst; done | zstd -d > tcab.sqlite
 *
 * or with jq: `jq -r '.chunks[][0]' $ID.json`.
 */
import { z } from 'zod';
import { SnapshotDescriptionSchema } from '../agent/protocol.js';
import { TriggerSchema } from '../catalog/manifest.js';
import { TcabError } from '../errors.js';
import { chunkerParams } from './chunker.js';

export const MANIFEST_V2_FORMAT_VERSION = 2;

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a lower-case hex sha256');

/** [sha256 of the plain bytes, plain length, stored (compressed) length]. */
export const ChunkRefV2Schema = z.tuple([Sha256Hex, z.number().int().positive(), z.number().int().positive()]);
export type ChunkRefV2 = z.infer<typeof ChunkRefV2Schema>;

export const ChunkingSchema = z
  .object({
    /** chunker.ts's CHUNKER_ALGORITHM for chunks cut by this code. */
    algorithm: z.string().min(1).max(64),
    /** gear-table.ts's GEAR_TABLE_SHA256: chunks cut with another table do not deduplicate with these. */
    gearTableSha256: Sha256Hex,
    minBytes: z.number().int(),
    avgBytes: z.number().int(),
    maxBytes: z.number().int(),
    normalization: z.number().int(),
  })
  .strict()
  .superRefine((c, ctx) => {
    try {
      chunkerParams({ minBytes: c.minBytes, avgBytes: c.avgBytes, maxBytes: c.maxBytes, normalization: c.normalization });
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
    }
  });
export type Chunking = z.infer<typeof ChunkingSchema>;

export const ChunkEncodingSchema = z.object({ compression: z.literal('zstd'), level: z.number().int().min(1).max(19) }).strict();

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
    stored: z.object({ bytes: z.number().int().nonnegative() }).strict(),
    chunks: z.array(ChunkRefV2Schema),
  })
  .superRefine((m, ctx) => {
    if (m.databaseName !== m.database.name) {
      ctx.addIssue({
        code: 'custom',
        path: ['databaseName'],
        message: `databaseName "${m.databaseName}" differs from database.name "${m.database.name}"`,
      });
    }
    const { minBytes, maxBytes } = m.chunking;
    let plain = 0;
    let stored = 0;
    m.chunks.forEach(([, bytes, storedBytes], i) => {
      plain += bytes;
      stored += storedBytes;
      const last = i === m.chunks.length - 1;
      if (bytes > maxBytes || (!last && bytes < minBytes)) {
        ctx.addIssue({
          code: 'custom',
          path: ['chunks', i, 1],
          message: `chunk ${i} is ${bytes} bytes, outside the chunker's ${last ? 1 : minBytes}..${maxBytes}`,
        });
      }
    });
    if (plain !== m.snapshot.bytes) {
      ctx.addIssue({
        code: 'custom',
        path: ['chunks'],
        message: `the chunks add up to ${plain} bytes, not the snapshot's ${m.snapshot.bytes}`,
      });
    }
    if (stored !== m.stored.bytes) {
      ctx.addIssue({
        code: 'custom',
        path: ['stored', 'bytes'],
        message: `the chunks' stored lengths add up to ${stored}, not stored.bytes ${m.stored.bytes}`,
      });
    }
  });
export type ManifestV2 = z.infer<typeof ManifestV2Schema>;

/** The distinct chunk hashes of a manifest, in first-use order: what a restore or a copy must fetch. */
export function distinctChunks(m: Pick<ManifestV2, 'chunks'>): string[] {
  return [...new Set(m.chunks.map((c) => c[0]))];
}

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
  if (!result.success) {
    const problems = result.error.issues.slice(0, 10).map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`);
    const more = result.error.issues.length > 10 ? `; and ${result.error.issues.length - 10} more` : '';
    throw new TcabError(`The manifest ${where} is not a valid format-2 manifest: ${problems.join('; ')}${more}`, {
      hint: 'the object is damaged, or was written by a newer or older tcab-backup; restore it with the version that wrote it',
      code: 'MANIFEST_INVALID',
    });
  }
  return result.data;
}

/**
 * The manifest's JSON: every field but the chunk list on the first line, then one chunk ref per line, then
 * the closing brackets. JSON.stringify escapes newlines inside strings, so only chunk lines begin with `["`.
 * Checked before it is written: an invalid manifest is never produced.
 */
export function serializeManifestV2(m: ManifestV2): string {
  const checked = ManifestV2Schema.parse(m);
  const { chunks, ...rest } = checked;
  const head = JSON.stringify(rest);
  const lines = chunks.map((c) => JSON.stringify(c));
  return `${head.slice(0, -1)},"chunks":[\n${lines.join(',\n')}\n]}\n`;
}
