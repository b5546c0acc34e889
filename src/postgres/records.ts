/**
 * What the Postgres jobs keep on a target, and where:
 *
 *   drills/pg-<server>/<drill id>.json   one PITR drill: its state machine, updated with If-Match
 *   drills/pg-<server>/current.json      which drill is the server's current one (at most one at a time)
 *   status/pg-<server>.json              the latest policy check of the server
 *
 * The "pg-" prefix keeps these apart from SQLite databases' drills and status. Server names are Azure's
 * (3-63 lower-case letters, digits and '-'), so keys are built here rather than with layout.ts, whose
 * database names are capped at 63 characters including the prefix.
 */
import { z } from 'zod';
import { SERVER_NAME_RE } from './resource-id.js';

export const PG_RECORD_FORMAT_VERSION = 1;
const DRILL_ID_RE = /^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$/;

function checkServer(name: string): void {
  if (!SERVER_NAME_RE.test(name)) throw new Error(`"${name}" is not a flexible server name`);
}

export function pgDrillsPrefix(serverName: string): string {
  checkServer(serverName);
  return `drills/pg-${serverName}/`;
}

export function pgDrillKey(serverName: string, drillId: string): string {
  if (!DRILL_ID_RE.test(drillId)) throw new Error(`"${drillId}" is not a drill id (expected like 20261124T161300Z-3f9a1c2e)`);
  return `${pgDrillsPrefix(serverName)}${drillId}.json`;
}

export function pgCurrentDrillKey(serverName: string): string {
  return `${pgDrillsPrefix(serverName)}current.json`;
}

export function pgStatusKey(serverName: string): string {
  checkServer(serverName);
  return `status/pg-${serverName}.json`;
}

export const DrillStateSchema = z.enum(['requested', 'restoring', 'validating', 'deleting', 'done', 'failed']);
export type DrillState = z.infer<typeof DrillStateSchema>;

const Iso = z.string().datetime({ offset: true });

export const ValidationCheckSchema = z.object({ name: z.string(), ok: z.boolean(), detail: z.string() });
export type ValidationCheck = z.infer<typeof ValidationCheckSchema>;

export const PgDrillRecordSchema = z.object({
  formatVersion: z.literal(PG_RECORD_FORMAT_VERSION),
  kind: z.literal('pg-pitr-drill'),
  drillId: z.string().regex(DRILL_ID_RE),
  source: z.object({ id: z.string(), name: z.string(), subscriptionId: z.string(), resourceGroup: z.string() }),
  drillServer: z.object({ id: z.string(), name: z.string() }),
  state: DrillStateSchema,
  requestedAt: Iso,
  restorePoint: z.object({
    /** requestedAt minus TCAB_BACKUP_PG_RESTORE_LAG. */
    requested: Iso,
    /** The point actually asked of Azure: `requested`, or the earliest restore point when that was later. */
    used: Iso.optional(),
    earliestRestorePoint: Iso.optional(),
    clamped: z.boolean().optional(),
  }),
  restore: z.object({
    /** When the restore was first claimed: the start of the restore timeout. */
    startedAt: Iso.optional(),
    /** When this drill claimed the restore (set before the request is sent, so a crash is detectable). */
    claimedAt: Iso.optional(),
    /** Serialized state of the SDK's poller for the restore operation. */
    poller: z.string().optional(),
    readyAt: Iso.optional(),
    fullyQualifiedDomainName: z.string().optional(),
  }),
  validation: z.object({
    attempts: z.number().int().nonnegative(),
    lastError: z.string().optional(),
    checkedAt: Iso.optional(),
    runs: z.number().nonnegative().optional(),
    newestPublishedAt: Iso.nullable().optional(),
    checks: z.array(ValidationCheckSchema),
  }),
  deletion: z.object({
    claimedAt: Iso.optional(),
    poller: z.string().optional(),
    deletedAt: Iso.optional(),
  }),
  /** Set when the drill leaves validation (or fails earlier): what `deleting` leads to. */
  outcome: z.enum(['succeeded', 'failed']).optional(),
  failure: z.object({ step: DrillStateSchema, message: z.string(), hint: z.string() }).optional(),
  /**
   * Requested to ready: to the tick that first saw the restored server Ready, so its resolution is the
   * drill schedule's period (10 minutes by default), which is small next to restores that take an hour.
   */
  recoveryTimeMs: z.number().nonnegative().optional(),
  /** Restore request sent to ready. */
  restoreDurationMs: z.number().nonnegative().optional(),
  /** Restore point minus the newest run found on the restored server. */
  recoveryPointMs: z.number().optional(),
  finishedAt: Iso.optional(),
  history: z.array(z.object({ state: DrillStateSchema, at: Iso })),
  updatedAt: Iso,
});
export type PgDrillRecord = z.infer<typeof PgDrillRecordSchema>;

const DrillSummarySchema = z.object({
  drillId: z.string(),
  outcome: z.enum(['succeeded', 'failed']),
  requestedAt: Iso,
  finishedAt: Iso,
  recoveryTimeMs: z.number().optional(),
  recoveryPointMs: z.number().optional(),
  failure: z.string().optional(),
});
export type PgDrillSummary = z.infer<typeof DrillSummarySchema>;

export const PgCurrentDrillSchema = z.object({
  formatVersion: z.literal(PG_RECORD_FORMAT_VERSION),
  kind: z.literal('pg-current-drill'),
  sourceServerId: z.string(),
  drillId: z.string().regex(DRILL_ID_RE),
  requestedAt: Iso,
  lastFinished: DrillSummarySchema.optional(),
  lastSucceeded: DrillSummarySchema.optional(),
});
export type PgCurrentDrill = z.infer<typeof PgCurrentDrillSchema>;

export const PgCheckStatusSchema = z.object({
  formatVersion: z.literal(PG_RECORD_FORMAT_VERSION),
  kind: z.literal('pg-check'),
  server: z.string(),
  serverId: z.string(),
  checkedAt: Iso,
  ok: z.boolean(),
  violations: z.array(z.object({ rule: z.string(), message: z.string(), hint: z.string() })),
  facts: z.record(z.string(), z.unknown()).nullable(),
  actions: z.array(z.record(z.string(), z.unknown())),
});
export type PgCheckStatus = z.infer<typeof PgCheckStatusSchema>;

export { readRecord, writeRecord, type Stored } from '../catalog/records.js';
