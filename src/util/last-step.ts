/**
 * Where a job was when it stopped moving: the last event it logged, at any level (shown or not), and the
 * target that event named. A job that stalls or runs out of time then says where, not only that it did.
 */
import type { Fields } from '../log.js';

export class LastStep {
  private event: string | undefined;
  private target: string | undefined;

  /** Pass as the logger's onEvent. */
  readonly observe = (event: string, fields: Fields): void => {
    this.event = event;
    this.target = typeof fields.target === 'string' ? fields.target : undefined;
  };

  describe(): string {
    if (!this.event) return 'before its first logged step';
    return `after its last logged step, ${this.event}${this.target ? ` (target "${this.target}")` : ''}`;
  }
}
