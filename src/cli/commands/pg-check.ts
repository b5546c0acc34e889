/** `tcab-backup pg check`: the Postgres servers' backup settings against the policy (the `pg` group: ./pg.ts). */
import { loadPgCheckConfig, runPgCheck } from '../../postgres/index.js';
import type { PgSubcommand } from './pg.js';

export const pgCheck: PgSubcommand = async (env, deps) => {
  const result = await runPgCheck(loadPgCheckConfig(env), deps);
  return {
    result,
    lines: result.servers.map((s) => `pg check ${s.server}: ${s.ok ? 'ok' : `PROBLEM ${s.violations.map((v) => v.message).join('; ')}`}`),
  };
};
