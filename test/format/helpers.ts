/** Shared pieces of the format-2 tests: deterministic bytes, a real SQLite snapshot file, chunk collection. */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { chunkStream, type Chunk, type ChunkerParams } from '../../src/format/chunker.js';
import { openDatabase } from '../../src/util/sqlite.js';

export async function tempDir(prefix: string): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `tcab-format-${prefix}-`));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** `length` bytes of sha256 in counter mode over `label`: the same on every machine, and incompressible. */
export function deterministicBytes(label: string, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let block = 0, at = 0; at < length; block++, at += 32) {
    createHash('sha256')
      .update(`${label}/${block}`)
      .digest()
      .copy(out, at, 0, Math.min(32, length - at));
  }
  return out;
}

/** A small PRNG for read sizes (mulberry32), seeded so a failure can be replayed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Yields `data` in reads whose sizes come from `nextSize` (0 allowed: empty reads must not disturb anything). */
export async function* inReads(data: Buffer, nextSize: () => number): AsyncGenerator<Buffer> {
  for (let at = 0; at < data.length; ) {
    const n = Math.min(nextSize(), data.length - at);
    // A copy, and the copy is then scribbled over after the chunker moves on: a source may reuse its buffer.
    const read = Buffer.from(data.subarray(at, at + n));
    yield read;
    read.fill(0xee);
    at += n;
  }
}

export async function collect(source: AsyncIterable<unknown>, params: Partial<ChunkerParams> = {}): Promise<Chunk[]> {
  const chunks: Chunk[] = [];
  for await (const c of chunkStream(source, params)) chunks.push(c);
  return chunks;
}

/**
 * A real plain snapshot file, as the agent makes it: a TCAB-like sample database, then VACUUM INTO a new file.
 * Returns the snapshot's path.
 */
export function sampleSnapshot(dir: string, runs = 300, seed = 7): string {
  const live = join(dir, `live-${runs}-${seed}.sqlite`);
  const snapshot = join(dir, `snapshot-${runs}-${seed}.sqlite`);
  createSampleDatabase(live, { runs, seed });
  const db = openDatabase(live);
  try {
    db.exec(`VACUUM INTO '${snapshot.replaceAll("'", "''")}'`);
  } finally {
    db.close();
  }
  return snapshot;
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
