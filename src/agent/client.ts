/**
 * The backup functions' side of the agent protocol. node:http/node:https rather than fetch, so a private CA
 * (TCAB_BACKUP_AGENT_CA) applies to this client alone, and downloads stream with backpressure.
 *
 * Every request is signed with a fresh nonce, or, with a TokenCredential (TCAB_BACKUP_AGENT_AUTH=entra), carries
 * a Microsoft Entra ID token of the function app's identity. Errors name the agent by host and port only (never
 * the key or token) and say what to check; 4xx answers other than 408/409/429 are marked permanent so retry
 * wrappers give up at once.
 */
import type { AccessToken, TokenCredential } from '@azure/identity';
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Transform, type Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { TcabError } from '../errors.js';
import { FORMAT2_CHUNKING, zstdFrameBound } from '../format/params.js';
import { silentLogger, type Logger } from '../log.js';
import {
  AppDrillResultSchema,
  AgentStatusSchema,
  CHUNK_LIST_LINE_RE,
  CHUNK_RECORD_HEADER_MAX,
  CHUNK_RECORD_HEADER_RE,
  MAX_CHUNK_REQUEST_BYTES,
  SNAPSHOT_ID_RE,
  signRequest,
  SnapshotDescriptionSchema,
  SnapshotDescriptionV2Schema,
  type AgentStatus,
  type AppDrillResult,
  type Compression,
  type SnapshotDescription,
  type SnapshotDescriptionV2,
} from './protocol.js';

/** HMAC signing with a key, or Bearer tokens from a credential for a scope (e.g. api://tcab-backup-agent/.default). */
export type AgentClientCredentials =
  | { keyId: string; key: string; credential?: undefined; scope?: undefined }
  | { credential: TokenCredential; scope: string; keyId?: undefined; key?: undefined };

export type AgentClientOptions = AgentClientCredentials & {
  url: URL | string;
  /** PEM of the CA that signed the agent's certificate, when it is not publicly trusted. */
  ca?: string;
  /** Longest silence on the connection before giving up (a snapshot is one long silence); default 10 minutes. */
  timeoutMs?: number;
  logger?: Logger;
};

export class AgentError extends TcabError {
  /** HTTP status, or undefined when no answer came (connection, TLS or timeout). */
  readonly status: number | undefined;
  readonly title: string | undefined;
  readonly detail: string | undefined;
  /** Path of the request, e.g. /v1/snapshots. */
  readonly path: string;
  readonly permanent: boolean;

  constructor(
    message: string,
    options: { status?: number; title?: string; detail?: string; path: string; hint?: string; cause?: unknown; permanent?: boolean },
  ) {
    super(message, {
      hint: options.hint,
      cause: options.cause,
      code: options.status ? `AGENT_HTTP_${options.status}` : 'AGENT_UNREACHABLE',
    });
    this.name = 'AgentError';
    this.status = options.status;
    this.title = options.title;
    this.detail = options.detail;
    this.path = options.path;
    this.permanent = options.permanent ?? false;
  }
}

/** One line of a format-2 snapshot's chunk list: where the chunk is in the plain file. */
export interface ChunkListEntry {
  sha256: string;
  length: number;
  offset: number;
}

/** One record of POST /v1/snapshots/{id}/chunk-data: the chunk's plain sha256 and its zstd frame (not yet checked). */
export interface ChunkFrame {
  sha256: string;
  frame: Buffer;
}

const ZSTD_MAGIC = 0xfd2fb528;
const SHA256_HEX_RE = /^[0-9a-f]{64}$/;

