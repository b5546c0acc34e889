/**
 * Prune collecting format-2 chunks (docs/format-2.md, "Collecting chunks (prune)") on a folder and on Azurite,
 * with real SQLite files stored as chunks, and the race cases of the contract's proof: a snapshot or a
 * replicate in progress, a manifest written between prune's chunk listing and its manifest listing, two prunes
 * at once. Time is moved through prune's `now` (the listing time) against the storage's own last-modified
 * times, and on the folder through file times: no test waits for the grace to pass.
 */
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkChunks, commitSnapshotV2, listChunks, putChunk } from '../../src/catalog/chunk-store.js';
import { chunkListKey, manifestKey } from '../../src/catalog/layout.js';
import type { ManifestV2 } from '../../src/catalog/manifest-v2.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { chunkKey } from '../../src/format/chunk-key.js';
import { readChunkList } from '../../src/format/chunk-list.js';
import { PruneFailedError, runPrune, type PruneDeps, type PruneResult } from '../../src/jobs/prune/index.js';
import { loadChunkGrace } from '../../src/jobs/settings.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import type { Target } from '../../src/targets/target.js';
import { openDatabase } from '../../src/util/sqlite.js';
import { storeFileAsV2 } from '../support/store-v2.js';
import { DAY, makeSnapshot, storeSnapshot } from '../support/stored-snapshots.js';
import { blobTarget, testWorld } from '../support/world.js';

const world = testWorld();
const DB = 'tcab';
const GRACE = loadChunkGrace({});
const G = GRACE.graceMs;
let work: string;
/** Three successive VACUUM INTO files of one database: each shares most of its chunks with the one before. */
const files: string[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-prune-chunks-'));
  const live = join(work, 'live.sqlite');
  createSampleDatabase(live, { runs: 400, seed: 13 });
  for (let i = 0; i < 3; i++) {
    const db = openDatabase(live);
    try {
      if (i > 0)
        db.exec(
          `INSERT INTO runs (slug, title, published_at, record) SELECT slug || '-${i}', title, published_at, record FROM runs ORDER BY id DESC LIMIT 20`,
        );
      const out = join(work, `s${i}.sqlite`);
      db.exec(`VACUUM INTO '${out}'`);
      files.push(out);
    } finally {
      db.close();
    }
  }
});
afterAll(() => rm(work, { recursive: true, force: true }));

function retention(name: string, policy: string) {
  return loadRetentionConfig(
    {
      TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
      TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
      TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
      [`TCAB_BACKUP_RETENTION_${name.toUpperCase()}`]: policy,
    },
    [name],
  );
}

function prune(target: Target, extra: Partial<PruneDeps> & { policy?: string } = {}): Promise<PruneResult> {
  const { policy, ...deps } = extra;
  return runPrune({ targets: [target], database: DB, retention: retention(target.name, policy ?? 'last=-1'), chunkGrace: GRACE, ...deps });
}

/** A listing time that makes every chunk stored so far older than the grace. */
const afterGrace = () => new Date(Date.now() + G + DAY);

/** The chunks a stored snapshot's chunk list names, sha256 -> stored bytes. */
async function chunksOf(target: Target, manifest: ManifestV2): Promise<Map<string, number>> {
  const { body } = await target.get(chunkListKey(DB, manifest.id));
  const out = new Map<string, number>();
  for await (const ref of readChunkList(body, manifest, 'test')) out.set(ref[0], ref[2]);
  return out;
}

async function heldChunks(target: Target): Promise<string[]> {
  return [...(await listChunks(target, DB)).keys()].sort();
}

/**
 * A writer part-way through storing `file` on `target`: the chunks the target lacks are uploaded, the chunk
 * list and the manifest not yet. `commit` finishes (chunk list, manifest, check) and returns the chunks the
 * check found missing.
 */
async function writerMidway(
  target: Target,
  file: string,
): Promise<{ manifest: ManifestV2; uploaded: string[]; commit: () => Promise<string[]> }> {
  const { target: scratch } = await world.folder('scratch');
  const { manifest } = await storeFileAsV2(scratch, DB, file);
  const named = await chunksOf(scratch, manifest);
  const held = await listChunks(target, DB);
  const uploaded: string[] = [];
  for (const sha256 of named.keys()) {
    if (held.has(sha256)) continue;
    const { body } = await scratch.get(chunkKey(DB, sha256));
    const parts: Buffer[] = [];
    for await (const b of body) parts.push(b as Buffer);
    await putChunk(target, DB, sha256, Buffer.concat(parts));
    uploaded.push(sha256);
  }
  const { body } = await scratch.get(chunkListKey(DB, manifest.id));
  let text = '';
  for await (const b of body) text += (b as Buffer).toString('latin1');
  const lines = text.split(/(?<=\n)/).filter(Boolean);
  return {
    manifest,
    uploaded: uploaded.sort(),
    commit: async () => (await commitSnapshotV2(target, manifest, lines)).missing.map((m) => m.sha256),
  };
}

