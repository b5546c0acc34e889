/**
 * The agent under load and failure: one snapshot at a time (409), the HTTP loop staying responsive while
 * SQLite works, the backend writing throughout a snapshot, a full staging disk (507), expiry of staged
 * snapshots, leftovers after a crash, and a download cut off half-way.
 */
import { createWriteStream } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentBusyError, AgentClient, AgentError } from '../../src/agent/client.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { startWriter } from '../../src/dev/writer.js';
import { isAbortError } from '../../src/errors.js';
import { agentConfig, KEY, KEY_ID, problemOf, rawRequest, sha256OfFile, signedRequest, tableCounts } from './helpers.js';
import { captureLog, tempDir } from '../support/world.js';

let work: { dir: string; remove(): Promise<void> };
let agent: RunningAgent;
let client: AgentClient;
let dbPath: string;

beforeAll(async () => {
  work = await tempDir('busy');
  dbPath = join(work.dir, 'tcab.sqlite');
  // Large enough that a gzip snapshot takes a noticeable while (hundreds of ms), small enough for a test.
  createSampleDatabase(dbPath, { targetBytes: 60e6, seed: 3 });
  agent = await startAgent(agentConfig(work.dir), { logger: captureLog().logger });
  client = new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY });
});

afterAll(async () => {
  await agent?.close();
  await work?.remove();
});

/** Resolves once the agent has started writing a snapshot's work file, i.e. a snapshot is in progress. */
async function snapshotInProgress(stagingDir: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if ((await readdir(stagingDir)).some((n) => n.startsWith('work-'))) return;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error('no snapshot started');
}

