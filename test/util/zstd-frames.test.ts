/**
 * ZstdFrameSplitter: real frames from the chunk codec and from the zstd program (raw, RLE and compressed
 * blocks, with and without checksums, a skippable frame), fed in pieces of every size; node:zlib's zstd
 * decompressor behind it gets every frame, and without it loses all but the first of a write.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { compressChunk } from '../../src/format/chunk-codec.js';
import { ZstdFrameSplitter } from '../../src/util/zstd-frames.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function frames(): Promise<{ frames: Buffer[]; plain: Buffer }> {
  const text = Buffer.from('INSERT INTO runs VALUES (1, "published", 2026-12-03);\n'.repeat(3000));
  const parts = [randomBytes(200_000), Buffer.alloc(300_000), text, randomBytes(17), Buffer.from('x')];
  const out: Buffer[] = [];
  for (const p of parts) out.push(await compressChunk(p));
  // The program's own frames: no checksum, and one made of several blocks.
  const big = Buffer.concat([randomBytes(150_000), text, Buffer.alloc(200_000, 7)]);
  out.push(execFileSync('zstd', ['-q', '-c', '--no-check', '-1'], { input: big }));
  // A skippable frame (magic 0x184D2A53, 6 bytes of payload) decompresses to nothing.
  const skippable = Buffer.alloc(14);
  skippable.writeUInt32LE(0x184d2a53, 0);
  skippable.writeUInt32LE(6, 4);
  out.push(skippable);
  out.push(execFileSync('zstd', ['-q', '-c', '-19'], { input: text }));
  return { frames: out, plain: Buffer.concat([...parts, big, text]) };
}

/** Feeds `data` in pieces of `size` bytes, each its own write. */
function pieces(data: Buffer, size: number): Readable {
  const list: Buffer[] = [];
  for (let at = 0; at < data.length; at += size) list.push(data.subarray(at, at + size));
  return Readable.from(list, { objectMode: false });
}

async function collect(source: Readable, ...stages: NodeJS.ReadWriteStream[]): Promise<Buffer[]> {
  const got: Buffer[] = [];
  await pipeline(
    source,
    ...(stages as [NodeJS.ReadWriteStream]),
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        got.push(chunk);
        cb();
      },
    }),
  );
  return got;
}

describe('ZstdFrameSplitter', () => {
  it('never passes on a piece holding the end of one frame and more, whatever the input pieces', async () => {
    const { frames: list } = await frames();
    const stream = Buffer.concat(list);
    const ends = new Set<number>();
    let at = 0;
    for (const f of list) ends.add((at += f.length));
    for (const size of [7, 100, 4096, 65_536, stream.length]) {
      const splitter = new ZstdFrameSplitter();
      const out = await collect(pieces(stream, size), splitter);
      expect(Buffer.concat(out).equals(stream), `pieces of ${size}`).toBe(true);
      let pos = 0;
      for (const piece of out) {
        for (const end of ends)
          expect(end > pos && end < pos + piece.length, `a frame ends inside a piece (pieces of ${size})`).toBe(false);
        pos += piece.length;
      }
      expect(splitter.frames).toBe(list.length);
    }
  });

  it("lets node:zlib's zstd decompressor restore every frame, which alone it does not", async () => {
    const { frames: list, plain } = await frames();
    const stream = Buffer.concat(list);
    for (const size of [5, 65_536, stream.length]) {
      const out = await collect(pieces(stream, size), new ZstdFrameSplitter(), zlib.createZstdDecompress());
      expect(sha(Buffer.concat(out)), `pieces of ${size}`).toBe(sha(plain));
    }
    // Why it exists: one write holding every frame, and the decompressor drops all but the first.
    const alone = await collect(pieces(stream, stream.length), zlib.createZstdDecompress());
    expect(Buffer.concat(alone).length).toBeLessThan(plain.length);
  });

  it('fails a stream cut inside a frame, and bytes that are not a frame, naming the offset', async () => {
    const { frames: list } = await frames();
    const stream = Buffer.concat(list);
    await expect(collect(pieces(stream.subarray(0, stream.length - 3), 1000), new ZstdFrameSplitter())).rejects.toThrow(
      /ends inside a frame, after \d+ bytes \(\d+ whole frames\): it was cut short/,
    );
    const garbage = Buffer.concat([list[0]!, Buffer.from('SQLite format 3\0')]);
    await expect(collect(pieces(garbage, 1000), new ZstdFrameSplitter())).rejects.toThrow(
      new RegExp(`not a zstd frame at byte ${list[0]!.length}: magic number 0x`),
    );
  });
});
