/**
 * POST /v1/drills with a format-2 body (format=2): a real agent over real HTTP with the stand-in backend, sent
 * a real SQLite file's chunks as stored (one zstd frame each, in chunk-list order) by AgentClient.appDrill. The
 * agent decompresses with the zstd program or with node:zlib's zstd (which needs the frames cut apart), checks
 * the body's length and the restored file's sha256 before it starts anything, and the signature covers the
 * chunk list's sha256 and every other fact in the query.
 */
import { createReadStream } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient, AgentError, type AppDrillArtifact } from '../../src/agent/client.js';
import { signRequest } from '../../src/agent/protocol.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { compressChunk } from '../../src/format/chunk-codec.js';
import { ChunkListWriter } from '../../src/format/chunk-list.js';
import { chunkStream } from '../../src/format/chunker.js';
import { FORMAT2_CHUNKING } from '../../src/format/params.js';
import { createLogger } from '../../src/log.js';
import { tempDir } from '../support/world.js';
import { KEY, KEY_ID, STANDIN, agentConfig, rawRequest } from './helpers.js';
import { createHash } from 'node:crypto';

const RUNS = 250;
let work: { dir: string; remove(): Promise<void> };
let frames: Buffer[];
let of: Extract<AppDrillArtifact, { format: 2 }>;
const agents: RunningAgent[] = [];

beforeAll(async () => {
  work = await tempDir('app-drill-v2');
  // The agent's live database (never touched by a drill) is the file the chunks are cut from.
  const file = join(work.dir, 'tcab.sqlite');
  createSampleDatabase(file, { runs: RUNS, seed: 5 });
  frames = [];
  const list = new ChunkListWriter();
  for await (const chunk of chunkStream(createReadStream(file), FORMAT2_CHUNKING)) {
    const frame = await compressChunk(chunk.bytes);
    frames.push(frame);
    list.line([chunk.sha256, chunk.length, frame.length]);
  }
  expect(frames.length).toBeGreaterThan(3);
  const summary = list.summary();
  const plain = await readFile(file);
  of = {
    format: 2,
    snapshotId: '20261203T090000Z-0a1b2c3d',
    chunkList: { sha256: summary.sha256 },
    stored: { bytes: summary.storedBytes },
    snapshot: { bytes: plain.length, sha256: createHash('sha256').update(plain).digest('hex') },
  };
});

afterAll(async () => {
  for (const a of agents) await a.close();
  await work?.remove();
});

async function drillAgent(name: string, zstd: 'program' | 'zlib') {
  const staging = join(work.dir, `staging-${name}`);
  const pidFile = join(work.dir, `${name}.pid`);
  const agent = await startAgent(
    agentConfig(work.dir, {
      stagingDir: staging,
      drill: {
        command: [process.execPath, STANDIN, '--database-url', '{database_url}', '--port', '{port}', `STANDIN_PID_FILE=${pidFile}`],
        healthTimeoutMs: 30_000,
        stopGraceMs: 2_000,
      },
    }),
    { logger: createLogger({ level: 'error' }), ...(zstd === 'zlib' ? { zstdCommand: join(work.dir, 'no-such-zstd') } : {}) },
  );
  agents.push(agent);
  return { agent, client: new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY }), staging, pidFile };
}

/** The body as a real upload sends it: pieces of 64 KiB, so frames straddle writes. */
function body(bytes: Buffer): Readable {
  const pieces: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += 65_536) pieces.push(bytes.subarray(at, at + 65_536));
  return Readable.from(pieces, { objectMode: false });
}

async function expectNothingStarted(d: Awaited<ReturnType<typeof drillAgent>>): Promise<void> {
  await d.agent.idle();
  await expect(readFile(d.pidFile)).rejects.toMatchObject({ code: 'ENOENT' });
  expect((await readdir(d.staging)).filter((n) => n.startsWith('drill-'))).toEqual([]);
}

