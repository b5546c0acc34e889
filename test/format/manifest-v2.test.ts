/**
 * The format-2 manifest and chunk addresses: what is accepted and refused, the serialized shape, and the
 * manual restore recipe run verbatim against a file-target layout built from a real snapshot.
 */
import { spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifestKey } from '../../src/catalog/layout.js';
import { CHUNK_ZSTD_LEVEL, compressChunk } from '../../src/format/chunk-codec.js';
import { chunkKey, chunksPrefix, parseChunkKey } from '../../src/format/chunk-key.js';
import { chunkerDescription, chunkerParams } from '../../src/format/chunker.js';
import {
  MANIFEST_V2_FORMAT_VERSION,
  ManifestV2Schema,
  distinctChunks,
  parseManifestV2,
  serializeManifestV2,
  type ManifestV2,
} from '../../src/format/manifest-v2.js';
import { firstValue, openDatabase } from '../../src/util/sqlite.js';
import { collect, sampleSnapshot, sha256, tempDir } from './helpers.js';

const ID = '20261124T161300Z-3f9a1c2e';
let work: { dir: string; remove(): Promise<void> };
let snapshotPath: string;
let manifest: ManifestV2;
let frames: Map<string, Buffer>;

beforeAll(async () => {
  work = await tempDir('manifest');
  snapshotPath = sampleSnapshot(work.dir, 250, 11);
  const plain = await readFile(snapshotPath);
  const chunks = await collect(createReadStream(snapshotPath));
  frames = new Map();
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
  const refs = chunks.map((c) => [c.sha256, c.length, frames.get(c.sha256)!.length] as [string, number, number]);
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
    chunking: chunkerDescription(chunkerParams()),
    encoding: { compression: 'zstd', level: CHUNK_ZSTD_LEVEL },
    stored: { bytes: refs.reduce((n, r) => n + r[2], 0) },
    chunks: refs,
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
  it('accepts a manifest made from a real snapshot, and serializes it so it parses back the same', () => {
    expect(problems(manifest)).toEqual([]);
    expect(manifest.formatVersion).toBe(MANIFEST_V2_FORMAT_VERSION);
    const text = serializeManifestV2(manifest);
    expect(parseManifestV2(text, 'test')).toEqual(manifest);
    // One chunk per line after a first line with everything else.
    const lines = text.trimEnd().split('\n');
    expect(lines.length).toBe(manifest.chunks.length + 2);
    expect(lines[0]).toMatch(/^\{"id":.*"chunks":\[$/);
    expect(lines.at(-1)).toBe(']}');
    expect(distinctChunks(manifest)).toEqual([...frames.keys()]);
  });

  it.each<[string, (m: ManifestV2) => unknown, RegExp]>([
    [
      'a v1 manifest',
      (m) => ({ ...m, formatVersion: 1, artifact: { bytes: 1, sha256: m.snapshot.sha256, compression: 'zstd' } }),
      /formatVersion: Invalid input: expected 2/,
    ],
    [
      'chunks that do not add up to the file',
      (m) => ({ ...m, chunks: m.chunks.slice(1), stored: { bytes: m.stored.bytes - m.chunks[0]![2] } }),
      /chunks: the chunks add up to \d+ bytes, not the snapshot's \d+/,
    ],
    [
      'a stored total that is not the sum',
      (m) => ({ ...m, stored: { bytes: m.stored.bytes + 1 } }),
      /stored\.bytes: the chunks' stored lengths add up to/,
    ],
    [
      'a chunk under the minimum before the last',
      (m) => ({ ...m, chunks: [[m.chunks[0]![0], 100, 50], ...m.chunks.slice(1)] }),
      /chunks\.0\.1: chunk 0 is 100 bytes, outside the chunker's 4096\.\.65536/,
    ],
    [
      'a chunk over the maximum',
      (m) => ({ ...m, chunks: [...m.chunks.slice(0, -1), [m.chunks.at(-1)![0], 70000, 50]] }),
      /chunk \d+ is 70000 bytes, outside the chunker's 1\.\.65536/,
    ],
    [
      'an upper-case hash',
      (m) => ({ ...m, chunks: [[m.chunks[0]![0].toUpperCase(), m.chunks[0]![1], m.chunks[0]![2]], ...m.chunks.slice(1)] }),
      /chunks\.0\.0: a lower-case hex sha256/,
    ],
    [
      'chunker parameters the chunker refuses',
      (m) => ({ ...m, chunking: { ...m.chunking, avgBytes: 10000 } }),
      /chunking: Invalid chunker parameters: avgBytes must be a power of two/,
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
    const bad = JSON.stringify({ ...manifest, databaseName: 'other', stored: { bytes: 1 } });
    expect(() => parseManifestV2(bad, 'snapshots/tcab/2026/11/24/x.json on target "file"')).toThrow(
      /The manifest snapshots\/tcab\/2026\/11\/24\/x\.json on target "file" is not a valid format-2 manifest: databaseName: .*; stored\.bytes: .*Check: the object is damaged/,
    );
    expect(() => parseManifestV2('{"id":', 'm.json')).toThrow(/The manifest m\.json is not JSON/);
  });
});

describe('the manual restore recipe', () => {
  const recipe = (target: string) => `set -e
ID=${ID}
T=${target}
cp $T/snapshots/tcab/2026/11/24/$ID.json .
sed -n 's|^\\["\\([0-9a-f]\\{64\\}\\)".*|\\1|p' $ID.json | while read h; do cat $T/chunks/tcab/$(echo $h | cut -c1-2)/$h.zst; done | zstd -d > tcab.sqlite
echo "$(sed -n 's/.*"snapshot": *{[^}]*"sha256": *"\\([0-9a-f]*\\)".*/\\1/p' <(head -1 $ID.json))  tcab.sqlite" | sha256sum -c -
sqlite3 tcab.sqlite 'PRAGMA integrity_check; SELECT count(*) FROM runs;'
`;

  async function targetFolder(name: string, m: ManifestV2): Promise<string> {
    const target = join(work.dir, name);
    for (const [hash, frame] of frames) {
      const path = join(target, chunkKey('tcab', hash));
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, frame);
    }
    const mPath = join(target, manifestKey('tcab', ID));
    await mkdir(dirname(mPath), { recursive: true });
    await writeFile(mPath, serializeManifestV2(m));
    return target;
  }

  it('restores the snapshot with cat, zstd -d, sha256sum and sqlite3, verbatim', async () => {
    // A trigger reason that looks like a chunk line must not be taken for one.
    const m = {
      ...manifest,
      trigger: { kind: 'manual' as const, reason: `before upgrade\n["${'0'.repeat(64)}",1,1]` },
      tags: ['f'.repeat(64)],
    };
    const target = await targetFolder('target-ok', m);
    const restoreDir = join(work.dir, 'restore-ok');
    await mkdir(restoreDir);
    const run = spawnSync('bash', ['-c', recipe(target)], { cwd: restoreDir, encoding: 'utf8' });
    expect(run.stderr).toBe('');
    expect(run.stdout).toBe(`tcab.sqlite: OK\nok\n250\n`);
    expect((await readFile(join(restoreDir, 'tcab.sqlite'))).equals(await readFile(snapshotPath))).toBe(true);
    // The hashes the recipe picks are exactly the manifest's list (what `jq -r '.chunks[][0]'` prints).
    const picked = spawnSync('bash', ['-c', `sed -n 's|^\\["\\([0-9a-f]\\{64\\}\\)".*|\\1|p' ${ID}.json`], {
      cwd: restoreDir,
      encoding: 'utf8',
    }).stdout;
    expect(picked).toBe(manifest.chunks.map((c) => `${c[0]}\n`).join(''));
  });

  it('fails at the sha256 check when a chunk is missing, leaving no doubt', async () => {
    const target = await targetFolder('target-missing', manifest);
    await rm(join(target, chunkKey('tcab', manifest.chunks[3]![0])));
    const restoreDir = join(work.dir, 'restore-missing');
    await mkdir(restoreDir);
    const run = spawnSync('bash', ['-c', recipe(target)], { cwd: restoreDir, encoding: 'utf8' });
    expect(run.status).not.toBe(0);
    expect(run.stderr).toMatch(/No such file or directory/);
    expect(run.stdout).toMatch(/tcab\.sqlite: FAILED/);
  });
});
