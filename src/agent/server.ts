/**
 * The agent's request handler (docs/agent-protocol.md, "Endpoints"). Order of checks for every request but /healthz:
 * body size (413), signature (401), then the route; a snapshot id is validated against SNAPSHOT_ID_RE, on the
 * raw path as sent (never decoded), before anything touches the file system.
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { basename } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import {
  type AppDriller,
  DrillBusyError,
  DrillNotConfiguredError,
  DrillRefusedError,
  DrillSpaceError,
  type DrillRequest,
} from './app-drill.js';
import type { AgentAuthenticator } from './auth.js';
import { bodyLimitFor, sendChunkData, sendChunkList } from './chunks.js';
import { ARTIFACT_CONTENT_TYPE, chooseCompression, runtimeHasZstd, type CompressionSupport } from './compression.js';
import { parseRange, readBody, sendJson, sendProblem } from './http.js';
import { CompressionSchema, CreateSnapshotBodySchema, isFormat2, MAX_BODY_BYTES, SNAPSHOT_ID_RE, type Compression } from './protocol.js';
import { InsufficientStagingError, SnapshotBusyError, type SnapshotRequest, SnapshotStepError, type Snapshotter } from './snapshotter.js';
import type { Staging } from './staging.js';
import { readStatus, type StatusSources } from './status.js';

export interface AgentHandlerDeps {
  authenticator: AgentAuthenticator;
  snapshotter: Snapshotter;
  staging: Staging;
  compressions: CompressionSupport;
  defaultCompression: Compression | 'auto';
  status: StatusSources;
  driller: AppDriller;
  logger: Logger;
  /**
   * How long a request other than a drill may take to arrive whole (headers and body); default 30 s. A drill's
   * body is a whole artifact: it instead must not stall for longer than this between two reads, and once it
   * has arrived the drill's own timeouts (TCAB_AGENT_DRILL_HEALTH_TIMEOUT) apply.
   */
  requestTimeoutMs?: number;
}

// One text for every scheme and every failed check: the agent's log says which.
const UNAUTHORIZED_DETAIL =
  "The request is not signed with an accepted key, or its timestamp, nonce or token is not accepted. See the agent's log for which check failed.";
const SNAPSHOTS = '/v1/snapshots';
const DRILLS = '/v1/drills';
const SHA256_RE = /^[0-9a-f]{64}$/;
const COUNT_RE = /^(0|[1-9][0-9]{0,15})$/;

/** Hints for what an operator can do about a failed snapshot, by SQLite or system error code. */
const FAILURE_HINTS: Record<string, string> = {
  ENOENT: 'the database file does not exist: check TCAB_AGENT_DB',
  EACCES: 'the agent may not read the database or write its staging folder: check file permissions',
  ENOSPC: 'the staging disk is full',
  SQLITE_CANTOPEN:
    "the agent cannot open the database: check TCAB_AGENT_DB and that the agent's user may read it and its -wal and -shm files",
  SQLITE_READONLY_DIRECTORY:
    "no -wal/-shm files exist (is the backend stopped?) and the agent may not create them: give the agent's group write access to the database folder, or keep the backend running",
  SQLITE_BUSY: 'the database stayed locked for 10 s: check for a long-running write or a checkpoint in the backend',
  SQLITE_CORRUPT: "the database is damaged: check the backend's database with PRAGMA integrity_check",
  SQLITE_NOTADB: 'TCAB_AGENT_DB does not point at a SQLite database',
  SQLITE_FULL: 'the staging disk is full',
  SQLITE_IOERR: "a disk read or write failed: check the VM's disks",
};

export const REQUEST_TIMEOUT_MS = 30_000;

/**
 * The handler for both the server's 'request' and 'checkContinue' events: a request that asks
 * `Expect: 100-continue` gets its 100 only when its body is about to be read, so a refused drill is answered
 * before the client sends a byte of the artifact.
 */
export function createAgentHandler(deps: AgentHandlerDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const { logger } = deps;
  return (req, res) => {
    if (pathOf(req) !== DRILLS) deadline(req, res, deps.requestTimeoutMs ?? REQUEST_TIMEOUT_MS);
    handle(deps, req, res).catch((err: unknown) => {
      logger.error('request.failed', { method: req.method, path: pathOf(req), error: errorMessage(err) });
      if (!res.headersSent) sendProblem(res, 500, 'The agent failed to answer this request; its log has the details.');
      else res.destroy();
    });
  };
}

