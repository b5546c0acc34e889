/**
 * The fault matrix of the jobs that read a snapshot back into a database file (test/support/fault-matrix.ts):
 * restore and the restore drill, from folder targets holding real snapshots that the real agent made (gzip
 * for the one-part artifact, uncompressed for the five-part one), one target failing one operation at one
 * point. Plus two control cases without faults: a restore over an existing file, and one over a file with
 * the -wal of a crashed writer beside it.
 */
import { createHash } from 'node:crypto';
import { cp, mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent } from '../../src/agent/run.js';
import type { ManifestV1 as Manifest } from '../../src/catalog/manifest.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { openDatabase } from '../../src/util/sqlite.js';
import { readRecentDrills } from '../../src/catalog/drill-record.js';
import { runDrill } from '../../src/jobs/drill/index.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { runSnapshot } from '../../src/jobs/snapshot/index.js';
import { silentLogger } from '../../src/log.js';
import { FileTarget } from '../../src/targets/file.js';
import { parseTargetUrl, type FileTargetSpec } from '../../src/targets/spec.js';
import { agentConfig, KEY, KEY_ID, tableCounts } from '../agent/helpers.js';
import {
  casesOf,
  DRILL_TABLE,
  faultOf,
  PART,
  RESTORE_TABLE,
  settleWithin,
  SIZES,
  type MatrixCase,
  type SizeName,
} from '../support/fault-matrix.js';
import { expectOutcome, goodIds, matrixFolder, type MatrixFolder } from '../support/matrix-world.js';

const DATABASE = 'tcab';
const templates = new Map<SizeName, { dir: string; manifest: Manifest }>();
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-matrix-restore-'));
  for (const size of ['one', 'many'] as const) {
    const dir = join(work, `agent-${size}`);
    await mkdir(dir);
    createSampleDatabase(join(dir, 'tcab.sqlite'), size === 'one' ? { runs: 40 } : { targetBytes: (SIZES.many.parts - 0.5) * PART });
    const compression = size === 'one' ? 'gzip' : 'none';
    const agent = await startAgent(agentConfig(dir, { compression }), { logger: silentLogger });
    try {
      const store = join(work, `template-${size}`);
      const target = new FileTarget(parseTargetUrl('template', `file://${store}`) as FileTargetSpec, { fsync: false });
      const { manifest } = await runSnapshot(
        { agent: new AgentClient({ url: agent.url, keyId: KEY_ID, key: KEY }), targets: [target], database: DATABASE },
        { trigger: { kind: 'cli' } },
      );
      templates.set(size, { dir: store, manifest });
    } finally {
      await agent.close();
    }
  }
  expect(templates.get('many')!.manifest.artifact.bytes).toBeGreaterThan((SIZES.many.parts - 1) * PART);
  expect(templates.get('one')!.manifest.artifact.bytes).toBeLessThan(PART);
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Gives target `name` a copy of the template snapshot of this size. */
async function seed(world: MatrixFolder, name: string, size: SizeName): Promise<Manifest> {
  const t = templates.get(size)!;
  await cp(t.dir, world.dir(name), { recursive: true });
  return t.manifest;
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

/** Every file of a folder with its sha256: what "untouched" means for a restore destination. */
async function folderState(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort()) out[name] = await sha256(join(dir, name));
  return out;
}

/** A database file that is not the snapshot: what an operator restores over with --force. */
function existingDatabase(path: string): void {
  createSampleDatabase(path, { runs: 3, seed: 7 });
}

function cases(table: Parameters<typeof casesOf>[0]): Array<readonly [string, MatrixCase]> {
  return casesOf(table).map((c) => [c.title, c] as const);
}

