/**
 * The format-2 fault matrix (test/support/fault-matrix-v2.ts) of replicate: every chunk of two real
 * snapshots, their chunk lists and manifests, from folder "src" to an empty folder "dst", one of them failing
 * one operation (a listing, the manifest, the chunk list, chunk k of n) in one way. After each case: the job
 * settled, failed naming the target (and the chunk's key where a chunk failed) or succeeded as the fault
 * allows; the source still restores to its exact files; the destination holds no manifest whose chunks are
 * not all there: each manifest it shows restores to its exact file.
 */
import { createHash } from 'node:crypto';
import { cp, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listCatalog } from '../../src/catalog/catalog.js';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { settleWithin } from '../support/fault-matrix.js';
import {
  CHUNK,
  casesOfV2,
  DB,
  faultOfV2,
  makeFixtureV2,
  REPLICATE_V2,
  type CaseV2,
  type FixtureV2,
  type TableV2,
} from '../support/fault-matrix-v2.js';
import { expectOutcome, matrixFolder, type MatrixFolder } from '../support/matrix-world.js';
import { tempDir } from '../support/world.js';

const _DAY = 24 * 3600_000;
const _HARD = new Set(['error', 'transient', 'destroy']);
const CHUNK_KEY = /chunks\/tcab\/[0-9a-f]{2}\/[0-9a-f]{64}\.zst/;
let fx: FixtureV2;
let removeWork: () => Promise<void>;

beforeAll(async () => {
  const work = await tempDir('matrix-v2-copies');
  removeWork = work.remove;
  fx = await makeFixtureV2(work.dir);
  expect(fx.counts.union).toBeGreaterThanOrEqual(30);
  // Enough garbage that "the 7th delete" is a middle one.
  expect(fx.counts.garbage).toBeGreaterThanOrEqual(10);
  console.log(`fixture: A and B ${fx.counts.union} distinct chunks; O ${fx.counts.garbage} chunks of its own`);
}, 60_000);
afterAll(() => removeWork?.());

function cases(table: TableV2): Array<readonly [string, CaseV2]> {
  return casesOfV2(table).map((c) => [c.title, c] as const);
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

/** Restores each snapshot `name` shows (fault-free) and checks it is its exact file. Returns the ids it shows. */
async function everyManifestRestores(world: MatrixFolder, name: string, expected: Record<string, string>): Promise<string[]> {
  const out = join(world.root, `check-${name}`);
  await mkdir(out, { recursive: true });
  const shown = (await listCatalog(world.plain(name), DB)).snapshots.map((s) => s.id).sort();
  for (const id of shown) {
    expect(expected[id], `"${name}" shows a snapshot ${id} nobody stored`).toBeDefined();
    const path = join(out, `${id}.sqlite`);
    await runRestore({ targets: [world.plain(name)], database: DB }, { selector: { id }, outPath: path, force: true });
    expect(await sha256(path), `snapshot ${id} on "${name}" does not restore to its file`).toBe(expected[id]);
  }
  return shown;
}

function expectChunkNamed(c: CaseV2, settled: { status: string; error?: unknown }): void {
  if (settled.status !== 'rejected' || c.row.keys !== CHUNK || c.kind === 'hang') return;
  expect(String((settled.error as Error).message), 'the failure does not name the chunk that failed').toMatch(CHUNK_KEY);
}

describe.concurrent('fault matrix v2: replicate', () => {
  it.each(cases(REPLICATE_V2))('%s', async (_title, c) => {
    const world = await matrixFolder('replicate-v2');
    try {
      await cp(fx.pair.dir, world.dir('src'), { recursive: true });
      await mkdir(world.dir('dst'));
      const both = { [fx.pair.a.id]: fx.sha.a, [fx.pair.b.id]: fx.sha.b };
      const src = world.target('src');
      const dst = world.target('dst');
      const faults = c.row.on === 'src' ? src.faults : dst.faults;
      const controller = new AbortController();
      const fault = faultOfV2(c, fx.counts, () => controller.abort());
      faults.arm(fault);
      const settled = await settleWithin(`replicate v2 (${c.title})`, controller, [src.faults, dst.faults], (signal) =>
        runReplicate(
          { targets: [src.target, dst.target], database: DB },
          { signal, concurrency: 1, retry: { retries: 2, baseDelayMs: 1, maxDelayMs: 4 } },
        ),
      );
      expectOutcome(c, settled, faults, fault);
      expectChunkNamed(c, settled as { status: string; error?: unknown });

      // The source is only read: both snapshots still restore from it to their exact files.
      expect(await everyManifestRestores(world, 'src', both)).toEqual(Object.keys(both).sort());
      // The destination never shows a manifest whose chunks are not all there: each it shows restores exactly.
      const shown = await everyManifestRestores(world, 'dst', both);
      if (settled.status === 'resolved') expect(shown).toEqual(Object.keys(both).sort());
    } finally {
      await world.remove();
    }
  });
});

it('the format-2 replicate matrix has the size it states', () => {
  const n = casesOfV2(REPLICATE_V2).length;
  console.log(`fault matrix v2: replicate ${n} cases`);
  expect(n).toBeGreaterThan(80);
});
