/**
 * The two routes of a format-2 snapshot (docs/agent-protocol.md, "Format 2: chunked snapshots"):
 *   - GET /v1/snapshots/{id}/chunks: the chunk list, `<sha256> <length>` a line in file order;
 *   - POST /v1/snapshots/{id}/chunk-data: for each hash of the body, in order, `<sha256> <stored length>\n`
 *     and that chunk as one zstd frame (src/format/chunk-codec.ts).
 * Memory is bounded by the request: a map of the requested hashes to their place in the file, one chunk's
 * plain bytes (at most the chunker's maximum) and its frame. Nothing of the file is held beyond that; the
 * answer waits for the client to read (backpressure), and a client that goes away stops the work.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { createInterface } from 'node:readline';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { errorMessage } from '../errors.js';
import { ChunkCompressor, CHUNK_ZSTD_LEVEL } from '../format/chunk-codec.js';
import type { Logger } from '../log.js';
import { sendProblem } from './http.js';
import { chunkListLine, isFormat2, MAX_BODY_BYTES, MAX_CHUNK_REQUEST_BYTES, type SnapshotDescriptionV2 } from './protocol.js';
import type { StagedSnapshot, Staging } from './staging.js';

const SHA256_RE = /^[0-9a-f]{64}$/;
/** A line of the staged chunk list: `<sha256> <offset> <length>`. */
const STAGED_LINE_RE = /^([0-9a-f]{64}) ([0-9]{1,16}) ([0-9]{1,16})$/;

type Format2Staged = StagedSnapshot & { description: SnapshotDescriptionV2; chunkListPath: string };

/** The staged format-2 snapshot `id`, or an answer already sent (404, or 400 for a format-1 snapshot). */
function stagedFormat2(staging: Staging, id: string, res: ServerResponse): Format2Staged | undefined {
  const staged = staging.get(id);
  if (!staged) {
    sendProblem(res, 404, `No snapshot ${id} is staged on this agent (it may have expired: TCAB_AGENT_STAGING_TTL).`);
    return undefined;
  }
  if (!isFormat2(staged.description) || !staged.chunkListPath) {
    sendProblem(
      res,
      400,
      `Snapshot ${id} is a format-1 snapshot: it has no chunks. Download its artifact with GET /v1/snapshots/${id}, or make a snapshot with {"format": 2}.`,
    );
    return undefined;
  }
  return staged as Format2Staged;
}

/** Opens a staged file before answering, so an expiry sweep between the lookup and the first read cannot cut the answer. */
async function openStaged(path: string): Promise<FileHandle | undefined> {
  return open(path, 'r').catch(() => undefined);
}

export async function sendChunkList(staging: Staging, logger: Logger, id: string, res: ServerResponse): Promise<void> {
  const staged = stagedFormat2(staging, id, res);
  if (!staged) return;
  const file = await openStaged(staged.chunkListPath);
  if (!file) return sendProblem(res, 404, `No snapshot ${id} is staged on this agent (it may have expired: TCAB_AGENT_STAGING_TTL).`);
  const { listBytes, listSha256 } = staged.description.chunks;
  res.writeHead(200, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': listBytes,
    ETag: `"${listSha256}"`,
    'Repr-Digest': `sha-256=:${Buffer.from(listSha256, 'hex').toString('base64')}:`,
  });
  // The staged lines carry offsets too; the answer drops them (they are the running sum of the lengths).
  let rest = '';
  const toServed = new Transform({
    transform(data: Buffer, _enc, done) {
      const lines = (rest + data.toString('latin1')).split('\n');
      rest = lines.pop()!;
      let out = '';
      for (const line of lines) {
        const m = STAGED_LINE_RE.exec(line);
        if (!m) return done(new Error(`the staged chunk list of ${id} has a malformed line "${line.slice(0, 100)}"`));
        out += chunkListLine(m[1]!, Number(m[3]));
      }
      done(null, out);
    },
    flush(done) {
      done(rest ? new Error(`the staged chunk list of ${id} ends without a newline`) : null);
    },
  });
  try {
    await pipeline(createReadStream('', { fd: file, highWaterMark: 64 * 1024 }), toServed, res);
  } catch (err) {
    // The client went away, or the list could not be read: either way the answer is cut short, which the client sees.
    logger.warn('snapshot.chunk_list_interrupted', { snapshot: id, error: errorMessage(err) });
    res.destroy();
  }
}

/** The hashes of a chunk-data request body, or why it is refused. */
export function parseChunkRequest(body: Buffer): string[] | string {
  const text = body.toString('latin1');
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  if (lines.length === 0) return 'The request body names no chunk: send the sha256 of each chunk wanted, one a line.';
  for (let i = 0; i < lines.length; i++) {
    if (!SHA256_RE.test(lines[i]!))
      return `Line ${i + 1} of the request body is not a lower-case hex sha256 ("${lines[i]!.slice(0, 80)}"): send one chunk hash a line.`;
  }
  return lines;
}

interface Place {
  offset: number;
  length: number;
}

