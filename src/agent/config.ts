/**
 * The agent's settings (TCAB_AGENT_*): its types, their declarations and loadAgentConfig. The agent reads
 * nothing from the function app's settings; the catalogue (src/settings.ts) takes AGENT_SETTINGS from here.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { registerSecret } from '../log.js';
import { splitCommand } from '../util/command.js';
import { isLoopbackHost } from '../util/net.js';
import {
  commaList,
  defineSettings,
  durationMs,
  guid,
  MIN_SECRET_CHARS,
  pemSetting,
  Problems,
  settingsReader,
  type Env,
} from '../util/settings.js';
import { CompressionSchema, DATABASE_NAME_RE, parseKeyList } from './protocol.js';

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

export const AGENT_SETTINGS = defineSettings([
  {
    name: 'TCAB_AGENT_DB',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description: "Path of the backend's SQLite database (read access is enough).",
  },
  {
    name: 'TCAB_AGENT_STAGING',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description: 'Private staging folder on the same disk, writable by the agent only. Needs about 1.2 x the database size free.',
  },
  {
    name: 'TCAB_AGENT_LISTEN',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    default: '127.0.0.1:8787',
    description: 'host:port to listen on. A non-loopback address requires TLS (TCAB_AGENT_TLS_CERT and TCAB_AGENT_TLS_KEY).',
  },
  {
    name: 'TCAB_AGENT_AUTH',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    default: 'hmac',
    description:
      'Accepted authentication schemes: hmac (TCAB-HMAC-SHA256 signatures with TCAB_AGENT_KEYS), entra (Bearer tokens from Microsoft Entra ID, see TCAB_AGENT_ENTRA_*), or hmac,entra for both (e.g. while switching).',
  },
  {
    name: 'TCAB_AGENT_KEYS',
    side: 'agent',
    requiredInAzure: false,
    secret: true,
    description:
      'Accepted HMAC keys, id=secret,id2=secret2 (several during rotation). Each secret at least 32 characters. Required when TCAB_AGENT_AUTH includes hmac.',
  },
  {
    name: 'TCAB_AGENT_ENTRA_TENANT_ID',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description: 'With entra in TCAB_AGENT_AUTH: the directory (tenant) id, a GUID. Tokens must be issued by this tenant (iss and tid).',
  },
  {
    name: 'TCAB_AGENT_ENTRA_AUDIENCE',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description:
      "With entra: the audience (aud) tokens must be for, the agent's application id URI (v1.0 tokens, e.g. api://tcab-backup-agent) or client id (v2.0 tokens); several comma-separated.",
  },
  {
    name: 'TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description:
      "With entra: comma-separated object (principal) ids allowed to call the agent, the function app's managed identity. Tokens of any other identity are refused.",
  },
  {
    name: 'TCAB_AGENT_ENTRA_AUTHORITY',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    default: 'https://login.microsoftonline.com',
    description:
      "With entra: the Entra ID authority (https) the signing keys are fetched from (<authority>/<tenant>/v2.0/.well-known/openid-configuration); another cloud's, or a local stand-in for tests.",
  },
  {
    name: 'TCAB_AGENT_ENTRA_CA',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description:
      'With entra: PEM (inline or a file path) of a CA to trust for TCAB_AGENT_ENTRA_AUTHORITY, for a private authority or tests. Not needed for Entra ID itself.',
  },
  {
    name: 'TCAB_AGENT_TLS_CERT',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description: 'Path of the PEM certificate (chain) to serve HTTPS with.',
  },
  {
    name: 'TCAB_AGENT_TLS_KEY',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description: 'Path of the PEM private key for TCAB_AGENT_TLS_CERT.',
  },
  {
    name: 'TCAB_AGENT_DATABASE_NAME',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    default: 'tcab',
    description: 'Database name reported in snapshot descriptions.',
  },
  {
    name: 'TCAB_AGENT_COMPRESSION',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    default: 'auto',
    description: 'Default compression when a request names none: auto (zstd when available, else gzip), zstd, gzip or none.',
  },
  {
    name: 'TCAB_AGENT_STAGING_TTL',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    default: '1h',
    description: 'Staged snapshots are removed after this long even when no DELETE comes.',
  },
  {
    name: 'TCAB_AGENT_DRILL_BACKEND_COMMAND',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    description:
      "The backend command an application drill starts on the restored copy (POST /v1/drills), run without a shell: words separated by spaces, \"...\" or '...' to keep spaces in a word; {database_url} and {port} are replaced, and TCAB_BACKEND_DATABASE_URL=sqlite://<scratch file> and PORT=<free loopback port> are added to its environment (the agent's own TCAB_AGENT_* settings are not passed on). Unset: application drills are refused (501). E.g. /opt/tcab/bin/tcab-backend serve --port {port}.",
  },
  {
    name: 'TCAB_AGENT_DRILL_HEALTH_TIMEOUT',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    default: '2m',
    description: "How long an application drill waits for the backend's GET /healthz to answer 200 (migrations on a large copy take time).",
  },
  {
    name: 'TCAB_AGENT_DRILL_STOP_GRACE',
    side: 'agent',
    requiredInAzure: false,
    secret: false,
    default: '10s',
    description: 'After an application drill, the backend gets SIGTERM and this long to exit before SIGKILL.',
  },
]);

const { read } = settingsReader(AGENT_SETTINGS);

const agentAuthSchemes = z.string().transform((s, ctx) => {
  const list = s
    .split(',')
    .map((x) => x.trim().toLowerCase())
    .filter(Boolean);
  if (list.length === 0 || list.some((x) => x !== 'hmac' && x !== 'entra') || new Set(list).size !== list.length) {
    ctx.addIssue({ code: 'custom', message: 'expected hmac, entra, or hmac,entra for both' });
    return z.NEVER;
  }
  return list as AgentAuthScheme[];
});

/** The Entra ID authority: https only, since the signing keys fetched from it decide which tokens are genuine. */
const entraAuthority = z.string().transform((s, ctx) => {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'expected an https URL like https://login.microsoftonline.com' });
    return z.NEVER;
  }
  if (u.protocol !== 'https:' || u.username || u.password || u.search || u.hash) {
    ctx.addIssue({
      code: 'custom',
      message: 'expected an https URL without credentials, query or fragment, like https://login.microsoftonline.com',
    });
    return z.NEVER;
  }
  return `${u.origin}${u.pathname.replace(/\/+$/, '')}`;
});

