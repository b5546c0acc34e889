/**
 * Making, downloading and removing snapshots through a real agent over real HTTP, against real SQLite files,
 * checked the way an operator restores: download, sha256sum, gunzip / zstd -d, integrity_check, row counts.
 */
import { execFile, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient, AgentError } from '../../src/agent/client.js';
import { SNAPSHOT_ID_RE, type SnapshotDescription } from '../../src/agent/protocol.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { firstValue, openDatabase } from '../../src/util/sqlite.js';
import {
  agentConfig,
  integrityCheck,
  KEY,
  KEY_ID,
  problemOf,
  sha256,
  sha256OfFile,
  sha256OfStream,
  signedRequest,
  tableCounts,
} from './helpers.js';
import { captureLog, tempDir } from '../support/world.js';

const run = promisify(execFile);

/** Decompresses with the standard command-line tools, as the README's restore steps do. */
async function decompress(artifactPath: string, compression: string, outPath: string): Promise<void> {
  if (compression === 'none') {
    await run('cp', [artifactPath, outPath]);
    return;
  }
  const child = spawn(
    compression === 'gzip' ? 'gunzip' : 'zstd',
    compression === 'gzip' ? ['-c', artifactPath] : ['-d', '-c', '-q', artifactPath],
  );
  const exit = new Promise<number | null>((resolve) => child.on('close', resolve));
  await pipeline(child.stdout, createWriteStream(outPath));
  expect(await exit).toBe(0);
}

let work: { dir: string; remove(): Promise<void> };
let agent: RunningAgent;
let client: AgentClient;
let source: { runs: number; reviews: number; bytes: number };
const log = captureLog();

beforeAll(async () => {
  work = await tempDir('snap');
  source = createSampleDatabase(join(work.dir, 'tcab.sqlite'), { runs: 600, seed: 7 });
  agent = await startAgent(agentConfig(work.dir), { logger: log.logger });
  client = new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY });
});

afterAll(async () => {
  await agent?.close();
  await work?.remove();
});

async function downloadTo(desc: SnapshotDescription, path: string): Promise<void> {
  const { body, bytes, etag } = await client.openSnapshot(desc.id);
  expect(bytes).toBe(desc.artifact.bytes);
  expect(etag).toBe(desc.artifact.sha256);
  await pipeline(body, createWriteStream(path));
}

