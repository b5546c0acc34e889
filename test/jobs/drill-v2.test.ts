/**
 * The restore drill on format-2 (chunked) snapshots, on real parts: a live SQLite database behind a real
 * agent, its VACUUM INTO copy stored as chunks on a file folder and Azurite (test/support/store-v2.ts), and
 * the drill's three ways: restored to a file, checked as it streams, and the application drill on a real agent
 * with the stand-in backend, whose zstd decompression is either the zstd program or node:zlib's (which needs
 * the frames cut apart). Failures name the chunk, and a damaged chunk never reaches a started backend.
 */
import { readdir, readFile, rm, writeFile, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent } from '../../src/agent/run.js';
import { drillCommand } from '../../src/cli/commands/drill.js';
import { provenText, readRecentDrills } from '../../src/catalog/drill-record.js';
import type { ManifestV2 } from '../../src/catalog/manifest-v2.js';
import { chunkKey } from '../../src/format/chunk-key.js';
import { DrillFailedError, runDrill } from '../../src/jobs/drill/index.js';
import { createLogger } from '../../src/log.js';
import { openDatabase } from '../../src/util/sqlite.js';
import { KEY, KEY_ID, agentConfig, standinCommand } from '../agent/helpers.js';
import { DATABASE, startFixture, type Fixture } from '../status/fixture.js';
import { storeFileAsV2 } from '../support/store-v2.js';
import { flipBodyByte, readsThrough } from '../support/v2-fixtures.js';
import { captureLog } from '../support/world.js';

const RUNS = 400;
const SINCE = 7;
let fx: Fixture;
let workDir: string;
/** The same snapshot file stored as chunks on each target. */
let manifests: Map<string, ManifestV2>;
const CHUNK = /^chunks\//;

beforeAll(async () => {
  fx = await startFixture({ runs: RUNS, azurite: true });
  workDir = await mkdtemp(join(tmpdir(), 'tcab-drill-v2-work-'));
  const file = join(fx.work, 'snapshot.sqlite');
  const db = openDatabase(fx.dbPath);
  try {
    db.exec(`VACUUM INTO '${file}'`);
  } finally {
    db.close();
  }
  manifests = new Map();
  const createdAt = new Date();
  for (const target of fx.targets) {
    const { manifest } = await storeFileAsV2(target, DATABASE, file, { createdAt, id: manifests.get('local')?.id });
    manifests.set(target.name, manifest);
  }
  expect(manifests.get('local')!.chunkList.count).toBeGreaterThan(3);
  // Runs published after the snapshot: what restoring it would lose.
  fx.publishRuns(SINCE);
});

afterAll(async () => {
  await fx?.stop();
  await rm(workDir, { recursive: true, force: true });
});

/** The chunk file of line `line` (0-based) of the local target's snapshot, and its bytes. */
async function chunkFile(line: number): Promise<{ key: string; path: string; bytes: Buffer }> {
  const m = manifests.get('local')!;
  const list = await readFile(join(fx.work, 'backups', m.chunkList.key), 'latin1');
  const sha = list.split('\n')[line]!.split(' ')[0]!;
  const key = chunkKey(DATABASE, sha);
  const path = join(fx.work, 'backups', key);
  return { key, path, bytes: await readFile(path) };
}

/** Runs `fn` with one byte of the chunk of line `line` flipped on the local target, and puts it back. */
async function withDamagedChunk<T>(line: number, fn: (key: string) => Promise<T>): Promise<T> {
  const { key, path, bytes } = await chunkFile(line);
  const damaged = Buffer.from(bytes);
  damaged[Math.floor(damaged.length / 2)]! ^= 0x40;
  await writeFile(path, damaged);
  try {
    return await fn(key);
  } finally {
    await writeFile(path, bytes);
  }
}

