/** `tcab-backup pg drill [--force]`: advances the Postgres point-in-time-restore drill by one step (the `pg` group: ./pg.ts). */
import { loadPgDrillConfig, runPgDrill } from '../../postgres/index.js';
import type { PgSubcommand } from './pg.js';

export const pgDrill: PgSubcommand = async (env, deps, options) => {
  const result = await runPgDrill(loadPgDrillConfig(env), deps, { force: options.force });
  return { result, lines: result.servers.map((s) => `pg drill ${s.server}: ${s.action}: ${s.detail}`) };
};