export function loadAgentConfig(env: Env = process.env): AgentConfig {
  const problems = new Problems();
  const dbPath = read(env, problems, 'TCAB_AGENT_DB', z.string({ message: 'is required: the path of the SQLite database' }).min(1));
  const stagingDir = read(env, problems, 'TCAB_AGENT_STAGING', z.string({ message: 'is required: a private staging folder' }).min(1));
  const listen = read(
    env,
    problems,
    'TCAB_AGENT_LISTEN',
    z.string().regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected host:port, e.g. 127.0.0.1:8787 or [::1]:8787'),
  );
  const auth = read(env, problems, 'TCAB_AGENT_AUTH', agentAuthSchemes);
  const hmac = auth?.includes('hmac') ?? true;
  let keys: Map<string, string> | undefined;
  const rawKeys = env.TCAB_AGENT_KEYS?.trim();
  if (!rawKeys) {
    if (hmac)
      problems.add(
        'TCAB_AGENT_KEYS',
        'is not set: expected id=secret[,id=secret...] (or TCAB_AGENT_AUTH=entra to accept Entra ID tokens only)',
      );
    keys = new Map();
  } else {
    try {
      keys = parseKeyList(rawKeys);
      for (const [id, secret] of keys) {
        registerSecret(secret);
        if (!/^[A-Za-z0-9_.-]{1,64}$/.test(id)) problems.add('TCAB_AGENT_KEYS', `key id "${id}" must be letters, digits, "_", "." and "-"`);
        if (secret.length < MIN_SECRET_CHARS)
          problems.add('TCAB_AGENT_KEYS', `the secret of key "${id}" is shorter than ${MIN_SECRET_CHARS} characters`);
      }
      if (keys.size === 0) problems.add('TCAB_AGENT_KEYS', 'holds no key');
    } catch (e) {
      problems.add('TCAB_AGENT_KEYS', (e as Error).message);
    }
  }
  const certPath = env.TCAB_AGENT_TLS_CERT?.trim();
  const keyPath = env.TCAB_AGENT_TLS_KEY?.trim();
  let tls: AgentConfig['tls'];
  if (Boolean(certPath) !== Boolean(keyPath)) {
    problems.add(
      certPath ? 'TCAB_AGENT_TLS_KEY' : 'TCAB_AGENT_TLS_CERT',
      'is not set, but its pair is: TLS needs both the certificate and the key',
    );
  } else if (certPath && keyPath) {
    try {
      tls = { cert: readFileSync(certPath, 'utf8'), key: readFileSync(keyPath, 'utf8') };
    } catch (e) {
      problems.add(
        'TCAB_AGENT_TLS_CERT',
        `cannot read the certificate or key: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      );
    }
  }
  let host = '127.0.0.1';
  let port = 8787;
  if (listen) {
    const idx = listen.lastIndexOf(':');
    host = listen.slice(0, idx).replace(/^\[|\]$/g, '');
    port = Number(listen.slice(idx + 1));
    if (port > 65535) problems.add('TCAB_AGENT_LISTEN', `port ${port} is out of range`);
    if (!tls && !isLoopbackHost(host)) {
      problems.add(
        'TCAB_AGENT_LISTEN',
        `"${listen}" is not a loopback address, and plain HTTP is only allowed on loopback: set TCAB_AGENT_TLS_CERT and TCAB_AGENT_TLS_KEY`,
      );
    }
  }
  const databaseName = read(
    env,
    problems,
    'TCAB_AGENT_DATABASE_NAME',
    z.string().regex(DATABASE_NAME_RE, "lower-case letters, digits, '_' and '-'"),
  );
  const compression = read(
    env,
    problems,
    'TCAB_AGENT_COMPRESSION',
    z.enum(['auto', ...CompressionSchema.options], { message: 'expected auto, zstd, gzip or none' }),
  );
  const stagingTtlMs = read(env, problems, 'TCAB_AGENT_STAGING_TTL', durationMs('a duration like 1h'));
  const entra = auth?.includes('entra') ? loadEntraAgentConfig(env, problems) : undefined;
  let drillCommand: string[] | undefined;
  const rawCommand = env.TCAB_AGENT_DRILL_BACKEND_COMMAND?.trim();
  if (rawCommand) {
    try {
      drillCommand = splitCommand(rawCommand);
    } catch (e) {
      problems.add('TCAB_AGENT_DRILL_BACKEND_COMMAND', (e as Error).message);
    }
  }
  const healthTimeoutMs = read(env, problems, 'TCAB_AGENT_DRILL_HEALTH_TIMEOUT', durationMs('a duration like 2m'));
  const stopGraceMs = read(env, problems, 'TCAB_AGENT_DRILL_STOP_GRACE', durationMs('a duration like 10s'));
  problems.throwIfAny();
  return {
    dbPath: dbPath!,
    stagingDir: stagingDir!,
    host,
    port,
    auth: auth!,
    keys: keys!,
    ...(entra ? { entra } : {}),
    tls,
    databaseName: databaseName!,
    compression: compression!,
    stagingTtlMs: stagingTtlMs!,
    drill: { command: drillCommand, healthTimeoutMs: healthTimeoutMs!, stopGraceMs: stopGraceMs! },
  };
}

function loadEntraAgentConfig(env: Env, problems: Problems): EntraAgentConfig | undefined {
  const tenantId = read(env, problems, 'TCAB_AGENT_ENTRA_TENANT_ID', guid('the directory (tenant) id'));
  const audiences = read(
    env,
    problems,
    'TCAB_AGENT_ENTRA_AUDIENCE',
    commaList("the agent's application id URI or client id, e.g. api://tcab-backup-agent", z.string().regex(/^\S+$/, 'no spaces')),
  );
  const allowedObjectIds = read(
    env,
    problems,
    'TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS',
    commaList("the object (principal) id of the function app's managed identity", guid('an object id')),
  );
  const authority = read(env, problems, 'TCAB_AGENT_ENTRA_AUTHORITY', entraAuthority);
  const ca = pemSetting(env, problems, 'TCAB_AGENT_ENTRA_CA');
  if (!tenantId || !audiences || !allowedObjectIds || !authority) return undefined;
  return { tenantId, audiences, allowedObjectIds, authority, ca };
}
