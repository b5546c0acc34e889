/**
 * Shared pieces of the Postgres job tests: a credential that hands out fixed tokens (the fake ARM checks
 * the bearer token; a test PostgreSQL can take an Entra token as a password), a clock moved by hand, and
 * the environment that points the jobs at the fakes. Folders and log capture come from world.ts.
 */
import type { AccessToken, TokenCredential } from '@azure/identity';

export const SUBSCRIPTION = '0b1f6471-1bf0-4dda-aec3-cb9272f09590';
export const ARM_TOKEN = 'arm-token-for-tests-0123456789';

export class FixedCredential implements TokenCredential {
  readonly scopes: string[] = [];
  constructor(private readonly tokens: { arm: string; postgres?: string }) {}
  async getToken(scopes: string | string[]): Promise<AccessToken> {
    const scope = Array.isArray(scopes) ? scopes[0]! : scopes;
    this.scopes.push(scope);
    const token = scope.startsWith('https://ossrdbms-aad') ? this.tokens.postgres : this.tokens.arm;
    if (!token) throw new Error(`no token for ${scope}`);
    return { token, expiresOnTimestamp: Date.now() + 3_600_000 };
  }
}

/** The environment of a deployment watching `serverIds` through the fake ARM at `endpoint`. */
export function pgEnv(endpoint: string, serverIds: string[], extra: Record<string, string> = {}): Record<string, string> {
  return { TCAB_BACKUP_PG_SERVERS: serverIds.join(','), TCAB_BACKUP_ARM_ENDPOINT: endpoint, ...extra };
}

/** A clock the test moves by hand, so that timeouts and ages need no waiting. */
export class TestClock {
  constructor(private t = Date.now()) {}
  now = (): Date => new Date(this.t);
  advance(ms: number): void {
    this.t += ms;
  }
}

/** An HTTPS_PROXY in the environment would capture requests to the fakes on 127.0.0.1. */
export function bypassProxyForLoopback(): void {
  const current = process.env.NO_PROXY ?? process.env.no_proxy ?? '';
  process.env.NO_PROXY = [current, '127.0.0.1', 'localhost'].filter(Boolean).join(',');
}
