/**
 * A few real snapshot agents serving copies of one database: an agent makes one snapshot at a time, so cases
 * that run side by side each borrow one.
 */
import { copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentClient } from '../../src/agent/client.js';
import type { Compression } from '../../src/agent/protocol.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase, type SampleDatabaseOptions } from '../../src/dev/sample-db.js';
import { silentLogger } from '../../src/log.js';
import { agentConfig, KEY, KEY_ID } from '../agent/helpers.js';
import { tempDir } from './world.js';

export interface AgentPool {
  /** The database the agents serve (a copy each). */
  database: string;
  /** Runs `fn` with an agent no other caller is using. */
  with<T>(fn: (client: AgentClient) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export async function startAgentPool(size: number, db: SampleDatabaseOptions, compression: Compression | 'auto'): Promise<AgentPool> {
  const folder = await tempDir('agents');
  const work = folder.dir;
  const database = join(work, 'tcab.sqlite');
  createSampleDatabase(database, db);
  const all: Array<{ agent: RunningAgent; client: AgentClient }> = [];
  for (let i = 0; i < size; i++) {
    const dir = join(work, `agent-${i}`);
    await mkdir(dir);
    await copyFile(database, join(dir, 'tcab.sqlite'));
    const agent = await startAgent(agentConfig(dir, { compression }), { logger: silentLogger });
    all.push({ agent, client: new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY }) });
  }
  const free = all.map((a) => a.client);
  const waiting: Array<(c: AgentClient) => void> = [];
  return {
    database,
    async with(fn) {
      const client = free.pop() ?? (await new Promise<AgentClient>((resolve) => waiting.push(resolve)));
      try {
        return await fn(client);
      } finally {
        const next = waiting.shift();
        if (next) next(client);
        else free.push(client);
      }
    },
    async close() {
      for (const { agent } of all) await agent.close();
      await folder.remove();
    },
  };
}