describe('POST /v1/snapshots then GET: a restorable, verified snapshot', () => {
  for (const compression of ['gzip', 'zstd', 'none'] as const) {
    it(`${compression}: the description is right and the download restores to the same database`, async () => {
      const before = Date.now();
      const desc = await client.createSnapshot({ compression });
      const after = Date.now();

      expect(desc.id).toMatch(SNAPSHOT_ID_RE);
      const createdMs = Date.parse(desc.createdAt);
      expect(createdMs).toBeGreaterThanOrEqual(before);
      expect(createdMs).toBeLessThanOrEqual(after);
      // The id carries the creation time to the second.
      expect(desc.id.slice(0, 15)).toBe(desc.createdAt.slice(0, 19).replace(/[-:]/g, ''));
      expect(desc.database).toMatchObject({ name: 'tcab', journalMode: 'wal', pageSize: 4096, userVersion: 0 });
      expect(desc.database.tables).toEqual(tableCounts(join(work.dir, 'tcab.sqlite')));
      expect(desc.database.tables).toEqual({ runs: source.runs, reviews: source.reviews });
      expect(desc.integrity).toBe('ok');
      expect(desc.artifact.compression).toBe(compression);
      expect(desc.snapshot.bytes).toBe(desc.database.pageCount * desc.database.pageSize);
      if (compression === 'none') expect(desc.artifact).toMatchObject({ bytes: desc.snapshot.bytes, sha256: desc.snapshot.sha256 });
      else expect(desc.artifact.bytes).toBeLessThan(desc.snapshot.bytes / 2);
      expect(Object.keys(desc.timings).sort()).toEqual(['checkMs', 'compressMs', 'vacuumMs']);

      // Only the artifact stays in staging: the plain file and work files are gone (just after the answer).
      await agent.idle();
      const ext = { gzip: '.gz', zstd: '.zst', none: '' }[compression];
      expect(await readdir(join(work.dir, 'staging'))).toContain(`${desc.id}.sqlite${ext}`);
      expect((await readdir(join(work.dir, 'staging'))).filter((n) => n.startsWith('work-') || n.endsWith('.partial'))).toEqual([]);

      const artifact = join(work.dir, `download-${desc.id}${ext}`);
      await downloadTo(desc, artifact);
      expect(await sha256OfFile(artifact)).toBe(desc.artifact.sha256);
      const restored = join(work.dir, `restored-${desc.id}.sqlite`);
      await decompress(artifact, compression, restored);
      expect(await sha256OfFile(restored)).toBe(desc.snapshot.sha256);
      expect(integrityCheck(restored)).toBe('ok');
      expect(tableCounts(restored)).toEqual(desc.database.tables);

      await client.deleteSnapshot(desc.id);
    });
  }

  it('uses the best compression the agent has when the request names none (zstd here)', async () => {
    const desc = await client.createSnapshot();
    expect(desc.artifact.compression).toBe('zstd');
    await client.deleteSnapshot(desc.id);
  });

  it('answers the download with ETag, Repr-Digest, Content-Length, Accept-Ranges and no-store', async () => {
    const desc = await client.createSnapshot({ compression: 'gzip' });
    const path = `/v1/snapshots/${desc.id}`;
    const answer = await signedRequest(agent.url, 'GET', path);
    expect(answer.status).toBe(200);
    expect(answer.headers.etag).toBe(`"${desc.artifact.sha256}"`);
    expect(answer.headers['repr-digest']).toBe(`sha-256=:${Buffer.from(desc.artifact.sha256, 'hex').toString('base64')}:`);
    expect(Number(answer.headers['content-length'])).toBe(desc.artifact.bytes);
    expect(answer.headers['content-type']).toBe('application/gzip');
    expect(answer.headers['accept-ranges']).toBe('bytes');
    expect(answer.headers['cache-control']).toBe('no-store');
    expect(sha256(answer.body)).toBe(desc.artifact.sha256);
    await client.deleteSnapshot(desc.id);
  });

  it('reports a snapshot that fails integrity_check, with what the check found', async () => {
    const dir = await tempDir('corrupt');
    try {
      const dbPath = join(dir.dir, 'tcab.sqlite');
      corruptIndex(dbPath);
      const other = await startAgent(agentConfig(dir.dir), { logger: captureLog().logger });
      try {
        const c = new AgentClient({ url: other.url, keyId: KEY_ID, key: KEY });
        const desc = await c.createSnapshot({ compression: 'gzip' });
        expect(desc.integrity).toContain('missing from index runs_slug');
        expect(desc.integrity).not.toBe('ok');
      } finally {
        await other.close();
      }
    } finally {
      await dir.remove();
    }
  });
  it('fails the request when zstd fails while the check runs, leaves staging empty, and makes the next snapshot', async () => {
    const dir = await tempDir('zstd-fails');
    try {
      createSampleDatabase(join(dir.dir, 'tcab.sqlite'), { runs: 400, seed: 3 });
      // A zstd that answers --version, then writes part of an output and dies, as one killed mid-way would.
      const fake = join(dir.dir, 'zstd');
      await writeFile(
        fake,
        '#!/bin/sh\n[ "$1" = --version ] && { echo fake zstd; exit 0; }\nhead -c 5000 /dev/zero\necho "zstd: out of memory" >&2\nexit 3\n',
        { mode: 0o755 },
      );
      const logs = captureLog();
      // runtimeZstd: false, so the zstd program is used even on a runtime whose node:zlib has zstd.
      const other = await startAgent(agentConfig(dir.dir), { logger: logs.logger, zstdCommand: fake, runtimeZstd: false });
      try {
        const c = new AgentClient({ url: other.url, keyId: KEY_ID, key: KEY });
        const failed = await c.createSnapshot({ compression: 'zstd' }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(failed).toBeInstanceOf(AgentError);
        expect((failed as AgentError).status).toBe(500);
        expect(JSON.stringify(logs.lines)).toContain('out of memory');
        expect(await readdir(join(dir.dir, 'staging'))).toEqual([]);
        const next = await c.createSnapshot({ compression: 'gzip' });
        expect(next.integrity).toBe('ok');
        expect(next.database.tables.runs).toBe(400);
      } finally {
        await other.close();
      }
    } finally {
      await dir.remove();
    }
  });
});

/** Makes an index disagree with its table, a corruption VACUUM INTO copies as it is and integrity_check finds. */
function corruptIndex(dbPath: string): void {
  createSampleDatabase(dbPath, { runs: 50 });
  let db = openDatabase(dbPath);
  db.exec('CREATE INDEX runs_slug ON runs(slug)');
  const root = firstValue<number>(db, "SELECT rootpage FROM sqlite_schema WHERE name = 'runs_slug'")!;
  // Defensive mode (node:sqlite's default) forbids editing the schema table, which is the point here.
  db.enableDefensive(false);
  db.exec('PRAGMA writable_schema = ON');
  db.exec("DELETE FROM sqlite_schema WHERE name = 'runs_slug'");
  db.close();
  db = openDatabase(dbPath);
  db.exec("UPDATE runs SET slug = slug || '-renamed' WHERE id <= 3");
  db.enableDefensive(false);
  db.exec('PRAGMA writable_schema = ON');
  db.prepare("INSERT INTO sqlite_schema VALUES ('index', 'runs_slug', 'runs', ?, 'CREATE INDEX runs_slug ON runs(slug)')").run(root);
  db.close();
}

describe('GET /v1/snapshots/{id} with Range', () => {
  let desc: SnapshotDescription;
  let whole: Buffer;
  beforeAll(async () => {
    desc = await client.createSnapshot({ compression: 'none' });
    whole = (await signedRequest(agent.url, 'GET', `/v1/snapshots/${desc.id}`)).body;
  });
  afterAll(() => client.deleteSnapshot(desc.id));

  it('answers a range with 206, Content-Range and exactly those bytes', async () => {
    const answer = await signedRequest(agent.url, 'GET', `/v1/snapshots/${desc.id}`, '', { Range: 'bytes=100-4195' });
    expect(answer.status).toBe(206);
    expect(answer.headers['content-range']).toBe(`bytes 100-4195/${desc.artifact.bytes}`);
    expect(Number(answer.headers['content-length'])).toBe(4096);
    expect(answer.body.equals(whole.subarray(100, 4196))).toBe(true);
    // The digest headers describe the whole artifact, not the part.
    expect(answer.headers.etag).toBe(`"${desc.artifact.sha256}"`);
  });

  it('serves open-ended and suffix ranges', async () => {
    const tail = await signedRequest(agent.url, 'GET', `/v1/snapshots/${desc.id}`, '', { Range: `bytes=${desc.artifact.bytes - 10}-` });
    expect(tail.status).toBe(206);
    expect(tail.body.equals(whole.subarray(whole.length - 10))).toBe(true);
    const suffix = await signedRequest(agent.url, 'GET', `/v1/snapshots/${desc.id}`, '', { Range: 'bytes=-7' });
    expect(suffix.status).toBe(206);
    expect(suffix.headers['content-range']).toBe(`bytes ${desc.artifact.bytes - 7}-${desc.artifact.bytes - 1}/${desc.artifact.bytes}`);
    expect(suffix.body.equals(whole.subarray(whole.length - 7))).toBe(true);
  });

  it('answers 416 with Content-Range */size when the range starts past the end', async () => {
    const answer = await signedRequest(agent.url, 'GET', `/v1/snapshots/${desc.id}`, '', { Range: `bytes=${desc.artifact.bytes}-` });
    expect(answer.status).toBe(416);
    expect(answer.headers['content-range']).toBe(`bytes */${desc.artifact.bytes}`);
    expect(answer.headers['content-type']).toBe('application/problem+json');
    expect(problemOf(answer)).toMatchObject({ status: 416 });
  });

  it('lets the client resume a download from an offset', async () => {
    const { body, bytes, etag } = await client.openSnapshot(desc.id, { range: { start: 5000 } });
    expect(bytes).toBe(desc.artifact.bytes - 5000);
    expect(etag).toBe(desc.artifact.sha256);
    expect(await sha256OfStream(body)).toBe(sha256(whole.subarray(5000)));
    await expect(client.openSnapshot(desc.id, { range: { start: desc.artifact.bytes + 1 } })).rejects.toMatchObject({ status: 416 });
  });
});

describe('DELETE /v1/snapshots/{id}', () => {
  it('removes the staged artifact: 204, then GET and DELETE answer 404', async () => {
    const desc = await client.createSnapshot({ compression: 'gzip' });
    const path = `/v1/snapshots/${desc.id}`;
    const deleted = await signedRequest(agent.url, 'DELETE', path);
    expect(deleted.status).toBe(204);
    expect(deleted.body.length).toBe(0);
    expect((await readdir(join(work.dir, 'staging'))).filter((n) => n.startsWith(desc.id))).toEqual([]);
    const again = await signedRequest(agent.url, 'DELETE', path);
    expect(again.status).toBe(404);
    expect(again.headers['content-type']).toBe('application/problem+json');
    const get = await signedRequest(agent.url, 'GET', path);
    expect(get.status).toBe(404);
    expect(problemOf(get).detail).toContain(desc.id);
    // The client treats "already gone" as done, and says which snapshot a failed download was about.
    await expect(client.deleteSnapshot(desc.id)).resolves.toBeUndefined();
    const err = await client.openSnapshot(desc.id).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).status).toBe(404);
    expect((err as AgentError).message).toContain(`snapshot ${desc.id} is not on the agent`);
    expect((err as AgentError).permanent).toBe(true);
  });
});

