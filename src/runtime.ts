/** Builds the jobs' dependencies from validated configuration; shared by the CLI and the functions. */
import type { TokenCredential } from '@azure/identity';
import { AgentClient } from './agent/client.js';
import type { AgentClientConfig, TargetsConfig } from './config.js';
import { TcabError } from './errors.js';
import type { Logger } from './log.js';
import { openTarget } from './targets/index.js';
import type { Target } from './targets/target.js';

export function openTargets(config: TargetsConfig, logger: Logger, only?: string): Target[] {
  const specs = only ? config.targets.filter((t) => t.name === only) : config.targets;
  if (only && specs.length === 0) {
    throw new TcabError(`No target named "${only}"`, {
      hint: `TCAB_BACKUP_TARGETS names: ${config.targets.map((t) => t.name).join(', ')}`,
    });
  }
  return specs.map((spec) => openTarget(spec, { logger }));
}

/**
 * The agent client for the configured scheme. With entra the token comes from `credential`, by default
 * DefaultAzureCredential: the function app's managed identity in Azure (AZURE_CLIENT_ID names a user-assigned one).
 */
export function openAgent(config: AgentClientConfig, logger: Logger, credential?: TokenCredential): AgentClient {
  const common = { url: config.url, ...(config.ca ? { ca: config.ca } : {}), timeoutMs: config.timeoutMs, logger };
  if (config.auth.scheme === 'entra') {
    return new AgentClient({ ...common, credential: credential ?? managedIdentity(), scope: config.auth.scope });
  }
  return new AgentClient({ ...common, keyId: config.auth.keyId, key: config.auth.key });
}

/** DefaultAzureCredential, with @azure/identity loaded on the first token request (HMAC runs never load it). */
export function managedIdentity(): TokenCredential {
  let credential: Promise<TokenCredential> | undefined;
  return {
    getToken: async (scopes, options) => {
      credential ??= import('@azure/identity').then((m) => new m.DefaultAzureCredential());
      return (await credential).getToken(scopes, options);
    },
  };
}
