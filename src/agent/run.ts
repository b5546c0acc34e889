/**
 * Starts the snapshot agent: checks what it was given, cleans the staging folder, listens, and sweeps expired
 * snapshots. `tcab-backup agent` calls `startAgent(loadAgentConfig())` and keeps running until a signal.
 */
import { access, constants } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AgentConfig } from './config.js';
import { TcabError } from '../errors.js';
import { createLogger, registerSecret, type Logger } from '../log.js';
import { isLoopbackHost } from '../util/net.js';
import { AppDriller } from './app-drill.js';
import { AgentAuthenticator, RequestAuthenticator } from './auth.js';
import { EntraTokenValidator } from './entra.js';
import { EntraSigningKeys } from './entra-keys.js';
import { chooseCompression, detectCompressions } from './compression.js';
import { answerClientError } from './http.js';
import { createAgentHandler } from './server.js';
import { Snapshotter } from './snapshotter.js';
import { prepareSqliteWorker } from './sqlite-worker.js';
import { Staging, statfsFreeBytes, type FreeBytes } from './staging.js';
import { agentVersion } from './status.js';
import { nodeSqlite } from '../util/sqlite.js';

export interface StartAgentOptions {
  logger?: Logger;
  /** Free bytes of the staging folder's file system; default fs.statfs. Tests pass their own to reach 507. */
  freeBytes?: FreeBytes;
  /** The zstd program used when the runtime's zlib has no zstd; default `zstd` from PATH. */
  zstdCommand?: string;
  /** false: use the zstd program even where node:zlib has zstd (tests of that path). */
  runtimeZstd?: boolean;
  /** How long a request (other than a drill's upload) may take to arrive; default 30 s. Tests shorten it. */
  requestTimeoutMs?: number;
}

export interface RunningAgent {
  /** Base URL the agent answers on, e.g. http://127.0.0.1:8787 (the real port when config.port was 0). */
  url: string;
  /**
   * Resolves once no snapshot is being made and the plain files of answered ones are gone (they are removed
   * just after the answer, which does not wait for it), and no application drill runs: staging then holds only artifacts.
   */
  idle(): Promise<void>;
  /** Stops listening, cuts open connections, waits for a snapshot in progress, and empties staging. */
  close(): Promise<void>;
}

/** How often expired snapshots are looked for: a few times per TTL, at least every minute. */
function sweepInterval(ttlMs: number): number {
  return Math.max(25, Math.min(60_000, Math.floor(ttlMs / 4)));
}