/**
 * The server's own requestTimeout is off (a drill's upload may take minutes): every other request must arrive
 * whole within `ms`, or is answered 408 and its connection closed.
 */
function deadline(req: IncomingMessage, res: ServerResponse, ms: number): void {
  if (ms <= 0) return;
  const timer = setTimeout(() => {
    if (req.complete) return;
    const socket = req.socket;
    if (!res.headersSent) {
      res.once('finish', () => socket?.destroy());
      sendProblem(res, 408, `The request did not arrive whole within ${ms} ms.`, { Connection: 'close' });
    } else socket?.destroy();
  }, ms);
  timer.unref();
  const clear = () => clearTimeout(timer);
  req.once('end', clear);
  res.once('close', clear);
}

function expectsContinue(req: IncomingMessage): boolean {
  return /\b100-continue\b/i.test(String(req.headers.expect ?? ''));
}

function pathOf(req: IncomingMessage): string {
  return (req.url ?? '/').split('?')[0]!;
}

async function handle(deps: AgentHandlerDeps, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = req.method ?? 'GET';
  const rawUrl = req.url ?? '/';
  const path = pathOf(req);
  res.setHeader('Cache-Control', 'no-store');

  if (path === '/healthz') {
    if (method !== 'GET' && method !== 'HEAD') return sendProblem(res, 405, 'Use GET.', { Allow: 'GET' });
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': 2 });
    res.end('ok');
    return;
  }

  // The drill's body is a whole artifact, streamed: it is not read before the signature is checked.
  if (path === DRILLS) return drill(deps, req, res, method, rawUrl);
  if (expectsContinue(req)) res.writeContinue();

  const limit = bodyLimitFor(method, path);
  const body = await readBody(req, limit);
  if (!body.ok) {
    if (body.reason === 'aborted') return void res.destroy();
    // Closing the connection is what stops the client from sending the rest.
    return sendProblem(res, 413, `Request bodies ${limit === MAX_BODY_BYTES ? '' : 'to this route '}are limited to ${limit} bytes.`, {
      Connection: 'close',
    });
  }

  const verdict = await deps.authenticator.verify({
    method,
    pathAndQuery: rawUrl,
    authorization: req.headers.authorization,
    body: body.body,
  });
  if (!verdict.ok) {
    // The client fields are named clientKeyId etc., not keyId: the logger masks fields whose names start with "key".
    deps.logger.warn('auth.rejected', { reason: verdict.reason, ...verdict.client, method, path, remote: req.socket.remoteAddress });
    return sendProblem(res, 401, UNAUTHORIZED_DETAIL, { 'WWW-Authenticate': deps.authenticator.challenge });
  }
  const log = deps.logger.child(verdict.client);

  if (path === SNAPSHOTS) {
    if (method !== 'POST') return sendProblem(res, 405, 'Use POST to make a snapshot.', { Allow: 'POST' });
    return createSnapshot(deps, log, body.body, res);
  }
  if (path.startsWith(`${SNAPSHOTS}/`)) {
    // `<id>/chunks` and `<id>/chunk-data` are the only sub-paths; anything else is all taken as the id.
    const rest = path.slice(SNAPSHOTS.length + 1);
    const sub = /^([^/]+)\/(chunks|chunk-data)$/.exec(rest);
    const id = sub ? sub[1]! : rest;
    if (!SNAPSHOT_ID_RE.test(id))
      return sendProblem(res, 400, 'The snapshot id is not valid: expected an id like 20261124T161300Z-3f9a1c2e.');
    if (sub?.[2] === 'chunks') {
      if (method !== 'GET') return sendProblem(res, 405, 'Use GET to read the chunk list.', { Allow: 'GET' });
      return sendChunkList(deps.staging, log, id, res);
    }
    if (sub?.[2] === 'chunk-data') {
      if (method !== 'POST') return sendProblem(res, 405, 'Use POST with the hashes of the chunks wanted.', { Allow: 'POST' });
      return sendChunkData(deps.staging, log, id, body.body, res);
    }
    if (method === 'GET') return downloadSnapshot(deps, id, req, res);
    if (method === 'DELETE') {
      if (!(await deps.staging.remove(id))) return sendProblem(res, 404, `No snapshot ${id} is staged on this agent.`);
      log.info('snapshot.deleted', { snapshot: id });
      res.writeHead(204);
      res.end();
      return;
    }
    return sendProblem(res, 405, 'Use GET or DELETE.', { Allow: 'GET, DELETE' });
  }
  if (path === '/v1/status') {
    if (method !== 'GET') return sendProblem(res, 405, 'Use GET.', { Allow: 'GET' });
    try {
      return sendJson(res, 200, await readStatus(deps.status));
    } catch (err) {
      const code = (err as { code?: string }).code;
      log.error('status.failed', { error: errorMessage(err), code });
      return sendProblem(res, 500, `Reading the database's status failed${code ? ` (${code})` : ''}${hintFor(code)}.`);
    }
  }
  return sendProblem(res, 404, 'No such endpoint. The agent serves /healthz, /v1/snapshots, /v1/drills and /v1/status.');
}

