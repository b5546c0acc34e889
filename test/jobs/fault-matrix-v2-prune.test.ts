import { cp } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listChunks } from '../../src/catalog/chunk-store.js';
import { runPrune, type PruneResult } from '../../src/jobs/prune/index.js';
import { loadChunkGrace } from '../../src/jobs/settings.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import { settleWithin } from '../support/fault-matrix.js';
import {
  casesOfV2,
  DB,
  faultOfV2,
  makeFixtureV2,
  PRUNE_V2,
  type FixtureV2,
  caseRows,
  expectObjectNamed,
  everyManifestRestores,
} from '../support/fault-matrix-v2.js';
import { expectOutcome, goodIds, matrixFolder, visibleProblems } from '../support/matrix-world.js';
import { chunkRefs } from '../support/v2-fixtures.js';
import { tempDir } from '../support/world.js';
import type { Target } from '../../src/targets/target.js';

const DAY = 24 * 3600_000;

async function keysUnder(target: Target, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of target.list(prefix)) keys.push(o.key);
  return keys;
}
const HARD = new Set(['error', 'transient', 'destroy']);
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
  it.each(caseRows(PRUNE_V2))('%s', async (_title, c) => {
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
      expectObjectNamed(c, settled as { status: string; error?: unknown });
      const deleteOnce = c.row.name === 'delete chunk' && ['blip', 'transient', 'lost'].includes(c.kind);
      if (deleteOnce) {
        // Sent once, never repeated: the run succeeds, and each chunk whose delete went unanswered is left (reported).
        expect(settled.status, `${c.title}: ${settled.status === 'rejected' ? String(settled.error) : ''}`).toBe('resolved');
        const sweep = (settled as { value: PruneResult }).value.targets[0]!.chunks!;
        expect(sweep.unanswered, 'each delete that went unanswered is counted once').toBe(store.faults.fired.length);
        expect(sweep.left).toBe(sweep.unanswered);
        expect(sweep.removed).toBe(garbage.length - sweep.left);
      }

      // Nothing a kept snapshot names was taken: both still restore to their exact files.
      expect(await visibleProblems(plain, DB)).toEqual([]);
      const shown = await everyManifestRestores(world, 'store', { ...kept, [fx.triple.o.id]: fx.sha.o });
      for (const id of Object.keys(kept)) expect(shown).toContain(id);
      const held = await listChunks(plain, DB);
      for (const h of named) expect(held.has(h), `chunk ${h} of a kept snapshot was deleted`).toBe(true);
      if (settled.status === 'resolved') {
        expect(shown).toEqual(Object.keys(kept).sort());
        const left = garbage.filter((h) => held.has(h));
        // A delete not answered was not sent again: the chunks it hit stay (a lost answer's delete was applied).
        if (deleteOnce) expect(left).toHaveLength(c.kind === 'lost' ? 0 : store.faults.fired.length);
        else if (!(c.row.tolerated && HARD.has(c.kind))) expect(left, 'garbage chunks left after a prune that succeeded').toEqual([]);
        // The sweep's marker goes once its deletes have settled (aborted, it would stay: its deletes may still land).
        expect(await keysUnder(plain, 'sweeps/'), 'a sweep marker left after a prune that succeeded').toEqual([]);
      }
      // A marker write that failed leaves no marker (one that landed unanswered is deleted again): the next prune sweeps.
      if (c.row.name === 'put sweep marker') expect(await keysUnder(plain, 'sweeps/'), 'a sweep marker left by a failed write').toEqual([]);
      expect(await goodIds(plain, DB)).toEqual(shown);
    } finally {
      await world.remove();
    }
  });
});

it('the format-2 prune sweep matrix has the size it states', () => {
  const n = casesOfV2(PRUNE_V2).length;
  console.log(`fault matrix v2: prune sweep ${n} cases`);
  expect(n).toBeGreaterThan(50);
});
