/**
 * Small JSON records on a target (drill records, status documents, verify records, Postgres drill state):
 * read through a zod schema with their etag, written with optional If-Match / If-None-Match so that
 * concurrent invocations cannot both act on the same state.
 */
import type { z } from 'zod';
import { NotFoundError, TargetError, TcabError, errorMessage } from '../errors.js';
import type { GetResult, Target } from '../targets/target.js';

/** Records are a few KB; anything far larger is not ours and is refused instead of read into memory. */
export const DEFAULT_MAX_RECORD_BYTES = 256 * 1024;

export interface Stored<T> {
  value: T;
  etag: string;
}

/**
 * The body as text. An answer that breaks off is the target's failure (a TargetError, transient), never the
 * record's: callers that replace a damaged record must not take a connection reset for damage.
 */
async function readCapped(
  target: Target,
  key: string,
  got: GetResult,
  what: string,
  maxBytes: number,
  signal: AbortSignal | undefined,
): Promise<string> {
  const body = got.body;
  const chunks: Buffer[] = [];
  let size = 0;
  const brokeOff = (detail: string, cause?: unknown) =>
    new TargetError({
      target: target.name,
      url: target.url,
      operation: 'get',
      key,
      transient: true,
      cause,
      detail: `the answer broke off after ${size} of ${got.size} bytes${detail}`,
      hint: 'the network path to the target and its health; the next run reads it again',
    });
  try {
    for await (const chunk of body) {
      size += (chunk as Buffer).length;
      if (size > maxBytes) {
        body.destroy();
        throw new TcabError(`${what} is larger than ${maxBytes} bytes`, {
          hint: 'the object was not written by tcab-backup; move it away',
        });
      }
      chunks.push(chunk as Buffer);
    }
  } catch (e) {
    if (e instanceof TcabError || signal?.aborted) throw e;
    throw brokeOff(`: ${errorMessage(e).replace(/\.$/, '')}`, e);
  }
  // A body that ends short without an error is cut off too, not a damaged record.
  if (size < got.size) throw brokeOff('');
  return Buffer.concat(chunks).toString('utf8');
}

/** The record and its etag, or undefined when there is none. A damaged record throws: it is never taken for absent. */
export async function readRecord<T>(
  target: Target,
  key: string,
  schema: z.ZodType<T>,
  signal?: AbortSignal,
  maxBytes = DEFAULT_MAX_RECORD_BYTES,
): Promise<Stored<T> | undefined> {
  let got;
  try {
    got = await target.get(key, { signal });
  } catch (e) {
    if (e instanceof NotFoundError) return undefined;
    throw e;
  }
  const where = `Record ${key} on target "${target.name}" (${target.url})`;
  const text = await readCapped(target, key, got, where, maxBytes, signal);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TcabError(`${where} is not valid JSON`, {
      hint: 'the object was damaged or written by something else; move it away and run again',
      cause: e,
    });
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new TcabError(`${where} does not match its format: ${issue?.path.join('.')}: ${issue?.message}`, {
      hint: 'was it written by a newer tcab-backup? Upgrade, or move the object away',
    });
  }
  return { value: parsed.data, etag: got.etag };
}

/**
 * Writes a record. With `ifMatch` (or `ifNoneMatch: '*'`) a concurrent writer makes this throw
 * PreconditionFailedError instead of overwriting: callers act only after such a write succeeds.
 */
export async function writeRecord<T>(
  target: Target,
  key: string,
  value: T,
  condition: { ifMatch: string } | { ifNoneMatch: '*' } | Record<string, never>,
  signal?: AbortSignal,
): Promise<string> {
  const body = Buffer.from(JSON.stringify(value, null, 2) + '\n');
  const { etag } = await target.put(key, body, { ...condition, contentType: 'application/json', contentLength: body.length, signal });
  return etag;
}
