/**
 * The content-defined chunker of snapshot format 2: cuts the plain `VACUUM INTO` file into chunks whose
 * boundaries depend only on the bytes near them, so an insert or update in one part of the database moves
 * only the cut points around it and every other chunk keeps its hash (and is stored once per target).
 *
 * Algorithm: FastCDC (Xia et al., USENIX ATC 2016) with normalized chunking, on a 32-bit gear hash.
 *   - The hash restarts at 0 for each chunk; each byte b updates it as h = (h << 1) + GEAR[b] (mod 2^32), so
 *     bit k of h depends on the last k + 1 bytes only, and the top bits on the last 32: the cut decision is a
 *     function of a 32-byte window, which is what makes cut points resynchronise after a change.
 *   - The first `minBytes - 1` bytes of a chunk are not hashed (no cut can fall there): that is FastCDC's
 *     speed trick and the minimum size.
 *   - While the chunk is shorter than `avgBytes` a cut needs the top log2(avg) + level bits of h to be zero
 *     (hard: the "small" mask); from `avgBytes` on only the top log2(avg) - level bits (easy: the "large"
 *     mask). This normalization squeezes the size distribution around the average; level 2 is the paper's
 *     recommendation (NC-2).
 *   - At `maxBytes` the chunk is cut whatever the hash says.
 *   - The last chunk of a file is whatever remains, so it may be shorter than `minBytes`.
 * A chunk's length L is the number of bytes up to and including the byte whose hash met the mask.
 *
 * Default bounds, and why: min 4 KiB, average 16 KiB, max 64 KiB.
 *   - The issue measured, on a 124 MB TCAB-like database with 60 runs and their reviews published between two
 *     `VACUUM INTO` outputs, that ~16 KiB chunks share all but 1.1% of the bytes (64 KiB: 1.35%). SQLite
 *     rewrites whole 4 KiB pages, and an insert touches a few pages spread over the file (the table's last
 *     leaf, index leaves, interior pages, the header's change counter): smaller chunks isolate those pages
 *     better, but every chunk costs a key, a request, an index entry and a manifest line (about 80 bytes of
 *     JSON: 0.5% of a 16 KiB chunk), and a small zstd frame compresses worse. 16 KiB is the knee.
 *   - min 4 KiB = one SQLite page (the default page size): a cut closer than that to the previous one cannot
 *     isolate anything smaller than a page, so it would only cost.
 *   - max 64 KiB = 4x the average: bounds memory (a chunk is held whole while it is hashed and compressed) and
 *     the damage of long runs without a cut (zero-filled free pages), while being rarely reached on real data.
 *
 * Parameters are validated: integers, minBytes >= 64 (twice the hash window, so every cut decision sees a full
 * window of the chunk's own bytes), minBytes < avgBytes < maxBytes <= 16 MiB, avgBytes a power of two (the
 * masks are log2(avgBytes) +/- level bits), level 0..3 with log2(avgBytes) + level <= 32.
 *
 * Streaming and memory: chunkStream reads any async iterable of bytes (a Readable of the file) and yields
 * chunks in order, each a fresh Buffer of exactly its length. It holds one partial chunk (at most maxBytes)
 * and the read it is scanning, never the file. Cut points depend only on the bytes, not on how the input was
 * split into reads (test/format/chunker.test.ts checks this with random read sizes).
 */
import { createHash } from 'node:crypto';
import { TcabError } from '../errors.js';
import { GEAR, GEAR_TABLE_SHA256 } from './gear-table.js';

/** Names this algorithm and table in manifests: a manifest with another name was cut by another chunker. */
export const CHUNKER_ALGORITHM = 'fastcdc-gear32';

export interface ChunkerParams {
  minBytes: number;
  avgBytes: number;
  maxBytes: number;
  /** Normalization level: the small mask has log2(avgBytes) + level bits, the large one log2(avgBytes) - level. */
  normalization: number;
}

export const DEFAULT_CHUNKER_PARAMS: Readonly<ChunkerParams> = Object.freeze({
  minBytes: 4 * 1024,
  avgBytes: 16 * 1024,
  maxBytes: 64 * 1024,
  normalization: 2,
});

