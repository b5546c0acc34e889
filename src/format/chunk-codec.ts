/**
 * How one chunk is stored in format 2: its plain bytes as one complete zstd frame of its own.
 *
 * One frame per chunk, because concatenated zstd frames decompress as one stream: the manual restore is
 * `cat` of the chunk files in manifest order piped into `zstd -d`, and node:zlib's streaming decompressor does
 * the same when given one frame per write (test/format/chunk-codec.test.ts runs both). Each frame records its content size (so `zstd -l` and a
 * decompressor know it up front) and carries zstd's own content checksum (4 bytes), so a hand restore with
 * nothing but `zstd -d` still stops at a damaged chunk; the sha256 of the plain bytes stays the real check.
 *
 * In Node, decode chunk by chunk (decompressChunk), or hand createZstdDecompress exactly one frame per write:
 * Node 24's zstd decompressor stops at the end of the first frame inside a write (or inside the buffer given
 * to zstdDecompress) and silently drops the rest (test/format/chunk-codec.test.ts pins this). Frame by frame
 * is also what lets every chunk be checked against its own sha256.
 *
 * Level 3 (zstd's default), measured by bench/dedup-measure.ts on the chunks of a 100 MB TCAB-like sample
 * database (one reused context, one core of a busy 2-core machine): stored size 29.7% of plain at 215 MB/s,
 * against 30.5% at level 1 (192 MB/s), 29.4% at 5 (113 MB/s) and 29.0% at 7 (66 MB/s). Levels above 3 buy
 * little and halve the speed; level 1 is no faster. Only chunks a target lacks are compressed (after the
 * first snapshot well under 1% of them), so a snapshot's time hardly depends on the level; the first
 * snapshot's does. Small frames compress worse than one whole-file stream (the v1 artifact, zstd -1, is 27.0%
 * of the same file): the price of frames that can be fetched, verified and shared alone.
 */
import { createHash, webcrypto } from 'node:crypto';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { IntegrityError, TcabError, errorMessage } from '../errors.js';
import { MAX_CHUNK_LIMIT } from './chunker.js';

export const CHUNK_ZSTD_LEVEL = 3;

const zstdCompress = promisify(zlib.zstdCompress);

/** What the manifest says about a chunk: enough to fetch it, bound its size and check it. */
export interface ChunkRef {
  sha256: string;
  /** Plain length. */
  bytes: number;
}

function checkLevel(level: number): void {
  if (!Number.isInteger(level) || level < 1 || level > 19) {
    throw new TcabError(`Invalid zstd level ${level} for a chunk`, {
      hint: `use 1 to 19; the format's default is ${CHUNK_ZSTD_LEVEL}`,
      code: 'CHUNK_LEVEL',
    });
  }
}

const ZSTD_MAGIC = 0xfd2fb528;
/** Above any frame (a chunk of MAX_CHUNK_LIMIT that does not compress, plus zstd's few bytes per block). */
const HIGH_WATER_MARK = 2 * MAX_CHUNK_LIMIT;

/**
 * Compresses one chunk's plain bytes into one zstd frame (with content size and checksum). Each call makes a
 * zstd context of its own, freed only when the garbage collector gets to it: for many chunks in a row use a
 * ChunkCompressor, which keeps memory flat.
 */
export async function compressChunk(plain: Uint8Array, level: number = CHUNK_ZSTD_LEVEL): Promise<Buffer> {
  checkLevel(level);
  return zstdCompress(plain, {
    pledgedSrcSize: plain.byteLength,
    params: {
      [zlib.constants.ZSTD_c_compressionLevel]: level,
      [zlib.constants.ZSTD_c_checksumFlag]: 1,
      [zlib.constants.ZSTD_c_contentSizeFlag]: 1,
    },
  });
}

/**
 * Compresses chunk after chunk with one zstd context, each chunk into one complete, independent frame (with
 * content size and checksum), byte for byte a frame compressChunk would accept back.
 *
 * Why: a fresh context per chunk (compressChunk) holds native memory until a garbage collection, and on a
 * 100 MB snapshot that raised the peak resident set from about 75 MB to about 155 MB; one context reused
 * stays near the chunker's own figure, and is faster (measured in bench/dedup-measure.ts).
 * How: the stream's flush mode is ZSTD_e_end, so every write is compressed to the end of a frame in one call,
 * which is also what lets zstd record the content size. Writes are queued: one chunk at a time, in order. The
 * readable side is read in paused mode after each write completes, with a high-water mark above any frame,
 * so a write's completion is never held back waiting for a read.
 */
