/**
 * Snapshots stored on real targets for the replicate and prune tests: a synthetic artifact (random bytes)
 * with a manifest that is consistent with it (size, sha256, key), written the way the snapshot job writes
 * them (data first, manifest last). The emulators, folders and targets they are stored on come from
 * world.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { listCatalog, writeManifest } from '../../src/catalog/catalog.js';
import { artifactKey } from '../../src/catalog/layout.js';
import { MANIFEST_FORMAT_VERSION, type ManifestV1 as Manifest } from '../../src/catalog/manifest.js';
import type { ManifestV2 } from '../../src/catalog/manifest-v2.js';
import { verifyStoredSnapshot } from '../../src/jobs/verify/check.js';
import type { Target } from '../../src/targets/target.js';

export const DATABASE = 'tcab';
export const HOUR = 3_600_000;
export const DAY = 24 * HOUR;

export interface TestSnapshot {
  manifest: Manifest;
  data: Buffer;
}

/** An agent-style id for a time: 20261124T161300Z-<8 hex>. */
export function snapshotIdAt(time: Date): string {
  const iso = time.toISOString();
  return `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}T${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z-${randomBytes(4).toString('hex')}`;
}

export function makeSnapshot(options: { time: Date; bytes?: number; tags?: string[] }): TestSnapshot {
  const data = randomBytes(options.bytes ?? 32 * 1024);
  const id = snapshotIdAt(options.time);
  const sha256 = createHash('sha256').update(data).digest('hex');
  const manifest: Manifest = {
    formatVersion: MANIFEST_FORMAT_VERSION,
    id,
    createdAt: new Date(Math.floor(options.time.getTime() / 1000) * 1000).toISOString(),
    database: {
      name: DATABASE,
      sqliteVersion: '3.46.1',
      pageSize: 4096,
      pageCount: 8,
      journalMode: 'wal',
      userVersion: 0,
      tables: { runs: 3, reviews: 2 },
    },
    integrity: 'ok',
    snapshot: { bytes: data.length, sha256 },
    artifact: { bytes: data.length, sha256, compression: 'none' },
    timings: { vacuumMs: 1 },
    databaseName: DATABASE,
    trigger: { kind: 'timer' },
    tags: options.tags ?? [],
    key: artifactKey(DATABASE, id, 'none'),
    storedAt: new Date().toISOString(),
  };
  return { manifest, data };
}

/** Stores the snapshot as the snapshot job does: the data, then the manifest. */
export async function storeSnapshot(target: Target, snapshot: TestSnapshot): Promise<void> {
  await target.put(snapshot.manifest.key, snapshot.data);
  await writeManifest(target, snapshot.manifest);
}

/** `count` snapshots `everyMs` apart, the newest at `newest`, oldest first. */
export function history(count: number, newest: Date, everyMs: number, options: { bytes?: number } = {}): TestSnapshot[] {
  return Array.from({ length: count }, (_, i) =>
    makeSnapshot({ time: new Date(newest.getTime() - (count - 1 - i) * everyMs), ...options }),
  );
}

/** Ids with a manifest on the target, oldest first. */
export async function idsOn(target: Target): Promise<string[]> {
  return (await listCatalog(target, DATABASE)).snapshots.map((s) => s.id).reverse();
}

/**
 * What an operator checks after any fault: every snapshot with a manifest has its artifact, and it hashes
 * to what the manifest says. Returns the problems (empty when all is well) so a failure names them.
 */
export async function invalidSnapshots(targets: Target[]): Promise<string[]> {
  const problems: string[] = [];
  for (const target of targets) {
    for (const s of (await listCatalog(target, DATABASE)).snapshots) {
      const outcome = await verifyStoredSnapshot(target, DATABASE, s.id);
      if (!outcome.ok) problems.push(`${target.name} ${s.id}: ${outcome.error}`);
    }
  }
  return problems;
}

/** The manifest as format 1, for tests of format-1 snapshots; throws on any other format. */
export function v1(m: Manifest | ManifestV2): Manifest {
  if (m.formatVersion !== 1) throw new Error(`snapshot ${m.id} is format ${m.formatVersion}, the test expected format 1`);
  return m;
}
