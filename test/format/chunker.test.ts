/**
 * The format-2 chunker: its parameters, its frozen gear table and cut points, and the properties the format
 * relies on (cut points independent of read sizes, bounded sizes, locality of a change, lazy reading).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TcabError } from '../../src/errors.js';
import {
  CHUNKER_ALGORITHM,
  DEFAULT_CHUNKER_PARAMS,
  chunkStream,
  chunkerDescription,
  chunkerParams,
  type ChunkerParams,
} from '../../src/format/chunker.js';
import { GEAR, GEAR_RECIPE_PREFIX, GEAR_TABLE_SHA256 } from '../../src/format/gear-table.js';
import { collect, deterministicBytes, inReads, prng, sha256, tempDir } from './helpers.js';

let work: { dir: string; remove(): Promise<void> };
beforeAll(async () => {
  work = await tempDir('chunker');
});
afterAll(() => work?.remove());

async function* whole(data: Buffer): AsyncGenerator<Buffer> {
  yield data;
}

/** The cut rule written the plain way, over a whole buffer, straight from chunker.ts's description. */
function referenceCuts(data: Buffer, p: ChunkerParams): number[] {
  const bits = Math.log2(p.avgBytes);
  const maskS = (0xffffffff << (32 - bits - p.normalization)) >>> 0;
  const maskL = (0xffffffff << (32 - bits + p.normalization)) >>> 0;
  const lengths: number[] = [];
  let start = 0;
  while (start < data.length) {
    let h = 0;
    let length = Math.min(p.maxBytes, data.length - start);
    for (let L = p.minBytes; L < p.maxBytes && start + L <= data.length; L++) {
      h = (((h << 1) >>> 0) + GEAR[data[start + L - 1]!]!) >>> 0;
      if ((h & (L < p.avgBytes ? maskS : maskL)) === 0) {
        length = L;
        break;
      }
    }
    lengths.push(length);
    start += length;
  }
  return lengths;
}

