/**
 * The Postgres part of the status document, read back from what the jobs wrote on the target: the latest
 * policy check, the current drill, and the last drill that finished (and the last that succeeded). Judging
 * staleness (no check or no successful drill within an interval) is the monitor's; this only reports.
 */
import type { Target } from '../targets/target.js';
import { drillView, type PgDrillView } from './drill.js';
import {
  PgCheckStatusSchema,
  PgCurrentDrillSchema,
  PgDrillRecordSchema,
  pgCurrentDrillKey,
  pgDrillKey,
  pgStatusKey,
  readRecord,
  type PgDrillSummary,
} from './records.js';
import type { ServerRef } from './resource-id.js';

export interface PgServerStatus {
  server: string;
  serverId: string;
  check: { checkedAt: string; ok: boolean; violations: string[] } | null;
  /** The current drill (running or the last one, finished). */
  drill: PgDrillView | null;
  lastFinishedDrill: PgDrillSummary | null;
  lastSucceededDrill: PgDrillSummary | null;
}

export async function pgStatusSummary(
  target: Target,
  servers: Pick<ServerRef, 'id' | 'name'>[],
  signal?: AbortSignal,
): Promise<PgServerStatus[]> {
  const out: PgServerStatus[] = [];
  for (const s of servers) {
    const check = await readRecord(target, pgStatusKey(s.name), PgCheckStatusSchema, signal);
    const pointer = await readRecord(target, pgCurrentDrillKey(s.name), PgCurrentDrillSchema, signal);
    const drill = pointer ? await readRecord(target, pgDrillKey(s.name, pointer.value.drillId), PgDrillRecordSchema, signal) : undefined;
    out.push({
      server: s.name,
      serverId: s.id,
      check: check
        ? { checkedAt: check.value.checkedAt, ok: check.value.ok, violations: check.value.violations.map((v) => v.message) }
        : null,
      drill: drill ? drillView(drill.value) : null,
      lastFinishedDrill: pointer?.value.lastFinished ?? null,
      lastSucceededDrill: pointer?.value.lastSucceeded ?? null,
    });
  }
  return out;
}
