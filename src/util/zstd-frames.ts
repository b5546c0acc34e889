/**
 * Cuts a zstd byte stream at its frame boundaries, so that no piece it passes on holds the end of one frame
 * and the start of the next.
 *
 * Why: concatenated zstd frames are one valid zstd stream (a format-2 snapshot's chunks, sent as one body,
 * are), but Node 24's zstd decompressor stops at the end of the first frame inside a write and silently drops
 * the rest of that write (src/format/chunk-codec.ts). Put in front of it, this makes every write end at a
 * frame boundary or inside a frame, and the decompressor then takes frame after frame.
 *
 * How: it reads just the frame structure (RFC 8878): a frame's magic number, its header's length from the
 * header descriptor, then block after block by the 3-byte block headers (raw and compressed blocks carry
 * Block_Size bytes, an RLE block one), then the 4-byte content checksum when the descriptor says so. Skippable
 * frames (magic 0x184D2A5?) are their 4-byte length long. It holds at most 4 bytes of its own and copies
 * nothing: pieces are slices of the input. Anything that is not a frame fails the stream, naming the offset.
 */
import { Transform, type TransformCallback } from 'node:stream';

const ZSTD_MAGIC = 0xfd2fb528;
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;

type State =
  | { kind: 'magic' }
  | { kind: 'descriptor' }
  | { kind: 'skippable-size' }
  | { kind: 'block-header'; checksum: boolean }
  | { kind: 'skip'; bytes: number; next: 'block-header' | 'checksum' | 'frame-end'; checksum: boolean };

export class ZstdFrameSplitter extends Transform {
  private state: State = { kind: 'magic' };
  /** Bytes of a small field (magic, descriptor, block header, skippable size) read so far. */
  private field: number[] = [];
  /** Offset in the whole stream of the next byte. */
  private offset = 0;
  /** Frames completed so far. */
  frames = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let from = 0;
    let at = 0;
    try {
      // A zero-length part (an empty block) is stepped over even at the end of the input.
      while (at < chunk.length || (this.state.kind === 'skip' && this.state.bytes === 0)) {
        const s = this.state;
        if (s.kind === 'skip') {
          const take = Math.min(s.bytes, chunk.length - at);
          at += take;
          s.bytes -= take;
          if (s.bytes > 0) break;
          // Past the part: what comes next.
          if (s.next === 'block-header') this.state = { kind: 'block-header', checksum: s.checksum };
          else if (s.next === 'checksum') this.state = { kind: 'skip', bytes: 4, next: 'frame-end', checksum: false };
          else {
            // A frame ends here: pass it on alone, up to and including its last byte.
            this.push(chunk.subarray(from, at));
            from = at;
            this.frames++;
            this.state = { kind: 'magic' };
          }
          continue;
        }
        this.field.push(chunk[at++]!);
        const need = s.kind === 'descriptor' ? 1 : s.kind === 'block-header' ? 3 : 4;
        if (this.field.length < need) continue;
        const field = Buffer.from(this.field);
        const fieldAt = this.offset + at - need;
        this.field = [];
        this.advance(s, field, fieldAt);
      }
    } catch (e) {
      return cb(e as Error);
    }
    if (from < chunk.length) this.push(chunk.subarray(from));
    this.offset += chunk.length;
    cb();
  }

  private advance(s: Exclude<State, { kind: 'skip' }>, field: Buffer, fieldAt: number): void {
    switch (s.kind) {
      case 'magic': {
        const magic = field.readUInt32LE(0);
        if (magic === ZSTD_MAGIC) this.state = { kind: 'descriptor' };
        else if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE_MAGIC) this.state = { kind: 'skippable-size' };
        else throw new Error(`not a zstd frame at byte ${fieldAt}: magic number 0x${magic.toString(16).padStart(8, '0')}`);
        return;
      }
      case 'skippable-size':
        this.state = { kind: 'skip', bytes: field.readUInt32LE(0), next: 'frame-end', checksum: false };
        return;
      case 'descriptor': {
        const d = field[0]!;
        if (d & 0x08) throw new Error(`zstd frame header at byte ${fieldAt} sets the reserved bit`);
        const fcsFlag = d >> 6;
        const singleSegment = (d & 0x20) !== 0;
        const checksum = (d & 0x04) !== 0;
        const dictBytes = [0, 1, 2, 4][d & 0x03]!;
        const fcsBytes = fcsFlag === 0 ? (singleSegment ? 1 : 0) : [0, 2, 4, 8][fcsFlag]!;
        const header = (singleSegment ? 0 : 1) + dictBytes + fcsBytes;
        this.state = { kind: 'skip', bytes: header, next: 'block-header', checksum };
        return;
      }
      case 'block-header': {
        const h = field[0]! | (field[1]! << 8) | (field[2]! << 16);
        const last = (h & 1) === 1;
        const type = (h >> 1) & 3;
        const size = h >>> 3;
        if (type === 3) throw new Error(`zstd block at byte ${fieldAt} has the reserved block type`);
        const body = type === 1 ? 1 : size;
        this.state = {
          kind: 'skip',
          bytes: body,
          next: last ? (s.checksum ? 'checksum' : 'frame-end') : 'block-header',
          checksum: s.checksum,
        };
        return;
      }
    }
  }

  override _flush(cb: TransformCallback): void {
    const s = this.state;
    if (s.kind === 'magic' && this.field.length === 0) return cb();
    cb(new Error(`the zstd stream ends inside a frame, after ${this.offset} bytes (${this.frames} whole frames): it was cut short`));
  }
}
