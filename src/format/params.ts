/**
 * The fixed parameters of snapshot format 2 (docs/format-2.md, "Chunks"): how the agent cuts a snapshot and how
 * a chunk is stored. Both sides use these: the agent to cut and compress, the client to bound what it accepts.
 *
 * This module imports nothing from src/agent or src/catalog, so the agent protocol can describe a format-2
 * snapshot with it without an import cycle (src/catalog/manifest-v2.ts, the format-2 manifest, imports the protocol).
 */
import { z } from 'zod';
import { chunkerDescription, chunkerParams, type ChunkerParams } from './chunker.js';

/** Min 16 KiB, average 64 KiB, max 256 KiB, normalization level 2: the format-2 cut (docs/format-2.md, "Chunks"). */
export const FORMAT2_CHUNKING: Readonly<ChunkerParams> = Object.freeze(
  chunkerParams({ minBytes: 16 * 1024, avgBytes: 64 * 1024, maxBytes: 256 * 1024, normalization: 2 }),
);

/** What a snapshot description and a manifest record of the format-2 cut: the chunker, its gear table and sizes. */
export const FORMAT2_CHUNKING_DESCRIPTION = Object.freeze(chunkerDescription(FORMAT2_CHUNKING));

/**
 * The most bytes one stored chunk (one zstd frame) of a plain chunk of `plainBytes` can take: zstd's
 * ZSTD_COMPRESSBOUND, which covers the frame header, the block headers and the content checksum of a chunk
 * that does not compress at all.
 */
export function zstdFrameBound(plainBytes: number): number {
  const small = 128 * 1024;
  return plainBytes + (plainBytes >>> 8) + (plainBytes < small ? (small - plainBytes) >>> 11 : 0);
}

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a lower-case hex sha256');

/** The chunker named in a format-2 description: also the manifest's `chunking` (src/catalog/manifest-v2.ts). */
export const ChunkingDescriptionSchema = z
  .object({
    algorithm: z.string().min(1).max(64),
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
export type ChunkingDescription = z.infer<typeof ChunkingDescriptionSchema>;