/** A target that runs `hook` once, right after a complete listing of `prefix` (before the caller goes on). */
function afterListing(inner: Target, prefix: string, hook: () => Promise<void>): Target {
  let fired = false;
  return new Proxy(inner, {
    get(t, p) {
      if (p === 'list') {
        return async function* (pre: string, options?: { signal?: AbortSignal }) {
          yield* t.list(pre, options);
          if (pre === prefix && !fired) {
            fired = true;
            await hook();
          }
        };
      }
      const v = Reflect.get(t, p, t);
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
}

const backends: Array<[string, (name: string) => Promise<{ target: Target; dir?: string }>]> = [
  ['a folder', (name) => world.folder(name)],
  ['Azurite', async (name) => ({ target: blobTarget(world.clouds, name) })],
];

describe.each(backends)('on %s', (_label, open) => {
  it('deletes the chunks only removed snapshots referenced once older than the grace, reports counts and bytes, and a dry run deletes nothing', async () => {
    const { target } = await open('local');
    const v1 = makeSnapshot({ time: new Date(Date.now() - 3 * DAY) });
    await storeSnapshot(target, v1);
    const old = await storeFileAsV2(target, DB, files[0]!, { createdAt: new Date(Date.now() - 2 * DAY) });
    const kept = await storeFileAsV2(target, DB, files[1]!, { createdAt: new Date(Date.now() - DAY) });
    const keep = await chunksOf(target, kept.manifest);
    const garbage = [...(await chunksOf(target, old.manifest))].filter(([h]) => !keep.has(h));
    expect(garbage.length).toBeGreaterThan(0);
    const garbageBytes = garbage.reduce((n, [, b]) => n + b, 0);
    const before = await heldChunks(target);

    // Within the grace: the snapshot goes, its chunks stay (a writer may be about to reuse them).
    const young = await prune(target, { policy: 'last=2' });
    expect(young.targets[0]!.removed).toEqual([v1.manifest.id]);
    const fresh = await prune(target, { policy: 'last=1' });
    expect(fresh.targets[0]!.removed).toEqual([old.manifest.id]);
    expect(fresh.targets[0]!.chunks).toMatchObject({ removed: 0, young: garbage.length, referenced: keep.size, snapshots: 1 });
    expect(await heldChunks(target)).toEqual(before);

    // Past the grace, a dry run counts them and deletes nothing; a real run deletes them.
    const dry = await runPrune(
      { targets: [target], database: DB, retention: retention('local', 'last=1'), chunkGrace: GRACE, now: afterGrace },
      { dryRun: true },
    );
    expect(dry.targets[0]!.chunks).toMatchObject({ removed: garbage.length, removedBytes: garbageBytes });
    expect(await heldChunks(target)).toEqual(before);
    const collected = await prune(target, { policy: 'last=1', now: afterGrace });
    expect(collected.targets[0]!.chunks).toMatchObject({ removed: garbage.length, removedBytes: garbageBytes, left: 0, failed: 0 });
    expect(collected.chunksRemoved).toBe(garbage.length);
    expect(collected.chunkBytesRemoved).toBe(garbageBytes);
    expect(await heldChunks(target)).toEqual([...keep.keys()].sort());
    expect(await checkChunks(target, DB, keep)).toEqual([]);
  });

  it('a dry run counts the chunks the snapshots it would remove free, and deletes nothing', async () => {
    const { target } = await open('local');
    const old = await storeFileAsV2(target, DB, files[0]!, { createdAt: new Date(Date.now() - 2 * DAY) });
    const kept = await storeFileAsV2(target, DB, files[2]!, { createdAt: new Date(Date.now() - DAY) });
    const keep = await chunksOf(target, kept.manifest);
    const freed = [...(await chunksOf(target, old.manifest)).keys()].filter((h) => !keep.has(h));
    const before = await heldChunks(target);
    const dry = await runPrune(
      { targets: [target], database: DB, retention: retention('local', 'last=1'), chunkGrace: GRACE, now: afterGrace },
      { dryRun: true },
    );
    expect(dry.targets[0]!.removed).toEqual([old.manifest.id]);
    expect(dry.chunksRemoved).toBe(freed.length);
    expect(await heldChunks(target)).toEqual(before);
  });

  it('(a) prune during a snapshot: chunks uploaded without a manifest yet are young and stay; the snapshot then commits whole', async () => {
    const { target } = await open('local');
    await storeFileAsV2(target, DB, files[0]!);
    const writer = await writerMidway(target, files[1]!);
    expect(writer.uploaded.length).toBeGreaterThan(0);
    const result = await prune(target);
    expect(result.targets[0]!.chunks).toMatchObject({ removed: 0, young: writer.uploaded.length });
    expect(await writer.commit()).toEqual([]);
    // Once committed they are referenced, whatever their age.
    const later = await prune(target, { now: afterGrace });
    expect(later.targets[0]!.chunks).toMatchObject({ removed: 0, young: 0 });
    expect(await checkChunks(target, DB, await chunksOf(target, writer.manifest))).toEqual([]);
  });

  it('(b) an unreferenced chunk is kept while younger than the grace at the listing and deleted once older', async () => {
    const { target } = await open('local');
    await storeFileAsV2(target, DB, files[0]!);
    const writer = await writerMidway(target, files[1]!);
    const listed = await listChunks(target, DB);
    const newest = Math.max(...writer.uploaded.map((h) => listed.get(h)!.lastModified.getTime()));
    const oldest = Math.min(...writer.uploaded.map((h) => listed.get(h)!.lastModified.getTime()));
    const justYoung = await prune(target, { now: () => new Date(oldest + G - 1000) });
    expect(justYoung.targets[0]!.chunks).toMatchObject({ removed: 0, young: writer.uploaded.length });
    expect(await heldChunks(target)).toEqual([...listed.keys()].sort());
    const justOld = await prune(target, { now: () => new Date(newest + G + 1000) });
    expect(justOld.targets[0]!.chunks).toMatchObject({ removed: writer.uploaded.length, young: 0 });
    expect(await heldChunks(target)).toEqual([...listed.keys()].filter((h) => !writer.uploaded.includes(h)).sort());
  });

  it('(c) a manifest written between the chunk listing and the manifest listing keeps every chunk it names', async () => {
    const { target } = await open('local');
    await storeFileAsV2(target, DB, files[0]!);
    // The second snapshot's own chunks are on the target, unreferenced and (by the listing time) old.
    const writer = await writerMidway(target, files[1]!);
    let missing: string[] | undefined;
    const racing = afterListing(target, `chunks/${DB}/`, async () => {
      missing = await writer.commit();
    });
    const result = await prune(racing, { now: afterGrace });
    expect(missing).toEqual([]);
    expect(result.targets[0]!.chunks).toMatchObject({ removed: 0, listed: (await listChunks(target, DB)).size });
    expect(await checkChunks(target, DB, await chunksOf(target, writer.manifest))).toEqual([]);
  });

  it('(d) prune during a replicate: the destination holds chunks but no manifest yet; young, they stay', async () => {
    const { target: source } = await open('source');
    const { target: destination } = await open('destination');
    await storeFileAsV2(source, DB, files[0]!);
    await storeFileAsV2(destination, DB, files[0]!);
    const second = await storeFileAsV2(source, DB, files[1]!);
    const copy = await writerMidway(destination, files[1]!);
    expect(copy.uploaded.length).toBeGreaterThan(0);
    const results = await Promise.all([prune(source), prune(destination)]);
    expect(results[1]!.targets[0]!.chunks).toMatchObject({ removed: 0, young: copy.uploaded.length });
    expect(await copy.commit()).toEqual([]);
    expect(await checkChunks(destination, DB, await chunksOf(source, second.manifest))).toEqual([]);
  });

  it('(e) two prunes at once both complete, delete no referenced chunk, and a chunk the other deleted first is no error', async () => {
    const { target } = await open('local');
    await storeFileAsV2(target, DB, files[0]!, { createdAt: new Date(Date.now() - 3 * DAY) });
    await storeFileAsV2(target, DB, files[1]!, { createdAt: new Date(Date.now() - 2 * DAY) });
    const last = await storeFileAsV2(target, DB, files[2]!, { createdAt: new Date(Date.now() - DAY) });
    const keep = await chunksOf(target, last.manifest);
    const both = await Promise.all([
      prune(target, { policy: 'last=1', now: afterGrace }),
      prune(target, { policy: 'last=1', now: afterGrace }),
    ]);
    for (const r of both) expect(r.targets[0]!.ok).toBe(true);
    expect(await checkChunks(target, DB, keep)).toEqual([]);
    // What one prune could not yet see removed (the other was still deleting the snapshots) the next one takes.
    await prune(target, { policy: 'last=1', now: afterGrace });
    expect(await heldChunks(target)).toEqual([...keep.keys()].sort());
  });

  it("a chunk list that cannot be read stops that target's sweep before any delete, and fails the run naming it", async () => {
    const { target } = await open('local');
    await storeFileAsV2(target, DB, files[0]!, { createdAt: new Date(Date.now() - 2 * DAY) });
    const second = await storeFileAsV2(target, DB, files[1]!, { createdAt: new Date(Date.now() - DAY) });
    const writer = await writerMidway(target, files[2]!); // unreferenced chunks that would go
    expect(writer.uploaded.length).toBeGreaterThan(0);
    const listKey = chunkListKey(DB, second.manifest.id);
    const { body } = await target.get(listKey);
    let text = '';
    for await (const b of body) text += (b as Buffer).toString('latin1');
    await target.put(
      listKey,
      Buffer.from(
        text.replace(/^[0-9a-f]/, (c) => (c === '0' ? '1' : '0')),
        'latin1',
      ),
    );
    const before = await heldChunks(target);
    const error = await prune(target, { now: afterGrace }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(PruneFailedError);
    const message = (error as PruneFailedError).message;
    expect(message).toContain(`chunk list ${listKey} of snapshot ${second.manifest.id}`);
    expect(message).toContain('stopped before deleting any');
    expect((error as PruneFailedError).result.targets[0]!.chunks).toMatchObject({ removed: 0, error: expect.any(String) });
    expect(await heldChunks(target)).toEqual(before);
  });

  it('stops deleting once the sweep has run for the job timeout, reports what is left, and the next prune takes it', async () => {
    const { target } = await open('local');
    await storeFileAsV2(target, DB, files[0]!);
    const writer = await writerMidway(target, files[2]!);
    expect(writer.uploaded.length).toBeGreaterThan(2);
    let t = 0;
    const first = await prune(target, {
      now: afterGrace,
      chunkGrace: { graceMs: G, jobTimeoutMs: 2500 },
      sweepClock: () => (t += 1000),
    });
    const s = first.targets[0]!.chunks!;
    expect(s.removed).toBeGreaterThan(0);
    expect(s.left).toBeGreaterThan(0);
    expect(s.removed + s.left).toBe(writer.uploaded.length);
    expect(s.stoppedAfterMs).toBeGreaterThanOrEqual(2500);
    const second = await prune(target, { now: afterGrace });
    expect(second.targets[0]!.chunks).toMatchObject({ removed: s.left, left: 0 });
  });
});

describe('on a folder', () => {
  it("collects old garbage and keeps a young upload in the same sweep, by the files' own times", async () => {
    const { target, dir } = await world.folder('local');
    await storeFileAsV2(target, DB, files[0]!);
    const stale = await writerMidway(target, files[1]!);
    const past = new Date(Date.now() - G - DAY);
    for (const h of stale.uploaded) await utimes(join(dir, chunkKey(DB, h)), past, past);
    const writer = await writerMidway(target, files[2]!);
    const young = writer.uploaded.filter((h) => !stale.uploaded.includes(h));
    expect(young.length).toBeGreaterThan(0);
    const result = await prune(target);
    expect(result.targets[0]!.chunks).toMatchObject({ removed: stale.uploaded.length, young: young.length });
    const held = new Set(await heldChunks(target));
    for (const h of stale.uploaded) expect(held.has(h)).toBe(false);
    for (const h of young) expect(held.has(h)).toBe(true);
  });

  it('a target with format-1 snapshots only is swept as empty, and an orphan chunk list a day old goes as garbage', async () => {
    const { target } = await world.folder('local');
    await storeSnapshot(target, makeSnapshot({ time: new Date(Date.now() - DAY) }));
    const v1only = await prune(target);
    expect(v1only.targets[0]!.chunks).toMatchObject({ listed: 0, removed: 0 });
    const orphan = await storeFileAsV2(target, DB, files[0]!);
    const named = (await chunksOf(target, orphan.manifest)).size;
    await target.delete(manifestKey(DB, orphan.manifest.id));
    const result = await prune(target, { now: afterGrace });
    expect(result.targets[0]!.garbage.removed).toEqual([chunkListKey(DB, orphan.manifest.id)]);
    expect(result.targets[0]!.chunks!.removed).toBe(named);
    expect(await heldChunks(target)).toEqual([]);
  });
});
