/**
 * Prune collecting format-2 chunks (docs/format-2.md, "Collecting chunks (prune)") on a folder, Azurite and R2,
 * with real SQLite files stored as chunks, and the race cases of the contract's proof: a snapshot or a
 * replicate in progress, a manifest written between prune's chunk listing and its manifest listing, two prunes
 * at once (one sweeps, the other steps back for its marker; started together, one claims again and sweeps), a chunk uploaded again between two prunes'
 * deletes, and a delete whose answer is lost (sent once). Time is moved through prune's `now` (the listing
 * time) against the storage's own last-modified times, and on the folder through file times: no test waits
 * for the grace to pass (the marker test waits 2J of a J of a second). On a folder, Azurite and s3rver behind
 * the R2 rules (create-only writes honoured).
 */
import { mkdtemp, readdir, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkChunks, commitSnapshotV2, listChunks, putChunk } from '../../src/catalog/chunk-store.js';
import { chunkListKey, manifestKey, sweepMarkerKey, sweepsPrefix } from '../../src/catalog/layout.js';
import type { ManifestV2 } from '../../src/catalog/manifest-v2.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { chunkKey } from '../../src/format/chunk-key.js';
import { readChunkList } from '../../src/format/chunk-list.js';
import { describeSweep } from '../../src/jobs/prune/chunks.js';
import { PruneFailedError, runPrune, type PruneDeps, type PruneResult } from '../../src/jobs/prune/index.js';
import { loadChunkGrace } from '../../src/jobs/settings.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import { FileTarget } from '../../src/targets/file.js';
import { TargetError } from '../../src/errors.js';
import { openTarget } from '../../src/targets/index.js';
import { withRetry } from '../../src/targets/retry.js';
import { parseTargetUrl, type FileTargetSpec } from '../../src/targets/spec.js';
import type { DeleteOptions, PutOptions, Target } from '../../src/targets/target.js';
import { openDatabase } from '../../src/util/sqlite.js';
import { FaultTarget } from '../support/fault-target.js';
import { storeFileAsV2 } from '../support/store-v2.js';
import { DAY, makeSnapshot, storeSnapshot } from '../support/stored-snapshots.js';
import { startR2Proxy, type R2Proxy } from '../support/r2-proxy.js';
import { BUCKET, blobTarget, captureLog, freshPrefix, testWorld } from '../support/world.js';

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

/**
 * The same target, whose chunk deletes all wait for `hook` (called once, at the first of them): a prune held
 * after its listings, before it deletes anything.
 */