export class ChunkCompressor {
  private readonly stream: zlib.ZstdCompress;
  private queue: Promise<unknown> = Promise.resolve();
  private failed: Error | undefined;

  constructor(readonly level: number = CHUNK_ZSTD_LEVEL) {
    checkLevel(level);
    // zlib passes stream options on to its Transform; the typings only lack the field.
    const options: zlib.ZstdOptions & { readableHighWaterMark: number } = {
      flush: zlib.constants.ZSTD_e_end,
      readableHighWaterMark: HIGH_WATER_MARK,
      params: {
        [zlib.constants.ZSTD_c_compressionLevel]: level,
        [zlib.constants.ZSTD_c_checksumFlag]: 1,
        [zlib.constants.ZSTD_c_contentSizeFlag]: 1,
      },
    };
    this.stream = zlib.createZstdCompress(options);
    if (this.stream.readableHighWaterMark !== HIGH_WATER_MARK) {
      this.stream.destroy();
      throw new TcabError(`This Node's zstd compressor ignored its readableHighWaterMark (${this.stream.readableHighWaterMark})`, {
        hint: 'ChunkCompressor relies on it to read each frame after its write; use compressChunk instead',
      });
    }
    this.stream.on('error', (e: Error) => {
      this.failed ??= e;
    });
  }

  /** The chunk's plain bytes as one zstd frame. Calls may overlap; they are compressed one after another. */
  compress(plain: Uint8Array): Promise<Buffer> {
    const run = this.queue.then(() => this.compressOne(plain));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private compressOne(plain: Uint8Array): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const fail = (e: unknown) =>
        reject(
          new TcabError(`Compressing a chunk of ${plain.byteLength} bytes failed: ${errorMessage(e)}`, {
            hint: 'the compressor is unusable now; start a new ChunkCompressor',
            cause: e,
          }),
        );
      if (this.failed) return fail(this.failed);
      if (plain.byteLength === 0) return fail(new Error('a chunk is never empty'));
      this.stream.write(plain, (err) => {
        if (err || this.failed) return fail(err ?? this.failed);
        const parts: Buffer[] = [];
        for (let b: Buffer | null; (b = this.stream.read() as Buffer | null) !== null; ) parts.push(b);
        // Mostly one part: a view of the stream's output buffer, which zstd never writes again, kept as it is
        // rather than copied (a copy per chunk is as many bytes of garbage again as the frames themselves).
        const frame = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
        if (frame.length < 4 || frame.readUInt32LE(0) !== ZSTD_MAGIC)
          return fail(new Error(`the compressor produced ${frame.length} bytes that do not start a zstd frame`));
        resolve(frame);
      });
    });
  }

  /** Frees the context. Waits for queued chunks first. */
  async close(): Promise<void> {
    await this.queue;
    this.stream.destroy();
  }
}

/**
 * Checks stored chunks against their references, as decompressChunk does (decompression to exactly ref.bytes
 * whose sha256 is ref.sha256), but keeps nothing: one zstd decompression context serves chunk after chunk,
 * one frame per write, and the plain bytes are hashed as they come out and dropped.
 *
 * Why: decompressChunk makes a zstd context and a Buffer of the plain bytes per chunk, and both wait for the
 * garbage collector; checking a whole snapshot's chunks that way piled up tens of MB before each collection
 * (3,000 checks of an 80 KB chunk: 138 MB of resident set, against 80 MB with one context, measured in a
 * bare process). A frame that fails (damaged, cut short, longer than ref.bytes) leaves
 * the context mid-frame, so the next check starts a fresh one. Checks are queued: one at a time, in order.
 */
