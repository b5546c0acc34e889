/**
 * How one chunk is stored in format 2: its plain bytes as one complete zstd frame of its own.
 *
 * One frame per chunk, because concatenated zstd frames decompress as one stream: the manual restore is
 * `cat` of the chunk files in manifest order piped into `zstd -d`, and node:zlib's streaming decompressor does
 * the same (test/format/chunk-codec.test.ts runs both). Each frame records its content size (so `zstd -l` and a
 * decompressor know it up front) and carries zstd's own content checksum (4 bytes), so a hand restore with
 * nothing but `zstd -d` still stops at a damaged chunk; the sha256 of the plain bytes stays the real check.
 *
 * In Node, decode chunk by chunk (decompressChunk), or hand createZstdDecompress exactly one frame per write:
 * Node 24's zstd decompressor stops at the end of the first frame inside a write (or inside the buffer given
 * to zstdDecompress) and silently drops the rest (test/format/chunk-codec.test.ts pins this). Frame by frame
 * is also what lets every chunk be checked against its own sha256.
 *
 * Level 3 (zstd's default), measured on 16 KiB chunks of the TCAB-like sample database (bench/dedup-measure.ts
 * repeats it): stored size 30.2% of plain against 31.0% at level 1, 29.8% at 5 and 29.4% at 7, while level 5 and
 * up run at roughly two thirds of level 3's speed. Only chunks a target lacks are compressed (after the first
 * snapshot about 1% of them), so a snapshot's time hardly depends on the level; the first snapshot and the
 * stored bytes do. Small frames compress worse than one whole-file stream (about 25.5% at level 3 on the same
 * data): the price of frames that can be fetched, verified and shared alone.
 */
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { IntegrityError, TcabError, errorMessage } from '../errors.js';

export const CHUNK_ZSTD_LEVEL = 3;

const zstdCompress = promisify(zlib.zstdCompress);
const zstdDecompress = promisify(zlib.zstdDecompress);

/** What the manifest says about a chunk: enough to fetch it, bound its size and check it. */
export interface ChunkRef {
  sha256: string;
  /** Plain length. */
  bytes: number;
}

/** Compresses one chunk's plain bytes into one zstd frame (with content size and checksum). */
export async function compressChunk(plain: Uint8Array, level: number = CHUNK_ZSTD_LEVEL): Promise<Buffer> {
  if (!Number.isInteger(level) || level < 1 || level > 19) {
    throw new TcabError(`Invalid zstd level ${level} for a chunk`, { hint: `use 1 to 19; the format's default is ${CHUNK_ZSTD_LEVEL}`, code: 'CHUNK_LEVEL' });
  }
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
 * Decompresses one stored chunk and checks it against its reference: never more than ref.bytes are produced
 * (a damaged or hostile frame cannot blow up memory), and the plain bytes must have ref's length and sha256.
 * `where` names the chunk for the error (e.g. its key and target).
 */
export async function decompressChunk(stored: Uint8Array, ref: ChunkRef, where: string): Promise<Buffer> {
  let plain: Buffer;
  try {
    // One spare byte: a frame that inflates past ref.bytes fails the length check below instead of being cut.
    plain = await zstdDecompress(stored, { maxOutputLength: ref.bytes + 1 });
  } catch (e) {
    throw new IntegrityError(`Chunk ${ref.sha256} (${where}) does not decompress as zstd to its ${ref.bytes} bytes: ${errorMessage(e)}`, {
      hint: 'the stored chunk is damaged or not a chunk; verify the target, and replicate the chunk from another target',
      cause: e,
    });
  }
  if (plain.length !== ref.bytes) {
    throw new IntegrityError(`Chunk ${ref.sha256} (${where}) decompresses to ${plain.length > ref.bytes ? 'more than' : plain.length} bytes, not the ${ref.bytes} its manifest lists`, {
      hint: 'the stored chunk is damaged or belongs to another file; verify the target, and replicate the chunk from another target',
    });
  }
  const sha256 = createHash('sha256').update(plain).digest('hex');
  if (sha256 !== ref.sha256) {
    throw new IntegrityError(`Chunk ${ref.sha256} (${where}) decompresses to bytes whose sha256 is ${sha256}`, {
      hint: 'the stored chunk is damaged; verify the target, and replicate the chunk from another target',
    });
  }
  return plain;
}