describe('one snapshot at a time, and a responsive agent meanwhile', () => {
  it('answers a concurrent POST with 409 and Retry-After, and /healthz, GET and /v1/status at once', async () => {
    let firstDone = false;
    const first = client.createSnapshot({ compression: 'gzip' }).finally(() => {
      firstDone = true;
    });
    await snapshotInProgress(join(work.dir, 'staging'));

    const health = await rawRequest(agent.url, { path: '/healthz' });
    expect(health.status).toBe(200);
    expect(health.body.toString()).toBe('ok');

    const busy = await signedRequest(agent.url, 'POST', '/v1/snapshots', '{"compression":"gzip"}');
    expect(busy.status).toBe(409);
    expect(Number(busy.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(busy.headers['content-type']).toBe('application/problem+json');
    expect(busy.headers['cache-control']).toBe('no-store');
    const err = await client.createSnapshot().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentBusyError);
    expect((err as AgentBusyError).retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect((err as AgentBusyError).permanent).toBe(false);

    const status = await client.status();
    expect(status.database.tables.runs).toBeGreaterThan(0);
    const unknown = await signedRequest(agent.url, 'GET', '/v1/snapshots/20260101T000000Z-00000000');
    expect(unknown.status).toBe(404);

    // All of that was answered while the snapshot was still being made, not after it.
    expect(firstDone).toBe(false);
    const desc = await first;
    expect(desc.integrity).toBe('ok');
    await client.deleteSnapshot(desc.id);
  });

  it('takes a consistent snapshot while the backend keeps inserting, and the backend sees no errors', async () => {
    const before = tableCounts(dbPath).runs!;
    const writer = startWriter(dbPath, { intervalMs: 2 });
    await writer.ready;
    const desc = await client.createSnapshot({ compression: 'zstd' });
    // Keep writing a little after the snapshot, so inserts both before and after its moment exist.
    await new Promise((r) => setTimeout(r, 100));
    const result = await writer.stop();
    expect(result.errors).toEqual([]);
    expect(result.inserts).toBeGreaterThan(0);
    const after = tableCounts(dbPath).runs!;
    expect(after).toBe(before + result.inserts);
    expect(desc.integrity).toBe('ok');
    expect(desc.database.tables.runs).toBeGreaterThan(before);
    expect(desc.database.tables.runs).toBeLessThan(after);

    const artifact = join(work.dir, 'during-writes.zst');
    const { body } = await client.openSnapshot(desc.id);
    await pipeline(body, createWriteStream(artifact));
    expect(await sha256OfFile(artifact)).toBe(desc.artifact.sha256);
    await client.deleteSnapshot(desc.id);
  });
});

describe('stopping the agent', () => {
  it('waits for a snapshot in progress, fails its request, and leaves staging empty', async () => {
    const dir = await tempDir('stop');
    try {
      createSampleDatabase(join(dir.dir, 'tcab.sqlite'), { targetBytes: 20e6 });
      const other = await startAgent(agentConfig(dir.dir), { logger: captureLog().logger });
      const c = new AgentClient({ url: other.url, keyId: KEY_ID, key: KEY });
      const pending = c.createSnapshot({ compression: 'gzip' }).then(
        () => undefined,
        (e: unknown) => e,
      );
      await snapshotInProgress(join(dir.dir, 'staging'));
      await other.close();
      const err = await pending;
      expect(err).toBeInstanceOf(AgentError);
      expect((err as AgentError).status).toBeUndefined();
      expect(await readdir(join(dir.dir, 'staging'))).toEqual([]);
    } finally {
      await dir.remove();
    }
  });
});

describe('staging space, expiry and leftovers', () => {
  it('answers 507 when staging has less free space than the database size x 1.2, and stays usable', async () => {
    const dir = await tempDir('full');
    try {
      createSampleDatabase(join(dir.dir, 'tcab.sqlite'), { runs: 100 });
      let free = 1000;
      const other = await startAgent(agentConfig(dir.dir), { logger: captureLog().logger, freeBytes: async () => free });
      try {
        const answer = await signedRequest(other.url, 'POST', '/v1/snapshots', '');
        expect(answer.status).toBe(507);
        expect(answer.headers['content-type']).toBe('application/problem+json');
        expect(problemOf(answer).detail).toMatch(/staging has 1000 bytes free, a snapshot of this database needs about \d+/);
        expect(await readdir(join(dir.dir, 'staging'))).toEqual([]);
        const c = new AgentClient({ url: other.url, keyId: KEY_ID, key: KEY });
        const err = await c.createSnapshot().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(AgentError);
        expect((err as AgentError).status).toBe(507);
        expect((err as AgentError).message).toContain('TCAB_AGENT_STAGING');
        free = 1e12;
        expect((await c.createSnapshot()).integrity).toBe('ok');
      } finally {
        await other.close();
      }
    } finally {
      await dir.remove();
    }
  });

  it('removes staged snapshots after the TTL even when no DELETE comes', async () => {
    const dir = await tempDir('ttl');
    try {
      createSampleDatabase(join(dir.dir, 'tcab.sqlite'), { runs: 50 });
      const logs = captureLog();
      // Long enough that the first GET comes before expiry on a loaded machine, short enough to wait for.
      const other = await startAgent(agentConfig(dir.dir, { stagingTtlMs: 2000 }), { logger: logs.logger });
      try {
        const c = new AgentClient({ url: other.url, keyId: KEY_ID, key: KEY });
        const desc = await c.createSnapshot({ compression: 'gzip' });
        expect((await signedRequest(other.url, 'GET', `/v1/snapshots/${desc.id}`)).status).toBe(200);
        let status = 200;
        for (let i = 0; i < 300 && status === 200; i++) {
          await new Promise((r) => setTimeout(r, 50));
          status = (await signedRequest(other.url, 'GET', `/v1/snapshots/${desc.id}`)).status;
        }
        expect(status).toBe(404);
        // The sweep forgets the snapshot, then removes its file: allow the removal a moment to land.
        let left = await readdir(join(dir.dir, 'staging'));
        for (let i = 0; i < 100 && left.length > 0; i++) {
          await new Promise((r) => setTimeout(r, 20));
          left = await readdir(join(dir.dir, 'staging'));
        }
        expect(left).toEqual([]);
        expect(logs.events('staging.expired_removed')[0]).toMatchObject({ snapshots: [desc.id] });
      } finally {
        await other.close();
      }
    } finally {
      await dir.remove();
    }
  });

  it("removes what a crashed agent left in staging at start, and nothing that is not the agent's", async () => {
    const dir = await tempDir('leftovers');
    try {
      createSampleDatabase(join(dir.dir, 'tcab.sqlite'), { runs: 20 });
      const staging = join(dir.dir, 'staging');
      await startAgent(agentConfig(dir.dir), { logger: captureLog().logger }).then((a) => a.close());
      const ours = [
        'work-0123456789abcdef.sqlite',
        'work-0123456789abcdef.sqlite-journal',
        '20260101T000000Z-deadbeef.sqlite.gz.partial',
        '20260101T000000Z-deadbeef.sqlite.zst',
        '20260101T000000Z-cafebabe.sqlite',
      ];
      const theirs = ['notes.txt', 'tcab.sqlite', 'tcab.sqlite-wal', '20260101T000000Z-deadbeef.json'];
      for (const name of [...ours, ...theirs]) await writeFile(join(staging, name), 'x');
      const logs = captureLog();
      const other = await startAgent(agentConfig(dir.dir), { logger: logs.logger });
      await other.close();
      expect((await readdir(staging)).sort()).toEqual([...theirs].sort());
      expect(logs.events('staging.leftovers_removed')[0]).toMatchObject({ files: ours.length });
    } finally {
      await dir.remove();
    }
  });
});

describe('a download that does not complete', () => {
  it('makes the client stream error (not end cleanly) when the agent goes away mid-download', async () => {
    const dir = await tempDir('cut');
    try {
      createSampleDatabase(join(dir.dir, 'tcab.sqlite'), { targetBytes: 8e6 });
      const other = await startAgent(agentConfig(dir.dir), { logger: captureLog().logger });
      const c = new AgentClient({ url: other.url, keyId: KEY_ID, key: KEY });
      const desc = await c.createSnapshot({ compression: 'none' });
      const { body, bytes } = await c.openSnapshot(desc.id);
      expect(bytes).toBeGreaterThan(4e6);
      let received = 0;
      const reading = (async () => {
        for await (const chunk of body) {
          received += (chunk as Buffer).length;
          // Read slowly so the agent stops mid-way, with most of the artifact unsent.
          if (received === (chunk as Buffer).length) await other.close();
        }
      })();
      const err = await reading.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(AgentError);
      expect((err as Error).message).toMatch(/download of snapshot .* was cut off after \d+ of \d+ bytes/);
      expect(received).toBeLessThan(bytes);
    } finally {
      await dir.remove();
    }
  });

  it('ends the download with an AbortError when the caller aborts', async () => {
    const desc = await client.createSnapshot({ compression: 'none' });
    const controller = new AbortController();
    const { body } = await client.openSnapshot(desc.id, { signal: controller.signal });
    const err = await (async () => {
      for await (const _ of body) controller.abort();
    })().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isAbortError(err)).toBe(true);
    await client.deleteSnapshot(desc.id);
  });
});
