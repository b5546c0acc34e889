/**
 * The format-2 writer's side on real targets (a folder, Azurite, s3rver), and how the jobs that do not handle
 * format 2 yet meet a format-2 snapshot: the catalog, prune's removal, replicate's plan, verify.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listCatalog, readManifest } from '../../src/catalog/catalog.js';
import { checkChunks, commitSnapshotV2, listChunks, putChunk } from '../../src/catalog/chunk-store.js';
import { chunkListKey, manifestKey } from '../../src/catalog/layout.js';
import { readTargetCatalog } from '../../src/catalog/target-catalog.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { compressChunk } from '../../src/format/chunk-codec.js';
import { chunkKey } from '../../src/format/chunk-key.js';
import { chunkStream } from '../../src/format/chunker.js';
import { ChunkListWriter } from '../../src/format/chunk-list.js';
import { FORMAT2_CHUNKING } from '../../src/format/params.js';
import { removeSnapshot } from '../../src/jobs/prune/delete.js';
import { planReplication } from '../../src/jobs/replicate/plan.js';
import { verifyStoredSnapshot } from '../../src/jobs/verify/check.js';
import type { Target } from '../../src/targets/target.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import { startR2Proxy } from '../support/r2-proxy.js';
import { BUCKET, FAST_RETRY, blobTarget, testWorld } from '../support/world.js';
import { storeFileAsV2 } from '../support/store-v2.js';

const world = testWorld();
let work: string;
let db: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-chunk-store-'));
  db = join(work, 'tcab.sqlite');
  createSampleDatabase(db, { runs: 300, seed: 9 });
});
afterAll(() => rm(work, { recursive: true, force: true }));

async function firstChunk(): Promise<{ sha256: string; frame: Buffer; length: number }> {
  for await (const c of chunkStream(createReadStream(db), FORMAT2_CHUNKING)) {
    return { sha256: c.sha256, frame: await compressChunk(c.bytes), length: c.length };
  }
  throw new Error('no chunk');
}

/**
 * An R2 target: s3rver behind the proxy that applies R2's rules, conditional puts included (s3rver alone
 * ignores If-None-Match, which S3 and R2 honour).
 */