describe('GET /v1/status', () => {
  it('reports the live database, staging and agent', async () => {
    const staged = await client.createSnapshot({ compression: 'gzip' });
    const status = await client.status();
    const db = openDatabase(join(work.dir, 'tcab.sqlite'), { readOnly: true });
    const newest = firstValue<string>(db, 'SELECT max(published_at) FROM runs');
    db.close();
    expect(status.database).toEqual({
      name: 'tcab',
      bytes: source.bytes,
      pageSize: 4096,
      journalMode: 'wal',
      tables: { runs: source.runs, reviews: source.reviews },
      newestPublishedAt: newest,
    });
    expect(status.staging.snapshots).toBe(1);
    expect(status.staging.freeBytes).toBeGreaterThan(0);
    expect(status.agent).toEqual({ version: '0.1.0', compressions: ['zstd', 'gzip', 'none'] });
    await client.deleteSnapshot(staged.id);
    expect((await client.status()).staging.snapshots).toBe(0);
  });

  it('counts every table when there is no runs or reviews table, and has no newest run', async () => {
    const dir = await tempDir('other-schema');
    try {
      const db = openDatabase(join(dir.dir, 'tcab.sqlite'));
      db.exec('PRAGMA journal_mode = WAL');
      db.exec("CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT); INSERT INTO events (at) VALUES ('a'), ('b'); CREATE TABLE notes (x)");
      db.close();
      const other = await startAgent(agentConfig(dir.dir), { logger: captureLog().logger });
      try {
        const status = await new AgentClient({ url: other.url, keyId: KEY_ID, key: KEY }).status();
        expect(status.database.tables).toEqual({ events: 2, notes: 0 });
        expect(status.database.newestPublishedAt).toBeNull();
      } finally {
        await other.close();
      }
    } finally {
      await dir.remove();
    }
  });
});