export class ChunkChecker {
  private stream: zlib.ZstdDecompress | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  /** Resolves when `stored` decompresses to `ref`'s bytes; an IntegrityError naming the chunk and `where` if not. */
  check(stored: Uint8Array, ref: ChunkRef, where: string): Promise<void> {
    // As decompressChunk: one whole frame and nothing after it, which zstd's stream would pass over.
    const frameLength = zstdFrameLength(stored);
    if (frameLength !== stored.byteLength) return Promise.reject(notOneFrame(stored, frameLength, ref, where));
    const run = this.queue.then(() => this.checkOne(stored, ref, where));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private checkOne(stored: Uint8Array, ref: ChunkRef, where: string): Promise<void> {
    const stream = (this.stream ??= zlib.createZstdDecompress());
    return new Promise((resolve, reject) => {
      const hash = createHash('sha256');
      let length = 0;
      let settled = false;
      const finish = (error: IntegrityError | undefined) => {
        if (settled) return;
        settled = true;
        stream.off('data', onData);
        stream.off('error', onError);
        if (error) {
          // The context may be mid-frame or broken: the next chunk gets a new one.
          if (this.stream === stream) this.stream = undefined;
          stream.on('error', () => undefined);
          stream.destroy();
          reject(error);
        } else resolve();
      };
      const onError = (e: Error) =>
        finish(
          new IntegrityError(`Chunk ${ref.sha256} (${where}) does not decompress as zstd to its ${ref.bytes} bytes: ${errorMessage(e)}`, {
            hint: 'the stored chunk is damaged or not a chunk; verify the target, and replicate the chunk from another target',
            cause: e,
          }),
        );
      const onData = (data: Buffer) => {
        length += data.length;
        if (length > ref.bytes) {
          finish(
            new IntegrityError(`Chunk ${ref.sha256} (${where}) decompresses to more than the ${ref.bytes} bytes its manifest lists`, {
              hint: 'the stored chunk is damaged or belongs to another file; verify the target, and replicate the chunk from another target',
            }),
          );
        } else hash.update(data);
      };
      stream.on('data', onData);
      stream.on('error', onError);
      stream.write(stored, (err) => {
        if (err) return onError(err);
        if (settled) return;
        if (length !== ref.bytes) {
          return finish(
            new IntegrityError(`Chunk ${ref.sha256} (${where}) decompresses to ${length} bytes, not the ${ref.bytes} its manifest lists`, {
              hint: 'the stored chunk is damaged, cut short or belongs to another file; verify the target, and replicate the chunk from another target',
            }),
          );
        }
        const sha256 = hash.digest('hex');
        if (sha256 !== ref.sha256) {
          return finish(
            new IntegrityError(`Chunk ${ref.sha256} (${where}) decompresses to bytes whose sha256 is ${sha256}`, {
              hint: 'the stored chunk is damaged; verify the target, and replicate the chunk from another target',
            }),
          );
        }
        finish(undefined);
      });
    });
  }

  /** Frees the context. Waits for queued checks first. */
  async close(): Promise<void> {
    await this.queue;
    this.stream?.destroy();
    this.stream = undefined;
  }
}

/**
 * True when `stored` begins a zstd frame whose header sets Content_Checksum_flag (bit 2 of the frame header
 * descriptor, the byte after the magic number): its decompression then fails unless the content's XXH64 matches
 * the checksum stored at the frame's end. Every frame this codec writes has one.
 */
export function frameHasChecksum(stored: Uint8Array): boolean {
  return (
    stored.byteLength > 4 && Buffer.from(stored.buffer, stored.byteOffset, 4).readUInt32LE(0) === ZSTD_MAGIC && (stored[4]! & 0x04) !== 0
  );
}

/**
 * The length of the zstd frame `stored` begins with (RFC 8878, 3.1.1: magic number, frame header, blocks, and
 * the content checksum when the header says so), or undefined when it does not begin with a whole frame.
 * zstd's decompressor stops at the end of the first frame and ignores what follows, so a stored chunk with
 * bytes after its frame would pass decompression; those bytes would break a `cat ... | zstd -d` restore.
 */
export function zstdFrameLength(stored: Uint8Array): number | undefined {
  const b = stored;
  if (b.byteLength < 5 || Buffer.from(b.buffer, b.byteOffset, 4).readUInt32LE(0) !== ZSTD_MAGIC) return undefined;
  const descriptor = b[4]!;
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor & 0x20) !== 0;
  const checksum = (descriptor & 0x04) !== 0;
  const dictionaryIdBytes = [0, 1, 2, 4][descriptor & 0x03]!;
  const contentSizeBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  let at = 5 + (singleSegment ? 0 : 1) + dictionaryIdBytes + contentSizeBytes;
  for (;;) {
    if (at + 3 > b.byteLength) return undefined;
    const header = b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16);
    at += 3;
    const last = (header & 1) !== 0;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) return undefined; // reserved
    at += type === 1 ? 1 : size; // an RLE block stores one byte
    if (at > b.byteLength) return undefined;
    if (last) break;
  }
  at += checksum ? 4 : 0;
  return at <= b.byteLength ? at : undefined;
}

