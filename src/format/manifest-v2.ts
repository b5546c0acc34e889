/**
 * The manifest of a format-2 (deduplicated) snapshot, and its chunk list (docs/format-2.md, "A snapshot").
 *
 * The manifest carries everything a v1 manifest does (src/catalog/manifest.ts: the agent's description of the
 * database, its tables and row counts, the integrity check, the plain file's bytes and sha256, timings,
 * trigger, tags, when stored, where replicated from) except the single artifact, which becomes:
 *   - `chunkList`: the key, bytes, sha256 and line count of the snapshot's chunk list object
 *     (`snapshots/<db>/<YYYY>/<MM>/<DD>/<id>.chunks`, src/catalog/layout.ts), which names the chunks;
 *   - `chunking`: the chunker and its parameters. Restore does not need them (it only concatenates), but the
 *     snapshot job must cut with the same ones to deduplicate against what a target already holds;
 *   - `encoding`: each chunk is stored as one zstd frame (chunk-codec.ts) at this level;
 *   - `stored.bytes`: the sum of the stored chunk sizes: what restoring this snapshot downloads. It is not what
 *     the snapshot added to a target; that depends on what the target held before.
 * So the manifest stays a few KB whatever the size of the database: prune, status and replicate read every
 * manifest, while only restore, verify and the chunk collection read chunk lists.
 *
 * The chunk list is text, one line per chunk of the file in order, `<sha256> <plain bytes> <stored bytes>\n`
 * (the sha256 of the chunk's plain bytes, lower-case hex; decimal lengths): `cut -d' ' -f1` gives the keys'
 * hashes for the manual restore. A hash may repeat (the same bytes twice in one file). ChunkListWriter makes
 * it a line at a time; readChunkList checks it a line at a time and its totals against the manifest.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { z } from 'zod';
import { SnapshotDescriptionSchema } from '../agent/protocol.js';
import { IntegrityError, TcabError } from '../errors.js';
import { chunkerParams } from './chunker.js';
import { TriggerSchema } from './trigger.js';

export const MANIFEST_V2_FORMAT_VERSION = 2;

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a lower-case hex sha256');

/** [sha256 of the plain bytes, plain length, stored (compressed) length]: one line of a chunk list. */
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

const LINE_RE = /^([0-9a-f]{64}) ([1-9][0-9]{0,9}) ([1-9][0-9]{0,9})$/;
/** No valid line is longer: 64 + two 10-digit numbers + two spaces. */
const MAX_LINE = 64 + 2 + 2 * 10;

/** One line of a chunk list, with its newline. */
export function chunkListLine(ref: ChunkRefV2): string {
  ChunkRefV2Schema.parse(ref);
  return `${ref[0]} ${ref[1]} ${ref[2]}\n`;
}

/** What a chunk list adds up to: its own size, sha256 and lines, and the chunks' plain and stored bytes. */
export interface ChunkListSummary {
  bytes: number;
  sha256: string;
  count: number;
  plainBytes: number;
  storedBytes: number;
}

/**
 * Makes a chunk list a line at a time while adding up what the manifest records about it (chunkList.bytes,
 * sha256, count; snapshot.bytes; stored.bytes). Holds only the running totals.
 */
export class ChunkListWriter {
  private readonly hash = createHash('sha256');
  private bytes = 0;
  private count = 0;
  private plainBytes = 0;
  private storedBytes = 0;
  private done: ChunkListSummary | undefined;

  /** The line of the next chunk, in file order. */
  line(ref: ChunkRefV2): string {
    if (this.done) throw new Error('ChunkListWriter: a line after summary()');
    const line = chunkListLine(ref);
    this.hash.update(line);
    this.bytes += line.length;
    this.count++;
    this.plainBytes += ref[1];
    this.storedBytes += ref[2];
    return line;
  }

  summary(): ChunkListSummary {
    this.done ??= {
      bytes: this.bytes,
      sha256: this.hash.digest('hex'),
      count: this.count,
      plainBytes: this.plainBytes,
      storedBytes: this.storedBytes,
    };
    return this.done;
  }
}

