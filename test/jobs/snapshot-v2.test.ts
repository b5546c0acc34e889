/**
 * The format-2 snapshot job on real parts: a real agent over HTTP, a real SQLite database, a folder target,
 * Azurite and s3rver. Only the chunks a target lacks travel; the snapshot restores to the exact file; a target
 * that fails mid-chunks fails the job naming it while the other gets a complete snapshot; a chunk deleted
 * after the listing is found by the check after the commit and written again.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent } from '../../src/agent/run.js';
import { listCatalog } from '../../src/catalog/catalog.js';
import { listChunks } from '../../src/catalog/chunk-store.js';
import { writeRenewalRecord } from '../../src/catalog/renewals.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { chunkKey } from '../../src/format/chunk-key.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { runSnapshot, SnapshotFailedError, type SnapshotResultV2 } from '../../src/jobs/snapshot/index.js';
import { main as cli } from '../../src/cli/main.js';
import { createLogger } from '../../src/log.js';
import type { Target } from '../../src/targets/target.js';
import { openDatabase } from '../../src/util/sqlite.js';
import { agentConfig, KEY, KEY_ID } from '../agent/helpers.js';
import { FaultTarget } from '../support/fault-target.js';
import { blobTarget, s3Target, testWorld } from '../support/world.js';

const world = testWorld();
let work: string;
let agent: { url: string; close(): Promise<void> };
const logLines: string[] = [];
const logger = createLogger({ level: 'debug', sink: (_l, line) => logLines.push(line) });
const timing = { graceMs: 7 * 86_400_000, jobTimeoutMs: 25 * 60_000 };

function client(): AgentClient {
  return new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY, logger });
}

function snapshot(targets: Target[], t = timing): Promise<SnapshotResultV2> {
  return runSnapshot({ agent: client(), targets, database: 'tcab', logger, timing: t }, { trigger: { kind: 'cli' }, format: 2 });
}

/** A few more runs in the live database. */
function insertRuns(n: number): void {
  const db = openDatabase(join(work, 'tcab.sqlite'));
  try {
    db.exec(
      `INSERT INTO runs (slug, title, published_at, record) SELECT slug || '-' || abs(random()), title, published_at, record FROM runs ORDER BY id DESC LIMIT ${n}`,
    );
  } finally {
    db.close();
  }
}

async function restoreAndCheck(target: Target, result: SnapshotResultV2, name: string): Promise<void> {
  const out = join(work, name);
  const r = await runRestore({ targets: [target], database: 'tcab' }, { selector: { id: result.manifest.id }, outPath: out });
  expect(r.id).toBe(result.manifest.id);
  const sha = createHash('sha256')
    .update(await readFile(out))
    .digest('hex');
  expect(sha).toBe(result.manifest.snapshot.sha256);
}

/** The renewal records on a folder target (the folder goes with its last record). */
async function recordsIn(dir: string): Promise<string[]> {
  return readdir(join(dir, 'renewals', 'tcab')).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [];
    throw e;
  });
}

function outcome(result: SnapshotResultV2, target: string) {
  return result.targets.find((t) => t.target === target)!;
}

beforeAll(async () => {
  work = await world.tempDir('snap-v2');
  createSampleDatabase(join(work, 'tcab.sqlite'), { runs: 1500 });
  agent = await startAgent(agentConfig(work), { logger });
});
afterAll(async () => {
  await agent?.close();
  expect(logLines.join('\n')).not.toContain(KEY);
});

