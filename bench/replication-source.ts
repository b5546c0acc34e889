/**
 * What the replication case copies: Azurite (standing in for Blob) holding real snapshots of the sample
 * database, of mixed sizes (the database is cut down between them), made by the real agent and snapshot job, and an empty s3rver standing in for R2, reached as an
 * r2:// target so that our R2 settings (two uploads in flight, no default checksums) are what is measured;
 * and the way back, from copies on s3rver to an empty folder on Azurite. Both emulators are child processes on 127.0.0.1 with random ports; `stop` ends them and removes
 * their data.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { AgentClient } from '../src/agent/client.js';
import { startAgent } from '../src/agent/run.js';
import { loadTargetsConfig, type Env } from '../src/config.js';
import { startAzurite, startS3Server, type Azurite, type S3Server } from '../src/dev/emulators.js';
import { runSnapshot } from '../src/jobs/snapshot/index.js';
import { registerSecret, silentLogger } from '../src/log.js';
import { openTargets } from '../src/runtime.js';
import type { Target } from '../src/targets/target.js';
import { inTransaction, openDatabase } from '../src/util/sqlite.js';

export const SOURCE = 'blob';
export const DESTINATION = 'r2';
/** Any 32 hex characters: the destination is an r2:// target (R2's upload limits apply) pointed at s3rver. */
const R2_ACCOUNT = '0123456789abcdef0123456789abcdef';
export const CONTAINER = 'tcab';
export const BUCKET = 'tcab';

/**
 * Sizes mixed: snapshot i of n is taken of the database cut down to this share of its runs (1 for the first,
 * 0.2 for the last, evenly between), so n = 6 snapshots of a database add up to about 3.6 of its snapshots.
 */
export function keptShare(i: number, n: number): number {
  return n <= 1 ? 1 : 1 - (0.8 * (i - 1)) / (n - 1);
}

/** The ids of the sample's runs, before any is deleted. */
function runIds(dbPath: string): { first: number; last: number } {
  const db = openDatabase(dbPath, { readOnly: true });
  try {
    return { ...db.prepare('SELECT min(id) AS first, max(id) AS last FROM runs').get() } as { first: number; last: number };
  } finally {
    db.close();
  }
}

/** Deletes the newest runs (and their reviews) of the working copy so that `share` of the sample's `ids` remain. */
function keepShare(dbPath: string, share: number, ids: { first: number; last: number }): void {
  const db = openDatabase(dbPath, { mustExist: true, busyTimeoutMs: 10_000 });
  try {
    const cutoff = Math.floor(ids.first + (ids.last - ids.first + 1) * share);
    inTransaction(db, () => {
      db.prepare('DELETE FROM reviews WHERE run_id >= ?').run(cutoff);
      db.prepare('DELETE FROM runs WHERE id >= ?').run(cutoff);
    });
  } finally {
    db.close();
  }
}

export interface ReplicationSource {
  azurite: Azurite;
  s3: S3Server;
  /** The manifests' ids and artifact sizes, as stored on the source. */
  snapshots: Array<{ id: string; artifactBytes: number; sha256: string; key: string }>;
  /** Settings naming the source and a destination under `prefix` in the bucket (each run copies to a fresh prefix). */
  env(prefix: string): Env;
  /** The destination under `prefix`, opened in this process to check what a run left there. */
  destination(prefix: string): Target;
  /**
   * The way back: settings naming s3rver under `sourcePrefix` (holding copies of the snapshots, as R2 would)
   * as the source and an empty Azurite folder `prefix` as the destination.
   */
  envBack(sourcePrefix: string, prefix: string): Env;
  /** The Azurite folder `prefix`, to check what a run back left there. */
  destinationBack(sourcePrefix: string, prefix: string): Target;
  stop(): Promise<void>;
}

