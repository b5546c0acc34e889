import { InvocationContext } from '@azure/functions';
import { beforeAll, expect, it } from 'vitest';
import { registration } from '../support/functions-host.js';

const logs: string[] = [];

beforeAll(async () => {
  delete process.env.TCAB_BACKUP_PG_SERVERS;
  await import('../../src/functions/postgres.js');
});

it('registers the Postgres check and drill timers on their schedule settings', () => {
  for (const [name, setting] of [
    ['pgCheckTimer', 'TCAB_BACKUP_PG_CHECK_SCHEDULE'],
    ['pgDrillTimer', 'TCAB_BACKUP_PG_DRILL_SCHEDULE'],
  ] as const) {
    const trigger = Object.values(registration(name).bindings).find((b) => b.direction === 'in')!;
    expect(trigger.type).toBe('timerTrigger');
    expect(trigger.schedule).toBe(`%${setting}%`);
  }
});

it('does nothing, and says why, when Postgres mode is off', async () => {
  for (const name of ['pgCheckTimer', 'pgDrillTimer']) {
    const context = new InvocationContext({ functionName: name, invocationId: name, logHandler: (_l, ...a) => logs.push(a.join(' ')) });
    await registration(name).handler({ isPastDue: false }, context);
  }
  expect(logs.filter((l) => l.includes('TCAB_BACKUP_PG_SERVERS is not set'))).toHaveLength(2);
});