function notOneFrame(stored: Uint8Array, frameLength: number | undefined, ref: ChunkRef, where: string): IntegrityError {
  return new IntegrityError(
    `Chunk ${ref.sha256} (${where}) is ${stored.byteLength} bytes, ${frameLength === undefined ? 'not one whole zstd frame' : `of which its zstd frame is ${frameLength}: other bytes follow it`}`,
    { hint: 'the stored chunk is damaged or not a chunk; verify the target, and replicate the chunk from another target' },
  );
}

/**
 * Decompresses one stored chunk and checks it against its reference: never more than ref.bytes are produced
 * (a damaged or hostile frame cannot blow up memory), and the plain bytes must have ref's length and sha256.
 * `where` names the chunk for the error (e.g. its key and target).
 *
 * Measured on the 12,800 chunks of a 1 GB sample snapshot (docs/benchmarks.md, "Restore of format 2"): the
 * frame is decompressed synchronously, because a chunk is at most MAX_CHUNK_LIMIT plain bytes (well under a
 * millisecond) and the promisified zstdDecompress cost twice the CPU for the same bytes (a stream, a context
 * and a trip to the thread pool per chunk); the sha256 is WebCrypto's, which runs on the thread pool, so the
 * hashing of chunks fetched in parallel is spread over the cores instead of queuing on the main thread.
 *
 * With `sha256: false` the sha256 is left out for a frame that carries zstd's content checksum (which its
 * decompression checks), for a reader that checks the sha256 of the whole file the chunks make (restore); a
 * frame without one is always hashed.
 */
export async function decompressChunk(
  stored: Uint8Array,
  ref: ChunkRef,
  where: string,
  options: { sha256?: boolean } = {},
): Promise<Buffer> {
  let plain: Buffer;
  try {
    // One spare byte: a frame that inflates past ref.bytes fails the length check below instead of being cut.
    plain = zlib.zstdDecompressSync(stored, { maxOutputLength: ref.bytes + 1 });
  } catch (e) {
    throw new IntegrityError(`Chunk ${ref.sha256} (${where}) does not decompress as zstd to its ${ref.bytes} bytes: ${errorMessage(e)}`, {
      hint: 'the stored chunk is damaged or not a chunk; verify the target, and replicate the chunk from another target',
      cause: e,
    });
  }
  const frameLength = zstdFrameLength(stored);
  if (frameLength !== stored.byteLength) throw notOneFrame(stored, frameLength, ref, where);
  if (plain.length !== ref.bytes) {
    throw new IntegrityError(
      `Chunk ${ref.sha256} (${where}) decompresses to ${plain.length > ref.bytes ? 'more than' : plain.length} bytes, not the ${ref.bytes} its manifest lists`,
      {
        hint: 'the stored chunk is damaged or belongs to another file; verify the target, and replicate the chunk from another target',
      },
    );
  }
  if (options.sha256 === false && frameHasChecksum(stored)) return plain;
  const sha256 = Buffer.from(await webcrypto.subtle.digest('SHA-256', plain)).toString('hex');
  if (sha256 !== ref.sha256) {
    throw new IntegrityError(`Chunk ${ref.sha256} (${where}) decompresses to bytes whose sha256 is ${sha256}`, {
      hint: 'the stored chunk is damaged; verify the target, and replicate the chunk from another target',
    });
  }
  return plain;
}
