/**
 * Replicate against real targets: a folder, Azurite and s3rver, with synthetic artifacts whose manifests
 * match them. What is checked is what an operator would check: which snapshots each target lists, that
 * every listed snapshot's artifact hashes to its manifest, and what the run reported.
 */
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readManifest } from '../../src/catalog/catalog.js';
import { ReplicateFailedError, runReplicate } from '../../src/jobs/replicate/index.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import type { Target } from '../../src/targets/target.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { DATABASE, DAY, HOUR, history, idsOn, invalidSnapshots, makeSnapshot, storeSnapshot, v1 } from '../support/stored-snapshots.js';
import { blobTarget, s3Target, testWorld } from '../support/world.js';

const world = testWorld();

async function folder(name: string): Promise<{ target: Target; dir: string }> {
  const f = await world.folder(name);
  return f;
}

describe('replicate', () => {
  it('copies every snapshot a target lacks, in every direction, between a folder, Azurite and s3rver', async () => {
    const local = (await folder('local')).target;
    const blob = blobTarget(world.clouds, 'blob');
    const s3 = s3Target(world.clouds, 's3');
    const now = Date.now();
    const [a, b, c] = [
      makeSnapshot({ time: new Date(now - 3 * HOUR) }),
      makeSnapshot({ time: new Date(now - 2 * HOUR) }),
      makeSnapshot({ time: new Date(now - HOUR), tags: ['pinned'] }),
    ];
    await storeSnapshot(local, a!);
    await storeSnapshot(blob, b!);
    await storeSnapshot(s3, c!);

    const result = await runReplicate({ targets: [local, blob, s3], database: DATABASE });

    const all = [a!, b!, c!].map((s) => s.manifest.id).sort();
    for (const t of [local, blob, s3]) expect(await idsOn(t)).toEqual(all);
    expect(await invalidSnapshots([local, blob, s3])).toEqual([]);
    expect(result.copied).toBe(6);
    expect(result.failed).toBe(0);
    expect(result.bytes).toBe(6 * a!.data.length);
    const onS3 = result.targets.find((t) => t.target === 's3')!;
    expect(onS3.copied.map((x) => [x.id, x.from]).sort()).toEqual(
      [
        [a!.manifest.id, 'local'],
        [b!.manifest.id, 'blob'],
      ].sort(),
    );
    const copiedManifest = v1(await readManifest(s3, DATABASE, a!.manifest.id));
    expect(copiedManifest.replicatedFrom).toBe('local');
    expect(copiedManifest.artifact).toEqual(a!.manifest.artifact);
    expect((await readManifest(local, DATABASE, c!.manifest.id)).tags).toEqual(['pinned']);

    // Idempotent: nothing left to copy, nothing rewritten.
    const before = await readManifest(blob, DATABASE, a!.manifest.id);
    const again = await runReplicate({ targets: [local, blob, s3], database: DATABASE });
    expect(again.copied).toBe(0);
    expect(again.targets.every((t) => t.planned.length === 0 && t.skipped.length === 0 && t.present === 3)).toBe(true);
    expect((await readManifest(blob, DATABASE, a!.manifest.id)).storedAt).toBe(before.storedAt);
  });

  it('lists what it would copy with --dry-run, and copies nothing', async () => {
    const local = (await folder('local')).target;
    const blob = blobTarget(world.clouds, 'blob');
    const snaps = history(2, new Date(), HOUR);
    for (const s of snaps) await storeSnapshot(local, s);
    const result = await runReplicate({ targets: [local, blob], database: DATABASE }, { dryRun: true });
    expect(result.dryRun).toBe(true);
    expect(result.targets.find((t) => t.target === 'blob')!.planned.map((p) => [p.id, p.from, p.bytes])).toEqual(
      snaps.map((s) => [s.manifest.id, 'local', s.data.length]).reverse(),
    );
    expect(result.copied).toBe(0);
    expect(await idsOn(blob)).toEqual([]);
  });

  it('fails naming the unreachable target, serves the others, and catches it up on the next run', async () => {
    const proxy: FaultProxy = await startFaultProxy(world.clouds.s3.endpoint);
    world.cleanup(proxy.stop);
    const local = (await folder('local')).target;
    const blob = blobTarget(world.clouds, 'blob');
    const s3 = s3Target(world.clouds, 's3', { proxy });
    const [a, b] = history(2, new Date(), HOUR);
    await storeSnapshot(local, a!);
    await storeSnapshot(blob, b!);

    proxy.inject({ fault: 'reset', times: Infinity });
    const err = await runReplicate({ targets: [local, blob, s3], database: DATABASE }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(ReplicateFailedError);
    expect((err as Error).message).toMatch(/target "s3": listing failed/);
    expect((err as Error).message).toContain('Check:');
    const result = (err as ReplicateFailedError).result;
    expect(result.targets.find((t) => t.target === 's3')!.ok).toBe(false);
    // The healthy targets got each other's snapshot in the same run.
    expect(await idsOn(local)).toEqual([a!.manifest.id, b!.manifest.id]);
    expect(await idsOn(blob)).toEqual([a!.manifest.id, b!.manifest.id]);

    proxy.clear();
    const next = await runReplicate({ targets: [local, blob, s3], database: DATABASE });
    expect(
      next.targets
        .find((t) => t.target === 's3')!
        .copied.map((c) => c.id)
        .sort(),
    ).toEqual([a!.manifest.id, b!.manifest.id]);
    expect(await idsOn(s3)).toEqual([a!.manifest.id, b!.manifest.id]);
    expect(await invalidSnapshots([local, blob, s3])).toEqual([]);
  });

  it('refuses a source whose bytes do not match its manifest and copies from another target instead', async () => {
    const { target: local, dir } = await folder('local');
    const blob = blobTarget(world.clouds, 'blob');
    const s3 = s3Target(world.clouds, 's3');
    const snap = makeSnapshot({ time: new Date(Date.now() - HOUR) });
    await storeSnapshot(local, snap);
    await storeSnapshot(blob, snap);
    const path = join(dir, ...snap.manifest.key.split('/'));
    const bytes = await readFile(path);
    bytes[100] = bytes[100]! ^ 0xff; // same size, one byte flipped: only the sha256 shows it
    await writeFile(path, bytes);

    const result = await runReplicate({ targets: [local, blob, s3], database: DATABASE });

    const copied = result.targets.find((t) => t.target === 's3')!.copied;
    expect(copied).toHaveLength(1);
    expect(copied[0]!.from).toBe('blob');
    expect(copied[0]!.refusedSources).toEqual([{ source: 'local', error: expect.stringMatching(/sha256/) }]);
    expect((await readManifest(s3, DATABASE, snap.manifest.id)).replicatedFrom).toBe('blob');
    expect(await invalidSnapshots([s3, blob])).toEqual([]);
  });

  it('fails naming the source, the destination and the snapshot when the only copy is corrupt, and leaves no partial copy', async () => {
    const { target: local, dir } = await folder('local');
    const blob = blobTarget(world.clouds, 'blob');
    const s3 = s3Target(world.clouds, 's3');
    const snap = makeSnapshot({ time: new Date(Date.now() - HOUR), bytes: 6 * 1024 * 1024 + 123 });
    await storeSnapshot(local, snap);
    const path = join(dir, ...snap.manifest.key.split('/'));
    const bytes = await readFile(path);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0x01; // the last byte: the mismatch shows only at the very end
    await writeFile(path, bytes);

    const err = await runReplicate({ targets: [local, blob, s3], database: DATABASE }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(ReplicateFailedError);
    const message = (err as Error).message;
    expect(message).toContain(`snapshot ${snap.manifest.id} to target "blob" from "local"`);
    expect(message).toContain(`snapshot ${snap.manifest.id} to target "s3" from "local"`);
    expect(message).toMatch(/sha256/);
    for (const t of [blob, s3]) {
      expect(await idsOn(t)).toEqual([]);
      await expect(t.head(snap.manifest.key)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    }
  });

  it('repairs a target whose artifact is missing or truncated from a complete copy elsewhere', async () => {
    const { target: local, dir } = await folder('local');
    const blob = blobTarget(world.clouds, 'blob');
    const [a, b] = history(2, new Date(), HOUR);
    for (const s of [a!, b!]) {
      await storeSnapshot(local, s);
      await storeSnapshot(blob, s);
    }
    await truncate(join(dir, ...a!.manifest.key.split('/')), 1000);
    await blob.delete(b!.manifest.key);
    expect(await invalidSnapshots([local, blob])).toHaveLength(2);

    const result = await runReplicate({ targets: [local, blob], database: DATABASE });

    expect(result.targets.find((t) => t.target === 'local')!.copied).toEqual([
      expect.objectContaining({ id: a!.manifest.id, from: 'blob', repaired: expect.stringMatching(/1000 bytes/) }),
    ]);
    expect(result.targets.find((t) => t.target === 'blob')!.copied).toEqual([
      expect.objectContaining({ id: b!.manifest.id, from: 'local', repaired: expect.stringMatching(/missing/) }),
    ]);
    expect(await invalidSnapshots([local, blob])).toEqual([]);
  });

  it("does not copy what the destination's own retention would remove at once", async () => {
    const local = (await folder('local')).target;
    const archive = (await folder('archive')).target;
    const now = new Date();
    const old = history(5, new Date(now.getTime() - 10 * DAY), DAY);
    const pinned = makeSnapshot({ time: new Date(now.getTime() - 30 * DAY), tags: ['pinned'] });
    for (const s of [pinned, ...old]) await storeSnapshot(local, s);
    const retention = loadRetentionConfig(
      {
        TCAB_BACKUP_RETENTION_ARCHIVE: 'last=2',
        TCAB_BACKUP_RETENTION_MIN_KEEP: '1',
        TCAB_BACKUP_RETENTION_MIN_AGE: '1h',
      },
      ['local', 'archive'],
    );

    const result = await runReplicate({ targets: [local, archive], database: DATABASE, retention });

    const newestTwo = old.slice(-2).map((s) => s.manifest.id);
    expect(await idsOn(archive)).toEqual([pinned.manifest.id, ...newestTwo]);
    const skipped = result.targets.find((t) => t.target === 'archive')!.skipped;
    expect(skipped.map((s) => s.id).sort()).toEqual(
      old
        .slice(0, 3)
        .map((s) => s.manifest.id)
        .sort(),
    );
    expect(skipped[0]!.reason).toMatch(/retention policy of target "archive" \(TCAB_BACKUP_RETENTION_ARCHIVE\) would remove it at once/);
    // The local target's default policy keeps all of them: nothing to copy back.
    expect(result.targets.find((t) => t.target === 'local')!.planned).toEqual([]);
  });
});
