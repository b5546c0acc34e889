/**
 * Replicate of format-2 snapshots on real targets (a folder as the source, Azurite and s3rver as
 * destinations): only the chunks a destination lacks travel, a chunk two snapshots share is stored once, both
 * snapshots restore to their exact files there; a damaged source chunk is never copied (another source is
 * taken when there is one); a destination failing mid-chunks fails the job naming the chunk, without a manifest.
 */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listCatalog, readManifest } from '../../src/catalog/catalog.js';
import { listChunks } from '../../src/catalog/chunk-store.js';
import { listRenewalRecords, readRenewalRecord } from '../../src/catalog/renewals.js';
import { chunkKey } from '../../src/format/chunk-key.js';
import { ReplicateFailedError, runReplicate } from '../../src/jobs/replicate/index.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { FaultTarget } from '../support/fault-target.js';
import { storeFileAsV2, type StoredV2 } from '../support/store-v2.js';
import { chunkRefs, counting, flipByte, sha256Of, tally, twoSnapshotFiles } from '../support/v2-fixtures.js';
import { startR2Proxy, type R2Proxy } from '../support/r2-proxy.js';
import { BUCKET, blobTarget, s3Target, testWorld } from '../support/world.js';

const world = testWorld();
const CHUNK = /^chunks\//;
let work: string;
let files: { first: string; second: string };

beforeAll(async () => {
  work = await world.tempDir('replicate-v2');
  files = twoSnapshotFiles(work);
});

/** A folder target holding both snapshots (the second one second later). */
async function sourceWithBoth(name = 'local'): Promise<{ target: Target; a: StoredV2; b: StoredV2 }> {
  const { target } = await world.folder(name);
  const a = await storeFileAsV2(target, 'tcab', files.first, { createdAt: new Date(Date.now() - 60_000) });
  const b = await storeFileAsV2(target, 'tcab', files.second, { createdAt: new Date(Date.now() - 30_000) });
  return { target, a, b };
}

async function restoresExactly(target: Target, id: string, file: string, name: string): Promise<void> {
  const out = join(work, name);
  await runRestore({ targets: [target], database: 'tcab' }, { selector: { id }, outPath: out });
  expect(await sha256Of(out)).toBe(await sha256Of(file));
}

describe.each(['blob', 's3'] as const)('from a folder to %s', (kind) => {
  it('stores each chunk once, and both snapshots restore there to their exact files', async () => {
    const source = await sourceWithBoth();
    const dest = counting(kind === 'blob' ? blobTarget(world.clouds, kind) : s3Target(world.clouds, kind));
    const refsA = new Set((await chunkRefs(source.target, source.a.manifest)).map((r) => r[0]));
    const refsB = new Set((await chunkRefs(source.target, source.b.manifest)).map((r) => r[0]));
    const union = new Set([...refsA, ...refsB]);
    const common = [...refsA].filter((h) => refsB.has(h));
    // The two snapshots share most of their chunks.
    expect(common.length).toBeGreaterThan(union.size * 0.8);

    const result = await runReplicate({ targets: [source.target, dest.target], database: 'tcab' });
    const outcome = result.targets.find((t) => t.target === kind)!;
    expect(outcome.copied.map((c) => c.id).sort()).toEqual([source.a.manifest.id, source.b.manifest.id].sort());
    const puts = tally(dest.puts, CHUNK);
    expect(puts.size).toBe(union.size);
    expect([...puts.values()].every((n) => n === 1)).toBe(true);
    expect([...(await listChunks(dest.target, 'tcab')).keys()].sort()).toEqual([...union].sort());
    // What travelled is the chunks once, not each snapshot whole.
    const storedUnion = [...(await listChunks(source.target, 'tcab')).values()].reduce((n, c) => n + c.bytes, 0);
    expect(outcome.bytes).toBe(storedUnion);
    expect(outcome.bytes).toBeLessThan(source.a.manifest.stored.bytes + source.b.manifest.stored.bytes);
    const copiedChunks = outcome.copied.reduce((n, c) => n + c.chunks!.copied, 0);
    expect(copiedChunks).toBe(union.size);
    for (const s of [source.a, source.b]) {
      const m = await readManifest(dest.target, 'tcab', s.manifest.id);
      expect(m).toMatchObject({ formatVersion: 2, replicatedFrom: 'local', chunkList: s.manifest.chunkList });
    }
    await restoresExactly(dest.target, source.a.manifest.id, files.first, `${kind}-a.sqlite`);
    await restoresExactly(dest.target, source.b.manifest.id, files.second, `${kind}-b.sqlite`);

    // A second run finds both there and stores nothing.
    dest.puts.length = 0;
    const again = await runReplicate({ targets: [source.target, dest.target], database: 'tcab' });
    expect(again.copied).toBe(0);
    expect(again.targets.find((t) => t.target === kind)!.present).toBe(2);
    expect(dest.puts).toEqual([]);
  });
});

