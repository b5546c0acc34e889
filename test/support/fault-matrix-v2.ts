/**
 * The fault matrix of format 2 (docs/format-2.md), beside the format-1 tables of fault-matrix.ts and in the
 * same terms (kinds, retried, tolerated, expectation, settleWithin): restore, replicate, verify and prune's
 * chunk sweep, each faulting one operation on the chunk list, the manifest, a listing, or chunk operation k
 * of n (the first, the 7th, the last) in one way. Instead of the artifact sizes of format 1 a chunk row has
 * positions; the n of "last" is counted from the fixture when the case runs (test/jobs/fault-matrix-v2-*.ts).
 *
 * The fixture: real SQLite files from VACUUM INTO, two snapshots A and B of one database sharing most of
 * their chunks (several dozen each with the 16/64/256 KiB chunker), and for prune a third, older snapshot O
 * of an unrelated database file whose chunks become garbage once retention removes it.
 */
import { cp, mkdir } from 'node:fs/promises';
import { expect } from 'vitest';
import { listCatalog } from '../../src/catalog/catalog.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { join } from 'node:path';
import { chunkListKey } from '../../src/catalog/layout.js';
import type { ManifestV2 } from '../../src/catalog/manifest-v2.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { readChunkList, type ChunkRefV2 } from '../../src/format/chunk-list.js';
import { FileTarget } from '../../src/targets/file.js';
import { parseTargetUrl, type FileTargetSpec } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import type { FaultKind } from './fault-target.js';
import { DRILL_RECORD, expectation, fullMessage, KINDS, type KindName, type MatrixCase, type MatrixRow } from './fault-matrix.js';
import type { MatrixFolder } from './matrix-world.js';
import { storeFileAsV2 } from './store-v2.js';
import { publishAgain, sha256Of, vacuumInto } from './v2-fixtures.js';

export const DB = 'tcab';
export const CHUNK = /^chunks\//;
export const CHUNKS_PREFIX = /^chunks\//;
export const CHUNK_LIST = /\.chunks$/;
export const MANIFEST_V2 = /^snapshots\/.*\.json$/;
export const SNAPSHOTS = /^snapshots\//;
export const VERIFY_RECORD_V2 = /^status\/[^/]+\.verify\.json$/;

/** Which chunk operation of the run the fault hits: the first, the 7th (a middle one), the last. */
export type Position = 'first' | 'middle' | 'last';
export const POSITIONS: Position[] = ['first', 'middle', 'last'];

/** Matching calls let through before the fault, for a position among n calls. */
export function skipFor(position: Position, n: number): number {
  return position === 'first' ? 0 : position === 'middle' ? 6 : n - 1;
}

export interface RowV2 extends MatrixRow {
  /** Chunk rows: which of the job's n chunk operations of this kind; then `count` gives n for the fixture. */
  positions?: Position[];
  /** What n is for a chunk row (how many matching calls a fault-free run makes). */
  count?: keyof FixtureCounts;
  /** Matching calls of an earlier step let through first, as a count of the fixture (the application drill's reads come after the file-level drill's). */
  after?: keyof FixtureCounts;
  /** What a failure's message must name besides the target: the object's key, or the step. */
  names?: RegExp;
}

export interface TableV2 {
  job: string;
  rows: RowV2[];
  /** The table runs once in each of these ways (the drill's methods); each is a case of its own. */
  ways?: string[];
}

export interface CaseV2 extends MatrixCase {
  row: RowV2;
  position?: Position;
  /** One of the table's `ways`. */
  way?: string;
}

const START: KindName[] = ['error', 'transient', 'blip', 'hang', 'lost'];
const BODY: KindName[] = ['error', 'blip', 'destroy', 'hang'];
const LIST: KindName[] = ['error', 'transient', 'blip', 'hang'];
/** A chunk is put from a buffer: faulted before the backend has it, or after (answer lost); 'destroy' is the body cut. */
const CHUNK_PUT: KindName[] = ['error', 'transient', 'blip', 'hang', 'lost'];
const STREAM_PUT_START: KindName[] = ['error', 'transient', 'blip', 'destroy', 'hang'];
const COMMIT: KindName[] = ['error', 'hang', 'lost'];

function gets(on: string, what: string, keys: RegExp, bodyRetried: boolean, extra: Partial<RowV2> = {}): RowV2[] {
  return [
    { name: `get ${what} start`, op: 'get', at: 'start', keys, on, kinds: START, retried: true, ...extra },
    { name: `get ${what} body`, op: 'get', at: 'body', keys, on, kinds: BODY, retried: bodyRetried, ...extra },
  ];
}