/** Largest maxBytes accepted: a chunk is held in memory whole, twice (while scanning and when emitted). */
export const MAX_CHUNK_LIMIT = 16 * 1024 * 1024;
const HASH_WINDOW = 32;

export interface Chunk {
  /** Where the chunk starts in the plain file. */
  offset: number;
  length: number;
  /** sha256 of the plain bytes, lower-case hex: the chunk's identity and content address. */
  sha256: string;
  /** The plain bytes: a Buffer of exactly `length` bytes owned by the receiver. */
  bytes: Buffer;
}

/** The full parameters from a partial set, checked; throws a TcabError naming every problem. */
export function chunkerParams(overrides: Partial<ChunkerParams> = {}): ChunkerParams {
  const p: ChunkerParams = { ...DEFAULT_CHUNKER_PARAMS, ...overrides };
  const problems: string[] = [];
  for (const key of ['minBytes', 'avgBytes', 'maxBytes', 'normalization'] as const) {
    if (!Number.isSafeInteger(p[key]) || p[key] < 0) problems.push(`${key} must be a non-negative integer, not ${String(p[key])}`);
  }
  if (problems.length === 0) {
    if (p.minBytes < 2 * HASH_WINDOW)
      problems.push(`minBytes must be at least ${2 * HASH_WINDOW} (twice the gear hash window), not ${p.minBytes}`);
    if (!(p.minBytes < p.avgBytes && p.avgBytes < p.maxBytes)) {
      problems.push(`the sizes must satisfy minBytes < avgBytes < maxBytes, but they are ${p.minBytes}, ${p.avgBytes}, ${p.maxBytes}`);
    }
    if (p.maxBytes > MAX_CHUNK_LIMIT) problems.push(`maxBytes must be at most ${MAX_CHUNK_LIMIT} (16 MiB), not ${p.maxBytes}`);
    if ((p.avgBytes & (p.avgBytes - 1)) !== 0)
      problems.push(`avgBytes must be a power of two (the cut masks are log2 of it), not ${p.avgBytes}`);
    const bits = Math.log2(p.avgBytes);
    if (p.normalization > 3) problems.push(`normalization must be 0 to 3, not ${p.normalization}`);
    else if (Number.isInteger(bits) && (bits + p.normalization > 32 || bits - p.normalization < 1)) {
      problems.push(`log2(avgBytes) ± normalization must stay within 1..32 bits, but it is ${bits} ± ${p.normalization}`);
    }
  }
  if (problems.length > 0) {
    throw new TcabError(`Invalid chunker parameters: ${problems.join('; ')}`, {
      hint: `use the defaults (min ${DEFAULT_CHUNKER_PARAMS.minBytes}, avg ${DEFAULT_CHUNKER_PARAMS.avgBytes}, max ${DEFAULT_CHUNKER_PARAMS.maxBytes}, normalization ${DEFAULT_CHUNKER_PARAMS.normalization}) unless measured otherwise`,
      code: 'CHUNKER_PARAMS',
    });
  }
  return p;
}

/** What a manifest records about the chunker, so a reader can tell whether its chunks are comparable. */
export function chunkerDescription(params: ChunkerParams): { algorithm: string; gearTableSha256: string } & ChunkerParams {
  return { algorithm: CHUNKER_ALGORITHM, gearTableSha256: GEAR_TABLE_SHA256, ...params };
}

/** A mask with the top `bits` bits of a 32-bit word set, as a signed 32-bit number for `&`. */
function topBits(bits: number): number {
  return bits === 0 ? 0 : (0xffffffff << (32 - bits)) | 0;
}

/**
 * The cut-point finder: state (bytes seen in the current chunk, the hash) carried across reads, so the input
 * may be split anywhere. Exported for the benchmark, which times the scan alone.
 */
export class CutFinder {
  private readonly min: number;
  private readonly avg: number;
  private readonly max: number;
  private readonly maskS: number;
  private readonly maskL: number;
  /** Bytes of the current chunk consumed so far. */
  private seen = 0;
  private hash = 0;