export async function startAgent(config: AgentConfig, options: StartAgentOptions = {}): Promise<RunningAgent> {
  const logger = options.logger ?? createLogger({ fields: { component: 'agent' } });
  // Checked again here although loadAgentConfig checks it: a config built in code must not bypass it.
  if (!config.tls && !isLoopbackHost(config.host)) {
    throw new TcabError(`The snapshot agent refuses to listen on ${config.host} without TLS`, {
      hint: 'plain HTTP is only allowed on loopback (127.0.0.0/8, ::1): set TCAB_AGENT_TLS_CERT and TCAB_AGENT_TLS_KEY, or TCAB_AGENT_LISTEN=127.0.0.1:<port>',
      code: 'AGENT_TLS_REQUIRED',
    });
  }
  // Before anything else: on an older Node every snapshot would fail; say so at start instead.
  nodeSqlite();
  const schemes = config.auth ?? ['hmac'];
  const hmac = schemes.includes('hmac');
  if (schemes.length === 0)
    throw new TcabError('The snapshot agent accepts no authentication scheme', {
      hint: 'TCAB_AGENT_AUTH (hmac, entra or hmac,entra)',
      code: 'AGENT_NO_AUTH',
    });
  if (hmac && config.keys.size === 0) {
    throw new TcabError('The snapshot agent has no HMAC key', {
      hint: 'TCAB_AGENT_KEYS (id=secret,...), or TCAB_AGENT_AUTH=entra to accept Entra ID tokens only',
      code: 'AGENT_NO_KEYS',
    });
  }
  if (schemes.includes('entra') && !config.entra) {
    throw new TcabError('The snapshot agent is to accept Entra ID tokens (TCAB_AGENT_AUTH includes entra) but has no Entra settings', {
      hint: 'TCAB_AGENT_ENTRA_TENANT_ID, TCAB_AGENT_ENTRA_AUDIENCE and TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS',
      code: 'AGENT_NO_ENTRA',
    });
  }
  for (const secret of config.keys.values()) registerSecret(secret);

  const compressions = detectCompressions({ zstdCommand: options.zstdCommand, runtimeZstd: options.runtimeZstd });
  if (config.compression !== 'auto' && !chooseCompression(config.compression, 'auto', compressions).ok) {
    throw new TcabError(
      `The snapshot agent cannot make ${config.compression} artifacts (it can make: ${compressions.available.join(', ')})`,
      {
        hint:
          config.compression === 'zstd'
            ? 'install the zstd package on the VM, or set TCAB_AGENT_COMPRESSION=auto'
            : 'TCAB_AGENT_COMPRESSION',
        code: 'AGENT_COMPRESSION_UNAVAILABLE',
      },
    );
  }
  try {
    await access(config.dbPath, constants.R_OK);
  } catch (err) {
    throw new TcabError(`The snapshot agent cannot read the database ${config.dbPath} (${(err as NodeJS.ErrnoException).code})`, {
      hint: "TCAB_AGENT_DB, and that the agent's user may read the file (and its -wal and -shm files)",
      code: 'AGENT_DB_UNREADABLE',
      cause: err,
    });
  }

  const staging = new Staging(config.stagingDir, logger);
  try {
    await staging.prepare();
  } catch (err) {
    throw new TcabError(`The snapshot agent cannot use the staging folder ${config.stagingDir} (${(err as NodeJS.ErrnoException).code})`, {
      hint: "TCAB_AGENT_STAGING, and that the agent's user owns it and may write to it",
      code: 'AGENT_STAGING_UNUSABLE',
      cause: err,
    });
  }
  const freeBytes = options.freeBytes ?? statfsFreeBytes;
  const snapshotter = new Snapshotter({
    dbPath: config.dbPath,
    databaseName: config.databaseName,
    staging,
    compressions,
    freeBytes,
    logger,
  });
  const driller = new AppDriller({
    staging,
    freeBytes,
    compressions,
    logger,
    settings: config.drill ?? { command: undefined, healthTimeoutMs: 120_000, stopGraceMs: 10_000 },
  });
  const entra = schemes.includes('entra') ? config.entra : undefined;
  const signingKeys = entra
    ? new EntraSigningKeys({ authority: entra.authority, tenantId: entra.tenantId, ca: entra.ca, logger })
    : undefined;
  const authenticator = new AgentAuthenticator({
    ...(hmac ? { hmac: new RequestAuthenticator(config.keys) } : {}),
    ...(entra && signingKeys ? { entra: new EntraTokenValidator({ ...entra, keys: signingKeys }) } : {}),
  });
  const handler = createAgentHandler({
    authenticator,
    snapshotter,
    staging,
    compressions,
    defaultCompression: config.compression,
    logger,
    driller,
    ...(options.requestTimeoutMs !== undefined ? { requestTimeoutMs: options.requestTimeoutMs } : {}),
    status: { dbPath: config.dbPath, databaseName: config.databaseName, staging, freeBytes, compressions, version: agentVersion() },
  });

  const server: Server = config.tls
    ? createHttpsServer({ cert: config.tls.cert, key: config.tls.key }, handler)
    : createHttpServer(handler);
  server.headersTimeout = 15_000;
  // Off for the server as a whole: a drill's upload of a whole artifact may take minutes. The handler gives
  // every other request its own deadline (bodies are at most 16 KiB: a client that takes longer than 30 s to
  // send one is not the backup functions), and a drill's upload one for stalling (server.ts).
  server.requestTimeout = 0;
  server.on('checkContinue', handler);
  server.on('clientError', answerClientError);
  await listen(server, config.host, config.port);
  // The first snapshot then does not wait for a SQLite thread to start.
  prepareSqliteWorker();
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const url = `${config.tls ? 'https' : 'http'}://${host}:${port}`;

  const sweeper = setInterval(() => {
    authenticator.forgetExpired();
    staging.sweep(config.stagingTtlMs).catch((err: unknown) => logger.error('staging.sweep_failed', { error: (err as Error).message }));
  }, sweepInterval(config.stagingTtlMs));
  sweeper.unref();

  logger.info('agent.started', {
    url,
    database: config.databaseName,
    compressions: compressions.available,
    zstd: compressions.zstdSource ?? 'unavailable',
    auth: schemes,
    stagingTtlMs: config.stagingTtlMs,
    appDrill: driller.configured ? config.drill!.command![0] : 'not configured',
    ...(hmac ? { acceptedKeyIds: [...config.keys.keys()] } : {}),
    ...(entra
      ? {
          entraTenantId: entra.tenantId,
          entraAudiences: entra.audiences,
          entraAllowedObjectIds: entra.allowedObjectIds,
          entraAuthority: entra.authority,
        }
      : {}),
  });

  let closing: Promise<void> | undefined;
  return {
    url,
    idle: async () => {
      await snapshotter.idle();
      await driller.idle();
    },
    close: () => {
      closing ??= (async () => {
        clearInterval(sweeper);
        signingKeys?.close();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeAllConnections();
        await driller.close();
        await closed;
        await snapshotter.idle();
        await staging.removeAll();
        logger.info('agent.stopped', { url });
      })();
      return closing;
    },
  };
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(
        new TcabError(`The snapshot agent cannot listen on ${host}:${port} (${err.code})`, {
          hint:
            err.code === 'EADDRINUSE' ? 'another process uses that port: TCAB_AGENT_LISTEN' : 'TCAB_AGENT_LISTEN is an address of this VM',
          code: 'AGENT_LISTEN_FAILED',
          cause: err,
        }),
      );
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}