export async function prepareReplicationSource(
  options: { dbPath: string; workDir: string; snapshots: number },
  progress: (line: string) => void,
): Promise<ReplicationSource> {
  const stops: Array<() => Promise<void>> = [];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
  };
  try {
    const azurite = await startAzurite();
    stops.push(() => azurite.stop());
    const s3 = await startS3Server({ buckets: [BUCKET] });
    stops.push(() => s3.stop());
    await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER).createIfNotExists();
    registerSecret(azurite.connectionString);

    const env = (prefix: string): Env => ({
      PATH: process.env.PATH,
      TCAB_BACKUP_TARGETS: `${SOURCE}=azblob://${azurite.account}/${CONTAINER}?endpoint=${azurite.endpoint},${DESTINATION}=r2://${R2_ACCOUNT}/${BUCKET}/${prefix}?endpoint=${s3.endpoint}&pathStyle=true`,
      TCAB_BACKUP_TARGET_BLOB_CONNECTION_STRING: azurite.connectionString,
      TCAB_BACKUP_TARGET_R2_ACCESS_KEY_ID: s3.accessKeyId,
      TCAB_BACKUP_TARGET_R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
      // Keep every snapshot on the destination: the default policy keeps one per hour, and these are minutes apart.
      TCAB_BACKUP_RETENTION_R2: 'last=-1',
    });
    const openAll = (prefix: string) => openTargets(loadTargetsConfig(env(prefix)), silentLogger);
    const envBack = (sourcePrefix: string, prefix: string): Env => ({
      PATH: process.env.PATH,
      TCAB_BACKUP_TARGETS: `${DESTINATION}=r2://${R2_ACCOUNT}/${BUCKET}/${sourcePrefix}?endpoint=${s3.endpoint}&pathStyle=true,${SOURCE}=azblob://${azurite.account}/${CONTAINER}/${prefix}?endpoint=${azurite.endpoint}`,
      TCAB_BACKUP_TARGET_BLOB_CONNECTION_STRING: azurite.connectionString,
      TCAB_BACKUP_TARGET_R2_ACCESS_KEY_ID: s3.accessKeyId,
      TCAB_BACKUP_TARGET_R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
      TCAB_BACKUP_RETENTION_BLOB: 'last=-1',
    });

    const key = randomBytes(32).toString('hex');
    const agent = await startAgent(
      {
        dbPath: options.dbPath,
        stagingDir: join(options.workDir, 'staging'),
        host: '127.0.0.1',
        port: 0,
        keys: new Map([['bench', key]]),
        tls: undefined,
        databaseName: 'tcab',
        compression: 'auto',
        stagingTtlMs: 3_600_000,
      },
      { logger: silentLogger },
    );
    stops.push(() => agent.close());
    const client = new AgentClient({ url: agent.url, keyId: 'bench', key });
    const source = openAll('unused').find((t) => t.name === SOURCE)!;
    const snapshots: ReplicationSource['snapshots'] = [];
    const ids = runIds(options.dbPath);
    for (let i = 1; i <= options.snapshots; i++) {
      if (i > 1) keepShare(options.dbPath, keptShare(i, options.snapshots), ids);
      const made = await runSnapshot(
        { agent: client, targets: [source], database: 'tcab' },
        { trigger: { kind: 'cli', reason: 'benchmark source' } },
      );
      const m = made.manifest;
      snapshots.push({ id: m.id, artifactBytes: m.artifact.bytes, sha256: m.artifact.sha256, key: m.key });
      progress(
        `source snapshot ${i}/${options.snapshots} on Azurite: ${m.id}, ${(m.artifact.bytes / 1e6).toFixed(1)} MB ${m.artifact.compression}`,
      );
    }
    await agent.close();
    stops.pop();
    return {
      azurite,
      s3,
      snapshots,
      env,
      destination: (prefix) => openAll(prefix).find((t) => t.name === DESTINATION)!,
      envBack,
      destinationBack: (sourcePrefix, prefix) =>
        openTargets(loadTargetsConfig(envBack(sourcePrefix, prefix)), silentLogger).find((t) => t.name === SOURCE)!,
      stop: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}
