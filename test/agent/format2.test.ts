/**
 * Format 2 on the agent: a chunked snapshot of a real sample database through a real agent over real HTTP,
 * checked the way the manual restore reads it: the chunk list against an independent cut of the staged file,
 * and the chunk frames, concatenated, through the zstd program.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { open, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient, AgentError, type ChunkListEntry } from '../../src/agent/client.js';
import { MAX_CHUNK_REQUEST_BYTES, SNAPSHOT_ID_RE, type SnapshotDescriptionV2 } from '../../src/agent/protocol.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { chunkStream } from '../../src/format/chunker.js';
import { FORMAT2_CHUNKING, FORMAT2_CHUNKING_DESCRIPTION } from '../../src/format/params.js';
import {
  agentConfig,
  integrityCheck,
  KEY,
  KEY_ID,
  problemOf,
  rawRequest,
  sha256,
  sha256OfFile,
  signedHeaders,
  signedRequest,
  tableCounts,
} from './helpers.js';
import { captureLog, tempDir } from '../support/world.js';

let work: { dir: string; remove(): Promise<void> };
let agent: RunningAgent;
let client: AgentClient;
let staging: string;
const log = captureLog();
let desc: SnapshotDescriptionV2;
let list: ChunkListEntry[];

beforeAll(async () => {
  work = await tempDir('format2');
  // About 12 MB: some 180 chunks of 64 KiB on average, and a chunk-data answer larger than socket buffers.
  createSampleDatabase(join(work.dir, 'tcab.sqlite'), { targetBytes: 12e6, seed: 13 });
  const config = agentConfig(work.dir);
  staging = config.stagingDir;
  agent = await startAgent(config, { logger: log.logger });
  client = new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY });
  desc = await client.createSnapshot({ format: 2 });
  list = [];
  for await (const entry of client.chunkList(desc.id)) list.push(entry);
}, 120_000);

afterAll(async () => {
  await agent?.close();
  await work?.remove();
});

/** The bytes [offset, offset + length) of a file. */
async function slice(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    expect(bytesRead).toBe(length);
    return buf;
  } finally {
    await fh.close();
  }
}

/** `zstd -d` of a file, as the manual restore runs it. */
function zstdDecompress(path: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn('zstd', ['-d', '-c', '-q', path]);
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`zstd -d exited ${code}: ${err}`))));
  });
}

async function framesOf(id: string, hashes: string[]): Promise<Buffer[]> {
  const frames: Buffer[] = [];
  let i = 0;
  for await (const record of client.chunkData(id, hashes)) {
    expect(record.sha256).toBe(hashes[i++]);
    frames.push(record.frame);
  }
  expect(frames).toHaveLength(hashes.length);
  return frames;
}