describe('POST /v1/drills, format 2', () => {
  for (const zstd of ['program', 'zlib'] as const) {
    it(`restores the concatenated chunks (zstd by ${zstd}), checks the file, and sees the backend serve every run`, async () => {
      const d = await drillAgent(`ok-${zstd}`, zstd);
      const result = await d.client.appDrill(of, body(Buffer.concat(frames)));
      expect(result).toMatchObject({ passed: true, failedStep: null, snapshotId: of.snapshotId, runs: { inFile: RUNS, served: RUNS } });
      expect(result.checks.slice(0, 2)).toMatchObject([
        { name: 'receive', ok: true, detail: `${of.stored.bytes} bytes of chunks, as named; the restored file's sha256 is checked next` },
        { name: 'snapshot-sha256', ok: true, detail: `${of.snapshot.bytes} bytes, sha256 matches` },
      ]);
      await d.agent.idle();
      expect((await readdir(d.staging)).filter((n) => n.startsWith('drill-'))).toEqual([]);
    });

    it(`refuses a chunk with a flipped byte with 422 before anything starts (zstd by ${zstd})`, async () => {
      const d = await drillAgent(`flipped-${zstd}`, zstd);
      const damaged = frames.map((f) => Buffer.from(f));
      damaged[2]![Math.floor(damaged[2]!.length / 2)]! ^= 0x10;
      const err = await d.client.appDrill(of, body(Buffer.concat(damaged))).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentError);
      expect((err as AgentError).status).toBe(422);
      expect((err as Error).message).toMatch(/could not be restored .*: they were changed or cut on the way/);
      await expectNothingStarted(d);
    });
  }

  it('fails the snapshot-sha256 step, starting nothing, when whole frames come in another order', async () => {
    const d = await drillAgent('swapped', 'zlib');
    const swapped = [...frames];
    [swapped[1], swapped[2]] = [swapped[2]!, swapped[1]!];
    const result = await d.client.appDrill(of, body(Buffer.concat(swapped)));
    expect(result).toMatchObject({ passed: false, failedStep: 'snapshot-sha256' });
    expect(result.checks.map((c) => c.name)).toEqual(['receive', 'snapshot-sha256']);
    expect(result.checks[1]!.detail).toMatch(/is not the snapshot the manifest names/);
    await expectNothingStarted(d);
  });

  it('signs the chunk list sha256 and the query: a changed fact is 401; a format-2 query that mixes formats is 400', async () => {
    const d = await drillAgent('query', 'zlib');
    const query = (over: Record<string, string> = {}) =>
      `/v1/drills?${new URLSearchParams({
        format: '2',
        chunkListSha256: of.chunkList.sha256,
        artifactBytes: String(of.stored.bytes),
        compression: 'zstd',
        snapshotSha256: of.snapshot.sha256,
        snapshotBytes: String(of.snapshot.bytes),
        ...over,
      }).toString()}`;
    const send = (path: string, signedPath = path, bodySha256 = of.chunkList.sha256) =>
      rawRequest(d.agent.url, {
        method: 'POST',
        path,
        headers: {
          Authorization: signRequest({ keyId: KEY_ID, secret: KEY, method: 'POST', pathAndQuery: signedPath, bodySha256 }),
          'Content-Length': of.stored.bytes,
        },
        body: Buffer.concat(frames),
      });
    // Signed for another file, sent for this one; or signed with another body hash.
    expect((await send(query(), query({ snapshotSha256: '0'.repeat(64) }))).status).toBe(401);
    expect((await send(query(), query(), '1'.repeat(64))).status).toBe(401);
    const mixed = await send(query({ artifactSha256: of.chunkList.sha256 }));
    expect(mixed.status).toBe(400);
    expect(mixed.body.toString()).toContain('a format-2 drill names chunkListSha256, not artifactSha256');
    const gzip = await send(query({ compression: 'gzip' }));
    expect(gzip.status).toBe(400);
    expect(gzip.body.toString()).toContain('compression must be zstd');
    await expectNothingStarted(d);
  });
});