  constructor(params: ChunkerParams) {
    this.min = params.minBytes;
    this.avg = params.avgBytes;
    this.max = params.maxBytes;
    const bits = Math.log2(params.avgBytes);
    this.maskS = topBits(bits + params.normalization);
    this.maskL = topBits(bits - params.normalization);
  }

  /** Bytes of the current (not yet cut) chunk seen so far. */
  get pending(): number {
    return this.seen;
  }

  /**
   * Scans buf[start, end). Returns the index just past the cut (the chunk ends there and the finder restarts
   * for the next chunk), or -1 when no cut falls in the range (all of it belongs to the current chunk).
   */
  scan(buf: Uint8Array, start: number, end: number): number {
    const gear = GEAR;
    let i = start;
    let seen = this.seen;
    let h = this.hash;
    // Consuming the next byte makes the chunk seen + 1 bytes long.
    // Phase 1: lengths 1 .. min - 1 are not hashed; no cut can fall there.
    const skipTo = this.min - 1;
    if (seen < skipTo) {
      const skip = Math.min(skipTo - seen, end - i);
      i += skip;
      seen += skip;
      if (seen < skipTo) {
        this.seen = seen;
        return -1;
      }
    }
    // Phase 2: lengths min .. avg - 1 cut on the hard mask.
    if (seen < this.avg - 1) {
      const stop = Math.min(end, i + (this.avg - 1 - seen));
      const mask = this.maskS;
      const from = i;
      while (i < stop) {
        h = ((h << 1) + gear[buf[i++]!]!) | 0;
        if ((h & mask) === 0) return this.cut(i);
      }
      seen += i - from;
      if (seen < this.avg - 1) {
        this.seen = seen;
        this.hash = h;
        return -1;
      }
    }
    // Phase 3: lengths avg .. max - 1 cut on the easy mask; length max is cut whatever the hash.
    const stop = Math.min(end, i + (this.max - 1 - seen));
    const mask = this.maskL;
    const from = i;
    while (i < stop) {
      h = ((h << 1) + gear[buf[i++]!]!) | 0;
      if ((h & mask) === 0) return this.cut(i);
    }
    seen += i - from;
    if (seen === this.max - 1 && i < end) return this.cut(i + 1);
    this.seen = seen;
    this.hash = h;
    return -1;
  }

  private cut(index: number): number {
    this.seen = 0;
    this.hash = 0;
    return index;
  }
}

function asBuffer(data: unknown, offset: number): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw new TcabError(`The chunker was given ${typeof data === 'string' ? 'text' : typeof data} at byte ${offset} instead of bytes`, {
    hint: 'pass a Readable of the plain file without setEncoding(), or an async iterable of Buffers',
    code: 'CHUNKER_INPUT',
  });
}

/**
 * Cuts a stream of bytes into content-defined chunks, in order. `source` is a Readable of the plain file (or
 * any async iterable of Uint8Array); reading is paused while the receiver handles a chunk (for-await).
 */
export async function* chunkStream(
  source: AsyncIterable<unknown>,
  overrides: Partial<ChunkerParams> = {},
): AsyncGenerator<Chunk, void, undefined> {
  const params = chunkerParams(overrides);
  const finder = new CutFinder(params);
  // The current chunk's bytes, copied out of the reads: a source may reuse its read buffer once we ask for more.
  const pending = Buffer.allocUnsafe(params.maxBytes);
  let filled = 0;
  let offset = 0;
  const emit = (): Chunk => {
    const bytes = Buffer.allocUnsafe(filled);
    pending.copy(bytes, 0, 0, filled);
    const chunk = { offset, length: filled, sha256: createHash('sha256').update(bytes).digest('hex'), bytes };
    offset += filled;
    filled = 0;
    return chunk;
  };
  for await (const data of source) {
    const buf = asBuffer(data, offset + filled);
    let start = 0;
    while (start < buf.length) {
      const cut = finder.scan(buf, start, buf.length);
      const end = cut < 0 ? buf.length : cut;
      buf.copy(pending, filled, start, end);
      filled += end - start;
      start = end;
      if (cut >= 0) yield emit();
    }
  }
  if (filled > 0) yield emit();
}