function list(on: string, what: string, keys: RegExp, extra: Partial<RowV2> = {}): RowV2 {
  return { name: `list ${what}`, op: 'list', at: 'page', keys, on, kinds: LIST, retried: true, ...extra };
}

const chunkRows = (count: keyof FixtureCounts) => ({ keys: CHUNK, positions: POSITIONS, count });

/** What a failure names, by object. */
export const NAMES = {
  chunkList: /chunks\/tcab\/[^ ]*\.chunks|chunk list/,
  manifest: /snapshots\/tcab\/[^ ]*\.json|manifest/,
  listing: /list/i,
};

/**
 * Restore --latest --force of B from "faulty" alone over an existing database file. A chunk whose body breaks
 * off once (blip) is read again and the restore succeeds; one that breaks off on every read (error, destroy:
 * each read from chunk k on) fails naming the chunk after 3 reads (src/jobs/restore/chunks.ts).
 */
export const RESTORE_V2: TableV2 = {
  job: 'restore v2',
  rows: [
    list('faulty', 'snapshots', SNAPSHOTS),
    ...gets('faulty', 'manifest', MANIFEST_V2, false),
    ...gets('faulty', 'chunk list', CHUNK_LIST, false),
    ...gets('faulty', 'chunk', CHUNK, true, chunkRows('refsB')),
  ],
};

/** Replicate from "src" (A and B) to an empty "dst": every chunk of both, two chunk lists, two manifests. */
export const REPLICATE_V2: TableV2 = {
  job: 'replicate v2',
  rows: [
    list('src', 'snapshots (source)', SNAPSHOTS),
    ...gets('src', 'chunk list (source)', CHUNK_LIST, true),
    ...gets('src', 'chunk (source)', CHUNK, true, chunkRows('union')),
    list('dst', 'snapshots (destination)', SNAPSHOTS),
    list('dst', 'chunks (destination, what it holds)', CHUNKS_PREFIX),
    list('dst', 'chunks (destination, the check after the first manifest)', CHUNKS_PREFIX, { skip: 1 }),
    { name: 'put chunk', op: 'put', at: 'start', on: 'dst', kinds: CHUNK_PUT, retried: true, ...chunkRows('union') },
    { name: 'put chunk body', op: 'put', at: 'body', on: 'dst', kinds: ['destroy'], retried: true, ...chunkRows('union') },
    { name: 'put chunk list start', op: 'put', at: 'start', keys: CHUNK_LIST, on: 'dst', kinds: STREAM_PUT_START, retried: true },
    { name: 'put chunk list body', op: 'put', at: 'body', keys: CHUNK_LIST, on: 'dst', kinds: BODY, retried: true },
    { name: 'put chunk list commit', op: 'put', at: 'commit', keys: CHUNK_LIST, on: 'dst', kinds: COMMIT, retried: true },
    { name: 'put manifest', op: 'put', at: 'start', keys: MANIFEST_V2, on: 'dst', kinds: CHUNK_PUT, retried: true },
  ],
};

/** Verify --all of "good" and "faulty", each holding A and B and a verify record from an earlier clean run. */
export const VERIFY_V2: TableV2 = {
  job: 'verify v2',
  rows: [
    list('faulty', 'snapshots', SNAPSHOTS),
    gets('faulty', 'manifest', MANIFEST_V2, false)[0]!,
    ...gets('faulty', 'chunk list', CHUNK_LIST, false),
    ...gets('faulty', 'chunk', CHUNK, false, chunkRows('union')),
    { name: 'put verify record', op: 'put', at: 'start', keys: VERIFY_RECORD_V2, on: 'faulty', kinds: CHUNK_PUT, retried: true },
  ],
};

const SWEEP_DELETE =
  'a chunk the sweep could not delete is unreferenced garbage: no snapshot restores from it and no writer reuses it; the sweep reports it and the next prune takes it';

/** The sweep's marker (docs/format-2.md, "Collecting chunks (prune)"): written, listed, deleted once the sweep is done. */
export const SWEEP_MARKER = /^sweeps\//;

/**
 * Prune of "store" (O, A, B; retention keeps 2): O's manifest and chunk list go, then the sweep looks for a first
 * chunk, writes its marker, lists the markers, lists the chunks and the snapshots, deletes O's own chunks (each
 * with one request: not retried) and its marker.
 */