describe('restore drill of a format-2 snapshot', () => {
  it('restores it on every target and records the chunk list and every chunk as checked, with the runs published since', async () => {
    const { logger, records } = captureLog();
    const result = await runDrill({ targets: fx.targets, database: DATABASE, live: fx.client, workDir, method: 'restore', logger });
    expect(result.ok).toBe(true);
    for (const r of result.targets) {
      const m = manifests.get(r.target)!;
      expect(r.snapshot).toMatchObject({ id: m.id, artifactBytes: m.stored.bytes, bytes: m.snapshot.bytes, compression: 'zstd chunks' });
      expect(r.checks).toEqual({
        method: 'restore',
        ran: ['chunk-list-sha256', 'chunk-sha256', 'snapshot-sha256', 'integrity-check', 'row-counts'],
        fromSnapshot: [],
      });
      expect(r.tables.runs).toEqual({ snapshot: RUNS, live: RUNS + SINCE, difference: SINCE });
      expect(r.recoveryPoint!.runsSince).toBe(SINCE);
      expect(r.recoveryPoint!.newestPublishedAt.snapshot).not.toBeNull();
    }
    expect(provenText(result.targets[0]!.checks)).toBe(
      "restored to a file: chunk list, every chunk's and the database's sha256, integrity_check and row counts",
    );
    expect(records.filter((e) => e.event === 'drill.completed').map((e) => e.checks)).toEqual([
      result.targets[0]!.checks!.ran,
      result.targets[1]!.checks!.ran,
    ]);
    expect(await readdir(workDir)).toEqual([]);
  });

  it('checks it as it streams: chunk list, each chunk and the whole file, nothing written, and the CLI says what was proved', async () => {
    const result = await runDrill({ targets: fx.targets, database: DATABASE, live: fx.client, workDir, method: 'stream' });
    for (const r of result.targets) {
      expect(r.ok).toBe(true);
      expect(r.checks).toEqual({
        method: 'stream',
        ran: ['chunk-list-sha256', 'chunk-sha256', 'snapshot-sha256'],
        fromSnapshot: ['integrity-check', 'row-counts'],
        reason: 'TCAB_BACKUP_DRILL_METHOD=stream',
      });
      expect(r.recoveryPoint!.runsSince).toBe(SINCE);
      // The stored record reads back as written.
      const stored = (await readRecentDrills(r.target === 'local' ? fx.local : fx.blob!, DATABASE, 10)).find(
        (x) => x.drillId === r.drillId,
      );
      expect(stored!.record).toEqual(r);
    }
    expect(await readdir(workDir)).toEqual([]);

    const stdout = new PassThrough();
    let text = '';
    stdout.on('data', (b: Buffer) => (text += b.toString()));
    const env = {
      TCAB_BACKUP_TARGETS: `local=file://${fx.work}/backups`,
      TCAB_BACKUP_AGENT_URL: fx.agent.url,
      TCAB_BACKUP_AGENT_KEY_ID: 'functions',
      TCAB_BACKUP_AGENT_KEY: fx.key,
      TCAB_BACKUP_DRILL_WORK_DIR: workDir,
      TCAB_BACKUP_DRILL_METHOD: 'stream',
    };
    const code = await drillCommand([], {
      io: { stdout, stderr: process.stderr, stdin: process.stdin, env },
      logger: createLogger({ level: 'error' }),
      env,
    });
    expect(code).toBe(0);
    expect(text).toContain(
      "proved: verified as it streamed, nothing written: chunk list, every chunk's and the database's sha256 equal the manifest's",
    );
  });

  it('fails a streamed drill of a chunk with a flipped byte, naming the chunk key and its line', async () => {
    await withDamagedChunk(2, async (key) => {
      const err = await runDrill({ targets: [fx.local], database: DATABASE, live: fx.client, workDir, method: 'stream' }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DrillFailedError);
      const m = manifests.get('local')!;
      expect((err as Error).message).toMatch(
        new RegExp(`target "local" .* snapshot ${m.id}: chunk ${key}, line 3 of the chunk list is damaged`),
      );
      const record = (err as DrillFailedError).result.targets[0]!;
      expect(record.ok).toBe(false);
      expect(record.checks).toBeUndefined();
      expect(record.error).toContain(key);
    });
    expect(await readdir(workDir)).toEqual([]);
  });

  it('fails a restore drill of a damaged chunk, naming it', async () => {
    await withDamagedChunk(1, async (key) => {
      const err = await runDrill({ targets: [fx.local], database: DATABASE, live: fx.client, workDir, method: 'restore' }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DrillFailedError);
      expect((err as Error).message).toContain(`chunk ${key}, line 2 of the chunk list is damaged`);
    });
    expect(await readdir(workDir)).toEqual([]);
  });
});

