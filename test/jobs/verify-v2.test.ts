/**
 * Verify of format-2 snapshots on real targets (a folder, Azurite): each distinct chunk is read once per run
 * however many snapshots of the run name it; a byte flipped in a chunk two snapshots share marks both damaged
 * in the run and in the verify record, naming the chunk's key; replicate then repairs both from a good copy.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { listRenewalRecords, writeRenewalRecord } from '../../src/catalog/renewals.js';
import { readVerifyRecord } from '../../src/catalog/verify-record.js';
import { createLogger } from '../../src/log.js';
import { chunkKey } from '../../src/format/chunk-key.js';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { VerifyFailedError, runVerifyRotation } from '../../src/jobs/verify/index.js';
import type { Target } from '../../src/targets/target.js';
import { storeFileAsV2 } from '../support/store-v2.js';
import { chunkRefs, counting, flipByte, tally, twoSnapshotFiles } from '../support/v2-fixtures.js';
import { blobTarget, testWorld } from '../support/world.js';

const world = testWorld();
const CHUNK = /^chunks\//;
const DAY = 86_400_000;
let files: { first: string; second: string };

beforeAll(async () => {
  files = twoSnapshotFiles(await world.tempDir('verify-v2'));
});

describe.each(['file', 'blob'] as const)('on a %s target', (kind) => {
  it('reads each chunk once, and a flipped byte in a shared chunk marks both snapshots damaged', async () => {
    const inner: Target = kind === 'file' ? (await world.folder('main')).target : blobTarget(world.clouds, 'main');
    const a = await storeFileAsV2(inner, 'tcab', files.first, { createdAt: new Date(Date.now() - 60_000) });
    const b = await storeFileAsV2(inner, 'tcab', files.second, { createdAt: new Date(Date.now() - 30_000) });
    const refsA = new Set((await chunkRefs(inner, a.manifest)).map((r) => r[0]));
    const refsB = new Set((await chunkRefs(inner, b.manifest)).map((r) => r[0]));
    const union = new Set([...refsA, ...refsB]);
    const counted = counting(inner);
    const verify = () =>
      runVerifyRotation({ targets: [counted.target], database: 'tcab' }, { withinMs: 7 * DAY, intervalMs: DAY, all: true });

    const clean = await verify();
    expect(clean.outcomes.map((o) => [o.id, o.verdict]).sort()).toEqual(
      [
        [a.manifest.id, 'ok'],
        [b.manifest.id, 'ok'],
      ].sort(),
    );
    const gets = tally(counted.gets, CHUNK);
    expect(gets.size).toBe(union.size);
    expect([...gets.values()].every((n) => n === 1)).toBe(true);
    // Both snapshots' checks cover all their chunks; together they read each once.
    const [oa, ob] = [a, b].map((s) => clean.outcomes.find((o) => o.id === s.manifest.id)!);
    expect(oa!.chunks!.distinct).toBe(refsA.size);
    expect(ob!.chunks!.distinct).toBe(refsB.size);
    expect(oa!.chunks!.read + ob!.chunks!.read).toBe(union.size);

    const shared = [...refsA].find((h) => refsB.has(h))!;
    const key = chunkKey('tcab', shared);
    await flipByte(inner, key);
    counted.gets.length = 0;
    const err = await verify().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VerifyFailedError);
    expect((err as Error).message).toContain(key);
    const result = (err as VerifyFailedError).result;
    for (const s of [a, b]) {
      const outcome = result.outcomes.find((o) => o.id === s.manifest.id)!;
      expect(outcome).toMatchObject({ ok: false, verdict: 'damaged' });
      expect(outcome.error).toContain(key);
    }
    expect(tally(counted.gets, CHUNK).get(key)).toBe(1);
    const record = (await readVerifyRecord(inner, 'tcab'))!;
    for (const s of [a, b]) {
      expect(record.snapshots[s.manifest.id]).toMatchObject({ ok: false, verdict: 'damaged', error: expect.stringContaining(key) });
    }

    // A good copy elsewhere: replicate rewrites the damaged chunk there once, and verify passes again.
    const { target: good } = await world.folder('good');
    await storeFileAsV2(good, 'tcab', files.first, { id: a.manifest.id, createdAt: new Date(a.manifest.createdAt) });
    await storeFileAsV2(good, 'tcab', files.second, { id: b.manifest.id, createdAt: new Date(b.manifest.createdAt) });
    counted.puts.length = 0;
    const repaired = await runReplicate({ targets: [good, counted.target], database: 'tcab' });
    const outcome = repaired.targets.find((t) => t.target === 'main')!;
    expect(outcome.copied.map((c) => c.id).sort()).toEqual([a.manifest.id, b.manifest.id].sort());
    expect(outcome.copied.every((c) => c.repaired?.includes(key))).toBe(true);
    expect(tally(counted.puts, CHUNK).get(key)).toBe(1);
    expect([...tally(counted.puts, CHUNK).values()].every((n) => n === 1)).toBe(true);
    const after = await verify();
    expect(after.failed).toBe(0);
  });
});

describe('renewal records', () => {
  it('are reported waiting, and as overdue (a warning, not a failure) once older than G', async () => {
    const { target } = await world.folder('renewals');
    const a = await storeFileAsV2(target, 'tcab', files.first, { createdAt: new Date(Date.now() - 60_000) });
    const [ref] = await chunkRefs(target, a.manifest);
    const key = await writeRenewalRecord(target, {
      database: 'tcab',
      snapshot: a.manifest.id,
      writer: 'snapshot',
      jobTimeoutMs: 25 * 60_000,
      chunks: [{ sha256: ref![0], plainBytes: ref![1], storedBytes: ref![2] }],
    });
    const lines: string[] = [];
    const logger = createLogger({ level: 'debug', sink: (_l, line) => lines.push(line) });
    const verify = (chunkGraceMs: number) =>
      runVerifyRotation({ targets: [target], database: 'tcab', logger, chunkGraceMs }, { withinMs: 7 * DAY, intervalMs: DAY, all: true });

    const fresh = await verify(7 * DAY);
    expect(fresh.targets[0]!.renewals).toMatchObject({ pending: 1 });
    expect(lines.some((l) => l.includes('verify.renewals_overdue'))).toBe(false);
    await new Promise((r) => setTimeout(r, 20));
    const overdue = await verify(10);
    expect(overdue.outcomes.every((o) => o.ok)).toBe(true);
    expect(lines.some((l) => l.includes('verify.renewals_overdue') && l.includes('"pending":1'))).toBe(true);
    // Verify only reports: the record stays for a snapshot or replicate run to check.
    expect((await listRenewalRecords(target, 'tcab')).map((r) => r.key)).toEqual([key]);
  });
});
