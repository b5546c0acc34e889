/**
 * Reading the newest drill records: ids have second precision, so two drills started within one second are
 * told apart by the time each record says it started, also when only the newest few are asked for.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DRILL_RECORD_FORMAT_VERSION, readRecentDrills, writeDrillRecord, type DrillRecord } from '../../src/catalog/drill-record.js';
import { createFileTarget } from '../../src/targets/file.js';
import type { Target } from '../../src/targets/target.js';

let dir: string;
let target: Target;

function record(drillId: string, startedAt: string, ok: boolean): DrillRecord {
  return {
    formatVersion: DRILL_RECORD_FORMAT_VERSION,
    kind: 'sqlite-drill',
    drillId,
    database: 'tcab',
    target: 'local',
    startedAt,
    finishedAt: startedAt,
    ok,
    snapshot: null,
    recoveryTimeMs: null,
    recoveryPoint: null,
    tables: {},
    live: { available: false },
    warnings: [],
  } as DrillRecord;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tcab-drill-records-'));
  target = createFileTarget({ kind: 'file', name: 'local', displayUrl: `file://${dir}`, path: dir });
});

afterAll(async () => rm(dir, { recursive: true, force: true }));

describe('readRecentDrills', () => {
  it('returns the drill that started last within one second, even when its id sorts first and only one is asked for', async () => {
    await writeDrillRecord(target, record('20261203T080000Z-00000000', '2026-12-03T08:00:00.100Z', false));
    // Started later in the same second, with an id that sorts before the other one's.
    await writeDrillRecord(target, record('20261203T080001Z-ffffffff', '2026-12-03T08:00:01.200Z', false));
    await writeDrillRecord(target, record('20261203T080001Z-00000001', '2026-12-03T08:00:01.900Z', true));

    const [newest] = await readRecentDrills(target, 'tcab', 1);
    expect(newest?.drillId).toBe('20261203T080001Z-00000001');
    expect(newest?.record?.ok).toBe(true);
    const all = await readRecentDrills(target, 'tcab', 2);
    expect(all.map((r) => r.drillId)).toEqual(['20261203T080001Z-00000001', '20261203T080001Z-ffffffff']);
  });
});