describe('application drill of a format-2 snapshot', () => {
  /** An agent with the stand-in backend; `zstd: 'zlib'` leaves the zstd program aside, as a VM without it would. */
  async function drillAgent(name: string, zstd: 'program' | 'zlib') {
    const staging = join(fx.work, `staging-${name}`);
    const pidFile = join(fx.work, `${name}.pid`);
    const events = captureLog();
    const agent = await startAgent(
      agentConfig(fx.work, {
        dbPath: fx.dbPath,
        stagingDir: staging,
        compression: 'gzip',
        drill: {
          command: standinCommand(pidFile),
          healthTimeoutMs: 30_000,
          stopGraceMs: 300,
        },
      }),
      { logger: events.logger, ...(zstd === 'zlib' ? { zstdCommand: join(fx.work, 'no-such-zstd') } : {}) },
    );
    return { agent, client: new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY }), staging, pidFile, events };
  }
  type DrillAgent = Awaited<ReturnType<typeof drillAgent>>;

  async function expectNothingLeft(d: DrillAgent): Promise<void> {
    await d.agent.idle();
    expect((await readdir(d.staging)).filter((n) => n.startsWith('drill-'))).toEqual([]);
    expect(await readdir(workDir)).toEqual([]);
  }

  for (const zstd of ['program', 'zlib'] as const) {
    it(`starts the backend on the chunks restored on the agent (zstd by ${zstd}) and records it`, async () => {
      const d = await drillAgent(`v2-${zstd}`, zstd);
      try {
        const { logger, events } = captureLog();
        const result = await runDrill({ targets: fx.targets, database: DATABASE, live: d.client, workDir, app: d.client, logger });
        expect(result.ok).toBe(true);
        for (const r of result.targets) {
          const m = manifests.get(r.target)!;
          expect(r.app).toMatchObject({ passed: true, failedStep: null, runs: { inFile: RUNS, served: RUNS, comparison: 'all' } });
          expect(r.app!.checks.map((c) => [c.name, c.ok])).toEqual([
            ['receive', true],
            ['snapshot-sha256', true],
            ['integrity', true],
            ['start', true],
            ['healthz', true],
            ['runs', true],
            ['stop', true],
          ]);
          expect(r.app!.checks[0]!.detail).toBe(`${m.stored.bytes} bytes of chunks, as named; the restored file's sha256 is checked next`);
          expect(r.app!.checks[1]!.detail).toBe(`${m.snapshot.bytes} bytes, sha256 matches`);
        }
        expect(events('drill.app_started').map((e) => [e.target, e.formatVersion])).toEqual([
          ['local', 2],
          ['blob', 2],
        ]);
        expect(d.events.events('drill.started').map((e) => e.format)).toEqual([2, 2]);
        await expectNothingLeft(d);
      } finally {
        await d.agent.close();
      }
    });
  }

  /**
   * The local target, where the application drill's read of the chunk of line 4 (the file-level restore reads
   * every line once before it) meets damage: `atRest`, the stored file gets a byte flipped before that read
   * and stays so (every read after fails its check); otherwise that one transfer has a byte flipped on the way.
   */
  function damagingTarget(atRest: boolean) {
    const count = manifests.get('local')!.chunkList.count;
    const damagedAt = count + 4;
    let reads = 0;
    const state = { key: '', readsOfKey: 0, restore: async () => {} };
    const inner = fx.local;
    const target = readsThrough(inner, async (key, options) => {
      if (!CHUNK.test(key)) return inner.get(key, options);
      if (key === state.key) state.readsOfKey++;
      if (++reads !== damagedAt) return inner.get(key, options);
      state.key = key;
      state.readsOfKey = 1;
      if (atRest) {
        const path = join(fx.work, 'backups', key);
        const good = await readFile(path);
        const bad = Buffer.from(good);
        bad[40]! ^= 0xff;
        await writeFile(path, bad);
        state.restore = () => writeFile(path, good);
        return inner.get(key, options);
      }
      return flipBodyByte(await inner.get(key, options), 40);
    });
    return { target, state };
  }

  it('stops the upload at a chunk damaged at rest, naming it and saying it was read 3 times, and the agent starts nothing', async () => {
    const d = await drillAgent('v2-damaged', 'zlib');
    const { target, state } = damagingTarget(true);
    try {
      const err = await runDrill({ targets: [target], database: DATABASE, live: d.client, workDir, app: d.client }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DrillFailedError);
      expect(state.key).toMatch(CHUNK);
      // Read three times: the damage is in the stored object, not in one transfer.
      expect(state.readsOfKey).toBe(3);
      const record = (err as DrillFailedError).result.targets[0]!;
      expect(record.checks?.method).toBe('restore');
      expect(record.app).toMatchObject({ passed: false, failedStep: 'receive' });
      expect(record.app!.error).toContain(
        `failed at step receive: the upload was stopped, the agent started nothing: chunk ${state.key}, line 4 of the chunk list is damaged`,
      );
      expect(record.app!.error).toContain('(read 3 times, every read failed)');
      expect(record.warnings.filter((w) => w.includes(state.key))).toHaveLength(2);
      expect((err as Error).message).toContain(state.key);
      expect(d.events.events('drill.backend_started')).toEqual([]);
      await expect(readFile(d.pidFile)).rejects.toMatchObject({ code: 'ENOENT' });
      await expectNothingLeft(d);
    } finally {
      await state.restore();
      await d.agent.close();
    }
  });

  it('reads a chunk damaged on the way once again: the drill passes, the backend starts, and its warning names the chunk', async () => {
    const d = await drillAgent('v2-healed', 'zlib');
    const { target, state } = damagingTarget(false);
    try {
      const { logger, events } = captureLog();
      const result = await runDrill({ targets: [target], database: DATABASE, live: d.client, workDir, app: d.client, logger });
      expect(result.ok).toBe(true);
      expect(state.key).toMatch(CHUNK);
      expect(state.readsOfKey).toBe(2);
      const record = result.targets[0]!;
      expect(record.app).toMatchObject({ passed: true, failedStep: null, runs: { inFile: RUNS, served: RUNS, comparison: 'all' } });
      const m = manifests.get('local')!;
      expect(record.warnings).toEqual([
        expect.stringContaining(
          `chunk ${state.key}, line 4 of the chunk list of snapshot ${m.id} on target "local": read 1 of 3 failed (chunk ${state.key}, line 4 of the chunk list is damaged`,
        ),
      ]);
      expect(events('chunk.reread').map((e) => [e.object, e.line, e.read])).toEqual([[state.key, 4, 1]]);
      expect(d.events.events('drill.backend_started')).toHaveLength(1);
      await expectNothingLeft(d);
    } finally {
      await d.agent.close();
    }
  });
});
