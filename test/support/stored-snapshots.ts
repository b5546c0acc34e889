/**
 * Snapshots stored on real targets for the replicate and prune tests: a synthetic artifact (random bytes)
 * with a manifest that is consistent with it (size, sha256, key), written the way the snapshot job writes
 * them (data first, manifest last). Plus the clouds these tests run against: Azurite and s3rver, each
 * optionally behind the fault proxy, and fresh targets under a unique prefix.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll } from 'vitest';
import { listCatalog, writeManifest } from '../../src/catalog/catalog.js';
import { artifactKey } from '../../src/catalog/layout.js';
import { MANIFEST_FORMAT_VERSION, type Manifest } from '../../src/catalog/manifest.js';
import { startAzurite, startS3Server, type Azurite, type S3Server } from '../../src/dev/emulators.js';
import { verifyStoredSnapshot } from '../../src/jobs/verify/check.js';
import { openTarget, type OpenTargetOptions } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import type { FaultProxy } from './fault-proxy.js';

export const DATABASE = 'tcab';
export const HOUR = 3_600_000;
export const DAY = 24 * HOUR;
/** Retries fast enough for tests, as many as production. */
export const FAST_RETRY: OpenTargetOptions['retry'] = { retries: 5, baseDelayMs: 5, maxDelayMs: 40 };

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

export interface Clouds {
  azurite: Azurite;
  s3: S3Server;
  stop(): Promise<void>;
}

export const CONTAINER = 'tcab';
export const BUCKET = 'tcab';

export async function startClouds(): Promise<Clouds> {
  const [azurite, s3] = await Promise.all([startAzurite(), startS3Server({ buckets: [BUCKET] })]);
  await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER).createIfNotExists();
  return { azurite, s3, stop: async () => void (await Promise.all([azurite.stop(), s3.stop()])) };
}

let prefixes = 0;
function freshPrefix(): string {
  return `t${process.pid}-${Date.now().toString(36)}-${prefixes++}`;
}

export interface TargetOptions {
  /** Objects per listing page. */
  pageSize?: number;
  /** Send requests through this proxy instead of straight to the emulator. */
  proxy?: FaultProxy;
}

/** A fresh, empty Azure Blob target on Azurite (under its own prefix). */
export function blobTarget(clouds: Clouds, name: string, options: TargetOptions = {}): Target {
  const upstream = new URL(clouds.azurite.endpoint);
  const endpoint = options.proxy ? `${options.proxy.endpoint}${upstream.pathname}` : clouds.azurite.endpoint;
  const connectionString = clouds.azurite.connectionString.replace(/BlobEndpoint=[^;]+;/, `BlobEndpoint=${endpoint};`);
  const spec = parseTargetUrl(name, `azblob://${clouds.azurite.account}/${CONTAINER}/${freshPrefix()}?endpoint=${endpoint}`, {
    connectionString,
  });
  return openTarget(spec, { retry: FAST_RETRY, tuning: { ...(options.pageSize ? { pageSize: options.pageSize } : {}) } });
}

/** A fresh, empty S3 target on s3rver (under its own prefix). */
export function s3Target(clouds: Clouds, name: string, options: TargetOptions = {}): Target {
  const endpoint = options.proxy?.endpoint ?? clouds.s3.endpoint;
  const spec = parseTargetUrl(name, `s3://${BUCKET}/${freshPrefix()}?endpoint=${endpoint}`, {
    accessKeyId: clouds.s3.accessKeyId,
    secretAccessKey: clouds.s3.secretAccessKey,
  });
  return openTarget(spec, { retry: FAST_RETRY, tuning: { ...(options.pageSize ? { pageSize: options.pageSize } : {}) } });
}

/** A fresh folder target; `remove` deletes the folder. */
export async function fileTarget(name: string): Promise<{ target: Target; dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `tcab-${name}-`));
  const spec = parseTargetUrl(name, `file://${dir}`);
  return { target: openTarget(spec, { retry: FAST_RETRY }), dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * The emulators and temporary folders of one test file: the emulators start before its tests (unless
 * `clouds: false`), and everything is removed after them.
 */
export function testWorld(options: { clouds?: boolean } = {}): {
  readonly clouds: Clouds;
  folder(name?: string): Promise<{ target: Target; dir: string }>;
  /** Runs `fn` after this file's tests (proxies and the like). */
  cleanup(fn: () => Promise<void>): void;
} {
  let clouds: Clouds | undefined;
  const cleanups: Array<() => Promise<void>> = [];
  if (options.clouds !== false) {
    beforeAll(async () => {
      clouds = await startClouds();
    });
  }
  afterAll(async () => {
    for (const c of cleanups) await c().catch(() => undefined);
    await clouds?.stop();
  });
  return {
    get clouds(): Clouds {
      if (!clouds) throw new Error('the emulators are not running: testWorld() was called with clouds: false, or beforeAll failed');
      return clouds;
    },
    async folder(name = 'local') {
      const f = await fileTarget(name);
      cleanups.push(f.remove);
      return { target: f.target, dir: f.dir };
    },
    cleanup(fn) {
      cleanups.push(fn);
    },
  };
}
