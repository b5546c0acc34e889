/**
 * The Azure Resource Manager client for flexible servers, and ARM errors turned into what an operator can
 * act on. One client per subscription: the SDK binds a client to one.
 */
import { PostgreSQLManagementFlexibleServerClient } from '@azure/arm-postgresql-flexible';
import type { TokenCredential } from '@azure/identity';
import { errorMessage } from '../errors.js';
import { redact } from '../log.js';
import type { PgCommonConfig } from './config.js';

/** Transport options that only private clouds and tests need; production runs with the SDK's defaults. */
export interface ArmClientOptions {
  /** Extra CA certificates (PEM) to trust for the ARM endpoint. */
  ca?: string;
  /** Retries of throttled or failed ARM calls within one invocation (SDK default: 3). */
  maxRetries?: number;
}

export type ArmClientFactory = (subscriptionId: string) => PostgreSQLManagementFlexibleServerClient;

export function armClientFactory(config: PgCommonConfig, credential: TokenCredential, options: ArmClientOptions = {}): ArmClientFactory {
  const clients = new Map<string, PostgreSQLManagementFlexibleServerClient>();
  return (subscriptionId) => {
    let client = clients.get(subscriptionId);
    if (!client) {
      client = new PostgreSQLManagementFlexibleServerClient(credential, subscriptionId, {
        // `endpoint` is what routes requests in 9.x; once it is set the token scope must be given too.
        endpoint: config.armEndpoint,
        credentialScopes: [`${armAudience(config.armEndpoint)}/.default`],
        ...(options.ca ? { tlsOptions: { ca: options.ca } } : {}),
        ...(options.maxRetries !== undefined ? { retryOptions: { maxRetries: options.maxRetries } } : {}),
        userAgentOptions: { userAgentPrefix: 'tcab-backup' },
      });
      clients.set(subscriptionId, client);
    }
    return client;
  };
}

// Sovereign clouds take the token for their own management endpoint; a loopback endpoint (tests, emulators)
// is given a token for the public cloud's audience, which is what the credential would be asked for anyway.
function armAudience(endpoint: string): string {
  const host = new URL(endpoint).hostname;
  return /^management\./.test(host) ? endpoint : 'https://management.azure.com';
}

export interface ArmFailure {
  status: number | undefined;
  code: string | undefined;
  message: string;
}

/** Status, ARM error code and message of a failed SDK call (RestError), or of a failed long-running operation. */
export function armFailure(err: unknown): ArmFailure {
  // The SDK's RestError carries the ARM error body's code and message; a failed long-running operation is
  // a plain Error whose message already holds both.
  const e = err as { statusCode?: number; code?: string } | null;
  return {
    status: typeof e?.statusCode === 'number' ? e.statusCode : undefined,
    code: typeof e?.code === 'string' ? e.code : undefined,
    // Without its final full stop, so that it reads well inside a longer sentence.
    message: redact(errorMessage(err)).replace(/\.+$/, ''),
  };
}

export function isArmNotFound(err: unknown): boolean {
  return armFailure(err).status === 404;
}

/** One line for messages: "403 AuthorizationFailed: The client ... does not have authorization ...". */
export function describeArmFailure(err: unknown): string {
  const f = armFailure(err);
  const head = [f.status, f.code].filter((x) => x !== undefined && x !== '').join(' ');
  return head && !f.message.startsWith(head) ? `${head}: ${f.message}` : f.message;
}

/** What to check next, by kind of ARM failure; `role` is the least role the call needs. */
export function armHint(err: unknown, where: { resourceGroup: string; role: string }): string {
  const f = armFailure(err);
  if (f.status === 401 || f.status === 403) {
    return `the function app's managed identity (AZURE_CLIENT_ID) needs the ${where.role} role on resource group "${where.resourceGroup}"`;
  }
  if (f.status === 404)
    return 'the resource id in TCAB_BACKUP_PG_SERVERS (subscription, resource group and server name) and that the server still exists';
  if (f.status === 409) return 'another operation is running on the server; the next run retries';
  if (f.status === 429 || (f.status !== undefined && f.status >= 500))
    return 'Azure throttled or failed the request; the next run retries. If it persists, check Azure status for Azure Database for PostgreSQL';
  if (f.status === undefined) {
    // No HTTP status: either the request never got an answer, or Azure ran the operation and reports it failed.
    return (err as { name?: string } | null)?.name === 'RestError'
      ? 'that the ARM endpoint (TCAB_BACKUP_ARM_ENDPOINT) is reachable from the function app'
      : `the Activity log of resource group "${where.resourceGroup}"`;
  }
  return 'the ARM error above';
}