/** 409: another snapshot is being made on the agent. */
export class AgentBusyError extends AgentError {
  readonly retryAfterSeconds: number;
  constructor(message: string, options: ConstructorParameters<typeof AgentError>[1] & { retryAfterSeconds: number }) {
    super(message, options);
    this.name = 'AgentBusyError';
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

const STATUS_HINTS: Record<number, string> = {
  400: 'the request this client sent; the detail says what the agent refused',
  401: "key id/secret mismatch (TCAB_BACKUP_AGENT_KEY_ID and TCAB_BACKUP_AGENT_KEY against the agent's TCAB_AGENT_KEYS) or clock skew > 300 s between function app and VM",
  404: 'the snapshot may have expired on the agent (TCAB_AGENT_STAGING_TTL) or the agent restarted; make a new one',
  409: 'another snapshot is being made; retry after Retry-After',
  413: 'the request body is over 16 KiB (1 MiB for chunk-data: ask for fewer chunks at a time)',
  416: 'the requested range lies outside the artifact',
  500: "the agent's log on the VM (journalctl -u <agent unit>)",
  507: 'free space in the staging folder on the VM (TCAB_AGENT_STAGING needs about 1.2 x the database size)',
};

const NETWORK_HINTS: Record<string, string> = {
  ECONNREFUSED:
    "is the agent running and reachable from the function app? (TCAB_BACKUP_AGENT_URL, the agent's TCAB_AGENT_LISTEN, VNet and NSG rules)",
  ECONNRESET:
    'the agent or a network device closed the connection: is the agent running, and does TCAB_BACKUP_AGENT_URL use the right scheme (http/https)?',
  ENOTFOUND: 'the host name in TCAB_BACKUP_AGENT_URL does not resolve from the function app',
  EHOSTUNREACH: 'is the agent reachable from the function app? (VNet integration, NSG rules)',
  ETIMEDOUT: 'is the agent reachable from the function app? (VNet integration, NSG rules, firewall on the VM)',
  EPROTO: 'does TCAB_BACKUP_AGENT_URL use the right scheme? An https URL to a plain-http agent fails like this',
};
/** What to check when the agent refuses an application drill, by status. */
const DRILL_HINTS: Record<number, string> = {
  409: 'another application drill is running on the agent (one at a time); retry when it has ended',
  422: 'the stored artifact differs from its manifest or was changed on the way: run "tcab-backup verify --all --target <name>"',
  501: "set TCAB_AGENT_DRILL_BACKEND_COMMAND on the VM (the agent's EnvironmentFile) and restart the agent, or set TCAB_BACKUP_DRILL_APP=false",
  507: 'free space in TCAB_AGENT_STAGING on the VM: an application drill needs about 1.2 x the database size',
};
/** How long a drill's upload waits for the agent's 100 Continue before sending anyway (an agent or proxy that ignores Expect). */
const CONTINUE_WAIT_MS = 5_000;

/**
 * What POST /v1/drills needs to know of the body it is sent: for a format-1 snapshot, the manifest's artifact
 * and snapshot facts; for a format-2 snapshot (`format: 2`, the body its stored chunks in chunk-list order), the
 * chunk list's sha256, the sum of the stored chunk sizes and the snapshot facts.
 */
export type AppDrillArtifact =
  | {
      format?: 1;
      snapshotId?: string;
      artifact: { bytes: number; sha256: string; compression: Compression };
      snapshot: { bytes: number; sha256: string };
    }
  | {
      format: 2;
      snapshotId?: string;
      chunkList: { sha256: string };
      stored: { bytes: number };
      snapshot: { bytes: number; sha256: string };
    };

const ENTRA_401_HINT =
  "the agent's log says which check failed; usually: TCAB_AGENT_AUTH includes entra, TCAB_BACKUP_AGENT_ENTRA_SCOPE names the application in the agent's TCAB_AGENT_ENTRA_AUDIENCE, the function app identity's object id is in TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS, and the agent can reach Entra ID for its signing keys";
/** A token is used until this long before it expires, so that none expires in flight or on a skewed clock. */
const TOKEN_REFRESH_MARGIN_MS = 5 * 60_000;
const TLS_HINT =
  "the agent's certificate: TCAB_BACKUP_AGENT_CA must hold the CA that signed it, and its subject alternative names must include the host in TCAB_BACKUP_AGENT_URL";
const MAX_ANSWER_BYTES = 1024 * 1024;

interface SendOptions {
  body?: Buffer;
  signal?: AbortSignal | undefined;
  headers?: OutgoingHttpHeaders;
  signed?: boolean;
}

interface Exchange {
  res: IncomingMessage;
  /** Detaches the abort listener and timeout once the caller is done with the response. */
  done(): void;
  /** Why the request was destroyed after its answer began (abort, timeout), if it was. */
  failure(): Error | undefined;
}

export class AgentClient {
  private readonly base: URL;
  private readonly keyId: string | undefined;
  private readonly key: string | undefined;
  private readonly credential: TokenCredential | undefined;
  private readonly scope: string | undefined;
  private token: { value: string; refreshAt: number } | undefined;
  private tokenRequest: Promise<string> | undefined;
  private readonly ca: string | undefined;
  private readonly timeoutMs: number;
  private readonly logger: Logger;
  /** host:port, the only part of the agent's address that appears in errors and logs. */
  readonly agent: string;

  constructor(options: AgentClientOptions) {
    this.base = new URL(String(options.url));
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') {
      throw new TcabError(`The agent URL must be http(s), got ${this.base.protocol}`, { hint: 'TCAB_BACKUP_AGENT_URL' });
    }
    if (options.credential) {
      if (!options.scope)
        throw new TcabError('A token credential for the agent needs a scope', {
          hint: 'TCAB_BACKUP_AGENT_ENTRA_SCOPE, e.g. api://tcab-backup-agent/.default',
        });
      this.credential = options.credential;
      this.scope = options.scope;
    } else {
      if (!options.keyId || !options.key)
        throw new TcabError('The agent client needs a key id and key, or a token credential', {
          hint: 'TCAB_BACKUP_AGENT_KEY_ID and TCAB_BACKUP_AGENT_KEY, or TCAB_BACKUP_AGENT_AUTH=entra',
        });
      this.keyId = options.keyId;
      this.key = options.key;
    }
    this.ca = options.ca;
    this.timeoutMs = options.timeoutMs ?? 10 * 60_000;
    this.logger = options.logger ?? silentLogger;
    this.agent = this.base.host;
  }

  async health(signal?: AbortSignal): Promise<void> {
    const exchange = await this.send('GET', '/healthz', { signal, signed: false });
    const text = await this.readAnswer('GET', '/healthz', exchange, 1024);
    if (exchange.res.statusCode !== 200 || text !== 'ok') throw this.answerError('GET', '/healthz', exchange.res, text);
  }

  /**
   * Makes a snapshot. Format 1 (the default) stages one compressed artifact (openSnapshot); `{ format: 2 }`
   * stages the plain file cut into chunks (chunkList, chunkData). A format-1 request's body is the same as
   * before format 2 existed, so agents without format 2 still understand it.
   */
  async createSnapshot(opts?: { compression?: Compression; format?: 1; signal?: AbortSignal }): Promise<SnapshotDescription>;
  async createSnapshot(opts: { format: 2; signal?: AbortSignal }): Promise<SnapshotDescriptionV2>;
  async createSnapshot(
    opts: { compression?: Compression; format?: 1 | 2; signal?: AbortSignal } = {},
  ): Promise<SnapshotDescription | SnapshotDescriptionV2> {
    const path = '/v1/snapshots';
    const format = opts.format ?? 1;
    const request = format === 2 ? { format: 2 } : opts.compression ? { compression: opts.compression } : {};
    const body = Buffer.from(JSON.stringify(request));
    const started = Date.now();
    const answer = await this.json('POST', path, { body, signal: opts.signal, headers: { 'Content-Type': 'application/json' } }, 201);
    const answered = (answer as { format?: unknown } | null)?.format ?? 1;
    if (answered !== format) {
      throw this.contractError('POST', path, 'snapshot description', [
        { message: `a format-${String(answered)} snapshot was made, but format ${format} was asked for` },
      ]);
    }
    const parsed = (format === 2 ? SnapshotDescriptionV2Schema : SnapshotDescriptionSchema).safeParse(answer);
    if (!parsed.success) throw this.contractError('POST', path, 'snapshot description', parsed.error.issues);
    this.logger.info('agent.snapshot_created', { agent: this.agent, snapshot: parsed.data.id, format, ms: Date.now() - started });
    return parsed.data;
  }

  /**
   * The chunk list of a staged format-2 snapshot, streamed line by line in file order (offsets are the running
   * sum of the lengths). The list is checked as it arrives (each line's form) and at its end (its bytes and
   * sha256 against the answer's Content-Length and ETag, which the description's `chunks` states); a list
   * cut short or altered throws instead of ending. Stopping the iteration early closes the connection.
   */
  async *chunkList(id: string, opts: { signal?: AbortSignal } = {}): AsyncGenerator<ChunkListEntry, void, undefined> {
    const path = `${this.snapshotPath(id)}/chunks`;
    const exchange = await this.okStream('GET', path, await this.send('GET', path, { signal: opts.signal }), id);
    const { res, done } = exchange;
    const what = `the chunk list of snapshot ${id}`;
    const broken = this.brokenAnswer(
      path,
      what,
      'the agent version matches this tcab-backup version; if it does, the staged list is damaged: make a new snapshot',
    );
    try {
      const etag = /^"([0-9a-f]{64})"$/.exec(String(res.headers.etag ?? ''))?.[1];
      const bytes = Number(res.headers['content-length']);
      if (!etag || !Number.isSafeInteger(bytes)) throw broken('comes without ETag "<sha256>" or Content-Length');
      const hash = createHash('sha256');
      let received = 0;
      let offset = 0;
      let line = 0;
      let rest = '';
      try {
        for await (const data of res as AsyncIterable<Buffer>) {
          hash.update(data);
          received += data.length;
          if (received > bytes) throw broken(`is longer than the ${bytes} bytes announced`);
          const lines = (rest + data.toString('latin1')).split('\n');
          rest = lines.pop()!;
          if (rest.length > 100) throw broken(`has a line longer than any chunk list line at line ${line + 1}`);
          for (const text of lines) {
            line++;
            const m = CHUNK_LIST_LINE_RE.exec(text);
            if (!m) throw broken(`has a malformed line ${line}: "${text.slice(0, 100)}"`);
            const length = Number(m[2]);
            yield { sha256: m[1]!, length, offset };
            offset += length;
          }
        }
      } catch (err) {
        if (err instanceof AgentError) throw err;
        throw exchange.failure() ?? this.networkError('GET', path, err as Error);
      }
      if (!res.complete) {
        throw (
          exchange.failure() ??
          new AgentError(`Snapshot agent at ${this.agent}: ${what} was cut off after ${received} of ${bytes} bytes`, {
            path,
            hint: 'is the agent still running? Read the list again',
          })
        );
      }
      if (rest !== '') throw broken('does not end with a newline');
      if (received !== bytes) throw broken(`ended after ${received} of ${bytes} bytes`);
      const sha256 = hash.digest('hex');
      if (sha256 !== etag) throw broken(`has sha256 ${sha256}, not the ${etag} its ETag states`);
    } finally {
      if (!res.complete) res.destroy();
      done();
    }
  }

  /**
   * The chunks `hashes` names, from a staged format-2 snapshot, each as one zstd frame, in the order asked
   * (a hash may repeat). Only the framing is checked here: each record's header must name the next hash asked
   * for, its length must be within a zstd frame of `maxChunkBytes` (default: format 2's maximum chunk), and the
   * answer must hold exactly the records asked for. Whether a frame decompresses to its hash is the
   * receiver's check (chunk-codec.ts decompressChunk). At most MAX_CHUNK_REQUEST_BYTES of hashes (about
   * 15,000) a call. Stopping the iteration early closes the connection, which stops the agent's work.
   */
  async *chunkData(
    id: string,
    hashes: readonly string[],
    opts: { signal?: AbortSignal; maxChunkBytes?: number } = {},
  ): AsyncGenerator<ChunkFrame, void, undefined> {
    const path = `${this.snapshotPath(id)}/chunk-data`;
    const bad = hashes.find((h) => !SHA256_HEX_RE.test(h));
    if (bad !== undefined) {
      throw new AgentError(`"${String(bad).slice(0, 80)}" is not a chunk hash (a lower-case hex sha256)`, { path, permanent: true });
    }
    if (hashes.length === 0) return;
    const body = Buffer.from(`${hashes.join('\n')}\n`, 'latin1');
    if (body.length > MAX_CHUNK_REQUEST_BYTES) {
      throw new AgentError(
        `A chunk-data request for ${hashes.length} chunks is ${body.length} bytes, over the agent's ${MAX_CHUNK_REQUEST_BYTES}`,
        { path, permanent: true, hint: `ask for at most ${Math.floor(MAX_CHUNK_REQUEST_BYTES / 65)} chunks a request` },
      );
    }
    const bound = zstdFrameBound(opts.maxChunkBytes ?? FORMAT2_CHUNKING.maxBytes);
    const sent = await this.send('POST', path, { body, signal: opts.signal, headers: { 'Content-Type': 'text/plain' } });
    const exchange = await this.okStream('POST', path, sent, id);
    const { res, done } = exchange;
    const what = `the chunk data of snapshot ${id}`;
    const broken = this.brokenAnswer(path, what, 'the agent version matches this tcab-backup version');
    let index = 0;
    try {
      // Either a header being read (frame undefined) or a frame being filled.
      let header = Buffer.alloc(0);
      let frame: Buffer | undefined;
      let filled = 0;
      try {
        for await (const data of res as AsyncIterable<Buffer>) {
          let at = 0;
          while (at < data.length) {
            if (!frame) {
              const nl = data.indexOf(10, at);
              const end = nl < 0 ? data.length : nl;
              header = Buffer.concat([header, data.subarray(at, end)]);
              if (header.length >= CHUNK_RECORD_HEADER_MAX)
                throw broken(`record ${index + 1} has no header line: "${header.toString('latin1', 0, 80)}"`);
              if (nl < 0) break;
              at = nl + 1;
              if (index >= hashes.length) throw broken(`holds more than the ${hashes.length} records asked for`);
              const text = header.toString('latin1');
              header = Buffer.alloc(0);
              const m = CHUNK_RECORD_HEADER_RE.exec(text);
              if (!m) throw broken(`record ${index + 1} has a malformed header "${text.slice(0, 80)}"`);
              if (m[1] !== hashes[index]) throw broken(`record ${index + 1} is chunk ${m[1]}, but ${hashes[index]} was asked for there`);
              const length = Number(m[2]);
              if (length > bound)
                throw broken(`record ${index + 1} (chunk ${m[1]}) is ${length} bytes, over the ${bound} a zstd frame of a chunk can take`);
              frame = Buffer.allocUnsafe(length);
              filled = 0;
            } else {
              const n = Math.min(frame.length - filled, data.length - at);
              data.copy(frame, filled, at, at + n);
              filled += n;
              at += n;
            }
            if (frame && filled === frame.length) {
              if (frame.length < 4 || frame.readUInt32LE(0) !== ZSTD_MAGIC)
                throw broken(`record ${index + 1} (chunk ${hashes[index]}) is not a zstd frame`);
              const record = { sha256: hashes[index]!, frame };
              frame = undefined;
              index++;
              yield record;
            }
          }
        }
      } catch (err) {
        if (err instanceof AgentError) throw err;
        throw exchange.failure() ?? this.networkError('POST', path, err as Error);
      }
      if (!res.complete || frame || header.length > 0 || index < hashes.length) {
        throw (
          exchange.failure() ??
          new AgentError(`Snapshot agent at ${this.agent}: ${what} was cut off after ${index} of ${hashes.length} chunks`, {
            path,
            hint: "is the agent still running? Ask again for the chunks not received; the agent's log says why it stopped",
          })
        );
      }
    } finally {
      if (!res.complete) res.destroy();
      done();
    }
  }

  /**
   * Streams a staged artifact. `bytes` is the length of what `body` will yield (the range's, for a range);
   * `etag` is the artifact's sha256 in hex. The body errors (never ends cleanly) if the connection is cut.
   */
  async openSnapshot(
    id: string,
    opts: { signal?: AbortSignal; range?: { start: number; end?: number } } = {},
  ): Promise<{ body: Readable; bytes: number; etag: string }> {
    const path = this.snapshotPath(id);
    const headers: OutgoingHttpHeaders = {};
    if (opts.range) headers.Range = `bytes=${opts.range.start}-${opts.range.end ?? ''}`;
    const exchange = await this.send('GET', path, { signal: opts.signal, headers });
    const { res, done } = exchange;
    const status = res.statusCode ?? 0;
    const wholeFromStart = opts.range && opts.range.start === 0 && opts.range.end === undefined;
    if (status !== 200 && status !== 206) {
      const text = await this.readAnswer('GET', path, exchange, MAX_ANSWER_BYTES);
      throw this.answerError('GET', path, res, text, id);
    }
    if (status === 200 && opts.range && !wholeFromStart) {
      res.destroy();
      done();
      throw new AgentError(`Snapshot agent at ${this.agent}: GET ${path} ignored the Range header and sent the whole artifact`, {
        status,
        path,
        permanent: true,
        hint: 'the agent version: protocol v1 agents answer a Range with 206',
      });
    }
    const etag = /^"([0-9a-f]{64})"$/.exec(String(res.headers.etag ?? ''))?.[1];
    const bytes = Number(res.headers['content-length']);
    if (!etag || !Number.isSafeInteger(bytes)) {
      res.destroy();
      done();
      throw this.contractError('GET', path, 'download', [{ message: 'missing ETag "<sha256>" or Content-Length' }]);
    }
    let received = 0;
    const agent = this.agent;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        received += chunk.length;
        cb(null, chunk);
      },
      flush(cb) {
        if (received === bytes) return cb();
        cb(
          new AgentError(`Snapshot agent at ${agent}: download of snapshot ${id} ended after ${received} of ${bytes} bytes`, {
            path,
            hint: 'the agent or the network; retry the download',
          }),
        );
      },
    });
    // Wired by hand rather than with pipeline(), so the consumer sees why the download stopped, not a bare "aborted".
    res.pipe(counter);
    res.on('close', () => {
      if (res.complete) return;
      counter.destroy(
        exchange.failure() ??
          new AgentError(`Snapshot agent at ${agent}: download of snapshot ${id} was cut off after ${received} of ${bytes} bytes`, {
            path,
            hint: 'is the agent still running? Retry the download',
          }),
      );
    });
    counter.on('close', () => {
      if (!res.complete) res.destroy();
      done();
    });
    return { body: counter, bytes, etag };
  }

  /** Removes a staged snapshot. A snapshot that is already gone is fine. */
  async deleteSnapshot(id: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const path = this.snapshotPath(id);
    const exchange = await this.send('DELETE', path, { signal: opts.signal });
    const text = await this.readAnswer('DELETE', path, exchange, MAX_ANSWER_BYTES);
    const status = exchange.res.statusCode;
    if (status !== 204 && status !== 404) throw this.answerError('DELETE', path, exchange.res, text, id);
  }

  async status(opts: { signal?: AbortSignal } = {}): Promise<AgentStatus> {
    const path = '/v1/status';
    const answer = await this.json('GET', path, { signal: opts.signal }, 200);
    const parsed = AgentStatusSchema.safeParse(answer);
    if (!parsed.success) throw this.contractError('GET', path, 'status', parsed.error.issues);
    return parsed.data;
  }

  /**
   * The application drill (POST /v1/drills): streams `body`, the artifact `of` describes, to the agent, which
   * restores it, starts the backend on the copy and answers with the result, passed or not. The body is never
   * buffered here; it is signed with the artifact's sha256, which the agent checks as the bytes arrive (format 2:
   * with the chunk list's sha256, and the agent checks the restored file's sha256 before it uses a byte).
   *
   * The request asks `Expect: 100-continue`, so a refusal before the body is read (400, 401, 409, 501, 507)
   * arrives before any byte is sent and is reported as the agent's status and message (AgentBusyError for 409),
   * not as the broken pipe a closed connection would otherwise cause. `body` is destroyed when it is not sent
   * whole. A cancelled `signal` cuts the upload; the agent then stops the drill and removes its files.
   */
  async appDrill(of: AppDrillArtifact, body: Readable, opts: { signal?: AbortSignal } = {}): Promise<AppDrillResult> {
    const path = '/v1/drills';
    // Format 1's query is the one from before format 2 existed, to the byte; format 2 names the chunk list.
    const named: Record<string, string> =
      of.format === 2
        ? { format: '2', chunkListSha256: of.chunkList.sha256, artifactBytes: String(of.stored.bytes), compression: 'zstd' }
        : { artifactSha256: of.artifact.sha256, artifactBytes: String(of.artifact.bytes), compression: of.artifact.compression };
    const bodySha256 = of.format === 2 ? of.chunkList.sha256 : of.artifact.sha256;
    const bodyBytes = of.format === 2 ? of.stored.bytes : of.artifact.bytes;
    const query = new URLSearchParams({
      ...(of.snapshotId ? { snapshotId: of.snapshotId } : {}),
      ...named,
      snapshotSha256: of.snapshot.sha256,
      snapshotBytes: String(of.snapshot.bytes),
    });
    const pathAndQuery = `${this.base.pathname.replace(/\/+$/, '')}${path}?${query.toString()}`;
    const signal = opts.signal;
    const started = Date.now();
    try {
      if (signal?.aborted) throw abortError(signal);
      const headers: OutgoingHttpHeaders = {
        Accept: 'application/json, application/problem+json',
        'Content-Type': 'application/octet-stream',
        'Content-Length': bodyBytes,
        Expect: '100-continue',
        Authorization: this.credential
          ? `Bearer ${await this.bearerToken('POST', path, signal)}`
          : signRequest({ keyId: this.keyId!, secret: this.key!, method: 'POST', pathAndQuery, bodySha256 }),
      };
      if (signal?.aborted) throw abortError(signal);
      const exchange = await this.upload(pathAndQuery, path, headers, body, signal);
      const text = await this.readAnswer('POST', path, exchange, MAX_ANSWER_BYTES);
      const res = exchange.res;
      if (res.statusCode !== 200) {
        const err = this.answerError('POST', path, res, text);
        const hint = DRILL_HINTS[res.statusCode ?? 0];
        if (err instanceof AgentBusyError)
          throw new AgentBusyError(err.message, {
            status: err.status,
            title: err.title,
            detail: err.detail,
            path,
            hint: hint ?? err.hint,
            retryAfterSeconds: err.retryAfterSeconds,
          });
        if (hint)
          throw new AgentError(err.message, {
            status: err.status,
            title: err.title,
            detail: err.detail,
            path,
            hint,
            permanent: err.permanent,
          });
        throw err;
      }
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        throw this.contractError('POST', path, 'drill result', [{ message: 'the body is not JSON' }]);
      }
      const parsed = AppDrillResultSchema.safeParse(json);
      if (!parsed.success) throw this.contractError('POST', path, 'drill result', parsed.error.issues);
      this.logger.info('agent.app_drill_answered', {
        agent: this.agent,
        snapshot: of.snapshotId,
        passed: parsed.data.passed,
        failedStep: parsed.data.failedStep,
        ms: Date.now() - started,
      });
      return parsed.data;
    } finally {
      if (!body.readableEnded) body.destroy();
    }
  }

  /**
   * Sends a streamed body once the agent says 100 Continue (or after CONTINUE_WAIT_MS without an answer);
   * resolves with the answer's headers. An answer that arrives first means the body is not sent at all. When
   * the connection breaks while sending, an answer the agent managed to send wins over the write error.
   */
  private upload(
    pathAndQuery: string,
    path: string,
    headers: OutgoingHttpHeaders,
    body: Readable,
    signal: AbortSignal | undefined,
  ): Promise<Exchange> {
    const https = this.base.protocol === 'https:';
    const requestFn = https ? httpsRequest : httpRequest;
    return new Promise<Exchange>((resolve, reject) => {
      const req = requestFn({
        protocol: this.base.protocol,
        hostname: this.base.hostname.replace(/^\[|\]$/g, ''),
        port: this.base.port || (https ? 443 : 80),
        method: 'POST',
        path: pathAndQuery,
        headers,
        agent: false,
        ...(https && this.ca ? { ca: this.ca } : {}),
      });
      let settled = false;
      let failure: Error | undefined;
      let sending = false;
      let lateError: NodeJS.Timeout | undefined;
      const onAbort = () => {
        body.destroy();
        req.destroy(abortError(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => {
        signal?.removeEventListener('abort', onAbort);
        clearTimeout(waitContinue);
        clearTimeout(lateError);
        req.setTimeout(0);
        // An answer before the whole body: the connection cannot carry another request, so it goes.
        if (!req.writableFinished) req.destroy();
      };
      const send = () => {
        if (sending || settled) return;
        sending = true;
        clearTimeout(waitContinue);
        body.once('error', (err) => {
          // The artifact could not be read (a target failing mid-download): the upload is cut, the agent cleans up.
          failure = err;
          req.destroy(err);
        });
        body.pipe(req);
      };
      const waitContinue = setTimeout(send, CONTINUE_WAIT_MS);
      req.on('continue', send);
      req.setTimeout(this.timeoutMs, () => {
        req.destroy(
          new AgentError(
            `Snapshot agent at ${this.agent}: POST ${path} got no answer within ${this.timeoutMs < 10_000 ? `${this.timeoutMs} ms` : `${Math.round(this.timeoutMs / 1000)} s`}`,
            {
              path,
              hint: "TCAB_BACKUP_AGENT_TIMEOUT, and the agent's TCAB_AGENT_DRILL_HEALTH_TIMEOUT (the answer comes after the backend has started and stopped)",
            },
          ),
        );
      });
      req.on('response', (res) => {
        clearTimeout(lateError);
        if (settled) return;
        settled = true;
        clearTimeout(waitContinue);
        // An answer before the body was sent whole: the rest is not wanted.
        if (!sending || !req.writableFinished) {
          body.unpipe(req);
          body.destroy();
        }
        resolve({ res, done, failure: () => failure });
      });
      req.on('error', (err) => {
        const error = failure && err === failure ? err : this.networkError('POST', path, err);
        failure ??= error;
        if (settled) return done();
        // A refusal closes the connection: the write may fail a moment before its answer is parsed.
        const late = sending && !(error as { name?: string }).name?.includes('Abort') && !signal?.aborted;
        const fail = () => {
          if (settled) return;
          settled = true;
          done();
          body.destroy();
          reject(failure);
        };
        if (late) lateError = setTimeout(fail, 250);
        else fail();
      });
    });
  }

  /** The exchange when the agent answered 200; its problem as an error otherwise. */
  private async okStream(method: string, path: string, exchange: Exchange, id: string): Promise<Exchange> {
    if (exchange.res.statusCode === 200) return exchange;
    const text = await this.readAnswer(method, path, exchange, MAX_ANSWER_BYTES);
    throw this.answerError(method, path, exchange.res, text, id);
  }

  /** An answer that breaks the protocol: `what` is the thing that was being read, `hint` what to check. */
  private brokenAnswer(path: string, what: string, hint: string): (message: string) => AgentError {
    return (message) => new AgentError(`Snapshot agent at ${this.agent}: ${what} ${message}`, { path, permanent: true, hint });
  }

  private snapshotPath(id: string): string {
    if (!SNAPSHOT_ID_RE.test(id)) {
      throw new AgentError(`"${id}" is not a snapshot id (expected like 20261124T161300Z-3f9a1c2e)`, {
        path: '/v1/snapshots/{id}',
        permanent: true,
      });
    }
    return `/v1/snapshots/${id}`;
  }

  private async json(method: string, path: string, options: SendOptions, expected: number): Promise<unknown> {
    const exchange = await this.send(method, path, options);
    const text = await this.readAnswer(method, path, exchange, MAX_ANSWER_BYTES);
    if (exchange.res.statusCode !== expected) throw this.answerError(method, path, exchange.res, text);
    try {
      return JSON.parse(text);
    } catch {
      throw this.contractError(method, path, 'answer', [{ message: 'the body is not JSON' }]);
    }
  }

  /** The whole (small) answer body as text; a cut connection, abort or timeout while reading throws. */
  private async readAnswer(method: string, path: string, exchange: Exchange, limit: number): Promise<string> {
    try {
      return (await readAll(exchange.res, limit)).toString('utf8');
    } catch (err) {
      throw exchange.failure() ?? this.networkError(method, path, err as Error);
    } finally {
      exchange.done();
    }
  }

  /** Sends one request; resolves when the answer's headers have arrived. */
  private async send(method: string, path: string, options: SendOptions): Promise<Exchange> {
    const signal = options.signal;
    if (signal?.aborted) throw abortError(signal);
    const fullPath = this.base.pathname.replace(/\/+$/, '') + path;
    const body = options.body ?? Buffer.alloc(0);
    const headers: OutgoingHttpHeaders = { ...options.headers, Accept: 'application/json, application/problem+json, */*' };
    if (body.length > 0) headers['Content-Length'] = body.length;
    if (options.signed !== false) {
      headers.Authorization = this.credential
        ? `Bearer ${await this.bearerToken(method, path, signal)}`
        : signRequest({ keyId: this.keyId!, secret: this.key!, method, pathAndQuery: fullPath, body });
      if (signal?.aborted) throw abortError(signal);
    }
    const https = this.base.protocol === 'https:';
    const requestFn = https ? httpsRequest : httpRequest;
    return new Promise<Exchange>((resolve, reject) => {
      const req = requestFn({
        protocol: this.base.protocol,
        hostname: this.base.hostname.replace(/^\[|\]$/g, ''),
        port: this.base.port || (https ? 443 : 80),
        method,
        path: fullPath,
        headers,
        agent: false,
        ...(https && this.ca ? { ca: this.ca } : {}),
      });
      let settled = false;
      let failure: Error | undefined;
      const onAbort = () => req.destroy(abortError(signal!));
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => {
        signal?.removeEventListener('abort', onAbort);
        req.setTimeout(0);
      };
      req.setTimeout(this.timeoutMs, () => {
        req.destroy(
          new AgentError(
            `Snapshot agent at ${this.agent}: ${method} ${path} got no answer within ${this.timeoutMs < 10_000 ? `${this.timeoutMs} ms` : `${Math.round(this.timeoutMs / 1000)} s`}`,
            {
              path,
              hint: 'TCAB_BACKUP_AGENT_TIMEOUT, and whether the agent is overloaded or stuck (its log on the VM)',
            },
          ),
        );
      });
      req.on('response', (res) => {
        settled = true;
        resolve({ res, done, failure: () => failure });
      });
      req.on('error', (err) => {
        done();
        failure = this.networkError(method, path, err);
        if (!settled) {
          settled = true;
          reject(failure);
        }
      });
      req.end(body);
    });
  }

  /** A cached token while it has more than the margin left; one request to the credential at a time. */
  private async bearerToken(method: string, path: string, signal: AbortSignal | undefined): Promise<string> {
    if (this.token && Date.now() < this.token.refreshAt) return this.token.value;
    this.tokenRequest ??= this.requestToken(method, path).finally(() => {
      this.tokenRequest = undefined;
    });
    if (!signal) return this.tokenRequest;
    // The shared request goes on for the others; only this caller stops waiting.
    return new Promise<string>((resolve, reject) => {
      const onAbort = () => reject(abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      this.tokenRequest!.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  private async requestToken(method: string, path: string): Promise<string> {
    let token: AccessToken | null;
    try {
      token = await this.credential!.getToken(this.scope!);
    } catch (err) {
      const status = (err as { statusCode?: number }).statusCode;
      throw new AgentError(
        `Snapshot agent at ${this.agent}: ${method} ${path} not sent: no Entra ID token for ${this.scope}: ${(err as Error).message ?? String(err)}`,
        {
          path,
          cause: err,
          permanent: !(status !== undefined && status >= 500),
          hint: "the function app's managed identity (AZURE_CLIENT_ID for a user-assigned one) and TCAB_BACKUP_AGENT_ENTRA_SCOPE: the agent's application id URI followed by /.default",
        },
      );
    }
    if (!token?.token) {
      throw new AgentError(
        `Snapshot agent at ${this.agent}: ${method} ${path} not sent: the credential returned no token for ${this.scope}`,
        {
          path,
          permanent: true,
          hint: "the function app's managed identity (AZURE_CLIENT_ID) and TCAB_BACKUP_AGENT_ENTRA_SCOPE",
        },
      );
    }
    const refreshAt = Math.min(token.refreshAfterTimestamp ?? Infinity, token.expiresOnTimestamp - TOKEN_REFRESH_MARGIN_MS);
    this.token = { value: token.token, refreshAt };
    return token.token;
  }

  private networkError(method: string, path: string, err: Error): Error {
    if (err instanceof AgentError || (err as { name?: string }).name === 'AbortError') return err;
    const code = (err as NodeJS.ErrnoException).code ?? '';
    const tls = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME/.test(code);
    return new AgentError(`Snapshot agent at ${this.agent}: ${method} ${path} failed: ${code || err.message}`, {
      path,
      cause: err,
      permanent: tls,
      hint: tls ? TLS_HINT : (NETWORK_HINTS[code] ?? 'is the agent running and reachable from the function app?'),
    });
  }

  private answerError(method: string, path: string, res: IncomingMessage, text: string, id?: string): AgentError {
    const status = res.statusCode ?? 0;
    let problem: { title?: unknown; detail?: unknown } = {};
    try {
      problem = JSON.parse(text) as typeof problem;
    } catch {
      // not a problem document; the status alone has to do
    }
    const title = typeof problem.title === 'string' ? problem.title : res.statusMessage;
    const detail = typeof problem.detail === 'string' ? problem.detail.slice(0, 500) : undefined;
    const what =
      id && status === 404 ? `snapshot ${id} is not on the agent` : `${method} ${path} answered ${status}${title ? ` ${title}` : ''}`;
    const options = {
      status,
      title,
      detail,
      path,
      hint: (status === 401 && this.credential ? ENTRA_401_HINT : STATUS_HINTS[status]) ?? STATUS_HINTS[500],
      permanent: status >= 400 && status < 500 && status !== 408 && status !== 409 && status !== 429,
    };
    const message = `Snapshot agent at ${this.agent}: ${what}${detail ? `: ${detail.replace(/\.$/, '')}` : ''}`;
    if (status === 409) {
      const retryAfterSeconds = Math.max(1, Number.parseInt(String(res.headers['retry-after'] ?? ''), 10) || 5);
      return new AgentBusyError(message, { ...options, retryAfterSeconds });
    }
    return new AgentError(message, options);
  }

  private contractError(
    method: string,
    path: string,
    what: string,
    issues: ReadonlyArray<{ message: string; path?: ReadonlyArray<PropertyKey> }>,
  ): AgentError {
    const first = issues[0];
    const where = first?.path?.length ? `${first.path.map(String).join('.')}: ` : '';
    return new AgentError(
      `Snapshot agent at ${this.agent}: ${method} ${path} sent a ${what} that does not follow protocol v1 (${where}${first?.message ?? 'invalid'})`,
      {
        path,
        permanent: true,
        hint: 'the agent version matches this tcab-backup version',
      },
    );
  }
}

function abortError(signal: AbortSignal): Error {
  const err = new Error('The request to the snapshot agent was aborted', { cause: signal.reason });
  err.name = 'AbortError';
  return err;
}

function readAll(res: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return res.destroy(new Error(`the answer is larger than ${limit} bytes`));
      chunks.push(chunk);
    });
    res.on('end', () => resolve(Buffer.concat(chunks)));
    res.on('error', reject);
    res.on('close', () => {
      if (!res.complete) reject(Object.assign(new Error('the connection closed before the answer was complete'), { code: 'ECONNRESET' }));
    });
  });
}
