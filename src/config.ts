/**
 * The function app's and the CLI's own settings: the targets and the database name, how to reach the agent,
 * the job timeout and the snapshot schedule. BACKUP_SETTINGS declares them (the catalogue in src/settings.ts
 * takes them from here); every default is the declared one. A ConfigError names each variable that is wrong.
 */
import { z } from 'zod';
import { CompressionSchema, DATABASE_NAME_RE } from './agent/protocol.js';
import { ConfigError } from './errors.js';
import { registerSecret } from './log.js';
import { credentialVariable, parseTargetList, type TargetSpec } from './targets/spec.js';
import {
  defineSettings,
  durationMs,
  httpUrl,
  NCRONTAB,
  pemSetting,
  Problems,
  secretString,
  settingsReader,
  type Env,
} from './util/settings.js';

export type { Env };

export const BACKUP_SETTINGS = defineSettings([
  {
    name: 'TCAB_BACKUP_TARGETS',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    description:
      'Comma-separated name=url list of targets, e.g. blob=azblob://stbak/tcab,r2=r2://<account-id>/tcab. Schemes: file://, azblob://, r2://, s3://...?endpoint=&region=.',
  },
  {
    name: 'TCAB_BACKUP_TARGET_<NAME>_CONNECTION_STRING',
    side: 'backup',
    requiredInAzure: false,
    secret: true,
    description:
      'azblob targets only, local runs only: a connection string (Azurite: UseDevelopmentStorage=true). In Azure leave it unset: the managed identity (AZURE_CLIENT_ID) is used.',
  },
  {
    name: 'TCAB_BACKUP_TARGET_<NAME>_ACCESS_KEY_ID',
    side: 'backup',
    requiredInAzure: false,
    secret: true,
    description: 'r2/s3 targets: the access key id (an R2 API token scoped to the bucket). A Key Vault reference in Azure.',
  },
  {
    name: 'TCAB_BACKUP_TARGET_<NAME>_SECRET_ACCESS_KEY',
    side: 'backup',
    requiredInAzure: false,
    secret: true,
    description: 'r2/s3 targets: the secret access key. A Key Vault reference in Azure.',
  },
  {
    name: 'TCAB_BACKUP_DATABASE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'tcab',
    description: "Database name used in storage keys (snapshots/<database>/...). Must match the agent's TCAB_AGENT_DATABASE_NAME.",
  },
  {
    name: 'TCAB_BACKUP_AGENT_URL',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    description: 'Base URL of the snapshot agent, e.g. https://10.0.1.4:8787. Plain http only for loopback.',
  },
  {
    name: 'TCAB_BACKUP_AGENT_AUTH',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'hmac',
    description:
      "How the functions authenticate to the agent: hmac (TCAB-HMAC-SHA256 with TCAB_BACKUP_AGENT_KEY_ID and TCAB_BACKUP_AGENT_KEY), or entra (a Microsoft Entra ID token of the function app's managed identity for TCAB_BACKUP_AGENT_ENTRA_SCOPE; the agent must have entra in TCAB_AGENT_AUTH).",
  },
  {
    name: 'TCAB_BACKUP_AGENT_KEY_ID',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    description:
      "Key id the functions sign agent requests with (one of the ids in the agent's TCAB_AGENT_KEYS). Not needed with TCAB_BACKUP_AGENT_AUTH=entra.",
  },
  {
    name: 'TCAB_BACKUP_AGENT_KEY',
    side: 'backup',
    requiredInAzure: true,
    secret: true,
    description:
      'HMAC secret for that key id, at least 32 characters (64 hex characters recommended). A Key Vault reference in Azure. Not needed with TCAB_BACKUP_AGENT_AUTH=entra.',
  },
  {
    name: 'TCAB_BACKUP_AGENT_ENTRA_SCOPE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    description:
      "With TCAB_BACKUP_AGENT_AUTH=entra: the scope the managed identity asks a token for, the agent's application id URI (or client id) followed by /.default, e.g. api://tcab-backup-agent/.default. AZURE_CLIENT_ID names a user-assigned identity.",
  },
  {
    name: 'TCAB_BACKUP_AGENT_CA',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    description: "PEM (inline or a file path) of the CA that signed the agent's TLS certificate, when it is not publicly trusted.",
  },
  {
    name: 'TCAB_BACKUP_AGENT_TIMEOUT',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '10m',
    description: 'How long to wait for the agent to make one snapshot (VACUUM INTO, check, compress).',
  },
  {
    name: 'TCAB_BACKUP_COMPRESSION',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'auto',
    description: "Compression asked of the agent: auto (the agent's best: zstd, else gzip), zstd, gzip or none.",
  },
  {
    name: 'TCAB_BACKUP_FORMAT',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '2',
    description:
      'Format of new snapshots: 2 (deduplicated: the agent cuts the file into content-defined chunks and only the chunks a target lacks are uploaded; docs/format-2.md) or 1 (the whole database, one compressed artifact per snapshot and target, the only format before format 2). Both formats restore, verify, drill and prune side by side on one target, so a deployment moves by changing nothing, or stays on format 1 with TCAB_BACKUP_FORMAT=1; "tcab-backup snapshot --format" overrides it for one snapshot.',
  },
  {
    name: 'TCAB_BACKUP_JOB_TIMEOUT',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '25m',
    description:
      "The longest a job runs (J of docs/format-2.md). Functions: a job still running this long is aborted, and its invocation fails naming the job and its last step once the job has settled (at most a minute later); at most 29m there: a value that leaves less than a minute before functionTimeout in host.json (30 minutes) fails every invocation naming this setting, so that the job, not the host, says what was stuck. CLI: \"tcab-backup snapshot\" and \"replicate\" stop at it too, in either format, and exit 1 saying what was done (run replicate again to go on: it copies only what is still missing); with no host there, it may be longer than 29m for one long catch-up, as long as TCAB_BACKUP_CHUNK_GRACE (the function app's) stays above 4 x it; never shorter than the function app's, whose prunes the renewal checks wait for. Prune's chunk sweep stops deleting at it, wherever prune runs (so keep a CLI prune's no longer than the function app's: sweep markers older than twice it count as stale).",
  },
  {
    name: 'TCAB_BACKUP_SNAPSHOT_SCHEDULE',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    default: '0 */5 * * * *',
    description:
      'NCRONTAB (six fields, UTC) of the timer-triggered snapshot. Default every 5 minutes, made for format 2, whose snapshots after the first store only the chunks that changed (README, "What it costs"); with TCAB_BACKUP_FORMAT=1 hourly (0 0 * * * *) is the usual choice.',
  },
]);