function hintFor(code: string | undefined): string {
  const hint = code ? (FAILURE_HINTS[code] ?? FAILURE_HINTS[code.replace(/_[A-Z]+$/, '')]) : undefined;
  return hint ? `: ${hint}` : '';
}

async function createSnapshot(deps: AgentHandlerDeps, log: Logger, raw: Buffer, res: ServerResponse): Promise<void> {
  let asked: Compression | undefined;
  let format: 1 | 2 = 1;
  if (raw.length > 0) {
    let json: unknown;
    try {
      json = JSON.parse(raw.toString('utf8'));
    } catch {
      return sendProblem(
        res,
        400,
        'The request body is not JSON. Expected {"compression": "gzip" | "zstd" | "none"}, {"format": 2} or no body.',
      );
    }
    const parsed = CreateSnapshotBodySchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue?.path.length ? `${issue.path.join('.')}: ` : '';
      return sendProblem(
        res,
        400,
        `The request body is not valid: ${where}${issue?.message ?? 'invalid'}. Expected {"compression": "gzip" | "zstd" | "none"} or {"format": 2}.`,
      );
    }
    asked = parsed.data.compression;
    format = parsed.data.format ?? 1;
  }
  let request: SnapshotRequest;
  if (format === 2) {
    // Every chunk is one zstd frame, made by node:zlib when a client asks for it (POST .../chunk-data).
    if (asked !== undefined && asked !== 'zstd')
      return sendProblem(
        res,
        400,
        `A format-2 snapshot stores each chunk as a zstd frame: "compression": "${asked}" does not apply to it.`,
      );
    if (!runtimeHasZstd())
      return sendProblem(
        res,
        400,
        `This agent's Node.js ${process.version} has no zstd in node:zlib, which format 2 needs: run the agent on Node 24.`,
      );
    request = { format: 2 };
  } else {
    const choice = chooseCompression(asked, deps.defaultCompression, deps.compressions);
    if (!choice.ok) return sendProblem(res, 400, `${choice.reason[0]!.toUpperCase()}${choice.reason.slice(1)}.`);
    request = { format: 1, compression: choice.compression };
  }

  try {
    const description = await deps.snapshotter.create(request);
    return sendJson(res, 201, description, { Location: `${SNAPSHOTS}/${description.id}` });
  } catch (err) {
    if (err instanceof SnapshotBusyError) {
      return sendProblem(res, 409, 'Another snapshot is being made; retry after the time in Retry-After.', {
        'Retry-After': String(err.retryAfterSeconds),
      });
    }
    if (err instanceof InsufficientStagingError) {
      log.error('snapshot.refused', { reason: 'staging space', freeBytes: err.freeBytes, neededBytes: err.neededBytes });
      return sendProblem(res, 507, `${err.message}: free space in TCAB_AGENT_STAGING on the VM, or remove staged snapshots.`);
    }
    if (err instanceof SnapshotStepError) {
      log.error('snapshot.failed', { step: err.step, code: err.code, error: err.message });
      return sendProblem(
        res,
        500,
        `Making the snapshot failed at step "${err.step}"${err.code ? ` (${err.code})` : ''}${hintFor(err.code)}. The agent's log has the details.`,
      );
    }
    throw err;
  }
}