describe('chunker parameters', () => {
  it('defaults to min 4 KiB, average 16 KiB, max 64 KiB, normalization 2', () => {
    expect(chunkerParams()).toEqual({ minBytes: 4096, avgBytes: 16384, maxBytes: 65536, normalization: 2 });
    expect(chunkerDescription(chunkerParams())).toEqual({
      algorithm: CHUNKER_ALGORITHM,
      gearTableSha256: GEAR_TABLE_SHA256,
      minBytes: 4096,
      avgBytes: 16384,
      maxBytes: 65536,
      normalization: 2,
    });
  });

  it.each([
    [{ minBytes: 16384 }, 'minBytes < avgBytes < maxBytes'],
    [{ maxBytes: 16384 }, 'minBytes < avgBytes < maxBytes'],
    [{ avgBytes: 12000 }, 'avgBytes must be a power of two'],
    [{ minBytes: 32 }, 'minBytes must be at least 64'],
    [{ maxBytes: 32 * 1024 * 1024 }, 'maxBytes must be at most'],
    [{ normalization: 4 }, 'normalization must be 0 to 3'],
    [{ minBytes: 64, avgBytes: 2, maxBytes: 4096, normalization: 1 }, 'minBytes < avgBytes'],
    [{ avgBytes: 1.5 }, 'avgBytes must be a non-negative integer'],
    [{ minBytes: Number.NaN }, 'minBytes must be a non-negative integer'],
  ] as Array<[Partial<ChunkerParams>, string]>)('rejects %j, saying why', (bad, why) => {
    let thrown: unknown;
    try {
      chunkerParams(bad);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(TcabError);
    expect((thrown as Error).message).toContain('Invalid chunker parameters');
    expect((thrown as Error).message).toContain(why);
    expect((thrown as Error).message).toContain('Check: use the defaults');
  });

  it('refuses bad parameters before reading anything', async () => {
    let reads = 0;
    async function* source() {
      reads++;
      yield Buffer.alloc(10);
    }
    await expect(collect(source(), { avgBytes: 3000 })).rejects.toThrow(/avgBytes must be a power of two/);
    expect(reads).toBe(0);
  });
});

describe('the frozen format', () => {
  it('the gear table is the documented recipe, and its golden hash has not moved', () => {
    const derived = Array.from({ length: 256 }, (_, i) =>
      createHash('sha256').update(`${GEAR_RECIPE_PREFIX}${i}`).digest().readUInt32BE(0),
    );
    expect(Array.from(GEAR)).toEqual(derived);
    const bytes = Buffer.alloc(1024);
    for (const [i, v] of GEAR.entries()) bytes.writeUInt32BE(v, i * 4);
    // Golden: changing the table changes every cut point, and chunks stored before would no longer deduplicate.
    expect(sha256(bytes)).toBe('3064e238489d807294bc6dde9f37429a58d741ce8301234e2a37c93a45485546');
    expect(GEAR_TABLE_SHA256).toBe('3064e238489d807294bc6dde9f37429a58d741ce8301234e2a37c93a45485546');
    expect(CHUNKER_ALGORITHM).toBe('fastcdc-gear32');
  });

  it('cuts a fixed 1 MiB input at the golden points with the default parameters', async () => {
    const data = deterministicBytes('golden cut points', 1 << 20);
    const chunks = await collect(whole(data));
    expect(chunks.map((c) => c.length)).toEqual([
      7786, 19785, 20011, 24265, 6671, 18668, 14739, 7416, 19706, 18810, 21191, 19632, 11479, 25863, 20376, 17871, 17002, 17551, 16517,
      5182, 19072, 18137, 23785, 21141, 18498, 16524, 14050, 17475, 18263, 17924, 19015, 20858, 20499, 22071, 21273, 5951, 22506, 23125,
      17314, 14771, 17690, 18619, 21844, 12796, 17657, 17097, 32082, 22783, 20069, 18811, 21206, 11191, 17707, 16519, 18523, 17079, 23680,
      19887, 563,
    ]);
    expect(sha256(Buffer.from(chunks.map((c) => `${c.sha256}\n`).join('')))).toBe(
      '2f752920db34505a88cfdf796778b1de7c04c1c6ddeae793b2431ed80618f2b1',
    );
  });

  it('cuts a fixed input at the golden points with other parameters', async () => {
    const data = deterministicBytes('golden small', 1 << 20);
    const chunks = await collect(whole(data), { minBytes: 256, avgBytes: 1024, maxBytes: 4096 });
    expect(chunks.length).toBe(902);
    expect(sha256(Buffer.from(chunks.map((c) => `${c.sha256}\n`).join('')))).toBe(
      '6e73890bc9d1a1edad28f5685b2b3720b0439fac65a558f374828b2e861f7ee9',
    );
  });

  it('cuts where the plain statement of the rule cuts, for several parameter sets', async () => {
    const sets: Array<Partial<ChunkerParams>> = [
      {},
      { minBytes: 256, avgBytes: 1024, maxBytes: 4096 },
      { normalization: 0 },
      { minBytes: 64, avgBytes: 128, maxBytes: 200, normalization: 3 },
    ];
    for (const [n, set] of sets.entries()) {
      const p = chunkerParams(set);
      const data = deterministicBytes(`reference ${n}`, 600_000);
      const got = (await collect(whole(data), p)).map((c) => c.length);
      expect({ set, lengths: got }).toEqual({ set, lengths: referenceCuts(data, p) });
    }
  });
});

describe('chunkStream', () => {
  it('gives the same chunks however the input is split into reads', async () => {
    const data = deterministicBytes('read sizes', 3 << 20);
    const expected = await collect(whole(data));
    const splits: Array<[string, () => number]> = [
      ['1-byte reads', () => 1],
      ['reads of max - 1', () => DEFAULT_CHUNKER_PARAMS.maxBytes - 1],
      ['reads of exactly max', () => DEFAULT_CHUNKER_PARAMS.maxBytes],
    ];
    for (const seed of [1, 2, 3, 4, 5]) {
      const r = prng(seed);
      // Mostly small reads with empty ones, some larger than a whole chunk.
      splits.push([`random reads, seed ${seed}`, () => (r() < 0.1 ? 0 : r() < 0.8 ? Math.floor(r() * 5000) : Math.floor(r() * 200_000))]);
    }
    for (const [name, size] of splits) {
      const data1 = name === '1-byte reads' ? data.subarray(0, 300_000) : data;
      const want = name === '1-byte reads' ? await collect(whole(data1)) : expected;
      const got = await collect(inReads(data1, size));
      expect({ name, cuts: got.map((c) => [c.offset, c.length, c.sha256]) }).toEqual({
        name,
        cuts: want.map((c) => [c.offset, c.length, c.sha256]),
      });
    }
  });

  it('covers the input exactly, in order, with chunks inside the bounds, each hashed and owned', async () => {
    const data = deterministicBytes('coverage', 2_500_000);
    const r = prng(9);
    const chunks = await collect(inReads(data, () => 1 + Math.floor(r() * 100_000)));
    let offset = 0;
    chunks.forEach((c, i) => {
      expect(c.offset).toBe(offset);
      expect(c.bytes.length).toBe(c.length);
      expect(c.bytes.equals(data.subarray(offset, offset + c.length))).toBe(true);
      expect(c.sha256).toBe(sha256(c.bytes));
      expect(c.length).toBeLessThanOrEqual(65536);
      if (i < chunks.length - 1) expect(c.length).toBeGreaterThanOrEqual(4096);
      offset += c.length;
    });
    expect(offset).toBe(data.length);
    const mean = data.length / chunks.length;
    // Normalized chunking keeps the mean near the target average on random data.
    expect(mean).toBeGreaterThan(14_000);
    expect(mean).toBeLessThan(24_000);
  });

  it('cuts a run of identical bytes into identical maximal chunks (which then deduplicate)', async () => {
    // A zero-filled stretch, like SQLite's free pages: no content cut is guaranteed, so max bounds it.
    const data = Buffer.concat([
      deterministicBytes('before zeros', 10_000),
      Buffer.alloc(1_000_000),
      deterministicBytes('after zeros', 10_000),
    ]);
    const chunks = await collect(whole(data));
    const inside = chunks.filter((c) => c.offset >= 80_000 && c.offset + c.length <= 900_000);
    expect(inside.length).toBeGreaterThan(5);
    expect(new Set(inside.map((c) => c.sha256)).size).toBe(1);
    expect(chunks.every((c) => c.length <= 65536)).toBe(true);
  });

  it('keeps every chunk but those next to a change when bytes are inserted in the middle', async () => {
    const data = deterministicBytes('locality', 4 << 20);
    const edited = Buffer.concat([data.subarray(0, 2_000_000), Buffer.from('x'.repeat(100)), data.subarray(2_000_000)]);
    const before = await collect(whole(data));
    const after = await collect(whole(edited));
    const known = new Set(before.map((c) => c.sha256));
    const changed = after.filter((c) => !known.has(c.sha256));
    expect(changed.length).toBeGreaterThanOrEqual(1);
    expect(changed.length).toBeLessThanOrEqual(2);
    const changedBytes = changed.reduce((n, c) => n + c.length, 0);
    expect(changedBytes).toBeLessThan(2 * 65536);
  });

  it('reads lazily: it has read at most one chunk plus one read ahead of what it has handed out', async () => {
    const data = deterministicBytes('lazy', 8 << 20);
    const readSize = 10_000;
    let read = 0;
    async function* source() {
      for (let at = 0; at < data.length; at += readSize) {
        read += Math.min(readSize, data.length - at);
        yield data.subarray(at, at + readSize);
      }
    }
    let handed = 0;
    let worstAhead = 0;
    for await (const c of chunkStream(source())) {
      handed += c.length;
      worstAhead = Math.max(worstAhead, read - handed);
    }
    expect(handed).toBe(data.length);
    expect(worstAhead).toBeLessThanOrEqual(65536 + readSize);
  });

  it('reads a file through a Readable, with the same cut points', async () => {
    const data = deterministicBytes('file', 700_000);
    const path = join(work.dir, 'plain.bin');
    await writeFile(path, data);
    const fromFile = await collect(createReadStream(path, { highWaterMark: 7_777 }));
    const fromMemory = await collect(whole(data));
    expect(fromFile.map((c) => c.sha256)).toEqual(fromMemory.map((c) => c.sha256));
  });

  it('yields nothing for an empty input, and one short chunk for an input below the minimum', async () => {
    expect(await collect(whole(Buffer.alloc(0)))).toEqual([]);
    const tiny = deterministicBytes('tiny', 1000);
    const chunks = await collect(whole(tiny));
    expect(chunks.map((c) => [c.offset, c.length, c.sha256])).toEqual([[0, 1000, sha256(tiny)]]);
  });

  it('refuses text instead of bytes, naming where', async () => {
    async function* text() {
      yield Buffer.alloc(5000);
      yield 'PRAGMA';
    }
    await expect(collect(text())).rejects.toThrow(/The chunker was given text at byte 5000 instead of bytes.*without setEncoding/);
  });
});
