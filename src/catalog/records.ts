/**
 * Small JSON records on a target (drill records, status documents, verify records, Postgres drill state):
 * read through a zod schema with their etag, written with optional If-Match / If-None-Match so that
 * concurrent invocations cannot both act on the same state.
 */
import type { Readable } from 'node:stream';
import type { z } from 'zod';
import { NotFoundError, TcabError } from '../errors.js';
import type { Target } from '../targets/target.js';

/** Records are a few KB; anything far larger is not ours and is refused instead of read into memory. */
export const DEFAULT_MAX_RECORD_BYTES = 256 * 1024;

export interface Stored<T> {
  value: T;
  etag: string;
}

async function readCapped(body: Readable, what: string, maxBytes: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > maxBytes) {
      body.destroy();
      throw new TcabError(`${what} is larger than ${maxBytes} bytes`, { hint: 'the object was not written by tcab-backup; move it away' });
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** The record and its etag, or undefined when there is none. A damaged record throws: it is never taken for absent. */
export async function readRecord<T>(target: Target, key: string, schema: z.ZodType<T>, signal?: AbortSignal, maxBytes = DEFAULT_MAX_RECORD_BYTES): Promise<Stored<T> | undefined> {
  let got;
  try {
    got = await target.get(key, { signal });
  } catch (e) {
    if (e instanceof NotFoundError) return undefined;
    throw e;
  }
  const where = `Record ${key} on target "${target.name}" (${target.url})`;
  const text = await readCapped(got.body, where, maxBytes);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TcabError(`${where} is not valid JSON`, { hint: 'the object was damaged or written by something else; move it away and run again', cause: e });
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
export async function writeRecord<T>(target: Target, key: string, value: T, condition: { ifMatch: string } | { ifNoneMatch: '*' } | {}, signal?: AbortSignal): Promise<string> {
  const body = Buffer.from(JSON.stringify(value, null, 2) + '\n');
  const { etag } = await target.put(key, body, { ...condition, contentType: 'application/json', contentLength: body.length, signal });
  return etag;
}