describe.concurrent('fault matrix: restore', () => {
  it.each(cases(RESTORE_TABLE))('%s', async (_title, c) => {
    const world = await matrixFolder('restore');
    try {
      const manifest = await seed(world, 'faulty', c.size);
      const dest = join(world.root, 'dest');
      await mkdir(dest);
      existingDatabase(join(dest, 'runs.sqlite'));
      const before = await folderState(dest);

      const faulty = world.target('faulty');
      const controller = new AbortController();
      const fault = faultOf(c, manifest.artifact.bytes, () => controller.abort());
      faulty.faults.arm(fault);
      const settled = await settleWithin(`restore (${c.title})`, controller, [faulty.faults], (signal) =>
        runRestore(
          { targets: [faulty.target], database: DATABASE },
          { selector: { latest: true }, outPath: join(dest, 'runs.sqlite'), force: true, signal },
        ),
      );
      expectOutcome(c, settled, faulty.faults, fault);

      if (settled.status === 'resolved') {
        // No temporary file is left (the old database may have been moved aside, under a name the output gives).
        expect(Object.keys(await folderState(dest)).filter((f) => f.includes('.restore-'))).toEqual([]);
        expect(await sha256(join(dest, 'runs.sqlite'))).toBe(manifest.snapshot.sha256);
      } else {
        expect(await folderState(dest), 'a restore that failed changed its destination folder').toEqual(before);
      }
      expect(await goodIds(world.plain('faulty'), DATABASE)).toEqual([manifest.id]);
    } finally {
      await world.remove();
    }
  });

  it('control, no fault: restores over an existing database with --force', async () => {
    const world = await matrixFolder('restore');
    try {
      const manifest = await seed(world, 'store', 'one');
      const out = join(world.root, 'runs.sqlite');
      existingDatabase(out);
      await runRestore({ targets: [world.plain('store')], database: DATABASE }, { selector: { latest: true }, outPath: out, force: true });
      expect(await sha256(out)).toBe(manifest.snapshot.sha256);
    } finally {
      await world.remove();
    }
  });

  it('control, no fault: a restore with --force over a database whose crashed writer left a -wal opens as the snapshot', async () => {
    const world = await matrixFolder('restore');
    try {
      const manifest = await seed(world, 'store', 'one');
      const out = join(world.root, 'runs.sqlite');
      // A writer that crashed: its -wal holds committed rows not yet checkpointed into the file.
      const live = join(world.root, 'live.sqlite');
      existingDatabase(live);
      const db = openDatabase(live);
      db.exec('PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;');
      db.prepare(
        "INSERT INTO runs (slug, title, published_at, record) SELECT slug || '-again', title, published_at, record FROM runs",
      ).run();
      for (const suffix of ['', '-wal', '-shm']) await cp(live + suffix, out + suffix);
      db.close();

      const settled = await runRestore(
        { targets: [world.plain('store')], database: DATABASE },
        { selector: { latest: true }, outPath: out, force: true },
      ).then(
        (r) => ({ ok: true as const, r }),
        (e: unknown) => ({ ok: false as const, e }),
      );
      if (settled.ok) {
        // What opens at the path is the snapshot, not the snapshot with the old writer's log replayed over it.
        expect(tableCounts(out)).toMatchObject(manifest.database.tables);
      } else {
        expect(String(settled.e)).toMatch(/-wal/);
      }
    } finally {
      await world.remove();
    }
  });
});

describe.concurrent('fault matrix: drill', () => {
  it.each(cases(DRILL_TABLE))('%s', async (_title, c) => {
    const world = await matrixFolder('drill');
    try {
      const manifest = await seed(world, 'good', c.size);
      await seed(world, 'faulty', c.size);
      const workDir = join(world.root, 'scratch');
      const good = world.target('good');
      const faulty = world.target('faulty');
      const controller = new AbortController();
      const fault = faultOf(c, manifest.artifact.bytes, () => controller.abort());
      faulty.faults.arm(fault);
      const settled = await settleWithin(`drill (${c.title})`, controller, [faulty.faults], (signal) =>
        runDrill(
          { targets: [good.target, faulty.target], database: DATABASE, live: { unavailable: 'no agent in this test' }, workDir },
          { signal },
        ),
      );
      expectOutcome(c, settled, faulty.faults, fault);

      // The drill only reads the snapshots, and leaves nothing in its scratch folder.
      for (const name of ['good', 'faulty']) expect(await goodIds(world.plain(name), DATABASE)).toEqual([manifest.id]);
      expect(await readdir(workDir).catch(() => [])).toEqual([]);
      const [goodRecord] = await readRecentDrills(world.plain('good'), DATABASE, 1);
      expect(goodRecord?.record?.ok, `the healthy target's drill record: ${JSON.stringify(goodRecord)}`).toBe(true);
      const [faultyRecord] = await readRecentDrills(world.plain('faulty'), DATABASE, 1);
      if (settled.status === 'resolved') {
        expect(faultyRecord?.record?.ok).toBe(true);
      } else if (faultyRecord?.record && c.expect !== 'aborted') {
        // A drill that failed says so in its record, naming what failed.
        expect(faultyRecord.record.ok).toBe(false);
        expect(faultyRecord.record.error).toContain('"faulty"');
      }
    } finally {
      await world.remove();
    }
  });
});