function holdChunkDeletes(inner: Target, hook: () => Promise<void>): Target {
  let held: Promise<void> | undefined;
  return new Proxy(inner, {
    get(t, p) {
      if (p === 'delete') {
        return async (key: string, options?: DeleteOptions) => {
          if (key.startsWith('chunks/')) await (held ??= hook());
          return t.delete(key, options);
        };
      }
      const v = Reflect.get(t, p, t);
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
}

/** The same target, telling `note` when a sweep marker has been written or deleted, and when a chunk delete is sent. */
function recording(inner: Target, note: (what: 'marker written' | 'marker deleted' | 'chunk delete') => void): Target {
  return new Proxy(inner, {
    get(t, p) {
      if (p === 'put')
        return async (key: string, body: Buffer, options?: PutOptions) => {
          const out = await t.put(key, body, options);
          if (key.startsWith('sweeps/')) note('marker written');
          return out;
        };
      if (p === 'delete')
        return async (key: string, options?: DeleteOptions) => {
          if (key.startsWith('chunks/')) note('chunk delete');
          await t.delete(key, options);
          if (key.startsWith('sweeps/')) note('marker deleted');
        };
      const v = Reflect.get(t, p, t);
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
}

/** Resolves when `open()` is called. */
function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

/** Every key under `prefix`. */
async function keysUnder(target: Target, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of target.list(prefix)) keys.push(o.key);
  return keys;
}

/**
 * A `now` that makes every chunk stored so far older than the grace. On a folder the files are made old and
 * the clock stays true: a `now` days ahead would also make the other prune's garbage collection take the
 * temporary file of a marker being written (a folder's stale uploads are judged by prune's `now`).
 */
async function everyChunkOld(dir: string | undefined): Promise<() => Date> {
  if (!dir) return afterGrace;
  const past = new Date(Date.now() - G - DAY);
  const root = join(dir, 'chunks');
  for (const e of await readdir(root, { recursive: true, withFileTypes: true }))
    if (e.isFile()) await utimes(join(e.parentPath, e.name), past, past);
  return () => new Date();
}

let r2: R2Proxy | undefined;
afterAll(() => r2?.stop());

const backends: Array<[string, (name: string) => Promise<{ target: Target; dir?: string }>]> = [
  ['a folder', (name) => world.folder(name)],
  ['Azurite', async (name) => ({ target: blobTarget(world.clouds, name) })],
  [
    's3rver behind the R2 rules',
    async (name) => {
      r2 ??= await startR2Proxy({
        upstream: world.clouds.s3.endpoint,
        accessKeyId: world.clouds.s3.accessKeyId,
        secretAccessKey: world.clouds.s3.secretAccessKey,
      });
      const spec = parseTargetUrl(name, `r2://${'0'.repeat(32)}/${BUCKET}/${freshPrefix()}?endpoint=${r2.endpoint}&pathStyle=true`, {
        accessKeyId: world.clouds.s3.accessKeyId,
        secretAccessKey: world.clouds.s3.secretAccessKey,
      });
      return { target: openTarget(spec) };
    },
  ],
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

  it('(e) two prunes at once: their sweeps never overlap, one steps back for the other without failing, and no referenced chunk goes', async () => {
    const { target, dir } = await open('local');
    await storeFileAsV2(target, DB, files[0]!, { createdAt: new Date(Date.now() - 3 * DAY) });
    await storeFileAsV2(target, DB, files[1]!, { createdAt: new Date(Date.now() - 2 * DAY) });
    const last = await storeFileAsV2(target, DB, files[2]!, { createdAt: new Date(Date.now() - DAY) });
    const keep = await chunksOf(target, last.manifest);
    const now = await everyChunkOld(dir);
    const events: Array<{ prune: number; what: 'marker written' | 'marker deleted' | 'chunk delete' }> = [];
    const both = await Promise.all(
      [0, 1].map((n) =>
        prune(
          recording(target, (what) => events.push({ prune: n, what })),
          { policy: 'last=1', now },
        ),
      ),
    );
    for (const r of both) expect(r.targets[0]!.ok).toBe(true);
    const sweeps = both.map((r) => r.targets[0]!.chunks!);
    for (const s of sweeps.filter((x) => x.skipped)) {
      expect(s.skipped!.marker).toMatch(/^sweeps\/tcab\/\d{8}T\d{9}Z-j\d+-[0-9a-f]{8}\.json$/);
      expect(s).toMatchObject({ listed: 0, removed: 0 });
    }
    // Each sweep's chunk deletes lie between its (last) marker's write and its deletion, and no other prune
    // deletes a chunk then. Started together, each may see the other's marker and step back; the one whose
    // marker was not the later claims once more after a random wait (its last marker is the one that counts),
    // and both may step back again when those claims meet too: which happens depends on timing, so this test
    // allows it, and (h) forces the order.
    for (const n of [0, 1]) {
      const from = events.findLastIndex((e) => e.prune === n && e.what === 'marker written');
      const to = events.findLastIndex((e) => e.prune === n && e.what === 'marker deleted');
      expect(from).toBeGreaterThanOrEqual(0);
      expect(to).toBeGreaterThan(from);
      const during = events.slice(from, to).filter((e) => e.what === 'chunk delete');
      expect(during.every((e) => e.prune === n)).toBe(true);
      expect(events.filter((e) => e.prune === n && e.what === 'chunk delete').length).toBe(during.length);
      if (sweeps[n]!.skipped) expect(during).toEqual([]);
    }
    expect(await checkChunks(target, DB, keep)).toEqual([]);
    // What one prune could not yet see removed, or did not sweep, the next one takes; no marker is left.
    await prune(target, { policy: 'last=1', now });
    expect(await heldChunks(target)).toEqual([...keep.keys()].sort());
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([]);
  });

  it('(h) two prunes started together: both step back, the one whose marker is not the later claims once more after its wait, and exactly one sweeps', async () => {
    const { target, dir } = await open('local');
    await storeFileAsV2(target, DB, files[0]!);
    const garbage = await writerMidway(target, files[2]!);
    expect(garbage.uploaded.length).toBeGreaterThan(0);
    const now = await everyChunkOld(dir);
    // The order of starting together, forced: both first markers are written before either lists the markers,
    // and neither is deleted before both have been listed (so each sees the other's, however slow one prune
    // is: otherwise the slower one could find the other's marker gone and claim at once); a second claim is written only once both first markers are gone, prune 1's
    // only after prune 0's second claim has listed (or prune 0 is done); a sweep's chunk deletes wait until
    // the other prune is done (so its second claim meets this sweep's marker). The waits (the hook) are short.
    const bothWritten = gate();
    const bothListed = gate();
    let firstListings = 0;
    const firstsGone = gate();
    const secondListed = [gate(), gate()];
    let written = 0;
    let deleted = 0;
    const done: Array<Promise<void>> = [];
    const delays = [50, 80];
    const runs = [0, 1].map((n) => {
      let puts = 0;
      let lists = 0;
      let markerDeletes = 0;
      const forced = new Proxy(target, {
        get(t, p) {
          if (p === 'put')
            return async (key: string, body: Buffer, options?: PutOptions) => {
              if (key.startsWith('sweeps/') && ++puts === 2) {
                await firstsGone.wait;
                if (n === 1) await Promise.race([secondListed[0]!.wait, done[0]]);
              }
              const out = await t.put(key, body, options);
              if (key.startsWith('sweeps/') && ++written === 2) bothWritten.open();
              return out;
            };
          if (p === 'list')
            return async function* (prefix: string, options?: { signal?: AbortSignal }) {
              const mine = prefix.startsWith('sweeps/') ? ++lists : 0;
              if (mine === 1) await bothWritten.wait;
              yield* t.list(prefix, options);
              if (mine === 1 && ++firstListings === 2) bothListed.open();
              if (mine === 2) secondListed[n]!.open();
            };
          if (p === 'delete')
            return async (key: string, options?: DeleteOptions) => {
              if (key.startsWith('chunks/')) await done[1 - n];
              if (key.startsWith('sweeps/') && ++markerDeletes === 1) await bothListed.wait;
              await t.delete(key, options);
              if (key.startsWith('sweeps/') && ++deleted === 2) firstsGone.open();
            };
          const v = Reflect.get(t, p, t);
          return typeof v === 'function' ? v.bind(t) : v;
        },
      });
      return prune(forced, { now, sweepRetryDelay: () => delays[n]! });
    });
    for (const r of runs)
      done.push(
        r.then(
          () => undefined,
          () => undefined,
        ),
      );
    const both = await Promise.all(runs);
    const sweeps = both.map((r) => r.targets[0]!.chunks!);
    for (const r of both) expect(r.targets[0]!.ok).toBe(true);
    const swept = sweeps.filter((x) => !x.skipped);
    expect(swept, 'exactly one of the two prunes swept').toHaveLength(1);
    expect(swept[0]).toMatchObject({ removed: garbage.uploaded.length, retriedAfterMs: delays[sweeps.indexOf(swept[0]!)] });
    const other = sweeps.find((x) => x.skipped)!;
    expect(other).toMatchObject({ listed: 0, removed: 0 });
    // Its claim met either the other's first marker (written later than its own: no retry) or the sweep's marker.
    if (other.retriedAfterMs !== undefined) expect(other.retriedAfterMs).toBe(delays[sweeps.indexOf(other)]);
    expect(describeSweep(other, false)).toContain('not swept');
    const held = new Set(await heldChunks(target));
    for (const h of garbage.uploaded) expect(held.has(h)).toBe(false);
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([]);
  });

  it('(f) a chunk deleted by one prune and uploaded again by a writer is not deleted by a second prune that listed it before', async () => {
    const { target, dir } = await open('local');
    const kept = await storeFileAsV2(target, DB, files[0]!);
    const garbage = await writerMidway(target, files[2]!); // chunks no manifest names, about to be old
    expect(garbage.uploaded.length).toBeGreaterThan(0);
    const now = await everyChunkOld(dir);
    // P1 has listed the chunks and the manifests and waits before its first delete.
    const p1Held = gate();
    const p1Go = gate();
    const p1 = prune(
      holdChunkDeletes(target, async () => {
        p1Held.open();
        await p1Go.wait;
      }),
      { now },
    );
    await p1Held.wait;
    // P2 starts meanwhile; without one sweep at a time it too lists the same old chunks and waits before deleting.
    const p2Held = gate();
    const p2Go = gate();
    const p2 = prune(
      holdChunkDeletes(target, async () => {
        p2Held.open();
        await p2Go.wait;
      }),
      { now },
    );
    const p2Done = p2.then(
      (r) => r,
      (e: unknown) => e,
    );
    await Promise.race([p2Held.wait, p2Done]);
    // P1 deletes them; a writer then finds them absent, uploads them as new, commits and passes its check.
    p1Go.open();
    const first = await p1;
    expect(first.targets[0]!.chunks).toMatchObject({ removed: garbage.uploaded.length });
    const writer = await writerMidway(target, files[2]!);
    expect(writer.uploaded).toEqual(garbage.uploaded);
    expect(await writer.commit()).toEqual([]);
    // Whatever P2 does now must not take the writer's chunks.
    p2Go.open();
    const second = await p2Done;
    expect(second).not.toBeInstanceOf(Error);
    // The writer's manifest names only chunks the target holds (what the reviewer's race broke).
    expect(await checkChunks(target, DB, await chunksOf(target, writer.manifest))).toEqual([]);
    expect(await checkChunks(target, DB, await chunksOf(target, kept.manifest))).toEqual([]);
    const s2 = (second as PruneResult).targets[0]!;
    expect(s2.ok).toBe(true);
    expect(s2.chunks!.skipped?.marker).toMatch(/^sweeps\/tcab\//);
    expect(s2.chunks!.removed).toBe(0);
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([]);
  });

  it('(g) another sweep marker younger than 2J: the prune does not sweep, warns naming it, and removes its own; one older than 2J is ignored and removed', async () => {
    const { target } = await open('local');
    await storeFileAsV2(target, DB, files[0]!);
    const garbage = await writerMidway(target, files[2]!);
    // The other prune's J, in its marker's key, is a second: 2J then passes within the test. The first prune
    // has the usual J, so the marker is young to it however slow this machine is (2 x the longer J); the
    // second, after 2J, has a J of a second too (second-precision listings, S3: 2J lies between the two times).
    const J = 1000;
    const marker = sweepMarkerKey(DB, new Date(), J);
    await target.put(marker, Buffer.from('{"kind":"tcab-backup.sweep"}\n'), { ifNoneMatch: '*' });
    const log = captureLog('info');
    const skipped = await prune(target, { now: afterGrace, sweepClock: () => 0, logger: log.logger });
    expect(skipped.targets[0]!.ok).toBe(true);
    expect(skipped.targets[0]!.chunks).toMatchObject({ skipped: { marker }, listed: 0, removed: 0 });
    expect(log.events('prune.sweep_skipped')).toEqual([expect.objectContaining({ level: 'warn', target: 'local', marker })]);
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([marker]);
    expect(await heldChunks(target)).toEqual(expect.arrayContaining(garbage.uploaded));
    // Once the marker is older than 2J (its prune crashed), it is stale: the next prune sweeps and removes it.
    await new Promise((resolve) => setTimeout(resolve, 2 * J + 200));
    const swept = await prune(target, { now: afterGrace, chunkGrace: { graceMs: G, jobTimeoutMs: J }, sweepClock: () => 0 });
    expect(swept.targets[0]!.ok).toBe(true);
    expect(swept.targets[0]!.chunks).toMatchObject({ removed: garbage.uploaded.length });
    expect(swept.targets[0]!.chunks!.skipped).toBeUndefined();
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([]);
  });

  it('a dry run writes no sweep marker, and counts what a sweep would collect even while another sweep runs', async () => {
    const { target } = await open('local');
    await storeFileAsV2(target, DB, files[0]!);
    const garbage = await writerMidway(target, files[2]!);
    const marker = sweepMarkerKey(DB, new Date(), GRACE.jobTimeoutMs);
    await target.put(marker, Buffer.from('{}\n'), { ifNoneMatch: '*' });
    const dry = await runPrune(
      { targets: [target], database: DB, retention: retention(target.name, 'last=-1'), chunkGrace: GRACE, now: afterGrace },
      { dryRun: true },
    );
    expect(dry.targets[0]!.chunks).toMatchObject({ removed: garbage.uploaded.length });
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([marker]);
    expect(await heldChunks(target)).toEqual(expect.arrayContaining(garbage.uploaded));
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
  /** A folder target with a FaultTarget between the retry wrapper and the folder, and the folder's deletes counted. */
  async function faultyFolder(): Promise<{ target: Target; plain: Target; faults: FaultTarget; deletes: Map<string, number> }> {
    const { dir, target: plain } = await world.folder('local');
    const folder = new FileTarget(parseTargetUrl('local', `file://${dir}`) as FileTargetSpec);
    const deletes = new Map<string, number>();
    const counted = new Proxy(folder, {
      get(t, p) {
        if (p === 'delete')
          return (key: string, options?: DeleteOptions) => {
            deletes.set(key, (deletes.get(key) ?? 0) + 1);
            return t.delete(key, options);
          };
        const v = Reflect.get(t, p, t);
        return typeof v === 'function' ? v.bind(t) : v;
      },
    });
    const faults = new FaultTarget(counted);
    return { target: withRetry(faults, { retries: 3, baseDelayMs: 1 }), plain, faults, deletes };
  }

  it('a sweep marker that cannot be written fails the run naming the target and the key, and deletes no chunk', async () => {
    const { target, plain, faults } = await faultyFolder();
    await storeFileAsV2(plain, DB, files[0]!);
    const garbage = await writerMidway(plain, files[2]!);
    const before = await heldChunks(plain);
    faults.arm({ op: 'put', point: { at: 'start' }, kind: 'error', keys: /^sweeps\// });
    const error = await prune(target, { now: afterGrace }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(PruneFailedError);
    const message = (error as PruneFailedError).message;
    expect(message).toContain('target "local"');
    expect(message).toMatch(/its sweep marker sweeps\/tcab\/\d{8}T\d{9}Z-j\d+-[0-9a-f]{8}\.json could not be written/);
    expect((error as PruneFailedError).result.targets[0]!.chunks).toMatchObject({ removed: 0, error: expect.any(String) });
    expect(await heldChunks(plain)).toEqual(before);
    expect(before).toEqual(expect.arrayContaining(garbage.uploaded));
    expect(await keysUnder(plain, sweepsPrefix(DB))).toEqual([]);
  });

  it("another marker is stale only once older than 2 x the longer of the two prunes' J (read from its key); a key without J counts as this prune's J, one whose J cannot be read never goes stale", async () => {
    const { target, dir } = await world.folder('local');
    await storeFileAsV2(target, DB, files[0]!);
    await writerMidway(target, files[2]!);
    const J = GRACE.jobTimeoutMs;
    const HOUR = 3600_000;
    /** Writes another prune's marker under `name`, stored `age` ago (the file's time is the listing's). */
    const marker = async (name: string, age: number): Promise<string> => {
      const key = `${sweepsPrefix(DB)}${name}`;
      await target.put(key, Buffer.from('{"kind":"tcab-backup.sweep"}\n'), { ifNoneMatch: '*' });
      const at = new Date(Date.now() - age);
      await utimes(join(dir, key), at, at);
      return key;
    };
    const stamp = (age: number) => new Date(Date.now() - age).toISOString().replace(/[-:]/g, '').replace('.', '');
    const outcome = async () => (await prune(target, { now: afterGrace })).targets[0]!.chunks!;

    // A function app's prune (J of 2 hours in its key) whose marker is 3J (of this prune) old: it may still be
    // deleting, so this prune steps back (2 x this prune's own J alone would call it stale).
    expect(3 * J).toBeLessThan(4 * HOUR);
    const longer = await marker(`${stamp(3 * J)}-j${2 * HOUR}-0000000a.json`, 3 * J);
    const stepped = await outcome();
    expect(stepped).toMatchObject({ skipped: { marker: longer }, listed: 0 });
    // A marker older than this sweep's own belongs to a sweep under way: stepped back at once, no second claim.
    expect(stepped.retriedAfterMs).toBeUndefined();
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([longer]);
    // Older than 2 x its J: stale, removed by the sweep.
    await utimes(join(dir, longer), new Date(Date.now() - 4 * HOUR - 1000), new Date(Date.now() - 4 * HOUR - 1000));
    expect((await outcome()).skipped).toBeUndefined();
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([]);

    // A marker written before keys carried J: this prune's J is its J.
    const before = await marker(`${stamp(J)}-0000000b.json`, J);
    expect(await outcome()).toMatchObject({ skipped: { marker: before } });
    await utimes(join(dir, before), new Date(Date.now() - 2 * J - 1000), new Date(Date.now() - 2 * J - 1000));
    expect((await outcome()).skipped).toBeUndefined();
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([]);

    // Named like a marker, but its J cannot be read: never stale (stepping back is safe), and named in the warning.
    const unknown = await marker(`${stamp(30 * 24 * HOUR)}-jx2-0000000c.json`, 30 * 24 * HOUR);
    const blocked = await outcome();
    expect(blocked).toMatchObject({ skipped: { marker: unknown } });
    expect(describeSweep(blocked, false)).toContain(`the sweep marker ${unknown}`);
    expect(describeSweep(blocked, false)).toContain('never counts as stale');
    expect(await keysUnder(target, sweepsPrefix(DB))).toEqual([unknown]);
  });

  /**
   * A folder target (retried as in production) whose sweep marker writes land, but whose every answer to them is
   * lost; with `deleteFails`, the marker's deletes fail too.
   */
  async function markerLandsUnanswered(deleteFails: boolean): Promise<{ target: Target; plain: Target; puts: string[] }> {
    const { dir, target: plain } = await world.folder('local');
    const folder = new FileTarget(parseTargetUrl('local', `file://${dir}`) as FileTargetSpec);
    const puts: string[] = [];
    const lost = (operation: string, key: string) =>
      new TargetError({
        target: 'local',
        url: folder.url,
        operation,
        key,
        transient: true,
        code: 'TEST_LOST',
        detail: 'no answer',
        hint: 'none',
      });
    const unanswered = new Proxy(folder, {
      get(t, p) {
        if (p === 'put')
          return async (key: string, body: Buffer, options?: PutOptions) => {
            if (!key.startsWith('sweeps/')) return t.put(key, body, options);
            puts.push(key);
            if (puts.length === 1) await t.put(key, body, options); // it lands; no answer comes back, now or on a retry
            throw lost('put', key);
          };
        if (p === 'delete' && deleteFails)
          return async (key: string, options?: DeleteOptions) => {
            if (key.startsWith('sweeps/')) throw lost('delete', key);
            return t.delete(key, options);
          };
        const v = Reflect.get(t, p, t);
        return typeof v === 'function' ? v.bind(t) : v;
      },
    });
    return { target: withRetry(unanswered, { retries: 3, baseDelayMs: 1 }), plain, puts };
  }

  it('a sweep marker write that landed though every answer was lost is deleted again, and the error says so', async () => {
    const { target, plain, puts } = await markerLandsUnanswered(false);
    await storeFileAsV2(plain, DB, files[0]!);
    await writerMidway(plain, files[2]!);
    const before = await heldChunks(plain);
    const error = await prune(target, { now: afterGrace }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(PruneFailedError);
    expect(puts.length).toBeGreaterThan(1); // retried, every answer lost
    const message = (error as PruneFailedError).message;
    expect(message).toContain(`its sweep marker ${puts[0]} could not be written`);
    expect(message).toContain('it was deleted again: no marker of this prune is left');
    // Not left behind for 2J: the next prune sweeps.
    expect(await keysUnder(plain, sweepsPrefix(DB))).toEqual([]);
    expect(await heldChunks(plain)).toEqual(before);
    const next = await prune(plain, { now: afterGrace });
    expect(next.targets[0]!.chunks!.skipped).toBeUndefined();
    expect(next.targets[0]!.chunks!.removed).toBeGreaterThan(0);
  });

  it('a sweep marker write that landed unanswered and cannot be deleted again: the error names the marker left and for how long it counts', async () => {
    const { target, plain, puts } = await markerLandsUnanswered(true);
    await storeFileAsV2(plain, DB, files[0]!);
    await writerMidway(plain, files[2]!);
    const error = await prune(target, { now: afterGrace }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(PruneFailedError);
    const message = (error as PruneFailedError).message;
    expect(message).toContain(`it may have landed all the same, and the sweep marker ${puts[0]} could not be deleted`);
    expect(message).toContain('2 x TCAB_BACKUP_JOB_TIMEOUT');
    expect(await keysUnder(plain, sweepsPrefix(DB))).toEqual([puts[0]]);
  });

  it('a chunk delete whose answer is lost is not sent again: it is reported as left, and the run succeeds', async () => {
    const { target, plain, faults, deletes } = await faultyFolder();
    await storeFileAsV2(plain, DB, files[0]!);
    const garbage = await writerMidway(plain, files[2]!);
    expect(garbage.uploaded.length).toBeGreaterThan(2);
    faults.arm({ op: 'delete', point: { at: 'start' }, kind: 'lost', keys: /^chunks\//, skip: 1, times: 1 });
    const log = captureLog('info');
    const result = await prune(target, { now: afterGrace, logger: log.logger });
    expect(faults.fired).toEqual([expect.stringMatching(/^delete chunks\/tcab\/.* answer lost$/)]);
    const chunkDeletes = [...deletes].filter(([k]) => k.startsWith('chunks/'));
    expect(chunkDeletes).toHaveLength(garbage.uploaded.length);
    for (const [key, n] of chunkDeletes) expect(n, `delete requests for ${key}`).toBe(1);
    expect(result.targets[0]!.ok).toBe(true);
    expect(result.targets[0]!.chunks).toMatchObject({
      removed: garbage.uploaded.length - 1,
      left: 1,
      unanswered: 1,
      failed: 0,
    });
    // Not a failure, but not silent: the log event is a warning, and the line the CLI prints says so.
    expect(log.events('prune.chunks')).toEqual([expect.objectContaining({ level: 'warn', target: 'local', unanswered: 1, left: 1 })]);
    const line = describeSweep(result.targets[0]!.chunks!, false);
    expect(line).toContain('1 delete(s) not answered, not sent again');
    expect(line).toContain('WARNING: 1 chunk delete(s) went unanswered');
    // The lost answer's delete was applied: nothing of the garbage is left, and the next prune finds nothing to do.
    const held = new Set(await heldChunks(plain));
    for (const h of garbage.uploaded) expect(held.has(h)).toBe(false);
    expect(await keysUnder(plain, sweepsPrefix(DB))).toEqual([]);
  });

  it('a chunk delete that fails for a reason that may pass is sent once and left for the next prune, which takes it', async () => {
    const { target, plain, faults, deletes } = await faultyFolder();
    await storeFileAsV2(plain, DB, files[0]!);
    const garbage = await writerMidway(plain, files[2]!);
    faults.arm({ op: 'delete', point: { at: 'start' }, kind: 'transient', keys: /^chunks\//, times: 1 });
    const first = await prune(target, { now: afterGrace });
    expect(first.targets[0]!.ok).toBe(true);
    expect(first.targets[0]!.chunks).toMatchObject({ removed: garbage.uploaded.length - 1, left: 1, unanswered: 1 });
    for (const [key, n] of deletes) if (key.startsWith('chunks/')) expect(n, `delete requests for ${key}`).toBe(1);
    const second = await prune(target, { now: afterGrace });
    expect(second.targets[0]!.chunks).toMatchObject({ removed: 1, left: 0 });
    const held = new Set(await heldChunks(plain));
    for (const h of garbage.uploaded) expect(held.has(h)).toBe(false);
  });

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
