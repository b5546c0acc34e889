/**
 * The catalogue of every setting, assembled from the declarations each part keeps next to its loader. The
 * README's configuration reference (src/settings-doc.ts) and the infra checks read it; the order here is the
 * order of the README tables. test/settings.test.ts checks that the loaders read exactly these settings.
 */
import { AGENT_SETTINGS } from './agent/config.js';
import { BACKUP_SETTINGS } from './config.js';
import { CHECK_JOB_SETTINGS, REPLICATE_PRUNE_SETTINGS } from './jobs/settings.js';
import { PG_SETTINGS } from './postgres/config.js';
import { RETENTION_SETTINGS } from './retention/settings.js';
import type { SettingDoc } from './util/settings.js';

export type { SettingDoc };

export const SETTINGS: readonly SettingDoc[] = [
  ...BACKUP_SETTINGS,
  ...AGENT_SETTINGS,
  ...RETENTION_SETTINGS,
  ...REPLICATE_PRUNE_SETTINGS,
  ...PG_SETTINGS,
  ...CHECK_JOB_SETTINGS,
];

const seen = new Set<string>();
for (const s of SETTINGS) {
  if (seen.has(s.name)) throw new Error(`${s.name} is declared twice; each setting belongs to one part`);
  seen.add(s.name);
}
