/** Builds the jobs' dependencies from validated configuration; shared by the CLI and the functions. */
import { AgentClient } from './agent/client.js';
import type { AgentClientConfig, TargetsConfig } from './config.js';
import { TcabError } from './errors.js';
import type { Logger } from './log.js';
import { openTarget } from './targets/index.js';
import type { Target } from './targets/target.js';

export function openTargets(config: TargetsConfig, logger: Logger, only?: string): Target[] {
  const specs = only ? config.targets.filter((t) => t.name === only) : config.targets;
  if (only && specs.length === 0) {
    throw new TcabError(`No target named "${only}"`, { hint: `TCAB_BACKUP_TARGETS names: ${config.targets.map((t) => t.name).join(', ')}` });
  }
  return specs.map((spec) => openTarget(spec, { logger }));
}

export function openAgent(config: AgentClientConfig, logger: Logger): AgentClient {
  return new AgentClient({ url: config.url, keyId: config.keyId, key: config.key, ...(config.ca ? { ca: config.ca } : {}), timeoutMs: config.timeoutMs, logger });
}
