/**
 * The chunk list of a format-2 snapshot (docs/format-2.md, "A snapshot"): text, one line per chunk of the file
 * in order, `<sha256> <plain bytes> <stored bytes>\n` (the sha256 of the chunk's plain bytes, lower-case hex;
 * decimal lengths), so `cut -d' ' -f1` gives the hashes of the chunk keys for the manual restore. A hash may
 * repeat (the same bytes twice in one file). ChunkListWriter makes it a line at a time while adding up what the
 * manifest records about it; readChunkList checks it a line at a time and its totals against the manifest.
 *
 * Imports nothing from src/agent or src/catalog: both build on src/format.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { z } from 'zod';
import { IntegrityError } from '../errors.js';
import { zstdFrameBound } from './params.js';

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a lower-case hex sha256');

/** [sha256 of the plain bytes, plain length, stored (compressed) length]: one line of a chunk list. */
export const ChunkRefV2Schema = z.tuple([Sha256Hex, z.number().int().positive(), z.number().int().positive()]);
export type ChunkRefV2 = z.infer<typeof ChunkRefV2Schema>;

/** What a chunk list is checked against: the fields of the format-2 manifest (src/catalog/manifest-v2.ts) it needs. */
export interface ChunkListExpectation {
  id: string;
  snapshot: { bytes: number };
  stored: { bytes: number };
  chunking: { minBytes: number; maxBytes: number };
  chunkList: { bytes: number; sha256: string; count: number };
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
  manifest: ChunkListExpectation,
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
    // A reader holds a chunk's frame in a buffer of its stored length: a length no frame of a chunk can have is
    // refused here, before anything is allocated for it.
    if (ref[2] > zstdFrameBound(ref[1])) {
      fail(`line ${lineNo} lists a frame of ${ref[2]} bytes for a chunk of ${ref[1]}, above zstd's bound of ${zstdFrameBound(ref[1])}`);
    }
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
