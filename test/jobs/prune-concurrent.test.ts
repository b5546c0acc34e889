/**
 * Prune and replicate at the same time on the same targets. Two exact interleavings of the dangerous
 * kind (a copy landing while prune removes the same snapshot), forced with gates around a real folder
 * target, and then both jobs run freely against a folder, Azurite and s3rver. After each: every snapshot
 * that has a manifest has a valid artifact, and no snapshot the policy keeps was deleted.
 */
import type { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { manifestKey } from '../../src/catalog/layout.js';
import { runPrune } from '../../src/jobs/prune/index.js';
import { ReplicateFailedError, runReplicate } from '../../src/jobs/replicate/index.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import type { PutOptions, Target } from '../../src/targets/target.js';
import { DATABASE, DAY, HOUR, history, idsOn, invalidSnapshots, storeSnapshot } from '../support/stored-snapshots.js';
import { blobTarget, s3Target, testWorld } from '../support/world.js';

const world = testWorld();

async function folder(name: string): Promise<Target> {
  const f = await world.folder(name);
  return f.target;
}

/** Resolves when `open()` is called. */
function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

/** The same target, with a chance to hold an operation back before it reaches storage. */
function withHooks(inner: Target, hooks: { beforeDelete?(key: string): Promise<void>; beforePut?(key: string): Promise<void> }): Target {
  return {
    name: inner.name,
    url: inner.url,
    get: (key, o) => inner.get(key, o),
    head: (key, o) => inner.head(key, o),
    list: (prefix, o) => inner.list(prefix, o),
    async put(key: string, body: Readable | Buffer, o?: PutOptions) {
      await hooks.beforePut?.(key);
      return inner.put(key, body, o);
    },
    async delete(key, o) {
      await hooks.beforeDelete?.(key);
      return inner.delete(key, o);
    },
  };
}

function rails(settings: Record<string, string>, names: string[]) {
  return loadRetentionConfig(
    {
      TCAB_BACKUP_RETENTION_MIN_KEEP: '1',
      TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
      TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
      ...settings,
    },
    names,
  );
}

describe('prune and replicate at the same time', () => {
  it('a copy that completes while prune is between the manifest and the data is withdrawn by prune', async () => {
    const source = await folder('source');
    const inner = await folder('dest');
    const [old, newest] = history(2, new Date(Date.now() - HOUR), DAY);
    for (const s of [old!, newest!]) {
      await storeSnapshot(source, s);
      await storeSnapshot(inner, s);
    }
    const atData = gate();
    const resume = gate();
    const dest = withHooks(inner, {
      async beforeDelete(key) {
        if (key !== old!.manifest.key) return;
        atData.open();
        await resume.wait;
      },
    });
    const prune = runPrune({ targets: [dest], database: DATABASE, retention: rails({ TCAB_BACKUP_RETENTION_DEST: 'last=1' }, ['dest']) });
    await atData.wait; // prune removed the manifest and holds before the data
    // A replicate without the destination's retention (another instance, an older setting) copies it back.
    const copied = await runReplicate({ targets: [source, dest], database: DATABASE });
    expect(copied.targets.find((t) => t.target === 'dest')!.copied.map((c) => c.id)).toEqual([old!.manifest.id]);
    resume.open();
    const pruned = await prune;

    expect(pruned.targets[0]!.removed).toEqual([old!.manifest.id]);
    expect(await invalidSnapshots([inner])).toEqual([]);
    expect(await idsOn(inner)).toEqual([newest!.manifest.id]);
  });

  it("a copy whose data prune deletes before the copy's manifest lands is withdrawn by replicate", async () => {
    const source = await folder('source');
    const inner = await folder('dest');
    const [old, newest] = history(2, new Date(Date.now() - HOUR), DAY);
    for (const s of [old!, newest!]) {
      await storeSnapshot(source, s);
      await storeSnapshot(inner, s);
    }
    const pruneAtData = gate();
    const letPruneDelete = gate();
    const copyAtManifest = gate();
    let prune: Promise<unknown> | undefined;
    const dest = withHooks(inner, {
      async beforeDelete(key) {
        if (key !== old!.manifest.key) return;
        pruneAtData.open();
        await letPruneDelete.wait;
      },
      async beforePut(key) {
        if (key !== manifestKey(DATABASE, old!.manifest.id)) return;
        copyAtManifest.open();
        // Prune now deletes the freshly copied data and finishes before this manifest is written.
        letPruneDelete.open();
        await prune;
      },
    });
    prune = runPrune({ targets: [dest], database: DATABASE, retention: rails({ TCAB_BACKUP_RETENTION_DEST: 'last=1' }, ['dest']) });
    await pruneAtData.wait;
    const err = await runReplicate({ targets: [source, dest], database: DATABASE }).catch((e: Error) => e);
    await copyAtManifest.wait;

    expect(err).toBeInstanceOf(ReplicateFailedError);
    expect((err as Error).message).toContain(`snapshot ${old!.manifest.id} to target "dest"`);
    expect((err as Error).message).toMatch(/disappeared right after it was stored .* its manifest was withdrawn/);
    expect(await invalidSnapshots([inner])).toEqual([]);
    expect(await idsOn(inner)).toEqual([newest!.manifest.id]);
  });

  it('run freely on a folder, Azurite and s3rver: no invalid snapshot, nothing the policies keep is lost', async () => {
    const targets = [await folder('local'), blobTarget(world.clouds, 'blob'), s3Target(world.clouds, 's3')];
    const [local, blob, s3] = targets as [Target, Target, Target];
    const all = history(24, new Date(Date.now() - HOUR), HOUR, { bytes: 48 * 1024 });
    const ids = all.map((s) => s.manifest.id);
    for (const [i, s] of all.entries()) {
      await storeSnapshot(local, s);
      if (i % 2 === 0) await storeSnapshot(blob, s);
      if (i % 3 === 0) await storeSnapshot(s3, s);
    }
    const keep = { local: 6, blob: 10, s3: 16 };
    const retention = rails(
      {
        TCAB_BACKUP_RETENTION_LOCAL: `last=${keep.local}`,
        TCAB_BACKUP_RETENTION_BLOB: `last=${keep.blob}`,
        TCAB_BACKUP_RETENTION_S3: `last=${keep.s3}`,
      },
      ['local', 'blob', 's3'],
    );
    const deps = { targets, database: DATABASE, retention };
    const before = { local: await idsOn(local), blob: await idsOn(blob), s3: await idsOn(s3) };

    const rounds = [];
    for (let round = 0; round < 3; round++) {
      rounds.push(await Promise.allSettled([runReplicate(deps, { concurrency: 3 }), runPrune(deps), runReplicate(deps)]));
      expect(await invalidSnapshots(targets)).toEqual([]);
    }
    const first = rounds[0]!;
    expect(
      first[0].status === 'fulfilled' ? first[0].value.copied : (first[0].reason as ReplicateFailedError).result.copied,
    ).toBeGreaterThan(0);
    expect(first[1].status === 'fulfilled' ? first[1].value.removed : 0).toBeGreaterThan(0);

    // Every snapshot a policy keeps (the newest N of all there are) that a target held is still there.
    for (const [name, target] of [
      ['local', local],
      ['blob', blob],
      ['s3', s3],
    ] as const) {
      const kept = ids.slice(-keep[name]);
      const after = new Set(await idsOn(target));
      expect(kept.filter((id) => before[name].includes(id) && !after.has(id))).toEqual([]);
    }
    // Once both have run alone, every target holds exactly what its policy keeps of what still exists.
    // (Each target's policy is its own: a snapshot only one target held, and whose policy dropped it, is gone.)
    const existing = [...new Set([...(await idsOn(local)), ...(await idsOn(blob)), ...(await idsOn(s3))])].sort();
    await runReplicate(deps);
    await runPrune(deps);
    for (const [name, target] of [
      ['local', local],
      ['blob', blob],
      ['s3', s3],
    ] as const) {
      expect(await idsOn(target)).toEqual(existing.slice(-keep[name]));
    }
    expect(await invalidSnapshots(targets)).toEqual([]);
  });
});