describe('a damaged source chunk', () => {
  it('is never copied: the job fails naming it, and no manifest is written', async () => {
    const source = await sourceWithBoth();
    const { target: dest } = await world.folder('dest');
    const refsA = (await chunkRefs(source.target, source.a.manifest)).map((r) => r[0]);
    const refsB = new Set((await chunkRefs(source.target, source.b.manifest)).map((r) => r[0]));
    const shared = refsA.find((h) => refsB.has(h))!;
    const key = chunkKey('tcab', shared);
    await flipByte(source.target, key);

    const err = await runReplicate({ targets: [source.target, dest], database: 'tcab' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ReplicateFailedError);
    const message = (err as Error).message;
    expect(message).toContain(`snapshot ${source.a.manifest.id} to target "dest"`);
    expect(message).toContain(`snapshot ${source.b.manifest.id} to target "dest"`);
    expect(message).toContain(key);
    expect(message).toMatch(/it was not copied/);
    expect((await listChunks(dest, 'tcab')).has(shared)).toBe(false);
    expect((await listCatalog(dest, 'tcab')).snapshots).toEqual([]);
  });

  it('makes replicate take another source that holds a good copy', async () => {
    const source = await sourceWithBoth();
    const { target: good } = await world.folder('good');
    const { target: dest } = await world.folder('dest');
    await runReplicate({ targets: [source.target, good], database: 'tcab' });
    const refsA = (await chunkRefs(source.target, source.a.manifest)).map((r) => r[0]);
    const key = chunkKey('tcab', refsA[3]!);
    await flipByte(source.target, key);

    const result = await runReplicate({ targets: [source.target, good, dest], database: 'tcab' });
    const outcome = result.targets.find((t) => t.target === 'dest')!;
    expect(outcome.failed).toEqual([]);
    const copiedA = outcome.copied.find((c) => c.id === source.a.manifest.id)!;
    expect(copiedA.from).toBe('good');
    expect(copiedA.refusedSources).toEqual([{ source: 'local', error: expect.stringContaining(key) }]);
    await restoresExactly(dest, source.a.manifest.id, files.first, 'other-source-a.sqlite');
    await restoresExactly(dest, source.b.manifest.id, files.second, 'other-source-b.sqlite');
  });
});

describe('a destination that fails mid-chunks', () => {
  it('fails the job naming the chunk and the target, with no manifest there', async () => {
    const source = await sourceWithBoth();
    const inner = blobTarget(world.clouds, 'flaky');
    const flaky = new FaultTarget(inner, { op: 'put', keys: CHUNK, skip: 5, point: { at: 'start' }, kind: 'error' });
    const err = await runReplicate({ targets: [source.target, flaky], database: 'tcab' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ReplicateFailedError);
    const message = (err as Error).message;
    expect(message).toMatch(/Storing chunk chunks\/tcab\/[0-9a-f]{2}\/[0-9a-f]{64}\.zst \(\d+ bytes\) on target "flaky"/);
    const result = (err as ReplicateFailedError).result.targets.find((t) => t.target === 'flaky')!;
    expect(result.copied).toEqual([]);
    expect(result.failed.map((f) => f.id).sort()).toEqual([source.a.manifest.id, source.b.manifest.id].sort());
    expect((await listCatalog(inner, 'tcab')).snapshots).toEqual([]);
    // Once the target works again, the next run completes the copies from what is already there.
    flaky.arm(undefined);
    const again = await runReplicate({ targets: [source.target, flaky], database: 'tcab' });
    const outcome = again.targets.find((t) => t.target === 'flaky')!;
    expect(outcome.copied).toHaveLength(2);
    expect(outcome.copied.reduce((n, c) => n + c.chunks!.reused, 0)).toBeGreaterThanOrEqual(5);
    await restoresExactly(inner, source.b.manifest.id, files.second, 'flaky-b.sqlite');
  });
});

describe('chunks the destination already holds', () => {
  it('are reused while younger than G/2 and written again (renewed) when older', async () => {
    const { target: source } = await world.folder('local');
    const { target: young } = await world.folder('young');
    const { target: old } = await world.folder('old');
    const a = await storeFileAsV2(source, 'tcab', files.first, { createdAt: new Date(Date.now() - 60_000) });
    await runReplicate({ targets: [source, young, old], database: 'tcab' });
    const b = await storeFileAsV2(source, 'tcab', files.second, { createdAt: new Date(Date.now() - 30_000) });
    const refsA = new Set((await chunkRefs(source, a.manifest)).map((r) => r[0]));
    const refsB = new Set((await chunkRefs(source, b.manifest)).map((r) => r[0]));
    const shared = [...refsB].filter((h) => refsA.has(h)).length;
    const fresh = refsB.size - shared;

    const byDefault = await runReplicate({ targets: [source, young], database: 'tcab' });
    expect(byDefault.targets.find((t) => t.target === 'young')!.copied[0]!.chunks).toEqual({
      distinct: refsB.size,
      copied: fresh,
      renewed: 0,
      reused: shared,
    });
    // A grace period of 2 ms: every chunk the target holds is older than G/2.
    const before = await listChunks(old, 'tcab');
    const renewing = await runReplicate({ targets: [source, old], database: 'tcab', chunkGraceMs: 2 });
    expect(renewing.targets.find((t) => t.target === 'old')!.copied[0]!.chunks).toEqual({
      distinct: refsB.size,
      copied: fresh,
      renewed: shared,
      reused: 0,
    });
    const after = await listChunks(old, 'tcab');
    const renewedOne = [...refsB].find((h) => refsA.has(h))!;
    expect(after.get(renewedOne)!.lastModified.getTime()).toBeGreaterThan(before.get(renewedOne)!.lastModified.getTime());
    await restoresExactly(old, b.manifest.id, files.second, 'renewed-b.sqlite');
  });
});

describe('renewal records', () => {
  /** The renewal records on a folder target (the folder goes with its last record). */
  const recordsIn = (dir: string): Promise<string[]> =>
    readdir(join(dir, 'renewals', 'tcab')).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return [];
      throw e;
    });

  let r2: R2Proxy | undefined;
  afterAll(() => r2?.stop());
  /** The destination: a folder, Azurite, or s3rver behind the R2 rules (create-only writes honoured). */
  const destinations: Record<string, (name: string) => Promise<Target>> = {
    folder: async (name) => (await world.folder(name)).target,
    azurite: async (name) => blobTarget(world.clouds, name),
    r2: async (name) => {
      r2 ??= await startR2Proxy({
        upstream: world.clouds.s3.endpoint,
        accessKeyId: world.clouds.s3.accessKeyId,
        secretAccessKey: world.clouds.s3.secretAccessKey,
      });
      const spec = parseTargetUrl(name, `r2://${'0'.repeat(32)}/${BUCKET}/renewals-${Date.now()}?endpoint=${r2.endpoint}&pathStyle=true`, {
        accessKeyId: world.clouds.s3.accessKeyId,
        secretAccessKey: world.clouds.s3.secretAccessKey,
      });
      return openTarget(spec);
    },
  };

  it.each(Object.keys(destinations))(
    'on %s: records the chunks renewed near G, and a run J later copies one a prune deleted back from the source',
    async (kind) => {
      const { target: source } = await world.folder('local');
      const dest = await destinations[kind]!('renewed');
      const a = await storeFileAsV2(source, 'tcab', files.first, { createdAt: new Date(Date.now() - 60_000) });
      await runReplicate({ targets: [source, dest], database: 'tcab' });
      const b = await storeFileAsV2(source, 'tcab', files.second, { createdAt: new Date(Date.now() - 30_000) });
      const refsA = new Set((await chunkRefs(source, a.manifest)).map((r) => r[0]));
      const shared = (await chunkRefs(source, b.manifest)).filter((r) => refsA.has(r[0]));
      // G of 2 s and J of 200 ms: 1.7 s later the destination's chunks are older than G - 2J (1.6 s).
      await new Promise((r) => setTimeout(r, 1700));
      const short = { chunkGraceMs: 2000, chunkJobTimeoutMs: 200 };
      const renewing = await runReplicate({ targets: [source, dest], database: 'tcab', ...short });
      expect(renewing.targets.find((t) => t.target === 'renewed')!.copied[0]!.chunks!.renewed).toBe(shared.length);
      const records = await listRenewalRecords(dest, 'tcab');
      expect(records).toHaveLength(1);
      const record = await readRenewalRecord(dest, records[0]!.key);
      expect(record).toMatchObject({ writer: 'replicate', snapshot: b.manifest.id, jobTimeoutMs: 200, renewalsFollow: true });
      expect(new Set(record!.chunks)).toEqual(new Set(shared.map((r) => r.join(' '))));

      // A run less than J after the record (J of 25 minutes) copies nothing and leaves it pending.
      const early = await runReplicate({ targets: [source, dest], database: 'tcab' });
      expect(early.copied).toBe(0);
      expect(early.targets.find((t) => t.target === 'renewed')!.renewals).toMatchObject({ records: 1, pending: 1, settled: 0 });
      expect(await listRenewalRecords(dest, 'tcab')).toEqual(records);

      // A prune that listed a shared chunk as old before the renewal deletes it after: the next run J later finds
      // it gone, copies it back from the source, and deletes the record; the snapshot restores there again.
      const victim = shared[Math.floor(shared.length / 2)]![0];
      await dest.delete(chunkKey('tcab', victim));
      await new Promise((r) => setTimeout(r, 450)); // 2J: the record was written before its renewals
      const later = await runReplicate({ targets: [source, dest], database: 'tcab', chunkJobTimeoutMs: 200 });
      expect(later.copied).toBe(0);
      expect(later.targets.find((t) => t.target === 'renewed')!.renewals).toMatchObject({
        records: 1,
        pending: 0,
        settled: 1,
        rewritten: 1,
        lost: [],
      });
      expect((await listChunks(dest, 'tcab')).has(victim)).toBe(true);
      expect(await listRenewalRecords(dest, 'tcab')).toEqual([]);
      await restoresExactly(dest, b.manifest.id, files.second, `renewal-record-${kind}.sqlite`);
      if (r2) expect(r2.violations).toEqual([]);
    },
  );

  it('fails naming a recorded chunk no target holds and the snapshots naming it, keeping the record', async () => {
    const { target: source } = await world.folder('local');
    const { target: dest, dir } = await world.folder('gone');
    const a = await storeFileAsV2(source, 'tcab', files.first, { createdAt: new Date(Date.now() - 60_000) });
    await runReplicate({ targets: [source, dest], database: 'tcab' });
    const b = await storeFileAsV2(source, 'tcab', files.second, { createdAt: new Date(Date.now() - 30_000) });
    await new Promise((r) => setTimeout(r, 1700));
    await runReplicate({ targets: [source, dest], database: 'tcab', chunkGraceMs: 2000, chunkJobTimeoutMs: 200 });
    const records = await recordsIn(dir);
    const refsA = new Set((await chunkRefs(source, a.manifest)).map((r) => r[0]));
    const victim = (await chunkRefs(source, b.manifest)).find((r) => refsA.has(r[0]))![0];
    // Gone from both targets: nothing can copy it back.
    await rm(join(dir, chunkKey('tcab', victim)));
    await source.delete(chunkKey('tcab', victim));
    await new Promise((r) => setTimeout(r, 450)); // 2J: the record was written before its renewals
    const err = await runReplicate({ targets: [source, dest], database: 'tcab', chunkJobTimeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ReplicateFailedError);
    const message = (err as Error).message;
    expect(message).toContain(chunkKey('tcab', victim));
    expect(message).toContain('"gone"');
    expect(message).toContain(a.manifest.id);
    expect(message).toContain(b.manifest.id);
    expect((err as ReplicateFailedError).hint).toContain('verify');
    expect(await recordsIn(dir)).toEqual(records);
  });

  it('records the chunks a copy will renew near G before renewing any: a copy that fails half-way leaves the record', async () => {
    const { target: source } = await world.folder('local');
    const { target: dest, dir } = await world.folder('half');
    const a = await storeFileAsV2(source, 'tcab', files.first, { createdAt: new Date(Date.now() - 60_000) });
    await runReplicate({ targets: [source, dest], database: 'tcab' });
    const b = await storeFileAsV2(source, 'tcab', files.second, { createdAt: new Date(Date.now() - 30_000) });
    await new Promise((r) => setTimeout(r, 1700));
    const held = await listChunks(dest, 'tcab');
    // The chunk writes there fail for good once the new chunks and three more are written: at least three
    // renewals are made, and the copy stops.
    const fresh = new Set((await chunkRefs(source, b.manifest)).map((r) => r[0]).filter((h) => !held.has(h))).size;
    const faulty = new FaultTarget(dest, { op: 'put', keys: CHUNK, point: { at: 'start' }, kind: 'error', skip: fresh + 3 });
    const err = await runReplicate({ targets: [source, faulty], database: 'tcab', chunkGraceMs: 2000, chunkJobTimeoutMs: 200 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ReplicateFailedError);
    // Renewed: held before, and written again since (the chunks new to the snapshot are copied, not renewed).
    const renewed = [...(await listChunks(dest, 'tcab')).entries()].filter(
      ([sha256, c]) => held.has(sha256) && c.lastModified.getTime() > held.get(sha256)!.lastModified.getTime(),
    );
    expect(renewed.length).toBeGreaterThanOrEqual(3);
    const records = await listRenewalRecords(dest, 'tcab');
    expect(records).toHaveLength(1);
    const record = await readRenewalRecord(dest, records[0]!.key);
    expect(record).toMatchObject({ writer: 'replicate', snapshot: b.manifest.id, renewalsFollow: true });
    const recorded = new Set(record!.chunks.map((l) => l.split(' ')[0]));
    for (const [sha256] of renewed) expect(recorded.has(sha256)).toBe(true);
    expect((await listCatalog(dest, 'tcab')).snapshots.map((s) => s.id)).toEqual([a.manifest.id]);
    expect(await recordsIn(dir)).toEqual([records[0]!.key.split('/').pop()]);
  });

  it('fails naming a renewal record it cannot read, instead of passing over it', async () => {
    const { target: source } = await world.folder('local');
    const { target: dest, dir } = await world.folder('unreadable');
    await storeFileAsV2(source, 'tcab', files.first, { createdAt: new Date(Date.now() - 60_000) });
    await runReplicate({ targets: [source, dest], database: 'tcab' });
    const key = 'renewals/tcab/20261202T000000000Z-20261202T000000Z-0123abcd-0123abcd.json';
    await mkdir(join(dir, 'renewals', 'tcab'), { recursive: true });
    await writeFile(join(dir, key), '{"kind": "tcab-backup.renewals", "version": 1, "database": "tc');
    const err = await runReplicate({ targets: [source, dest], database: 'tcab' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ReplicateFailedError);
    const message = (err as Error).message;
    expect(message).toContain('checking the renewal records on target "unreadable" failed');
    expect(message).toContain(key);
    const result = (err as ReplicateFailedError).result;
    expect(result.targets.find((t) => t.target === 'unreadable')!.renewals!.error).toContain(key);
    // The record is left as it is for the operator.
    expect(await recordsIn(dir)).toEqual([key.split('/').pop()]);
  });
});
