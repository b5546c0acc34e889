/**
 * What the format-2 replicate and verify tests share: two real snapshot files of a sample database that
 * share most of their chunks, a target that counts the chunks it is asked to store and to read, a byte
 * flipped in a stored chunk, and a snapshot's chunk list as stored.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ManifestV2 } from '../../src/catalog/manifest-v2.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { readChunkList, type ChunkRefV2 } from '../../src/format/chunk-list.js';
import { Transform } from 'node:stream';
import type { GetResult, Target } from '../../src/targets/target.js';
import { openDatabase } from '../../src/util/sqlite.js';

/** The live database, then VACUUM INTO a snapshot file, as the agent does. */
export function vacuumInto(live: string, out: string): string {
  const db = openDatabase(live);
  try {
    db.exec(`VACUUM INTO '${out.replaceAll("'", "''")}'`);
  } finally {
    db.close();
  }
  return out;
}

/** Publishes `count` more runs on the live database: copies of the newest under new slugs (`<slug><suffix>`). */
export function publishAgain(live: string, count: number, suffix = '-again'): void {
  const db = openDatabase(live);
  try {
    db.exec(
      `INSERT INTO runs (slug, title, published_at, record) SELECT slug || '${suffix}', title, published_at, record FROM runs ORDER BY id DESC LIMIT ${count}`,
    );
  } finally {
    db.close();
  }
}

/** Two snapshot files in `dir`: the second is the first plus 15 runs, so they share most chunks. */
export function twoSnapshotFiles(dir: string): { first: string; second: string } {
  const live = join(dir, 'live.sqlite');
  createSampleDatabase(live, { runs: 1200, seed: 3 });
  const first = vacuumInto(live, join(dir, 'first.sqlite'));
  publishAgain(live, 15);
  return { first, second: vacuumInto(live, join(dir, 'second.sqlite')) };
}

export async function sha256Of(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

export interface Counted {
  target: Target;
  /** Keys of every put, and of every get (or readSmall), in order. */
  puts: string[];
  gets: string[];
}

/** The same target, recording the key of every put and get made through it (the calls go to the real target). */
export function counting(inner: Target): Counted {
  const puts: string[] = [];
  const gets: string[] = [];
  const target = new Proxy(inner, {
    get(t, prop, receiver) {
      const value = Reflect.get(t, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      const call = (value as (...a: unknown[]) => unknown).bind(t);
      // readSmall is a get too: a folder target reads a chunk whole that way.
      const seen = prop === 'put' ? puts : prop === 'get' || prop === 'readSmall' ? gets : undefined;
      if (!seen) return call;
      return (key: string, ...rest: unknown[]) => {
        seen.push(key);
        return call(key, ...rest);
      };
    },
  });
  return { target, puts, gets };
}

/** How many times each key occurs in `keys`, for those matching `re`. */
export function tally(keys: string[], re: RegExp): Map<string, number> {
  const out = new Map<string, number>();
  for (const k of keys) if (re.test(k)) out.set(k, (out.get(k) ?? 0) + 1);
  return out;
}

/** Flips one byte in the middle of a stored object, keeping its size (silent corruption). */
export async function flipByte(target: Target, key: string): Promise<void> {
  const { body } = await target.get(key);
  const parts: Buffer[] = [];
  for await (const b of body) parts.push(b as Buffer);
  const bytes = Buffer.concat(parts);
  bytes[bytes.length >> 1]! ^= 0xff;
  await target.put(key, bytes, { contentLength: bytes.length });
}

/** The chunk list of `manifest` as stored on `target`. */
export async function chunkRefs(target: Target, manifest: ManifestV2): Promise<ChunkRefV2[]> {
  const refs: ChunkRefV2[] = [];
  const { body } = await target.get(manifest.chunkList.key);
  for await (const ref of readChunkList(body, manifest, manifest.chunkList.key)) refs.push(ref);
  return refs;
}

/** `got` with the byte at `offset` of its body flipped on the way (the stored object is left intact). */
export function flipBodyByte(got: GetResult, offset: number): GetResult {
  let at = 0;
  const flip = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      const copy = Buffer.from(chunk);
      if (at <= offset && at + copy.length > offset) copy[offset - at]! ^= 0xff;
      at += copy.length;
      cb(null, copy);
    },
  });
  got.body.on('error', (e) => flip.destroy(e));
  return { ...got, body: got.body.pipe(flip) };
}

/**
 * `inner` with every read going through `get` (a folder target would read chunks by readSmall instead), for a
 * test that counts, spoils or refuses reads there; everything else is `inner`'s own.
 */
export function readsThrough(inner: Target, get: Target['get']): Target {
  return Object.create(inner, { readSmall: { value: undefined }, get: { value: get } }) as Target;
}