/** A byte stream of chunk list lines (from ChunkListWriter.line), for a target's put. */
export function chunkListBody(lines: Iterable<string> | AsyncIterable<string>): Readable {
  return Readable.from(
    (async function* () {
      for await (const line of lines) yield Buffer.from(line, 'latin1');
    })(),
    { objectMode: false },
  );
}

/**
 * Reads a chunk list as it streams and yields its chunks in file order, checking each line (its shape, and
 * the chunk's length against the manifest's chunking: every chunk but the last at least minBytes, none above
 * maxBytes) and, at the end, the totals against the manifest: lines, plain bytes, stored bytes, and the list's
 * own bytes and sha256. A failure names `where` (the list's key and target) and the line. Holds one line.
 * A consumer that must not act on a list before it is known to be the manifest's reads it to the end first.
 */
export async function* readChunkList(
  source: AsyncIterable<unknown>,
  manifest: Pick<ManifestV2, 'id' | 'snapshot' | 'stored' | 'chunking' | 'chunkList'>,
  where: string,
): AsyncGenerator<ChunkRefV2, void, undefined> {
  const hint = 'the chunk list is damaged or belongs to another snapshot; restore from another target and run "tcab-backup verify"';
  const fail = (message: string): never => {
    throw new IntegrityError(`Chunk list ${where} of snapshot ${manifest.id}: ${message}`, { hint });
  };
  const { minBytes, maxBytes } = manifest.chunking;
  const hash = createHash('sha256');
  let bytes = 0;
  let lineNo = 0;
  let plain = 0;
  let stored = 0;
  let partial = '';
  let previous: ChunkRefV2 | undefined;
  const parseLine = (line: string): ChunkRefV2 => {
    lineNo++;
    const m = LINE_RE.exec(line);
    if (!m) return fail(`line ${lineNo} is not "<sha256> <plain bytes> <stored bytes>": ${JSON.stringify(line.slice(0, MAX_LINE))}`);
    const ref: ChunkRefV2 = [m[1]!, Number(m[2]), Number(m[3])];
    if (ref[1] > maxBytes) fail(`line ${lineNo} lists a chunk of ${ref[1]} bytes, above the chunking's maximum of ${maxBytes}`);
    if (previous && previous[1] < minBytes) {
      fail(`line ${lineNo - 1} lists a chunk of ${previous[1]} bytes before the last, below the chunking's minimum of ${minBytes}`);
    }
    if (lineNo > manifest.chunkList.count) fail(`it has more than the ${manifest.chunkList.count} lines the manifest gives`);
    plain += ref[1];
    stored += ref[2];
    previous = ref;
    return ref;
  };
  for await (const data of source) {
    const text = typeof data === 'string' ? data : Buffer.from(data as Uint8Array).toString('latin1');
    hash.update(text, 'latin1');
    bytes += text.length;
    let start = 0;
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', start)) {
      const line = partial + text.slice(start, nl);
      partial = '';
      start = nl + 1;
      yield parseLine(line);
    }
    partial += text.slice(start);
    if (partial.length > MAX_LINE) fail(`line ${lineNo + 1} is longer than any chunk line (${MAX_LINE} characters)`);
  }
  if (partial.length > 0) fail(`line ${lineNo + 1} does not end with a newline (the list is cut short?)`);
  if (lineNo !== manifest.chunkList.count) fail(`it has ${lineNo} lines, the manifest says ${manifest.chunkList.count}`);
  if (plain !== manifest.snapshot.bytes)
    fail(`its chunks add up to ${plain} plain bytes, the manifest's snapshot has ${manifest.snapshot.bytes}`);
  if (stored !== manifest.stored.bytes) fail(`its chunks add up to ${stored} stored bytes, the manifest says ${manifest.stored.bytes}`);
  const sha256 = hash.digest('hex');
  if (bytes !== manifest.chunkList.bytes || sha256 !== manifest.chunkList.sha256) {
    fail(
      `it is ${bytes} bytes with sha256 ${sha256}, the manifest says ${manifest.chunkList.bytes} bytes with ${manifest.chunkList.sha256}`,
    );
  }
}
