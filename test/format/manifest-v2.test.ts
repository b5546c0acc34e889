/**
 * The format-2 manifest and its chunk list: what is accepted and refused, the serialized shape, and the chunk
 * list written a line at a time and read back with every check naming the line. (The manual restore recipe
 * runs verbatim from the README in test/restore-by-hand-v2.test.ts.)
 */
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chunkListKey } from '../../src/catalog/layout.js';
import { CHUNK_ZSTD_LEVEL, compressChunk } from '../../src/format/chunk-codec.js';
import { chunkKey, chunksPrefix, parseChunkKey } from '../../src/format/chunk-key.js';
import { chunkerDescription } from '../../src/format/chunker.js';
import {
  MANIFEST_V2_FORMAT_VERSION,
  ManifestV2Schema,
  parseManifestV2,
  serializeManifestV2,
  type ManifestV2,
} from '../../src/catalog/manifest-v2.js';
import { ChunkListWriter, chunkListLine, readChunkList, type ChunkRefV2 } from '../../src/format/chunk-list.js';
import { FORMAT2_CHUNKING } from '../../src/format/params.js';
import { firstValue, openDatabase } from '../../src/util/sqlite.js';
import { collect, sampleSnapshot, sha256, tempDir } from './helpers.js';

const ID = '20261124T161300Z-3f9a1c2e';
let work: { dir: string; remove(): Promise<void> };
let snapshotPath: string;
let manifest: ManifestV2;
let refs: ChunkRefV2[];
let listText: string;

beforeAll(async () => {
  work = await tempDir('manifest');
  snapshotPath = sampleSnapshot(work.dir, 600, 11);
  const plain = await readFile(snapshotPath);
  const chunks = await collect(createReadStream(snapshotPath), FORMAT2_CHUNKING);
  const frames = new Map<string, Buffer>();
  for (const c of chunks) if (!frames.has(c.sha256)) frames.set(c.sha256, await compressChunk(c.bytes));
  const db = openDatabase(snapshotPath, { readOnly: true });
  let facts;
  try {
    facts = {
      pageSize: firstValue<number>(db, 'PRAGMA page_size')!,
      pageCount: firstValue<number>(db, 'PRAGMA page_count')!,
      runs: firstValue<number>(db, 'SELECT count(*) FROM runs')!,
      reviews: firstValue<number>(db, 'SELECT count(*) FROM reviews')!,
    };
  } finally {
    db.close();
  }
  refs = chunks.map((c) => [c.sha256, c.length, frames.get(c.sha256)!.length] as ChunkRefV2);
  const writer = new ChunkListWriter();
  listText = refs.map((r) => writer.line(r)).join('');
  const list = writer.summary();
  manifest = {
    id: ID,
    createdAt: '2026-11-24T16:13:00.000Z',
    database: {
      name: 'tcab',
      sqliteVersion: '3.50.4',
      pageSize: facts.pageSize,
      pageCount: facts.pageCount,
      journalMode: 'wal',
      userVersion: 0,
      tables: { runs: facts.runs, reviews: facts.reviews },
    },
    integrity: 'ok',
    snapshot: { bytes: plain.length, sha256: sha256(plain) },
    timings: { vacuumMs: 12, chunkMs: 3 },
    formatVersion: 2,
    databaseName: 'tcab',
    trigger: { kind: 'timer' },
    tags: [],
    storedAt: '2026-11-24T16:13:05.000Z',
    chunking: chunkerDescription(FORMAT2_CHUNKING),
    encoding: { compression: 'zstd', level: CHUNK_ZSTD_LEVEL },
    stored: { bytes: list.storedBytes },
    chunkList: { key: chunkListKey('tcab', ID), bytes: list.bytes, sha256: list.sha256, count: list.count },
  };
});
afterAll(() => work?.remove());

function problems(m: unknown): string[] {
  const r = ManifestV2Schema.safeParse(m);
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
}