const { read } = settingsReader(BACKUP_SETTINGS);

const entraScope = z
  .string({ message: "is required with TCAB_BACKUP_AGENT_AUTH=entra: the agent's application id URI followed by /.default" })
  .regex(
    /^\S+\/\.default$/,
    "expected the agent's application id URI (or client id) followed by /.default, e.g. api://tcab-backup-agent/.default",
  );

export interface TargetsConfig {
  database: string;
  targets: TargetSpec[];
}

/** How the functions prove themselves to the agent: a signing key, or a managed identity token for a scope. */
export type AgentClientAuth = { scheme: 'hmac'; keyId: string; key: string } | { scheme: 'entra'; scope: string };

export interface AgentClientConfig {
  url: URL;
  auth: AgentClientAuth;
  ca: string | undefined;
  timeoutMs: number;
  compression: 'auto' | 'gzip' | 'zstd' | 'none';
}

export interface BackupConfig extends TargetsConfig {
  agent: AgentClientConfig;
  snapshotSchedule: string;
  snapshotFormat: SnapshotFormat;
}

export function loadTargetsConfig(env: Env = process.env): TargetsConfig {
  const problems = new Problems();
  // App Service resolves Key Vault references before the app starts; one still in this form did not resolve.
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith('TCAB_BACKUP_') && value?.trim().startsWith('@Microsoft.KeyVault(')) {
      problems.add(
        name,
        'is an unresolved Key Vault reference: check that the secret exists and that the function app\'s identity has the "Key Vault Secrets User" role on the vault (Azure portal: the setting shows its reference status)',
      );
    }
  }
  const database = read(
    env,
    problems,
    'TCAB_BACKUP_DATABASE',
    z.string().regex(DATABASE_NAME_RE, "lower-case letters, digits, '_' and '-'"),
  );
  let targets: TargetSpec[] = [];
  const rawTargets = env.TCAB_BACKUP_TARGETS?.trim();
  if (!rawTargets) {
    problems.add('TCAB_BACKUP_TARGETS', 'is not set: expected name=url[,name=url...], e.g. local=file:///var/backups/tcab');
  } else {
    try {
      targets = parseTargetList(rawTargets, (name) => {
        const creds = {
          connectionString: env[credentialVariable(name, 'CONNECTION_STRING')]?.trim() || undefined,
          accessKeyId: env[credentialVariable(name, 'ACCESS_KEY_ID')]?.trim() || undefined,
          secretAccessKey: env[credentialVariable(name, 'SECRET_ACCESS_KEY')]?.trim() || undefined,
        };
        registerSecret(creds.connectionString);
        registerSecret(creds.secretAccessKey);
        return creds;
      });
    } catch (e) {
      problems.add('TCAB_BACKUP_TARGETS', (e as Error).message);
    }
    for (const t of targets) {
      if (t.kind === 's3' && Boolean(t.accessKeyId) !== Boolean(t.secretAccessKey)) {
        problems.add(
          credentialVariable(t.name, t.accessKeyId ? 'SECRET_ACCESS_KEY' : 'ACCESS_KEY_ID'),
          `is not set, but its pair is: target "${t.name}" needs both the access key id and the secret`,
        );
      }
    }
  }
  problems.throwIfAny();
  return { database: database!, targets };
}

