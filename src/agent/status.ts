/**
 * GET /v1/status: live facts about the database that drills compare a restored snapshot with (row counts, the
 * newest published run) plus what an operator checks first when snapshots fail (free staging space, version).
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CompressionSupport } from './compression.js';
import type { AgentStatus } from './protocol.js';
import { databaseBytes } from './snapshotter.js';
import { prepareSqliteWorker, runSqliteTask } from './sqlite-worker.js';
import type { FreeBytes, Staging } from './staging.js';
import { toIsoTime } from '../util/time.js';

export interface StatusSources {
  dbPath: string;
  databaseName: string;
  staging: Staging;
  freeBytes: FreeBytes;
  compressions: CompressionSupport;
  version: string;
}

export async function readStatus(s: StatusSources): Promise<AgentStatus> {
  const [bytes, facts, freeBytes] = await Promise.all([
    databaseBytes(s.dbPath),
    runSqliteTask({ kind: 'status', dbPath: s.dbPath }).finally(() => setImmediate(prepareSqliteWorker)),
    s.freeBytes(s.staging.dir),
  ]);
  return {
    database: {
      name: s.databaseName,
      bytes,
      pageSize: facts.pageSize,
      journalMode: facts.journalMode,
      tables: facts.tables,
      newestPublishedAt: toIsoTime(facts.newestPublishedAt),
    },
    staging: { freeBytes: Math.max(0, Math.floor(freeBytes)), snapshots: s.staging.count },
    agent: { version: s.version, compressions: s.compressions.available },
  };
}

/** The version in this package's package.json, found by walking up from this file (src/ or dist/src/). */
export function agentVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'tcab-backup' && pkg.version) return pkg.version;
    } catch {
      // not here; look one folder up
    }
    dir = dirname(dir);
  }
  return '0.0.0-unknown';
}