describe('chunk keys', () => {
  const h = 'ab' + 'c'.repeat(62);
  it('are chunks/<database>/<first two hex>/<sha256>.zst, and parse back', () => {
    expect(chunkKey('tcab', h)).toBe(`chunks/tcab/ab/${h}.zst`);
    expect(chunksPrefix('tcab')).toBe('chunks/tcab/');
    expect(parseChunkKey(`chunks/tcab/ab/${h}.zst`)).toEqual({ database: 'tcab', sha256: h });
  });

  it('refuse what is not a chunk', () => {
    expect(() => chunkKey('tcab', h.toUpperCase())).toThrow(/is not a lower-case hex sha256, so it names no chunk/);
    expect(() => chunkKey('TCAB', h)).toThrow(/database name "TCAB" must be lower-case/);
    expect(parseChunkKey(`chunks/tcab/ac/${h}.zst`)).toBeNull(); // wrong folder for the hash
    expect(parseChunkKey(`chunks/tcab/ab/${h}`)).toBeNull();
    expect(parseChunkKey(`snapshots/tcab/2026/11/24/${ID}.json`)).toBeNull();
    expect(parseChunkKey(`chunks/tcab/ab/${h}.zst.tmp`)).toBeNull();
  });
});

describe('ManifestV2Schema', () => {
  it('accepts a manifest made from a real snapshot, small, and serializes it so it parses back the same', () => {
    expect(problems(manifest)).toEqual([]);
    expect(manifest.formatVersion).toBe(MANIFEST_V2_FORMAT_VERSION);
    expect(refs.length).toBeGreaterThan(3);
    expect(manifest.chunkList.key).toBe(`snapshots/tcab/2026/11/24/${ID}.chunks`);
    const text = serializeManifestV2(manifest);
    expect(parseManifestV2(text, 'test')).toEqual(manifest);
    // No chunk in the manifest: it stays a few KB whatever the size of the database.
    expect(text.length).toBeLessThan(2048);
    expect(text).not.toContain(refs[1]![0]);
  });

  it.each<[string, (m: ManifestV2) => unknown, RegExp]>([
    [
      'a v1 manifest',
      (m) => ({ ...m, formatVersion: 1, artifact: { bytes: 1, sha256: m.snapshot.sha256, compression: 'zstd' } }),
      /formatVersion: Invalid input: expected 2/,
    ],
    [
      'a chunk count that cannot make the file',
      (m) => ({ ...m, chunkList: { ...m.chunkList, count: 1 } }),
      /chunkList\.count: 1 chunks of 16384\.\.262144 bytes cannot make the snapshot's \d+ bytes/,
    ],
    ['a chunk list without its hash', (m) => ({ ...m, chunkList: { ...m.chunkList, sha256: undefined } }), /chunkList\.sha256/],
    ['a stored size of 0', (m) => ({ ...m, stored: { bytes: 0 } }), /stored\.bytes/],
    [
      'chunker parameters the chunker refuses',
      (m) => ({ ...m, chunking: { ...m.chunking, avgBytes: 10000 } }),
      /chunking: Invalid chunker parameters: .*avgBytes must be a power of two/,
    ],
    [
      'another database name than the database',
      (m) => ({ ...m, databaseName: 'other' }),
      /databaseName: databaseName "other" differs from database.name "tcab"/,
    ],
    ['a compression other than zstd', (m) => ({ ...m, encoding: { compression: 'gzip', level: 1 } }), /encoding\.compression/],
    ['a missing integrity result', (m) => ({ ...m, integrity: undefined }), /integrity: Invalid input/],
  ])('refuses %s, saying what', (_name, change, message) => {
    const found = problems(change(structuredClone(manifest)));
    expect(found.join('\n')).toMatch(message);
  });

  it('parseManifestV2 names the manifest and every problem', () => {
    const bad = JSON.stringify({ ...manifest, databaseName: 'other', stored: { bytes: 0 } });
    expect(() => parseManifestV2(bad, 'snapshots/tcab/2026/11/24/x.json on target "file"')).toThrow(
      /The manifest snapshots\/tcab\/2026\/11\/24\/x\.json on target "file" is not a valid format-2 manifest: .*stored\.bytes: .*databaseName: .*Check: the object is damaged/,
    );
    expect(() => parseManifestV2('{"id":', 'm.json')).toThrow(/The manifest m\.json is not JSON/);
  });
});