export function loadAgentClientConfig(env: Env = process.env): AgentClientConfig {
  const problems = new Problems();
  const url = read(env, problems, 'TCAB_BACKUP_AGENT_URL', httpUrl(true));
  const scheme = read(env, problems, 'TCAB_BACKUP_AGENT_AUTH', z.enum(['hmac', 'entra'], { message: 'expected hmac or entra' }));
  let auth: AgentClientAuth | undefined;
  if (scheme === 'entra') {
    // Unused with entra, yet a key left in the settings must still never reach a log.
    registerSecret(env.TCAB_BACKUP_AGENT_KEY?.trim());
    const scope = read(env, problems, 'TCAB_BACKUP_AGENT_ENTRA_SCOPE', entraScope);
    if (scope) auth = { scheme: 'entra', scope };
  } else if (scheme === 'hmac') {
    const keyId = read(
      env,
      problems,
      'TCAB_BACKUP_AGENT_KEY_ID',
      z.string({ message: 'is required' }).regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, "_", "." and "-"'),
    );
    const key = read(env, problems, 'TCAB_BACKUP_AGENT_KEY', secretString);
    registerSecret(key);
    if (keyId && key) auth = { scheme: 'hmac', keyId, key };
  }
  const ca = pemSetting(env, problems, 'TCAB_BACKUP_AGENT_CA');
  const timeoutMs = read(env, problems, 'TCAB_BACKUP_AGENT_TIMEOUT', durationMs('a duration like 10m'));
  const compression = read(
    env,
    problems,
    'TCAB_BACKUP_COMPRESSION',
    z.enum(['auto', ...CompressionSchema.options], { message: 'expected auto, zstd, gzip or none' }),
  );
  problems.throwIfAny();
  return { url: url!, auth: auth!, ca, timeoutMs: timeoutMs!, compression: compression! };
}

/** Everything the Function App needs; validated at once so a bad deployment fails on its first invocation. */
export function loadBackupConfig(env: Env = process.env): BackupConfig {
  const problems: string[] = [];
  let targets: TargetsConfig | undefined;
  let agent: AgentClientConfig | undefined;
  try {
    targets = loadTargetsConfig(env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(...e.problems);
  }
  try {
    agent = loadAgentClientConfig(env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.push(...e.problems);
  }
  const p = new Problems();
  const snapshotSchedule = read(env, p, 'TCAB_BACKUP_SNAPSHOT_SCHEDULE', NCRONTAB);
  const snapshotFormat = read(env, p, 'TCAB_BACKUP_FORMAT', snapshotFormatSchema);
  problems.push(...p.list);
  if (problems.length) throw new ConfigError(problems);
  return { ...targets!, agent: agent!, snapshotSchedule: snapshotSchedule!, snapshotFormat: snapshotFormat! };
}

/** The snapshot format new snapshots use (TCAB_BACKUP_FORMAT). */
export type SnapshotFormat = 1 | 2;

const snapshotFormatSchema = z
  .enum(['1', '2'], { message: 'expected 1 (one artifact per snapshot) or 2 (deduplicated chunks)' })
  .transform((s) => Number(s) as SnapshotFormat);

/** TCAB_BACKUP_FORMAT: 1 (one artifact per snapshot) or 2 (deduplicated chunks). */
export function loadSnapshotFormat(env: Env = process.env): SnapshotFormat {
  const problems = new Problems();
  const format = read(env, problems, 'TCAB_BACKUP_FORMAT', snapshotFormatSchema);
  problems.throwIfAny();
  return format!;
}

/** TCAB_BACKUP_JOB_TIMEOUT: how long a job of the functions may run before it is stopped. */
export function loadJobTimeoutMs(env: Env = process.env): number {
  const problems = new Problems();
  const ms = read(env, problems, 'TCAB_BACKUP_JOB_TIMEOUT', durationMs('a duration like 25m'));
  problems.throwIfAny();
  return ms!;
}
