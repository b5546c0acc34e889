/**
 * Stores a real SQLite file on a target as a complete format-2 snapshot, the way the snapshot job will once it
 * is wired to the agent: cut with the format-2 chunking, each chunk one zstd frame at its content address
 * (create-only, so chunks another snapshot stored are reused), the chunk list, then the manifest, then the
 * check that every chunk is there. The manifest is built from the file itself (node:sqlite: table counts,
 * page size, integrity check). Lets restore be tested without the agent.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { commitSnapshotV2, listChunks, putChunk } from '../../src/catalog/chunk-store.js';
import { chunkListKey } from '../../src/catalog/layout.js';
import type { Trigger } from '../../src/catalog/manifest.js';
import { CHUNK_ZSTD_LEVEL, ChunkCompressor } from '../../src/format/chunk-codec.js';
import { chunkerDescription, chunkStream } from '../../src/format/chunker.js';
import { MANIFEST_V2_FORMAT_VERSION, type ManifestV2 } from '../../src/catalog/manifest-v2.js';
import { ChunkListWriter } from '../../src/format/chunk-list.js';
import { FORMAT2_CHUNKING } from '../../src/format/params.js';
import type { Target } from '../../src/targets/target.js';
import { firstColumn, firstValue, openDatabase } from '../../src/util/sqlite.js';

export interface StoredV2 {
  manifest: ManifestV2;
  /** Chunks written by this call, and chunks the target already held. */
  uploaded: number;
  reused: number;
}

/** The id of a snapshot created at `time` (the form the agent uses). */
export function snapshotId(time: Date): string {
  const stamp = time
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}Z$/, 'Z');
  return `${stamp}-${randomBytes(4).toString('hex')}`;
}

/** What the agent's description says about the database in `path`. */
function describeDatabase(path: string, database: string): Pick<ManifestV2, 'database' | 'integrity'> {
  const db = openDatabase(path, { readOnly: true, immutable: true });
  try {
    const tables: Record<string, number> = {};
    for (const name of firstColumn<string>(
      db,
      "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )) {
      tables[name] = firstValue<number>(db, `SELECT count(*) FROM "${name.replace(/"/g, '""')}"`)!;
    }
    return {
      database: {
        name: database,
        sqliteVersion: firstValue<string>(db, 'SELECT sqlite_version()')!,
        pageSize: firstValue<number>(db, 'PRAGMA page_size')!,
        pageCount: firstValue<number>(db, 'PRAGMA page_count')!,
        journalMode: firstValue<string>(db, 'PRAGMA journal_mode')!,
        userVersion: firstValue<number>(db, 'PRAGMA user_version')!,
        tables,
      },
      integrity: firstColumn<string>(db, 'PRAGMA integrity_check').join('; '),
    };
  } finally {
    db.close();
  }
}

export async function storeFileAsV2(
  target: Target,
  database: string,
  sqlitePath: string,
  options: { id?: string; createdAt?: Date; trigger?: Trigger; tags?: string[] } = {},
): Promise<StoredV2> {
  const createdAt = options.createdAt ?? new Date();
  const id = options.id ?? snapshotId(createdAt);
  const held = await listChunks(target, database);
  const compressor = new ChunkCompressor(CHUNK_ZSTD_LEVEL);
  const writer = new ChunkListWriter();
  const lines: string[] = [];
  const whole = createHash('sha256');
  let uploaded = 0;
  let reused = 0;
  const started = Date.now();
  try {
    for await (const chunk of chunkStream(createReadStream(sqlitePath), FORMAT2_CHUNKING)) {
      whole.update(chunk.bytes);
      const frame = await compressor.compress(chunk.bytes);
      if (held.has(chunk.sha256)) reused++;
      else {
        await putChunk(target, database, chunk.sha256, frame);
        held.set(chunk.sha256, { bytes: frame.length, lastModified: new Date() });
        uploaded++;
      }
      lines.push(writer.line([chunk.sha256, chunk.length, frame.length]));
    }
  } finally {
    await compressor.close();
  }
  const list = writer.summary();
  const size = (await stat(sqlitePath)).size;
  if (list.plainBytes !== size) throw new Error(`${sqlitePath} changed while it was stored (${list.plainBytes} bytes read, ${size} now)`);
  const manifest: ManifestV2 = {
    id,
    createdAt: createdAt.toISOString(),
    ...describeDatabase(sqlitePath, database),
    snapshot: { bytes: list.plainBytes, sha256: whole.digest('hex') },
    timings: { storeMs: Date.now() - started },
    formatVersion: MANIFEST_V2_FORMAT_VERSION,
    databaseName: database,
    trigger: options.trigger ?? { kind: 'cli' },
    tags: options.tags ?? [],
    storedAt: new Date().toISOString(),
    chunking: chunkerDescription(FORMAT2_CHUNKING),
    encoding: { compression: 'zstd', level: CHUNK_ZSTD_LEVEL },
    stored: { bytes: list.storedBytes },
    chunkList: { key: chunkListKey(database, id), bytes: list.bytes, sha256: list.sha256, count: list.count },
  };
  const { missing } = await commitSnapshotV2(target, manifest, lines);
  if (missing.length) throw new Error(`chunks missing after the commit of ${id}: ${missing.map((m) => m.key).join(', ')}`);
  return { manifest, uploaded, reused };
}