describe('format-2 snapshot job', () => {
  it('uploads every chunk the first time, only the new ones after a few inserts, and both restore exactly', async () => {
    const { target } = await world.folder('a');
    const first = await snapshot([target]);
    const a1 = outcome(first, 'a');
    expect(a1.ok).toBe(true);
    expect(a1.chunks!.new).toBe(a1.chunks!.distinct);
    expect(a1.chunks!.reused).toBe(0);
    expect(a1.uploadedBytes).toBeGreaterThan(0);
    expect(a1.uploadedBytes).toBeLessThanOrEqual(first.manifest.stored.bytes);
    expect((await listChunks(target, 'tcab')).size).toBe(a1.chunks!.distinct);

    insertRuns(10);
    const second = await snapshot([target]);
    const a2 = outcome(second, 'a');
    expect(a2.ok).toBe(true);
    expect(a2.chunks!.reused).toBeGreaterThan(0);
    expect(a2.chunks!.new).toBeGreaterThan(0);
    expect(a2.chunks!.new).toBeLessThan(a2.chunks!.distinct / 4);
    // Only the changed chunks travel: a small part of the database's bytes.
    expect(a2.uploadedBytes!).toBeLessThan(second.manifest.snapshot.bytes / 10);
    const event = logLines.map((l) => JSON.parse(l)).find((e) => e.event === 'snapshot.target_chunks' && e.id === second.manifest.id);
    expect(event).toMatchObject({ target: 'a', new: a2.chunks!.new, reused: a2.chunks!.reused, uploadedBytes: a2.uploadedBytes });

    const { snapshots, orphans } = await listCatalog(target, 'tcab');
    expect(snapshots.map((s) => s.id).sort()).toEqual([first.manifest.id, second.manifest.id].sort());
    expect(orphans).toEqual([]);
    expect(await readdir(join(work, 'staging'))).toEqual([]);
    await restoreAndCheck(target, first, 'first.sqlite');
    await restoreAndCheck(target, second, 'second.sqlite');
  });

  it('serves two targets at once, one of which already holds most chunks (Azurite and s3rver)', async () => {
    const blob = blobTarget(world.clouds, 'blob');
    await snapshot([blob]);
    insertRuns(5);
    const s3 = s3Target(world.clouds, 's3');
    const result = await snapshot([blob, s3]);
    const b = outcome(result, 'blob');
    const s = outcome(result, 's3');
    expect([b.ok, s.ok]).toEqual([true, true]);
    expect(s.chunks!.new).toBe(s.chunks!.distinct);
    expect(b.chunks!.new).toBeLessThan(b.chunks!.distinct / 4);
    expect(b.uploadedBytes!).toBeLessThan(s.uploadedBytes! / 4);
    await restoreAndCheck(blob, result, 'blob.sqlite');
    await restoreAndCheck(s3, result, 's3.sqlite');
  });

  it('renews the chunks older than half the grace period, records those near G, and a run J later settles the record', async () => {
    const { target, dir } = await world.folder('renew');
    await snapshot([target]);
    // A grace of 2 s and J of 200 ms: 1.7 s later every chunk is older than G/2 and than G - 2J (1.6 s), so it is
    // renewed and recorded for a later run's check, however fast the first snapshot ended.
    await new Promise((r) => setTimeout(r, 1700));
    const short = { graceMs: 2000, jobTimeoutMs: 200 };
    const result = await snapshot([target], short);
    const o = outcome(result, 'renew');
    expect(o.ok).toBe(true);
    expect(o.chunks!.renewed).toBe(o.chunks!.distinct);
    expect(o.chunks!.reused).toBe(0);
    // No wait inside the job: the record holds every renewed chunk, written before any of them was renewed.
    expect(logLines.some((l) => l.includes('late_check_waiting'))).toBe(false);
    const records = await recordsIn(dir);
    expect(records).toHaveLength(1);
    expect(`renewals/tcab/${records[0]}`).toBe(o.renewals!.recorded);
    const record = JSON.parse(await readFile(join(dir, 'renewals', 'tcab', records[0]!), 'utf8'));
    expect(record).toMatchObject({ writer: 'snapshot', snapshot: result.manifest.id, jobTimeoutMs: 200, renewalsFollow: true });
    expect(record.chunks).toHaveLength(o.chunks!.distinct);
    const lines = (await readFile(join(dir, result.manifest.chunkList.key), 'utf8')).trim().split('\n');
    expect(new Set(record.chunks)).toEqual(new Set(lines));
    await restoreAndCheck(target, result, 'renewed.sqlite');

    // A run that starts less than J after the record (J of 25 minutes here) leaves it pending.
    const early = await snapshot([target]);
    expect(outcome(early, 'renew').renewals).toMatchObject({ records: 1, pending: 1, settled: 0 });
    expect(await recordsIn(dir)).toEqual(records);

    // A prune that listed a chunk as old and unreferenced before the renewal deletes it after: the first run J
    // after the record finds it gone, writes it again (this snapshot holds it) and only then deletes the record.
    const victim = lines[Math.floor(lines.length / 2)]!.split(' ')[0]!;
    await rm(join(dir, chunkKey('tcab', victim)));
    await new Promise((r) => setTimeout(r, 450)); // 2J: the record was written before its renewals
    const later = await snapshot([target], { graceMs: timing.graceMs, jobTimeoutMs: 200 });
    expect(outcome(later, 'renew').renewals).toMatchObject({ records: 1, pending: 0, settled: 1, rewritten: 1, lost: [] });
    expect((await listChunks(target, 'tcab')).has(victim)).toBe(true);
    expect(await recordsIn(dir)).toEqual([]);
    await restoreAndCheck(target, result, 'renewed-again.sqlite');
  });

  it('fails naming a recorded chunk gone that the run cannot write again, and the snapshots naming it; the record stays', async () => {
    const { target, dir } = await world.folder('lost');
    const first = await snapshot([target]);
    await new Promise((r) => setTimeout(r, 1700));
    const renewing = await snapshot([target], { graceMs: 2000, jobTimeoutMs: 200 });
    const [record] = await recordsIn(dir);
    const recorded: string[] = JSON.parse(await readFile(join(dir, 'renewals', 'tcab', record!), 'utf8')).chunks.map(
      (l: string) => l.split(' ')[0],
    );
    // The database changes, so some recorded chunks are in no later snapshot; one of those is deleted.
    insertRuns(200);
    const next = await snapshot([target]);
    const now = new Set(
      (await readFile(join(dir, next.manifest.chunkList.key), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => l.split(' ')[0]),
    );
    const victim = recorded.find((h) => !now.has(h))!;
    expect(victim).toBeDefined();
    const victimPath = join(dir, chunkKey('tcab', victim));
    const saved = await readFile(victimPath);
    await rm(victimPath);
    await new Promise((r) => setTimeout(r, 450)); // 2J: the record was written before its renewals

    const err = await snapshot([target], { graceMs: timing.graceMs, jobTimeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SnapshotFailedError);
    const message = (err as Error).message;
    expect(message).toContain(chunkKey('tcab', victim));
    expect(message).toContain(renewing.manifest.id);
    expect(message).toContain('"lost"');
    expect((err as SnapshotFailedError).hint).toContain('replicate');
    const failed = (err as SnapshotFailedError).result as SnapshotResultV2;
    // The snapshot itself was stored; the record stays until its check passes.
    expect(outcome(failed, 'lost').ok).toBe(true);
    expect(outcome(failed, 'lost').renewals).toMatchObject({ records: 1, pending: 1, settled: 0 });
    expect(outcome(failed, 'lost').renewals!.lost[0]!.snapshots).toContain(renewing.manifest.id);
    expect(await recordsIn(dir)).toEqual([record]);

    // With another target failing in the same run, the missing chunk is still named, beside that failure.
    const { target: broken } = await world.folder('lost-broken');
    const refusing = new FaultTarget(broken, { op: 'put', point: { at: 'start' }, kind: 'error' });
    const both = await snapshot([target, refusing], { graceMs: timing.graceMs, jobTimeoutMs: 200 }).catch((e: unknown) => e);
    expect(both).toBeInstanceOf(SnapshotFailedError);
    expect((both as Error).message).toContain('"lost-broken"');
    expect((both as Error).message).toContain(chunkKey('tcab', victim));
    expect((both as SnapshotFailedError).hint).toContain('replicate');

    // Once the chunk is back (replicate copies it from another target), the next run settles the record.
    await writeFile(victimPath, saved);
    const settled = await snapshot([target], { graceMs: timing.graceMs, jobTimeoutMs: 200 });
    expect(outcome(settled, 'lost').renewals).toMatchObject({ records: 1, settled: 1, lost: [] });
    expect(await recordsIn(dir)).toEqual([]);
    await restoreAndCheck(target, first, 'lost-first.sqlite');
  });

  it('settles a record whose missing chunk no manifest names (its snapshot never got its manifest)', async () => {
    const { target, dir } = await world.folder('unnamed');
    const first = await snapshot([target]);
    // The record of a commit that failed after it: its chunk was collected as unreferenced since.
    const sha256 = createHash('sha256').update('a chunk no manifest names').digest('hex');
    await writeRenewalRecord(target, {
      database: 'tcab',
      snapshot: '20260101T000000Z-0123abcd',
      writer: 'snapshot',
      jobTimeoutMs: 200,
      chunks: [{ sha256, plainBytes: 100, storedBytes: 50 }],
    });
    await new Promise((r) => setTimeout(r, 450)); // 2J: the record was written before its renewals
    const next = await snapshot([target], { graceMs: timing.graceMs, jobTimeoutMs: 200 });
    expect(outcome(next, 'unnamed').renewals).toMatchObject({ records: 1, settled: 1, rewritten: 0, lost: [] });
    expect(await recordsIn(dir)).toEqual([]);
    await restoreAndCheck(target, first, 'unnamed-first.sqlite');
  });

  it('writes no manifest on a target whose renewal record cannot be written, and fails naming it', async () => {
    const bad = await world.folder('rec-bad');
    const good = await world.folder('rec-good');
    const first = await snapshot([bad.target, good.target]);
    await new Promise((r) => setTimeout(r, 1700));
    const started = Date.now();
    const faulty = new FaultTarget(bad.target, { op: 'put', keys: /^renewals\//, point: { at: 'start' }, kind: 'error' });
    const err = await snapshot([faulty, good.target], { graceMs: 2000, jobTimeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SnapshotFailedError);
    const message = (err as Error).message;
    expect(message).toContain('"rec-bad"');
    expect(message).toMatch(/Recording \d+ renewed chunk\(s\) of snapshot/);
    expect(message).toContain('stored on "rec-good"');
    const result = (err as SnapshotFailedError).result as SnapshotResultV2;
    // The manifest relies on the record: without it there is no snapshot on that target.
    expect((await listCatalog(bad.target, 'tcab')).snapshots.map((s) => s.id)).toEqual([first.manifest.id]);
    expect(await recordsIn(bad.dir)).toEqual([]);
    expect(outcome(result, 'rec-good').ok).toBe(true);
    expect(await recordsIn(good.dir)).toHaveLength(1);
    // Nothing was renewed there either: the renewals wait for their record.
    const held = await listChunks(bad.target, 'tcab');
    expect(Math.max(...[...held.values()].map((c) => c.lastModified.getTime()))).toBeLessThanOrEqual(started);
  });

  it('records the chunks it will renew near G before renewing any: a job that fails half-way leaves the record', async () => {
    // Without it, a later run that reuses a chunk this job renewed (young now) would commit a manifest relying on
    // the renewal, with nothing to check it after a prune that listed the old object deletes it.
    const { target, dir } = await world.folder('half');
    const first = await snapshot([target]);
    await new Promise((r) => setTimeout(r, 1700));
    const held = await listChunks(target, 'tcab');
    // The 6th chunk upload fails for good: five renewals are made (the database has not changed), and the job stops there.
    const faulty = new FaultTarget(target, { op: 'put', keys: /^chunks\//, point: { at: 'start' }, kind: 'error', skip: 5 });
    const err = await snapshot([faulty], { graceMs: 2000, jobTimeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SnapshotFailedError);
    const renewedNow = [...(await listChunks(target, 'tcab')).entries()].filter(
      ([sha256, c]) => held.has(sha256) && c.lastModified.getTime() > held.get(sha256)!.lastModified.getTime(),
    );
    expect(renewedNow.length).toBeGreaterThanOrEqual(5);
    const [record] = await recordsIn(dir);
    expect(record).toBeDefined();
    const recorded = new Set<string>(
      JSON.parse(await readFile(join(dir, 'renewals', 'tcab', record!), 'utf8')).chunks.map((l: string) => l.split(' ')[0]),
    );
    for (const [sha256] of renewedNow) expect(recorded.has(sha256)).toBe(true);
    expect((await listCatalog(target, 'tcab')).snapshots.map((s) => s.id)).toEqual([first.manifest.id]);

    // The next run reuses what was renewed (young now), renews the rest (a record of its own) and commits; a run
    // 2J after both records settles them.
    const next = await snapshot([target], { graceMs: 2000, jobTimeoutMs: 200 });
    expect(outcome(next, 'half').ok).toBe(true);
    await new Promise((r) => setTimeout(r, 450)); // 2J
    const later = await snapshot([target], { graceMs: timing.graceMs, jobTimeoutMs: 200 });
    expect(outcome(later, 'half').renewals).toMatchObject({ records: 2, pending: 0, settled: 2, lost: [] });
    expect(await recordsIn(dir)).toEqual([]);
  });

  it('fails the job naming a target that fails mid-chunks, while the other gets a complete snapshot', async () => {
    const good = await world.folder('good');
    const bad = await world.folder('bad');
    insertRuns(3);
    // Some of the chunk folders of "bad" are files (ENOTDIR, even for root): uploads fail part way through.
    const dir = join(bad.dir, 'chunks', 'tcab');
    await mkdir(dir, { recursive: true });
    for (const hex of ['40', '80', 'c0']) await writeFile(join(dir, hex), 'not a folder');
    const err = await snapshot([bad.target, good.target]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SnapshotFailedError);
    const message = (err as Error).message;
    expect(message).toContain('"bad"');
    expect(message).toContain('stored on "good"');
    const result = (err as SnapshotFailedError).result as SnapshotResultV2;
    expect(outcome(result, 'good').ok).toBe(true);
    expect(outcome(result, 'bad').ok).toBe(false);
    expect((await listCatalog(bad.target, 'tcab')).snapshots).toEqual([]);
    await restoreAndCheck(good.target, result, 'good.sqlite');
  });

  it('writes a chunk deleted between the listing and the commit again, found by the check after the manifest', async () => {
    const { target, dir } = await world.folder('race');
    const first = await snapshot([target]);
    // Delete a chunk the next snapshot will reuse, after its listing: wrap the target's list so the second
    // listing of the chunk folder (after the uploads) happens once a reused chunk is gone.
    const lines = (await readFile(join(dir, first.manifest.chunkList.key), 'utf8')).trim().split('\n');
    const victim = lines[Math.floor(lines.length / 2)]!.split(' ')[0]!;
    let listings = 0;
    const racing: Target = Object.create(target, {
      list: {
        value: (prefix: string, options?: { signal?: AbortSignal }) => {
          if (prefix.startsWith('chunks/') && ++listings === 2) {
            return (async function* () {
              await rm(join(dir, chunkKey('tcab', victim)));
              yield* target.list(prefix, options);
            })();
          }
          return target.list(prefix, options);
        },
      },
    });
    const second = await snapshot([racing]);
    const o = outcome(second, 'race');
    expect(o.ok).toBe(true);
    expect(o.chunks!.rewritten).toBe(1);
    expect(logLines.some((l) => l.includes('snapshot.chunks_missing_after_commit') && l.includes(second.manifest.id))).toBe(true);
    expect((await listChunks(target, 'tcab')).has(victim)).toBe(true);
    await restoreAndCheck(target, first, 'race-first.sqlite');
    await restoreAndCheck(target, second, 'race-second.sqlite');
  });

  it('is what "tcab-backup snapshot" makes with TCAB_BACKUP_FORMAT=2 or --format 2, and --format refuses anything else', async () => {
    const { dir } = await world.folder('cli');
    const run = async (args: string[], env: Record<string, string> = {}) => {
      const stdout = new PassThrough();
      const stderr = new PassThrough();
      let out = '';
      let err = '';
      stdout.on('data', (d: Buffer) => (out += d));
      stderr.on('data', (d: Buffer) => (err += d));
      const code = await cli(args, {
        stdout,
        stderr: stderr as unknown as NodeJS.WriteStream,
        stdin: new PassThrough(),
        env: {
          TCAB_BACKUP_TARGETS: `cli=file://${dir}`,
          TCAB_BACKUP_AGENT_URL: agent.url,
          TCAB_BACKUP_AGENT_KEY_ID: KEY_ID,
          TCAB_BACKUP_AGENT_KEY: KEY,
          ...env,
        },
      });
      return { code, out, err };
    };
    const bySetting = await run(['snapshot', '--json'], { TCAB_BACKUP_FORMAT: '2' });
    expect(bySetting.code).toBe(0);
    expect(JSON.parse(bySetting.out).manifest.formatVersion).toBe(2);
    const byFlag = await run(['snapshot', '--format', '2']);
    expect(byFlag.code).toBe(0);
    expect(byFlag.out).toMatch(/format 2, \d+ chunks, uploaded cli /);
    const v1 = await run(['snapshot', '--format', '1', '--json'], { TCAB_BACKUP_FORMAT: '2' });
    expect(JSON.parse(v1.out).manifest.formatVersion).toBe(1);
    const bad = await run(['snapshot', '--format', '3']);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toContain('--format 3: expected 1');
    const badSetting = await run(['snapshot'], { TCAB_BACKUP_FORMAT: 'two' });
    expect(badSetting.code).not.toBe(0);
    expect(badSetting.err).toContain('TCAB_BACKUP_FORMAT');
  });
});