async function downloadSnapshot(deps: AgentHandlerDeps, id: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const staged = deps.staging.get(id);
  // Opened before answering, so an expiry sweep between the lookup and the first read cannot cut the download.
  const file = staged ? await open(staged.path, 'r').catch(() => undefined) : undefined;
  if (!staged || !file)
    return sendProblem(res, 404, `No snapshot ${id} is staged on this agent (it may have expired: TCAB_AGENT_STAGING_TTL).`);
  if (isFormat2(staged.description)) {
    await file.close();
    return sendProblem(
      res,
      400,
      `Snapshot ${id} is a format-2 snapshot: it has no artifact. Read its chunk list with GET /v1/snapshots/${id}/chunks and its chunks with POST /v1/snapshots/${id}/chunk-data.`,
    );
  }
  const { artifact } = staged.description;
  const size = artifact.bytes;
  const headers: Record<string, string | number> = {
    'Content-Type': ARTIFACT_CONTENT_TYPE[artifact.compression],
    'Content-Disposition': `attachment; filename="${basename(staged.path)}"`,
    ETag: `"${artifact.sha256}"`,
    'Repr-Digest': `sha-256=:${Buffer.from(artifact.sha256, 'hex').toString('base64')}:`,
    'Accept-Ranges': 'bytes',
  };
  const range = parseRange(req.headers.range, size);
  if (range === 'unsatisfiable') {
    await file.close();
    return sendProblem(res, 416, `The range is outside the artifact of ${size} bytes.`, { 'Content-Range': `bytes */${size}` });
  }
  const start = range?.start ?? 0;
  const end = range?.end ?? size - 1;
  if (range) headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
  headers['Content-Length'] = Math.max(0, end - start + 1);
  res.writeHead(range ? 206 : 200, headers);
  if (size === 0) {
    await file.close();
    return void res.end();
  }
  const stream = createReadStream('', { fd: file, start, end, highWaterMark: 256 * 1024 });
  try {
    await pipeline(stream, res);
  } catch (err) {
    // The client went away, or the file could not be read: either way the response is cut, which the client sees.
    deps.logger.warn('snapshot.download_interrupted', { snapshot: id, error: errorMessage(err) });
    res.destroy();
  }
}

/**
 * The drill's parameters, from the signed query. Without `format` (or with format=1) the body is an artifact
 * named by artifactSha256, as before format 2 existed; with format=2 it is a snapshot's stored chunks, one zstd
 * stream, and chunkListSha256 takes artifactSha256's place (docs/agent-protocol.md, "POST /v1/drills").
 */
function drillRequest(rawUrl: string): DrillRequest | string {
  const query = new URLSearchParams(rawUrl.includes('?') ? rawUrl.slice(rawUrl.indexOf('?') + 1) : '');
  const format = query.get('format');
  const artifactSha256 = query.get('artifactSha256');
  const chunkListSha256 = query.get('chunkListSha256');
  const snapshotSha256 = query.get('snapshotSha256') ?? '';
  const artifactBytes = query.get('artifactBytes') ?? '';
  const snapshotBytes = query.get('snapshotBytes') ?? '';
  const compression = CompressionSchema.safeParse(query.get('compression'));
  const snapshotId = query.get('snapshotId') ?? undefined;
  if (format !== null && format !== '1' && format !== '2') return 'format must be 1 or 2';
  const chunked = format === '2';
  if (chunked) {
    if (!SHA256_RE.test(chunkListSha256 ?? '')) return "a format-2 drill names chunkListSha256, the chunk list's lower-case hex sha256";
    if (artifactSha256 !== null) return 'a format-2 drill names chunkListSha256, not artifactSha256';
  } else {
    if (!SHA256_RE.test(artifactSha256 ?? '')) return "artifactSha256 must be the artifact's lower-case hex sha256";
    if (chunkListSha256 !== null) return 'chunkListSha256 belongs to a format-2 drill (format=2)';
  }
  if (!SHA256_RE.test(snapshotSha256)) return "snapshotSha256 must be the plain snapshot's lower-case hex sha256";
  if (!COUNT_RE.test(artifactBytes))
    return chunked ? 'artifactBytes must be the sum of the stored chunk sizes' : "artifactBytes must be the artifact's size in bytes";
  if (!COUNT_RE.test(snapshotBytes)) return "snapshotBytes must be the plain snapshot's size in bytes";
  if (!compression.success) return 'compression must be gzip, zstd or none';
  if (chunked && compression.data !== 'zstd') return "a format-2 drill's chunks are zstd frames: compression must be zstd";
  if (snapshotId !== undefined && !SNAPSHOT_ID_RE.test(snapshotId)) return 'snapshotId must be an id like 20261124T161300Z-3f9a1c2e';
  const common = {
    snapshotSha256,
    artifactBytes: Number(artifactBytes),
    snapshotBytes: Number(snapshotBytes),
    compression: compression.data,
    snapshotId,
  };
  return chunked ? { ...common, format: 2, chunkListSha256: chunkListSha256! } : { ...common, format: 1, artifactSha256: artifactSha256! };
}

