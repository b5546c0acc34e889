/**
 * The agent's settings, as loadAgentConfig (src/config.ts) reads them from TCAB_AGENT_*: the agent's own
 * types, so that the agent does not import the settings catalogue that imports its protocol.
 */

export type AgentAuthScheme = 'hmac' | 'entra';

/** What the agent checks Bearer tokens against (TCAB_AGENT_ENTRA_*). */
export interface EntraAgentConfig {
  /** Lower-case GUID. */
  tenantId: string;
  audiences: string[];
  /** Lower-case GUIDs. */
  allowedObjectIds: string[];
  /** e.g. https://login.microsoftonline.com, without a trailing slash. */
  authority: string;
  ca: string | undefined;
}

export interface AgentConfig {
  dbPath: string;
  stagingDir: string;
  host: string;
  port: number;
  /** Accepted schemes; default hmac alone. */
  auth?: AgentAuthScheme[];
  /** HMAC keys; empty when hmac is not enabled. */
  keys: Map<string, string>;
  /** Required when auth includes entra. */
  entra?: EntraAgentConfig;
  tls: { cert: string; key: string } | undefined;
  databaseName: string;
  compression: 'auto' | 'gzip' | 'zstd' | 'none';
  stagingTtlMs: number;
  /** Application drills; absent or without a command: POST /v1/drills answers 501. */
  drill?: { command: string[] | undefined; healthTimeoutMs: number; stopGraceMs: number };
}