export const PRUNE_V2: TableV2 = {
  job: 'prune v2 sweep',
  rows: [
    {
      name: 'put sweep marker',
      op: 'put',
      at: 'start',
      keys: SWEEP_MARKER,
      on: 'store',
      kinds: CHUNK_PUT,
      retried: true,
      names: /sweep marker sweeps\/tcab\//,
    },
    list('store', 'sweep markers', SWEEP_MARKER, { names: /sweeps\/tcab\// }),
    // The sweep's listing of the chunks, after the first item of another that tells whether there are any.
    list('store', 'chunks', CHUNKS_PREFIX, { skip: 1 }),
    list('store', 'snapshots', SNAPSHOTS),
    ...gets('store', 'manifest', MANIFEST_V2, false),
    ...gets('store', 'chunk list', CHUNK_LIST, false),
    {
      name: 'delete chunk',
      op: 'delete',
      at: 'start',
      on: 'store',
      kinds: START,
      // Sent once: a repeat after a lost answer could delete a chunk a writer uploaded again meanwhile.
      retried: false,
      ...chunkRows('garbage'),
      tolerated: SWEEP_DELETE,
    },
    {
      name: 'delete sweep marker',
      op: 'delete',
      at: 'start',
      keys: SWEEP_MARKER,
      on: 'store',
      kinds: START,
      retried: true,
      names: /sweep marker sweeps\/tcab\//,
    },
  ],
};

/**
 * The snapshot job (format 2): the real agent over HTTP into "healthy" and "faulty" folders, each holding A and
 * B already; the agent's database is another, so nearly every chunk is new. n of a chunk row is the number of
 * chunks a fault-free run uploads to a target. The first chunk listing is what the target holds, the second
 * the check after the manifest. Agent-side faults (its chunk-data answer breaking off at chunk k of n) are
 * cases of their own (test/jobs/fault-matrix-v2-snapshot.test.ts).
 */
export const SNAPSHOT_V2: TableV2 = {
  job: 'snapshot v2',
  rows: [
    list('faulty', 'chunks (what it holds)', CHUNKS_PREFIX, { names: /listing its chunks failed/ }),
    { name: 'put chunk', op: 'put', at: 'start', on: 'faulty', kinds: CHUNK_PUT, retried: true, ...chunkRows('uploads') },
    { name: 'put chunk body', op: 'put', at: 'body', on: 'faulty', kinds: ['destroy'], retried: true, ...chunkRows('uploads') },
    // The chunk list streams from the lines as they are made; the job repeats a commit that failed transiently.
    {
      name: 'put chunk list start',
      op: 'put',
      at: 'start',
      keys: CHUNK_LIST,
      on: 'faulty',
      kinds: STREAM_PUT_START,
      retried: true,
      names: NAMES.chunkList,
    },
    {
      name: 'put chunk list body',
      op: 'put',
      at: 'body',
      keys: CHUNK_LIST,
      on: 'faulty',
      kinds: BODY,
      retried: true,
      names: NAMES.chunkList,
    },
    {
      name: 'put chunk list commit',
      op: 'put',
      at: 'commit',
      keys: CHUNK_LIST,
      on: 'faulty',
      kinds: COMMIT,
      retried: true,
      names: NAMES.chunkList,
    },
    {
      name: 'put manifest',
      op: 'put',
      at: 'start',
      keys: MANIFEST_V2,
      on: 'faulty',
      kinds: CHUNK_PUT,
      retried: true,
      names: NAMES.manifest,
    },
    list('faulty', 'chunks (the check after the manifest)', CHUNKS_PREFIX, { skip: 1, names: /manifest .* was written, but the check/ }),
  ],
};

/**
 * The restore drill of "good" then "faulty", each holding A and B: B (the newest) restored to a file, and
 * checked as it streams. Faults are persistent from the call they hit on (every later read fails too), so a
 * drill that reads a chunk again after a bad read still meets it; a blip is the one-off.
 */
export const DRILL_V2: TableV2 = {
  job: 'drill v2',
  ways: ['restore', 'stream'],
  rows: [
    list('faulty', 'snapshots', SNAPSHOTS, { names: NAMES.listing }),
    { ...gets('faulty', 'manifest', MANIFEST_V2, false)[0]!, names: NAMES.manifest },
    ...gets('faulty', 'chunk list', CHUNK_LIST, false, { names: NAMES.chunkList }),
    ...gets('faulty', 'chunk', CHUNK, false, chunkRows('refsB')),
    {
      name: 'put drill record',
      op: 'put',
      at: 'start',
      keys: DRILL_RECORD,
      on: 'faulty',
      kinds: CHUNK_PUT,
      retried: true,
      names: /drill record/,
    },
  ],
};

/**
 * The application drill of "faulty" (file level checked as it streams, then the stored chunks sent to the
 * agent's stand-in backend): its own reads of the chunk list and the chunks, after the file-level drill's.
 * Only faults that persist: one-off ones are the file-level table's, and one that heals would start the backend.
 */
export const DRILL_APP_V2: TableV2 = {
  job: 'drill v2 (application)',
  rows: [
    { ...gets('faulty', 'chunk list', CHUNK_LIST, false, { names: NAMES.chunkList })[0]!, skip: 1, kinds: ['error', 'transient', 'hang'] },
    ...gets('faulty', 'chunk', CHUNK, false, { ...chunkRows('refsB'), after: 'refsB' }).map((r) => ({
      ...r,
      kinds: r.kinds.filter((k) => k !== 'blip' && k !== 'lost'),
    })),
  ],
};

export const TABLES_V2: TableV2[] = [RESTORE_V2, REPLICATE_V2, VERIFY_V2, PRUNE_V2, SNAPSHOT_V2, DRILL_V2, DRILL_APP_V2];

export function casesOfV2(table: TableV2): CaseV2[] {
  return (table.ways ?? [undefined]).flatMap((way) =>
    table.rows.flatMap((row) =>
      row.kinds.flatMap((kind) =>
        (row.positions ?? [undefined]).map((position) => ({
          job: table.job,
          row,
          kind,
          size: 'one' as const,
          position,
          way,
          title: `${way ? `${way} | ` : ''}${row.name}${position ? ` (${position})` : ''} | ${kind}${row.skip ? ` (call ${row.skip + 1})` : ''}`,
          expect: expectation(row, kind),
        })),
      ),
    ),
  );
}

export function matrixSizeV2(): { total: number; byJob: Record<string, number> } {
  const byJob: Record<string, number> = {};
  for (const t of TABLES_V2) byJob[t.job] = casesOfV2(t).length;
  return { total: Object.values(byJob).reduce((a, b) => a + b, 0), byJob };
}

/** The fault of a case, given the fixture's counts; a get body is cut half-way (chunks: at 4 KiB, inside the smallest). */
export function faultOfV2(c: CaseV2, counts: FixtureCounts, onHang: (what: string) => void) {
  const k = KINDS[c.kind];
  const skip = (c.position ? skipFor(c.position, counts[c.row.count!]) : (c.row.skip ?? 0)) + (c.row.after ? counts[c.row.after] : 0);
  const point =
    c.row.at === 'body'
      ? { at: 'body' as const, offset: c.row.op === 'put' ? (c.row.keys === CHUNK_LIST ? 1024 : 0) : c.row.keys === CHUNK ? 4096 : 64 }
      : c.row.at === 'page'
        ? { at: 'page' as const, items: 1 }
        : { at: c.row.at as 'start' | 'commit' };
  return {
    op: c.row.op,
    point,
    kind: k.kind as FaultKind,
    ...(c.row.keys ? { keys: c.row.keys } : {}),
    ...(skip ? { skip } : {}),
    ...('times' in k ? { times: k.times } : {}),
    onHang,
  };
}

export interface FixtureCounts {
  /** Chunk-list lines of B (restore fetches each line's chunk). */
  refsB: number;
  /** Distinct chunks of A and B together. */
  union: number;
  /** Distinct chunks of O that neither A nor B names. */
  garbage: number;
  /** Chunks the snapshot job uploads to a target holding A and B (counted by its test from a fault-free run; 0 until then). */
  uploads: number;
}

export interface FixtureV2 {
  files: { a: string; b: string; o: string };
  sha: { a: string; b: string; o: string };
  /** A folder holding A and B; and one holding O, A and B. */
  pair: { dir: string; a: ManifestV2; b: ManifestV2 };
  triple: { dir: string; o: ManifestV2; a: ManifestV2; b: ManifestV2 };
  counts: FixtureCounts;
}

export function plainFolder(name: string, dir: string): Target {
  return new FileTarget(parseTargetUrl(name, `file://${dir}`) as FileTargetSpec, { fsync: false });
}

async function refsOf(target: Target, m: ManifestV2): Promise<ChunkRefV2[]> {
  const refs: ChunkRefV2[] = [];
  const { body } = await target.get(chunkListKey(DB, m.id));
  for await (const r of readChunkList(body, m, 'fixture')) refs.push(r);
  return refs;
}

/** The files and the two template folders, made once per test file in `work`. */
export async function makeFixtureV2(work: string): Promise<FixtureV2> {
  const live = join(work, 'live.sqlite');
  createSampleDatabase(live, { runs: 900, seed: 3 });
  const a = vacuumInto(live, join(work, 'a.sqlite'));
  publishAgain(live, 15);
  const b = vacuumInto(live, join(work, 'b.sqlite'));
  const other = join(work, 'other.sqlite');
  createSampleDatabase(other, { runs: 300, seed: 29 });
  const o = vacuumInto(other, join(work, 'o.sqlite'));

  const now = Date.now();
  const pairDir = join(work, 'template-pair');
  const tripleDir = join(work, 'template-triple');
  await mkdir(pairDir, { recursive: true });
  const pairTarget = plainFolder('template', pairDir);
  const sa = await storeFileAsV2(pairTarget, DB, a, { createdAt: new Date(now - 2 * 3600_000) });
  const sb = await storeFileAsV2(pairTarget, DB, b, { createdAt: new Date(now - 3600_000) });
  const tripleTarget = plainFolder('template', tripleDir);
  const so = await storeFileAsV2(tripleTarget, DB, o, { createdAt: new Date(now - 3 * 3600_000) });
  await cp(pairDir, tripleDir, { recursive: true });

  const refsA = await refsOf(pairTarget, sa.manifest);
  const refsB = await refsOf(pairTarget, sb.manifest);
  const refsO = await refsOf(tripleTarget, so.manifest);
  const union = new Set([...refsA, ...refsB].map((r) => r[0]));
  const garbage = new Set(refsO.map((r) => r[0]).filter((h) => !union.has(h)));
  return {
    files: { a, b, o },
    sha: { a: await sha256Of(a), b: await sha256Of(b), o: await sha256Of(o) },
    pair: { dir: pairDir, a: sa.manifest, b: sb.manifest },
    triple: { dir: tripleDir, o: so.manifest, a: sa.manifest, b: sb.manifest },
    counts: { refsB: refsB.length, union: union.size, garbage: garbage.size, uploads: 0 },
  };
}

/** The cases of a table as vitest `it.each` rows: [title, case]. */
export function caseRows(table: TableV2): Array<readonly [string, CaseV2]> {
  return casesOfV2(table).map((c) => [c.title, c] as const);
}

/** A chunk's key in an error message. */
export const CHUNK_KEY = /chunks\/tcab\/[0-9a-f]{2}\/[0-9a-f]{64}\.zst/;

/** Restores each snapshot `name` shows (fault-free) and checks it is its exact file. Returns the ids it shows. */
export async function everyManifestRestores(world: MatrixFolder, name: string, expected: Record<string, string>): Promise<string[]> {
  const out = join(world.root, `check-${name}`);
  await mkdir(out, { recursive: true });
  const shown = (await listCatalog(world.plain(name), DB)).snapshots.map((s) => s.id).sort();
  for (const id of shown) {
    expect(expected[id], `"${name}" shows a snapshot ${id} nobody stored`).toBeDefined();
    const path = join(out, `${id}.sqlite`);
    await runRestore({ targets: [world.plain(name)], database: DB }, { selector: { id }, outPath: path, force: true });
    expect(await sha256Of(path), `snapshot ${id} on "${name}" does not restore to its file`).toBe(expected[id]);
  }
  return shown;
}

export function expectChunkNamed(c: CaseV2, settled: { status: string; error?: unknown }): void {
  if (settled.status !== 'rejected' || c.row.keys !== CHUNK || c.kind === 'hang') return;
  expect(String((settled.error as Error).message), 'the failure does not name the chunk that failed').toMatch(CHUNK_KEY);
}

/** A failure (not an abort) names what failed: the chunk's key, or the row's object or step (`names`). */
export function expectObjectNamed(c: CaseV2, settled: { status: string; error?: unknown }): void {
  expectChunkNamed(c, settled);
  if (settled.status !== 'rejected' || !c.row.names || c.kind === 'hang') return;
  expect(fullMessage(settled.error), `the failure does not name what failed (${c.row.names.source})`).toMatch(c.row.names);
}