describe('POST /v1/snapshots {"format": 2}', () => {
  it('describes a checked, chunked snapshot with no artifact, and stages the plain file and its chunk list', async () => {
    expect(desc.id).toMatch(SNAPSHOT_ID_RE);
    expect(desc.format).toBe(2);
    expect(desc).not.toHaveProperty('artifact');
    expect(desc.integrity).toBe('ok');
    expect(desc.chunking).toEqual(FORMAT2_CHUNKING_DESCRIPTION);
    expect(desc.chunking).toMatchObject({ minBytes: 16 * 1024, avgBytes: 64 * 1024, maxBytes: 256 * 1024 });
    expect(desc.database.tables).toEqual(tableCounts(join(work.dir, 'tcab.sqlite')));
    expect(desc.timings.chunkMs).toBeGreaterThanOrEqual(0);
    expect((await readdir(staging)).sort()).toEqual([`${desc.id}.chunks`, `${desc.id}.sqlite`]);
    const plain = join(staging, `${desc.id}.sqlite`);
    expect((await stat(plain)).size).toBe(desc.snapshot.bytes);
    expect(await sha256OfFile(plain)).toBe(desc.snapshot.sha256);
    expect(integrityCheck(plain)).toBe('ok');
  });

  it('lists chunks that add up to the file and match an independent cut of the staged file', async () => {
    expect(list.length).toBe(desc.chunks.count);
    expect(list.length).toBeGreaterThan(50);
    let offset = 0;
    for (const entry of list) {
      expect(entry.offset).toBe(offset);
      expect(entry.length).toBeLessThanOrEqual(FORMAT2_CHUNKING.maxBytes);
      offset += entry.length;
    }
    expect(offset).toBe(desc.snapshot.bytes);
    const independent: Array<{ sha256: string; length: number; offset: number }> = [];
    for await (const c of chunkStream(createReadStream(join(staging, `${desc.id}.sqlite`), { highWaterMark: 100_003 }), FORMAT2_CHUNKING)) {
      independent.push({ sha256: c.sha256, length: c.length, offset: c.offset });
    }
    expect(list).toEqual(independent);
  });

  it('serves the list as `<sha256> <length>` lines with the bytes and sha256 the description states', async () => {
    const path = `/v1/snapshots/${desc.id}/chunks`;
    const answer = await signedRequest(agent.url, 'GET', path);
    expect(answer.status).toBe(200);
    expect(answer.body.length).toBe(desc.chunks.listBytes);
    expect(sha256(answer.body)).toBe(desc.chunks.listSha256);
    expect(answer.headers.etag).toBe(`"${desc.chunks.listSha256}"`);
    expect(answer.body.toString()).toBe(list.map((e) => `${e.sha256} ${e.length}\n`).join(''));
  });

  it('sends chunk frames that `zstd -d`, concatenated, turns back into exactly the chunks asked for, in order', async () => {
    const picks = [list[3]!, list[0]!, list.at(-1)!, list[3]!, list[Math.floor(list.length / 2)]!];
    const frames = await framesOf(
      desc.id,
      picks.map((e) => e.sha256),
    );
    const cat = join(work.dir, 'picked.zst');
    await writeFile(cat, Buffer.concat(frames));
    const plain = join(staging, `${desc.id}.sqlite`);
    const expected = Buffer.concat(await Promise.all(picks.map((e) => slice(plain, e.offset, e.length))));
    expect((await zstdDecompress(cat)).equals(expected)).toBe(true);
  });

  it('restores the whole database from all its chunks: cat the frames, zstd -d, sha256, integrity_check', async () => {
    const frames = await framesOf(
      desc.id,
      list.map((e) => e.sha256),
    );
    const stored = frames.reduce((n, f) => n + f.length, 0);
    expect(stored).toBeLessThan(desc.snapshot.bytes);
    const cat = join(work.dir, 'all.zst');
    await writeFile(cat, Buffer.concat(frames));
    const restored = await zstdDecompress(cat);
    expect(sha256(restored)).toBe(desc.snapshot.sha256);
    const restoredPath = join(work.dir, 'restored.sqlite');
    await writeFile(restoredPath, restored);
    expect(integrityCheck(restoredPath)).toBe('ok');
    expect(tableCounts(restoredPath)).toEqual(desc.database.tables);
  });

  it('refuses an unknown hash with 400 naming it, and a malformed body with 400 naming the line', async () => {
    const unknown = 'ab'.repeat(32);
    const err = await (async () => {
      for await (const _ of client.chunkData(desc.id, [list[0]!.sha256, unknown]));
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).status).toBe(400);
    expect((err as AgentError).message).toContain(unknown);
    expect((err as AgentError).message).toContain(desc.id);
    expect((err as AgentError).permanent).toBe(true);

    const path = `/v1/snapshots/${desc.id}/chunk-data`;
    const body = `${list[0]!.sha256}\nnot-a-hash\n`;
    const answer = await signedRequest(agent.url, 'POST', path, body);
    expect(answer.status).toBe(400);
    expect(problemOf(answer).detail).toContain('Line 2');
  });

  it('takes a request of up to 1 MiB of hashes on chunk-data only, and refuses more with 413', async () => {
    const many = Array.from({ length: Math.floor(MAX_CHUNK_REQUEST_BYTES / 65) }, (_, i) => sha256(Buffer.from(String(i))));
    const path = `/v1/snapshots/${desc.id}/chunk-data`;
    const fits = `${many.join('\n')}\n`;
    expect(fits.length).toBeLessThanOrEqual(MAX_CHUNK_REQUEST_BYTES);
    const answer = await signedRequest(agent.url, 'POST', path, fits);
    expect(answer.status).toBe(400);
    expect(problemOf(answer).detail).toContain(many[0]);
    expect(problemOf(answer).detail).toContain(`and ${many.length - 3} more`);
    const tooMany = `${fits}${many.slice(0, 200).join('\n')}\n`;
    const refused = await rawRequest(agent.url, { method: 'POST', path, body: tooMany, headers: signedHeaders('POST', path, tooMany) });
    expect(refused.status).toBe(413);
    // Other routes keep their 16 KiB.
    const big = JSON.stringify({ compression: 'zstd', pad: 'x'.repeat(20_000) });
    const post = await rawRequest(agent.url, {
      method: 'POST',
      path: '/v1/snapshots',
      body: big,
      headers: signedHeaders('POST', '/v1/snapshots', big),
    });
    expect(post.status).toBe(413);
  });

  it('stops the work when the client goes away mid-answer, and serves the next request', async () => {
    const before = log.events('snapshot.chunk_data_cut').length;
    const controller = new AbortController();
    const all = list.map((e) => e.sha256);
    let got = 0;
    const err = await (async () => {
      for await (const _ of client.chunkData(desc.id, all, { signal: controller.signal })) {
        if (++got === 2) controller.abort();
      }
    })().catch((e: unknown) => e);
    expect((err as Error).name).toBe('AbortError');
    expect(got).toBe(2);
    await expect.poll(() => log.events('snapshot.chunk_data_cut').length, { timeout: 5_000 }).toBe(before + 1);
    const cut = log.events('snapshot.chunk_data_cut').at(-1)!;
    expect(cut.requested).toBe(all.length);
    expect(cut.sent as number).toBeLessThan(all.length);
    // The next requests are served whole.
    const again = await framesOf(desc.id, all.slice(0, 3));
    expect(again).toHaveLength(3);
    const relisted: ChunkListEntry[] = [];
    for await (const e of client.chunkList(desc.id)) relisted.push(e);
    expect(relisted).toEqual(list);
  });

  it('checks the id of the chunk routes like any snapshot id, and knows no other sub-path', async () => {
    for (const path of [
      '/v1/snapshots/20260101T000000Z-DEADBEEF/chunks',
      '/v1/snapshots/../chunks',
      `/v1/snapshots/${desc.id}/chunks/more`,
      `/v1/snapshots/${desc.id}/other`,
    ]) {
      const answer = await signedRequest(agent.url, 'GET', path);
      expect(answer.status, path).toBe(400);
      expect(problemOf(answer).detail).toContain('expected an id like');
    }
    const wrongMethod = await signedRequest(agent.url, 'GET', `/v1/snapshots/${desc.id}/chunk-data`);
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.allow).toBe('POST');
  });

  it('keeps format-1 and format-2 routes apart: no artifact for format 2, no chunks for format 1', async () => {
    const artifact = await signedRequest(agent.url, 'GET', `/v1/snapshots/${desc.id}`);
    expect(artifact.status).toBe(400);
    expect(problemOf(artifact).detail).toContain('format-2');
    const v1 = await client.createSnapshot({ compression: 'zstd' });
    try {
      expect(v1).not.toHaveProperty('format');
      expect(v1.artifact.compression).toBe('zstd');
      const chunks = await signedRequest(agent.url, 'GET', `/v1/snapshots/${v1.id}/chunks`);
      expect(chunks.status).toBe(400);
      expect(problemOf(chunks).detail).toContain('format-1');
      const bad = await signedRequest(agent.url, 'POST', '/v1/snapshots', JSON.stringify({ format: 2, compression: 'gzip' }));
      expect(bad.status).toBe(400);
      expect(problemOf(bad).detail).toContain('zstd frame');
    } finally {
      await client.deleteSnapshot(v1.id);
    }
  });

  it('DELETE removes the plain file and the chunk list; the routes then answer 404', async () => {
    const other = await client.createSnapshot({ format: 2 });
    expect((await readdir(staging)).filter((n) => n.startsWith(other.id)).sort()).toEqual([`${other.id}.chunks`, `${other.id}.sqlite`]);
    await client.deleteSnapshot(other.id);
    expect((await readdir(staging)).filter((n) => n.startsWith(other.id))).toEqual([]);
    const chunks = await signedRequest(agent.url, 'GET', `/v1/snapshots/${other.id}/chunks`);
    expect(chunks.status).toBe(404);
    const err = await (async () => {
      for await (const _ of client.chunkData(other.id, [list[0]!.sha256]));
    })().catch((e: unknown) => e);
    expect((err as AgentError).status).toBe(404);
  });
});
