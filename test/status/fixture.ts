/**
 * A real backup set-up for the verify, drill, monitor and status tests: a sample SQLite database, the
 * snapshot agent serving it, a file:// target and (optionally) an Azurite blob target, and snapshots made
 * by the real snapshot job. Its folder and emulator come from ../support/world.ts.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import type { Azurite } from '../../src/dev/emulators.js';
import { runSnapshot, type SnapshotResult } from '../../src/jobs/snapshot/index.js';
import { createLogger, type Logger } from '../../src/log.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { inTransaction, openDatabase } from '../../src/util/sqlite.js';
import { startEmulatedBlob, tempDir } from '../support/world.js';

export const DATABASE = 'tcab';

export interface Fixture {
  work: string;
  dbPath: string;
  key: string;
  agent: RunningAgent;
  client: AgentClient;
  local: Target;
  blob?: Target;
  azurite?: Azurite;
  targets: Target[];
  snapshot(): Promise<SnapshotResult>;
  /** Inserts `count` runs straight into the live database, as the backend would. */
  publishRuns(count: number, publishedAt?: string): void;
  stop(): Promise<void>;
}

export async function startFixture(options: { runs?: number; azurite?: boolean; logger?: Logger } = {}): Promise<Fixture> {
  const folder = await tempDir('health');
  const work = folder.dir;
  const dbPath = join(work, 'tcab.sqlite');
  createSampleDatabase(dbPath, { runs: options.runs ?? 200 });
  const key = randomBytes(32).toString('hex');
  const logger = options.logger ?? createLogger({ level: 'error' });
  const agent = await startAgent(
    {
      dbPath,
      stagingDir: join(work, 'staging'),
      host: '127.0.0.1',
      port: 0,
      keys: new Map([['functions', key]]),
      tls: undefined,
      databaseName: DATABASE,
      compression: 'gzip',
      stagingTtlMs: 3_600_000,
    },
    { logger },
  );
  const client = new AgentClient({ url: agent.url, keyId: 'functions', key });
  const local = openTarget(parseTargetUrl('local', `file://${join(work, 'backups')}`), { retry: { retries: 1, baseDelayMs: 10 } });
  let azurite: Azurite | undefined;
  let blob: Target | undefined;
  if (options.azurite) {
    azurite = await startEmulatedBlob(['backups']);
    blob = openTarget(
      parseTargetUrl('blob', `azblob://${azurite.account}/backups/tcab?endpoint=${azurite.endpoint}`, {
        connectionString: azurite.connectionString,
      }),
      {
        retry: { retries: 1, baseDelayMs: 10 },
      },
    );
  }
  const targets = blob ? [local, blob] : [local];
  return {
    work,
    dbPath,
    key,
    agent,
    client,
    local,
    blob,
    azurite,
    targets,
    snapshot: () => runSnapshot({ agent: client, targets, database: DATABASE }, { trigger: { kind: 'cli' } }),
    publishRuns(count, publishedAt = new Date().toISOString()) {
      const db = openDatabase(dbPath, { mustExist: true });
      try {
        const insert = db.prepare(
          "INSERT INTO runs (slug, title, published_at, record) VALUES (?, 'published after the snapshot', ?, '{}')",
        );
        inTransaction(db, () => {
          for (let i = 0; i < count; i++) insert.run(`late-${randomBytes(4).toString('hex')}`, publishedAt);
        });
      } finally {
        db.close();
      }
    },
    async stop() {
      await agent.close();
      await azurite?.stop();
      await folder.remove();
    },
  };
}
