/**
 * One drill record as read from the target, with its etag. Every change is written with If-Match on the
 * etag this invocation read: an invocation that lost a race gets PreconditionFailedError and acts no
 * further, so overlapping ticks can never both start a restore or both delete.
 */
import type { PostgreSQLManagementFlexibleServerClient } from '@azure/arm-postgresql-flexible';
import type { TokenCredential } from '@azure/identity';
import type { Logger } from '../log.js';
import type { Target } from '../targets/target.js';
import type { PgDrillConfig } from './config.js';
import { pgDrillKey, writeRecord, type DrillState, type PgDrillRecord } from './records.js';
import type { ServerRef } from './resource-id.js';

export interface DrillContext {
  config: PgDrillConfig;
  source: ServerRef;
  client: PostgreSQLManagementFlexibleServerClient;
  credential: TokenCredential;
  target: Target;
  logger: Logger;
  now: () => Date;
  signal?: AbortSignal;
}

export class DrillHandle {
  constructor(
    readonly ctx: DrillContext,
    public record: PgDrillRecord,
    private etag: string,
  ) {}

  get key(): string {
    return pgDrillKey(this.ctx.source.name, this.record.drillId);
  }

  /** Writes `changes` over the record, conditional on the etag read; a state change is added to the history. */
  async save(changes: Partial<PgDrillRecord>): Promise<void> {
    const at = this.ctx.now().toISOString();
    const next: PgDrillRecord = { ...this.record, ...changes, updatedAt: at };
    if (changes.state && changes.state !== this.record.state) next.history = [...this.record.history, { state: changes.state, at }];
    this.etag = await writeRecord(this.ctx.target, this.key, next, { ifMatch: this.etag }, this.ctx.signal);
    this.record = next;
  }

  /**
   * The drill failed at `step`: it goes on to `deleting` (its server, if any, is removed on the next ticks)
   * and ends as `failed`, when the failure is raised.
   */
  async fail(step: DrillState, message: string, hint: string, extra: Partial<PgDrillRecord> = {}): Promise<void> {
    await this.save({ ...extra, state: 'deleting', outcome: 'failed', failure: { step, message, hint } });
    this.ctx.logger.error('pg.drill.failing', {
      drillId: this.record.drillId,
      server: this.ctx.source.name,
      drillServer: this.record.drillServer.name,
      step,
      message,
    });
  }
}