async function r2Target(name: string): Promise<Target> {
  const { s3 } = world.clouds;
  const r2 = await startR2Proxy({ upstream: s3.endpoint, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
  world.cleanup(() => r2.stop());
  const prefix = `cs-${process.pid}-${Date.now().toString(36)}`;
  const spec = parseTargetUrl(name, `r2://0123456789abcdef0123456789abcdef/${BUCKET}/${prefix}?endpoint=${r2.endpoint}&pathStyle=true`, {
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
  });
  return openTarget(spec, { retry: FAST_RETRY });
}

describe.each(['file', 'blob', 'r2'] as const)('on a %s target', (kind) => {
  let target: Target;
  beforeAll(async () => {
    target = kind === 'file' ? (await world.folder('cs')).target : kind === 'blob' ? blobTarget(world.clouds, 'cs') : await r2Target('cs');
  });

  it('putChunk writes once, counts an existing chunk as stored, and renews on request', async () => {
    const c = await firstChunk();
    expect(await putChunk(target, 'tcab', c.sha256, c.frame)).toEqual({
      key: chunkKey('tcab', c.sha256),
      status: 'stored',
      bytes: c.frame.length,
    });
    const before = (await listChunks(target, 'tcab')).get(c.sha256)!;
    expect(before.bytes).toBe(c.frame.length);
    expect((await putChunk(target, 'tcab', c.sha256, c.frame)).status).toBe('exists');
    await new Promise((r) => setTimeout(r, 1100));
    expect((await putChunk(target, 'tcab', c.sha256, c.frame, { renew: true })).status).toBe('stored');
    const after = (await listChunks(target, 'tcab')).get(c.sha256)!;
    expect(after.lastModified.getTime()).toBeGreaterThan(before.lastModified.getTime());
  });

  it('commitSnapshotV2 writes the list then the manifest, and reports a chunk that is not there', async () => {
    const { manifest } = await storeFileAsV2(target, 'tcab', db);
    const listed = await listCatalog(target, 'tcab');
    const entry = listed.snapshots.find((s) => s.id === manifest.id)!;
    expect(entry.chunkList?.size).toBe(manifest.chunkList.bytes);
    expect(listed.orphans).toEqual([]);
    expect(await readManifest(target, 'tcab', manifest.id)).toEqual(manifest);
    // The same snapshot committed again after one of its chunks went away: the check names it.
    const lines: string[] = [];
    const writer = new ChunkListWriter();
    const named = new Map<string, number>();
    for await (const c of chunkStream(createReadStream(db), FORMAT2_CHUNKING)) {
      const frame = await compressChunk(c.bytes);
      lines.push(writer.line([c.sha256, c.length, frame.length]));
      named.set(c.sha256, frame.length);
    }
    const gone = [...named.keys()][1]!;
    await target.delete(chunkKey('tcab', gone));
    const result = await commitSnapshotV2(target, manifest, lines);
    expect(result.missing).toEqual([{ sha256: gone, key: chunkKey('tcab', gone), bytes: named.get(gone) }]);
    expect(await checkChunks(target, 'tcab', named)).toHaveLength(1);
  });
});

describe('on a folder', () => {
  it("commitSnapshotV2 refuses lines that are not the manifest's chunk list, before writing the manifest", async () => {
    const { target } = await world.folder('mismatch');
    const { manifest } = await storeFileAsV2(target, 'tcab', db);
    await target.delete(manifestKey('tcab', manifest.id));
    const other = { ...manifest, id: manifest.id.replace(/.{8}$/, '00000000') };
    other.chunkList = { ...other.chunkList, key: chunkListKey('tcab', other.id) };
    await expect(commitSnapshotV2(target, other, [`${'a'.repeat(64)} 100 50\n`])).rejects.toThrow(
      /The chunk list written for snapshot \S+ on target "mismatch" .* is not the manifest's: 1 lines, .*no manifest was written/,
    );
    const listed = await listCatalog(target, 'tcab');
    expect(listed.snapshots).toEqual([]);
    // Both chunk lists are now orphans, which prune removes once they are old.
    expect(listed.orphans.map((o) => o.key).sort()).toEqual([chunkListKey('tcab', manifest.id), chunkListKey('tcab', other.id)].sort());
  });

  it('replicate plans a format-2 copy and verify reads it; prune removes the manifest and the chunk list and leaves the chunks', async () => {
    const { target: a } = await world.folder('a');
    const { target: b } = await world.folder('b');
    const { manifest } = await storeFileAsV2(a, 'tcab', db);
    const catalogs = [await readTargetCatalog(a, 'tcab'), await readTargetCatalog(b, 'tcab')];
    expect(catalogs[0]!.byId.get(manifest.id)).toMatchObject({ complete: true, problem: undefined });
    const plan = planReplication(catalogs, { now: new Date() });
    expect(plan[1]!.skipped).toEqual([]);
    expect(plan[1]!.copies).toMatchObject([{ id: manifest.id, sources: ['a'], bytes: manifest.stored.bytes }]);
    const verified = await verifyStoredSnapshot(a, 'tcab', manifest.id);
    expect(verified).toMatchObject({ ok: true, verdict: 'ok', chunks: { distinct: expect.any(Number) } });
    const chunksBefore = await listChunks(a, 'tcab');
    expect(await removeSnapshot(a, 'tcab', catalogs[0]!.byId.get(manifest.id)!)).toEqual({ status: 'removed' });
    const after = await listCatalog(a, 'tcab');
    expect(after.snapshots).toEqual([]);
    expect(after.orphans).toEqual([]);
    expect([...(await listChunks(a, 'tcab')).keys()].sort()).toEqual([...chunksBefore.keys()].sort());
  });
});