/** Where each requested chunk is in the plain file, read from the staged list (only the requested ones are kept). */
async function placesOf(listPath: FileHandle, wanted: ReadonlySet<string>): Promise<Map<string, Place>> {
  const places = new Map<string, Place>();
  // The caller closes the file: the stream must not, also when the loop stops early.
  const input = createReadStream('', { fd: listPath, autoClose: false, highWaterMark: 64 * 1024 });
  try {
    for await (const line of createInterface({ input, crlfDelay: Infinity })) {
      const sha = line.slice(0, 64);
      if (!wanted.has(sha) || places.has(sha)) continue;
      const m = STAGED_LINE_RE.exec(line);
      if (!m) throw new Error(`the staged chunk list has a malformed line "${line.slice(0, 100)}"`);
      places.set(sha, { offset: Number(m[2]), length: Number(m[3]) });
      if (places.size === wanted.size) break;
    }
  } finally {
    input.destroy();
  }
  return places;
}

/** Waits until `res` can take more, or has closed; false when it closed (the client went away). */
function drained(res: ServerResponse, gone: () => boolean): Promise<boolean> {
  if (gone()) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onDrain = () => finish(true);
    const onClose = () => finish(false);
    const finish = (ok: boolean) => {
      res.off('drain', onDrain);
      res.off('close', onClose);
      resolve(ok);
    };
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
}

export async function sendChunkData(staging: Staging, logger: Logger, id: string, body: Buffer, res: ServerResponse): Promise<void> {
  const hashes = parseChunkRequest(body);
  if (typeof hashes === 'string') return sendProblem(res, 400, hashes);
  const staged = stagedFormat2(staging, id, res);
  if (!staged) return;
  const list = await openStaged(staged.chunkListPath);
  const plain = await openStaged(staged.path);
  if (!list || !plain) {
    await list?.close();
    await plain?.close();
    return sendProblem(res, 404, `No snapshot ${id} is staged on this agent (it may have expired: TCAB_AGENT_STAGING_TTL).`);
  }
  let compressor: ChunkCompressor | undefined;
  let clientGone = false;
  const onClose = () => {
    if (!res.writableFinished) clientGone = true;
  };
  res.on('close', onClose);
  const gone = () => clientGone || res.destroyed;
  try {
    const places = await placesOf(list, new Set(hashes));
    const unknown = [...new Set(hashes.filter((h) => !places.has(h)))];
    if (unknown.length > 0) {
      const more = unknown.length > 3 ? ` and ${unknown.length - 3} more` : '';
      return sendProblem(
        res,
        400,
        `Snapshot ${id} has no chunk ${unknown.slice(0, 3).join(', ')}${more}: ask only for hashes its chunk list (GET /v1/snapshots/${id}/chunks) names.`,
      );
    }
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'X-Chunk-Count': String(hashes.length) });
    compressor = new ChunkCompressor(CHUNK_ZSTD_LEVEL);
    const buffer = Buffer.allocUnsafe(staged.description.chunking.maxBytes);
    let sent = 0;
    for (const sha of hashes) {
      if (gone()) break;
      const { offset, length } = places.get(sha)!;
      if (length > buffer.length) throw new Error(`chunk ${sha} is listed as ${length} bytes, over the chunker's maximum ${buffer.length}`);
      const bytes = buffer.subarray(0, length);
      const { bytesRead } = await plain.read(bytes, 0, length, offset);
      if (bytesRead !== length) throw new Error(`the staged file ended ${bytesRead} bytes into chunk ${sha} at offset ${offset}`);
      const got = createHash('sha256').update(bytes).digest('hex');
      if (got !== sha)
        throw new Error(`the staged file's bytes at offset ${offset} hash to ${got}, not chunk ${sha}: the staged file changed`);
      const frame = await compressor.compress(bytes);
      if (gone()) break;
      res.write(`${sha} ${frame.length}\n`);
      if (!res.write(frame) && !(await drained(res, gone))) break;
      sent++;
    }
    if (sent < hashes.length) {
      logger.info('snapshot.chunk_data_cut', { snapshot: id, requested: hashes.length, sent, note: 'the client went away' });
      return;
    }
    res.end();
  } catch (err) {
    logger.error('snapshot.chunk_data_failed', { snapshot: id, error: errorMessage(err) });
    if (!res.headersSent) sendProblem(res, 500, `Reading the chunks of snapshot ${id} failed; the agent's log has the details.`);
    // Cut short: the client sees an answer that ends before its last record.
    else res.destroy();
  } finally {
    res.off('close', onClose);
    await compressor?.close().catch(() => undefined);
    await list.close().catch(() => undefined);
    await plain.close().catch(() => undefined);
  }
}

/** The body limit of a request to `path` (POST chunk-data takes a list of hashes). */
export function bodyLimitFor(method: string, path: string): number {
  return method === 'POST' && path.endsWith('/chunk-data') ? MAX_CHUNK_REQUEST_BYTES : MAX_BODY_BYTES;
}
