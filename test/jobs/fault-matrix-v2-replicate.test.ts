import { cp, mkdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { settleWithin } from '../support/fault-matrix.js';
import {
  casesOfV2,
  DB,
  faultOfV2,
  makeFixtureV2,
  REPLICATE_V2,
  type FixtureV2,
  caseRows,
  expectChunkNamed,
  everyManifestRestores,
} from '../support/fault-matrix-v2.js';
import { expectOutcome, matrixFolder } from '../support/matrix-world.js';
import { tempDir } from '../support/world.js';

const _DAY = 24 * 3600_000;
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

describe.concurrent('fault matrix v2: replicate', () => {
  it.each(caseRows(REPLICATE_V2))('%s', async (_title, c) => {
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