/** Reads `text` back through readChunkList in pieces of `piece` bytes. */
async function readBack(text: string, m: ManifestV2 = manifest, piece = 37): Promise<ChunkRefV2[]> {
  async function* pieces() {
    for (let at = 0; at < text.length; at += piece) yield Buffer.from(text.slice(at, at + piece), 'latin1');
  }
  const out: ChunkRefV2[] = [];
  for await (const ref of readChunkList(pieces(), m, 'L on target "t"')) out.push(ref);
  return out;
}

describe('the chunk list', () => {
  it('is one "<sha256> <plain bytes> <stored bytes>" line per chunk in file order, and reads back the same in any pieces', async () => {
    const lines = listText.split('\n');
    expect(lines.pop()).toBe('');
    expect(lines.length).toBe(refs.length);
    expect(lines[0]).toBe(`${refs[0]![0]} ${refs[0]![1]} ${refs[0]![2]}`);
    expect(chunkListLine(refs[1]!)).toBe(`${lines[1]}\n`);
    expect(sha256(Buffer.from(listText))).toBe(manifest.chunkList.sha256);
    for (const piece of [1, 37, 4096, 1 << 20]) expect(await readBack(listText, manifest, piece)).toEqual(refs);
  });

  const line = (r: ChunkRefV2) => `${r[0]} ${r[1]} ${r[2]}\n`;
  it.each<[string, () => [string, Partial<ManifestV2>?], RegExp]>([
    [
      'a malformed line',
      () => [listText.replace(line(refs[2]!), `${refs[2]![0].toUpperCase()} ${refs[2]![1]} ${refs[2]![2]}\n`)],
      /line 3 is not "<sha256> <plain bytes> <stored bytes>"/,
    ],
    ['a line cut short', () => [listText.slice(0, -5)], /line \d+ does not end with a newline/],
    [
      'a missing line',
      () => [listText.replace(line(refs[1]!), '')],
      /line 2 lists a chunk of \d+ bytes before the last, below|it has \d+ lines, the manifest says/,
    ],
    [
      'a chunk above the maximum',
      () => [listText.replace(line(refs[0]!), `${refs[0]![0]} 300000 ${refs[0]![2]}\n`)],
      /line 1 lists a chunk of 300000 bytes, above the chunking's maximum of 262144/,
    ],
    [
      'a short chunk before the last',
      () => [listText.replace(line(refs[1]!), `${refs[1]![0]} 100 50\n`)],
      /line 2 lists a chunk of 100 bytes before the last, below the chunking's minimum of 16384/,
    ],
    [
      // A reader would allocate a buffer of this length for the frame: refused from the line itself.
      'a frame longer than any frame of its chunk',
      () => [listText.replace(line(refs[0]!), `${refs[0]![0]} ${refs[0]![1]} 2000000000\n`)],
      /line 1 lists a frame of 2000000000 bytes for a chunk of \d+, above zstd's bound of \d+/,
    ],
    ['one more line', () => [listText + line(refs[0]!)], /it has more than the \d+ lines the manifest gives/],
    [
      'a changed stored size',
      () => [listText.replace(line(refs[0]!), `${refs[0]![0]} ${refs[0]![1]} ${refs[0]![2] + 1}\n`)],
      /its chunks add up to \d+ stored bytes, the manifest says/,
    ],
    [
      'another hash (same sizes)',
      () => [listText.replace(refs[0]![0], 'f'.repeat(64))],
      /it is \d+ bytes with sha256 [0-9a-f]{64}, the manifest says \d+ bytes with/,
    ],
    ['an endless line', () => [listText.replace('\n', 'x'.repeat(200))], /line 1 is longer than any chunk line|line 1 is not/],
  ])('refuses %s, naming the list, the snapshot and the line', async (_name, make, message) => {
    const [text] = make();
    const error = await readBack(text).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(error?.message).toMatch(/^Chunk list L on target "t" of snapshot 20261124T161300Z-3f9a1c2e: /);
    expect(error?.message).toMatch(message);
  });
});
