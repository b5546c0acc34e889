import { cp, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyState, readVerifyRecord } from '../../src/catalog/verify-record.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import { settleWithin } from '../support/fault-matrix.js';
import {
  casesOfV2,
  DB,
  faultOfV2,
  makeFixtureV2,
  plainFolder,
  RESTORE_V2,
  VERIFY_V2,
  type FixtureV2,
  caseRows,
} from '../support/fault-matrix-v2.js';
import { expectOutcome, matrixFolder, type MatrixFolder } from '../support/matrix-world.js';
import { sha256Of } from '../support/v2-fixtures.js';
import { tempDir } from '../support/world.js';

const DAY = 24 * 3600_000;
const VERIFY_WINDOW = { withinMs: 7 * DAY, intervalMs: DAY };
let fx: FixtureV2;
/** Per target name, a folder holding A and B and the verify record of a clean run made under that name. */
const verified = new Map<string, string>();
let removeWork: () => Promise<void>;

beforeAll(async () => {
  const work = await tempDir('matrix-v2-reads');
  removeWork = work.remove;
  fx = await makeFixtureV2(work.dir);
  for (const name of ['good', 'faulty']) {
    const dir = join(work.dir, `verified-${name}`);
    await cp(fx.pair.dir, dir, { recursive: true });
    await runVerifyRotation({ targets: [plainFolder(name, dir)], database: DB }, { ...VERIFY_WINDOW, all: true });
    verified.set(name, dir);
  }
  // Several dozen chunks a snapshot, so that "the 7th" is a middle one and the last is far from the first.
  expect(fx.counts.refsB).toBeGreaterThanOrEqual(30);
  expect(fx.counts.union).toBeGreaterThan(fx.counts.refsB);
  console.log(`fixture: B has ${fx.counts.refsB} chunk-list lines, A and B ${fx.counts.union} distinct chunks`);
}, 60_000);
afterAll(() => removeWork?.());

async function folderState(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort()) out[name] = await sha256Of(join(dir, name));
  return out;
}

/** Every snapshot `name` holds restores (fault-free) to its exact file: what an operator checks with a restore. */
async function restoresExactly(world: MatrixFolder, name: string, expected: Record<string, string>): Promise<void> {
  const out = join(world.root, `check-${name}`);
  await mkdir(out, { recursive: true });
  for (const [id, sha] of Object.entries(expected)) {
    const path = join(out, `${id}.sqlite`);
    await runRestore({ targets: [world.plain(name)], database: DB }, { selector: { id }, outPath: path, force: true });
    expect(await sha256Of(path), `snapshot ${id} on "${name}" no longer restores to its file`).toBe(sha);
  }
}

describe.concurrent('fault matrix v2: restore', () => {
  it.each(caseRows(RESTORE_V2))('%s', async (_title, c) => {
    const world = await matrixFolder('restore-v2');
    try {
      await cp(fx.pair.dir, world.dir('faulty'), { recursive: true });
      const dest = join(world.root, 'dest');
      await mkdir(dest);
      createSampleDatabase(join(dest, 'runs.sqlite'), { runs: 3, seed: 7 });
      const before = await folderState(dest);

      const faulty = world.target('faulty');
      const controller = new AbortController();
      const fault = faultOfV2(c, fx.counts, () => controller.abort());
      faulty.faults.arm(fault);
      const settled = await settleWithin(`restore v2 (${c.title})`, controller, [faulty.faults], (signal) =>
        runRestore(
          { targets: [faulty.target], database: DB },
          { selector: { latest: true }, outPath: join(dest, 'runs.sqlite'), force: true, signal },
        ),
      );
      expectOutcome(c, settled, faulty.faults, fault);
      if (settled.status === 'rejected' && c.row.keys?.source === '^chunks\\/' && c.kind !== 'hang') {
        // A chunk that failed is named by its key, so the operator knows which object to look at.
        expect(String((settled.error as Error).message)).toMatch(/chunks\/tcab\/[0-9a-f]{2}\/[0-9a-f]{64}\.zst/);
      }

      if (settled.status === 'resolved') {
        expect(Object.keys(await folderState(dest)).filter((f) => f.includes('.restore-'))).toEqual([]);
        expect(await sha256Of(join(dest, 'runs.sqlite'))).toBe(fx.sha.b);
      } else {
        expect(await folderState(dest), 'a restore that failed changed its destination folder').toEqual(before);
      }
      // The source is only read: both snapshots still restore from it to their exact files.
      await restoresExactly(world, 'faulty', { [fx.pair.a.id]: fx.sha.a, [fx.pair.b.id]: fx.sha.b });
    } finally {
      await world.remove();
    }
  });
});

describe.concurrent('fault matrix v2: verify', () => {
  it.each(caseRows(VERIFY_V2))('%s', async (_title, c) => {
    const world = await matrixFolder('verify-v2');
    try {
      const ids = [fx.pair.a.id, fx.pair.b.id].sort();
      for (const name of ['good', 'faulty']) await cp(verified.get(name)!, world.dir(name), { recursive: true });
      const before = await readVerifyRecord(world.plain('faulty'), DB);

      const good = world.target('good');
      const faulty = world.target('faulty');
      const controller = new AbortController();
      const fault = faultOfV2(c, fx.counts, () => controller.abort());
      faulty.faults.arm(fault);
      const settled = await settleWithin(`verify v2 (${c.title})`, controller, [faulty.faults], (signal) =>
        runVerifyRotation({ targets: [good.target, faulty.target], database: DB }, { ...VERIFY_WINDOW, all: true, signal, concurrency: 1 }),
      );
      expectOutcome(c, settled, faulty.faults, fault);

      // Verify only reads: both snapshots still restore from "faulty" to their exact files (below).
      const after = await readVerifyRecord(world.plain('faulty'), DB);
      for (const id of ids) {
        const state = copyState(after, id);
        expect(state.state, `intact snapshot ${id} on "faulty" is recorded as failed verify (${state.error})`).not.toBe('failed');
      }
      if (settled.status === 'resolved') {
        for (const id of ids) expect(copyState(after, id).checkedAt! > before!.snapshots[id]!.checkedAt).toBe(true);
      }
      await restoresExactly(world, 'faulty', { [fx.pair.a.id]: fx.sha.a, [fx.pair.b.id]: fx.sha.b });
    } finally {
      await world.remove();
    }
  });
});

it('the format-2 read matrix has the size it states', () => {
  const n = casesOfV2(RESTORE_V2).length + casesOfV2(VERIFY_V2).length;
  console.log(`fault matrix v2 (reads): restore ${casesOfV2(RESTORE_V2).length} + verify ${casesOfV2(VERIFY_V2).length} = ${n} cases`);
  expect(n).toBeGreaterThan(90);
});
