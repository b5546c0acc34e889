/**
 * The format-2 fault matrix (test/support/fault-matrix-v2.ts) of prune's chunk sweep: a folder holding an old
 * snapshot O of another file and two snapshots A and B sharing most chunks; retention keeps two, so O's
 * manifest and chunk list go and then its own chunks (older than the grace at the listing time) are garbage.
 * One operation (the chunk listing, the snapshot listing, a manifest, a chunk list, delete k of n) fails in
 * one way. After each case: the job settled, failed naming the target or succeeded as the fault allows; no
 * chunk a kept snapshot names was taken (A and B restore to their exact files, as does O while its manifest
 * shows); a prune that succeeded left no garbage unless the fault was on a delete it reports.
 */
import { createHash } from 'node:crypto';
import { cp, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listCatalog } from '../../src/catalog/catalog.js';
import { listChunks } from '../../src/catalog/chunk-store.js';
import { runPrune } from '../../src/jobs/prune/index.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { loadChunkGrace } from '../../src/jobs/settings.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import { settleWithin } from '../support/fault-matrix.js';
import {
  CHUNK,
  casesOfV2,
  DB,
  faultOfV2,
  makeFixtureV2,
  PRUNE_V2,
  type CaseV2,
  type FixtureV2,
  type TableV2,
} from '../support/fault-matrix-v2.js';
import { expectOutcome, goodIds, matrixFolder, visibleProblems, type MatrixFolder } from '../support/matrix-world.js';
import { chunkRefs } from '../support/v2-fixtures.js';
import { tempDir } from '../support/world.js';

const DAY = 24 * 3600_000;
const HARD = new Set(['error', 'transient', 'destroy']);
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

const GRACE = loadChunkGrace({});
const PRUNE_RETENTION = loadRetentionConfig(
  {
    TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
    TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
    TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
    TCAB_BACKUP_RETENTION_STORE: 'last=2',
  },
  ['store'],
);

describe.concurrent('fault matrix v2: prune chunk sweep', () => {
  it.each(cases(PRUNE_V2))('%s', async (_title, c) => {
    const world = await matrixFolder('prune-v2');
    try {
      await cp(fx.triple.dir, world.dir('store'), { recursive: true });
      const plain = world.plain('store');
      const kept = { [fx.triple.a.id]: fx.sha.a, [fx.triple.b.id]: fx.sha.b };
      const named = new Set<string>();
      for (const m of [fx.triple.a, fx.triple.b]) for (const r of await chunkRefs(plain, m)) named.add(r[0]);
      const garbage = [...(await listChunks(plain, DB)).keys()].filter((h) => !named.has(h));
      expect(garbage).toHaveLength(fx.counts.garbage);

      const store = world.target('store');
      const controller = new AbortController();
      const fault = faultOfV2(c, fx.counts, () => controller.abort());
      store.faults.arm(fault);
      // Listing time past the grace: every chunk stored by the fixture is old enough to go once unreferenced.
      const future = new Date(Date.now() + GRACE.graceMs + DAY);
      const settled = await settleWithin(`prune v2 (${c.title})`, controller, [store.faults], (signal) =>
        runPrune({ targets: [store.target], database: DB, retention: PRUNE_RETENTION, chunkGrace: GRACE, now: () => future }, { signal }),
      );
      expectOutcome(c, settled, store.faults, fault);
      expectChunkNamed(c, settled as { status: string; error?: unknown });

      // Nothing a kept snapshot names was taken: both still restore to their exact files.
      expect(await visibleProblems(plain, DB)).toEqual([]);
      const shown = await everyManifestRestores(world, 'store', { ...kept, [fx.triple.o.id]: fx.sha.o });
      for (const id of Object.keys(kept)) expect(shown).toContain(id);
      const held = await listChunks(plain, DB);
      for (const h of named) expect(held.has(h), `chunk ${h} of a kept snapshot was deleted`).toBe(true);
      if (settled.status === 'resolved') {
        expect(shown).toEqual(Object.keys(kept).sort());
        if (!(c.row.tolerated && HARD.has(c.kind)))
          expect(
            garbage.filter((h) => held.has(h)),
            'garbage chunks left after a prune that succeeded',
          ).toEqual([]);
      }
      expect(await goodIds(plain, DB)).toEqual(shown);
    } finally {
      await world.remove();
    }
  });
});

it('the format-2 prune sweep matrix has the size it states', () => {
  const n = casesOfV2(PRUNE_V2).length;
  console.log(`fault matrix v2: prune sweep ${n} cases`);
  expect(n).toBeGreaterThan(35);
});