async function drill(deps: AgentHandlerDeps, req: IncomingMessage, res: ServerResponse, method: string, rawUrl: string): Promise<void> {
  // Refusals before the body is read close the connection: that is what stops the client sending the rest.
  const refuse = (status: number, detail: string, headers: Record<string, string> = {}) =>
    sendProblem(res, status, detail, { ...headers, Connection: 'close' });
  const parsed = drillRequest(rawUrl);
  if (typeof parsed === 'string') return refuse(400, `The drill's query is not valid: ${parsed}.`);
  const verdict = await deps.authenticator.verify({
    method,
    pathAndQuery: rawUrl,
    authorization: req.headers.authorization,
    body: Buffer.alloc(0),
    // The body is not read before the signature holds. Format 2 signs the chunk list's sha256: the agent uses
    // no byte of the body it has not checked against the signed snapshotSha256 (docs/agent-protocol.md).
    bodySha256: parsed.format === 2 ? parsed.chunkListSha256 : parsed.artifactSha256,
  });
  if (!verdict.ok) {
    deps.logger.warn('auth.rejected', {
      reason: verdict.reason,
      ...verdict.client,
      method,
      path: DRILLS,
      remote: req.socket.remoteAddress,
    });
    return refuse(401, UNAUTHORIZED_DETAIL, { 'WWW-Authenticate': deps.authenticator.challenge });
  }
  const log = deps.logger.child(verdict.client);
  if (method !== 'POST') return refuse(405, 'Use POST to run an application drill.', { Allow: 'POST' });
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) !== parsed.artifactBytes) {
    return refuse(400, `The body is ${declared} bytes, but artifactBytes says ${parsed.artifactBytes}.`);
  }
  const cancel = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) cancel.abort(new Error('the client went away before the drill ended'));
  };
  res.on('close', onClose);
  req.on('aborted', onClose);
  // The artifact must keep arriving: a client that stalls mid-upload for longer than a whole other request
  // may take is cut off (the drill is then cancelled and cleaned up). Once it has all arrived, no limit here.
  const stallMs = deps.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  const socket = req.socket;
  const stalled = () => {
    if (req.complete || cancel.signal.aborted) return;
    log.warn('drill.upload_stalled', { stallMs });
    cancel.abort(new Error(`no bytes of the artifact arrived for ${stallMs} ms`));
    socket.destroy();
  };
  const accept = () => {
    if (stallMs > 0) {
      req.setTimeout(stallMs, stalled);
      req.once('end', () => req.setTimeout(0));
    }
    if (expectsContinue(req)) res.writeContinue();
  };
  try {
    const result = await deps.driller.run(req, parsed, cancel.signal, accept);
    return sendJson(res, 200, result);
  } catch (err) {
    if (cancel.signal.aborted) return void res.destroy();
    if (err instanceof DrillNotConfiguredError) {
      return refuse(501, 'This agent has no backend command for application drills: set TCAB_AGENT_DRILL_BACKEND_COMMAND on the VM.');
    }
    if (err instanceof DrillBusyError)
      return refuse(409, 'Another application drill is running on this agent; retry when it has ended.', { 'Retry-After': '60' });
    if (err instanceof DrillSpaceError) {
      log.error('drill.refused', { reason: 'staging space', freeBytes: err.freeBytes, neededBytes: err.neededBytes });
      return refuse(507, `${err.message}: free space in TCAB_AGENT_STAGING on the VM.`);
    }
    if (err instanceof DrillRefusedError) {
      log.error('drill.refused', { reason: err.message });
      // The rest of a body being sent is drained (app-drill.ts), not cut: closing now would reset the
      // connection under this answer before the client has read it.
      const detail = `The drill was refused before the backend was started: ${err.message}.`;
      return req.complete ? refuse(422, detail) : sendProblem(res, 422, detail);
    }
    const code = (err as NodeJS.ErrnoException).code;
    log.error('drill.failed', { error: errorMessage(err), code });
    return refuse(
      500,
      `The application drill failed while restoring the snapshot${code ? ` (${code})` : ''}${hintFor(code)}. The agent's log has the details.`,
    );
  } finally {
    res.off('close', onClose);
    req.off('aborted', onClose);
  }
}
