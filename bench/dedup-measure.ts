/**
 * How much of a snapshot is new under format 2 (src/format/): two `VACUUM INTO` outputs of the sample database
 * with TCAB's write load in between (60 runs and their reviews, one transaction each, as the backend publishes
 * them), both cut by the chunker, and the second's new chunks counted plain and compressed; beside it the v1
 * artifact (the whole file through zstd level 1, as the agent's `zstd -1` makes it), the chunker's and the
 * codec's throughput, the manifest's size, and other average chunk sizes for comparison.
 *
 * The chunking and compression run in a child process (this same file with --measure-chunks), so its peak RSS
 * is the format's own, not the SQLite work's that precedes it.
 *
 * Standalone:   npm run build && node dist/bench/dedup-measure.js [--size 100MB] [--seed 1] [--runs 60] [--keep]
 * As a case:    not yet listed in bench/cases.ts; exporting `dedupCase` is all it takes to add it there.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';
import { createSampleDatabase } from '../src/dev/sample-db.js';
import { TcabError, errorMessage } from '../src/errors.js';
import { CHUNK_ZSTD_LEVEL, ChunkCompressor } from '../src/format/chunk-codec.js';
import { CutFinder, chunkStream, chunkerParams, type ChunkerParams } from '../src/format/chunker.js';
import { firstValue, inTransaction, openDatabase } from '../src/util/sqlite.js';
import { atMost, type BenchCase, type CaseResult } from './case.js';
import { prepareDatabase } from './database.js';
import { parseSize } from './options.js';
import { formatMb, formatPercent, formatSeconds, round } from './stats.js';

const READ_BYTES = 256 * 1024;

/** What the child measures on the two snapshot files. */
export interface ChunkFigures {
  first: { bytes: number; chunks: number; distinctChunks: number; storedBytes: number };
  second: { bytes: number; chunks: number; newChunks: number; newPlainBytes: number; newStoredBytes: number; storedBytes: number };
  /** The second snapshot as a v1 artifact: the whole file through zstd level 1. */
  v1ArtifactBytes: number;
  /** The chunk list as serializeManifestV2 writes it, plain and through zstd level 3. */
  manifestChunkLinesBytes: number;
  manifestChunkLinesZstdBytes: number;
  throughput: {
    /** Finding cut points only (CutFinder over the reads), MB/s. */
    cutMBps: number;
    /** chunkStream: cut, copy out, sha256 each chunk, MB/s. */
    chunkMBps: number;
    /** compressChunk at the format's level, one chunk at a time, MB/s of plain bytes. */
    compressMBps: number;
  };
  /** Stored share and speed at other levels, on the first snapshot's distinct chunks. */
  levels: Array<{ level: number; storedShare: number; MBps: number }>;
  /** The same pair cut with other average sizes (min = avg / 4, max = avg * 4): the plain share of new bytes. */
  otherSizes: Array<{ avgBytes: number; chunks: number; newPlainShare: number }>;
  /** The child's peak resident set (kernel maxrss), bytes. */
  peakRssBytes: number;
  /** The peak so far after each phase, bytes: what the format's own path (cut, hash, compress) needs is `compressed`. */
  peakRssAfter: Record<string, number>;
}

export interface DedupFigures extends ChunkFigures {
  database: { bytes: number; runs: number; reviews: number; cacheHit: boolean };
  published: { runs: number; reviews: number; growthBytes: number };
  vacuumMs: number[];
}

/** The file in reads of READ_BYTES into one reused buffer: the chunker copies what it keeps, so no read is garbage. */
async function* reads(path: string): AsyncGenerator<Buffer> {
  const file = await open(path, 'r');
  const buf = Buffer.allocUnsafe(READ_BYTES);
  try {
    for (;;) {
      const { bytesRead } = await file.read(buf, 0, READ_BYTES, null);
      if (bytesRead === 0) return;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await file.close();
  }
}

async function timed<T>(work: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await work();
  return { value, ms: performance.now() - t0 };
}

const mbps = (bytes: number, ms: number) => round(bytes / 1e6 / (ms / 1000), 1);

async function cutOnly(path: string): Promise<number> {
  const finder = new CutFinder(chunkerParams());
  let cuts = 0;
  for await (const buf of reads(path)) {
    for (let at = 0; at < buf.length; ) {
      const cut = finder.scan(buf, at, buf.length);
      if (cut < 0) break;
      cuts++;
      at = cut;
    }
  }
  return cuts;
}

async function hashes(path: string, params: Partial<ChunkerParams> = {}): Promise<Array<[string, number]>> {
  const out: Array<[string, number]> = [];
  for await (const c of chunkStream(reads(path), params)) out.push([c.sha256, c.length]);
  return out;
}

async function wholeFileZstd(path: string, level: number): Promise<number> {
  let bytes = 0;
  await pipeline(
    createReadStream(path, { highWaterMark: READ_BYTES }),
    zlib.createZstdCompress({ params: { [zlib.constants.ZSTD_c_compressionLevel]: level } }),
    async (src: AsyncIterable<Buffer>) => {
      for await (const b of src) bytes += b.length;
    },
  );
  return bytes;
}

/** The child's work: chunk and compress the two snapshots; returns the figures (printed as JSON). */
export async function measureChunks(firstPath: string, secondPath: string): Promise<ChunkFigures> {
  const peakRssAfter: Record<string, number> = {};
  const mark = (phase: string) => (peakRssAfter[phase] = process.resourceUsage().maxRSS * 1024);
  mark('start');
  const firstBytes = (await stat(firstPath)).size;
  const secondBytes = (await stat(secondPath)).size;
  const cut = await timed(() => cutOnly(firstPath));
  mark('cut');
  const chunked = await timed(() => hashes(firstPath));
  mark('chunked');

  // First snapshot: every distinct chunk is new to the target, so each is compressed once.
  const stored = new Map<string, number>();
  let compressMs = 0;
  let compressedPlain = 0;
  const compressor = new ChunkCompressor();
  for await (const c of chunkStream(reads(firstPath))) {
    if (stored.has(c.sha256)) continue;
    const t0 = performance.now();
    const frame = await compressor.compress(c.bytes);
    compressMs += performance.now() - t0;
    compressedPlain += c.length;
    stored.set(c.sha256, frame.length);
  }
  const firstStored = chunked.value.reduce((n, [h]) => n + stored.get(h)!, 0);

  // Second snapshot: only chunks the first did not have travel.
  const seen = new Set(stored.keys());
  const second = { bytes: secondBytes, chunks: 0, newChunks: 0, newPlainBytes: 0, newStoredBytes: 0, storedBytes: 0 };
  const lines: string[] = [];
  for await (const c of chunkStream(reads(secondPath))) {
    second.chunks++;
    let size = stored.get(c.sha256);
    if (size === undefined) {
      size = (await compressor.compress(c.bytes)).length;
      stored.set(c.sha256, size);
    }
    if (!seen.has(c.sha256)) {
      seen.add(c.sha256);
      second.newChunks++;
      second.newPlainBytes += c.length;
      second.newStoredBytes += size;
    }
    second.storedBytes += size;
    lines.push(JSON.stringify([c.sha256, c.length, size]));
  }
  await compressor.close();
  mark('compressed');
  const chunkLines = Buffer.from(lines.join(',\n'));
  const manifestChunkLinesZstdBytes = zlib.zstdCompressSync(chunkLines, { params: { [zlib.constants.ZSTD_c_compressionLevel]: 3 } }).length;

  const levels: ChunkFigures['levels'] = [];
  mark('manifest');
  for (const level of [1, 3, 5, 7]) {
    // Every 4th chunk of the first snapshot, up to 25 MB.
    const atLevel = new ChunkCompressor(level);
    let ms = 0;
    let out = 0;
    let sampleBytes = 0;
    let n = 0;
    for await (const c of chunkStream(reads(firstPath))) {
      if (n++ % 4 !== 0) continue;
      const t0 = performance.now();
      out += (await atLevel.compress(c.bytes)).length;
      ms += performance.now() - t0;
      sampleBytes += c.length;
      if (sampleBytes >= 25e6) break;
    }
    await atLevel.close();
    levels.push({ level, storedShare: round(out / sampleBytes, 4), MBps: mbps(sampleBytes, ms) });
  }

  mark('levels');
  const otherSizes: ChunkFigures['otherSizes'] = [];
  for (const avgBytes of [8 * 1024, 16 * 1024, 64 * 1024]) {
    const params = { minBytes: avgBytes / 4, avgBytes, maxBytes: avgBytes * 4 };
    const before = new Set((await hashes(firstPath, params)).map(([h]) => h));
    const after = await hashes(secondPath, params);
    const fresh = new Set<string>();
    let newPlain = 0;
    for (const [h, n] of after) {
      if (before.has(h) || fresh.has(h)) continue;
      fresh.add(h);
      newPlain += n;
    }
    otherSizes.push({ avgBytes, chunks: after.length, newPlainShare: round(newPlain / secondBytes, 5) });
  }

  mark('otherSizes');
  const v1ArtifactBytes = await wholeFileZstd(secondPath, 1);
  mark('v1');
  return {
    first: {
      bytes: firstBytes,
      chunks: chunked.value.length,
      distinctChunks: new Set(chunked.value.map(([h]) => h)).size,
      storedBytes: firstStored,
    },
    second,
    v1ArtifactBytes,
    manifestChunkLinesBytes: chunkLines.length,
    manifestChunkLinesZstdBytes,
    throughput: {
      cutMBps: mbps(firstBytes, cut.ms),
      chunkMBps: mbps(firstBytes, chunked.ms),
      compressMBps: mbps(compressedPlain, compressMs),
    },
    levels,
    otherSizes,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    peakRssAfter,
  };
}

function vacuumInto(source: string, target: string): number {
  const db = openDatabase(source, { mustExist: true });
  try {
    const t0 = performance.now();
    db.exec(`VACUUM INTO '${target.replaceAll("'", "''")}'`);
    return performance.now() - t0;
  } finally {
    db.close();
  }
}

/**
 * Publishes `runs` runs with their reviews into the live database the way the backend does: one transaction
 * per run, published after the newest run. The rows come from a small sample database of another seed, so
 * they look like the rest (records of a few KB, 0 to 2 reviews each).
 */
export function publishRuns(livePath: string, workDir: string, runs: number, seed: number): { runs: number; reviews: number } {
  const batchPath = join(workDir, `batch-${seed}.sqlite`);
  createSampleDatabase(batchPath, { runs, seed: seed + 1000 });
  const db = openDatabase(livePath, { mustExist: true, busyTimeoutMs: 5000 });
  try {
    db.exec(`ATTACH DATABASE '${batchPath.replaceAll("'", "''")}' AS batch`);
    const newest = firstValue<string>(db, 'SELECT max(published_at) FROM main.runs') ?? new Date(0).toISOString();
    const batchRuns = db.prepare('SELECT id, slug, title, record, source_url, build_url FROM batch.runs ORDER BY id').all() as Array<
      Record<string, string | number | null>
    >;
    const insertRun = db.prepare(
      'INSERT INTO main.runs (slug, title, published_at, record, source_url, build_url) VALUES (?, ?, ?, ?, ?, ?)',
    );
    const copyReviews = db.prepare(
      'INSERT INTO main.reviews (run_id, reviewer, score, body, created_at) SELECT ?, reviewer, score, body, ? FROM batch.reviews WHERE run_id = ? ORDER BY id',
    );
    let reviews = 0;
    batchRuns.forEach((r, i) => {
      // A few runs a minute: one every 20 s of simulated time.
      const at = new Date(Date.parse(newest) + (i + 1) * 20_000).toISOString();
      inTransaction(
        db,
        () => {
          const id = insertRun.run(`${String(r.slug)}-live`, r.title, at, r.record, r.source_url, r.build_url).lastInsertRowid;
          reviews += Number(copyReviews.run(id, at, r.id).changes);
        },
        'IMMEDIATE',
      );
    });
    db.exec('DETACH DATABASE batch');
    return { runs: batchRuns.length, reviews };
  } finally {
    db.close();
  }
}

function runChild(firstPath: string, secondPath: string): Promise<ChunkFigures> {
  const script = fileURLToPath(import.meta.url);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, '--measure-chunks', firstPath, secondPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (t: string) => (out += t));
    child.stderr.setEncoding('utf8').on('data', (t: string) => (err += t.slice(0, 4000)));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) {
        reject(
          new TcabError(
            `The chunk measurement (${script} --measure-chunks) exited with code ${code}: ${err.trim().split('\n').slice(-3).join(' ')}`,
            { hint: 'run npm run build first; the figures come from the compiled file' },
          ),
        );
        return;
      }
      try {
        resolve(JSON.parse(out) as ChunkFigures);
      } catch (e) {
        reject(
          new TcabError(`The chunk measurement printed no figures: ${errorMessage(e)}`, { hint: `its output began: ${out.slice(0, 200)}` }),
        );
      }
    });
  });
}

export async function measureDedup(
  options: { sizeBytes: number; seed: number; runs: number },
  workDir: string,
  progress: (line: string) => void,
): Promise<DedupFigures> {
  const db = await prepareDatabase({ sizeBytes: options.sizeBytes, seed: options.seed }, workDir, progress);
  progress(`database: ${formatMb(db.facts.bytes)}, ${db.facts.runs} runs (${db.cacheHit ? 'cached' : 'generated'})`);
  const first = join(workDir, 'first.sqlite');
  const second = join(workDir, 'second.sqlite');
  const vacuumMs = [vacuumInto(db.path, first)];
  progress(`first VACUUM INTO in ${formatSeconds(vacuumMs[0]!)}; publishing ${options.runs} runs with their reviews`);
  const published = publishRuns(db.path, workDir, options.runs, options.seed);
  vacuumMs.push(vacuumInto(db.path, second));
  const growthBytes = (await stat(second)).size - (await stat(first)).size;
  progress(`second VACUUM INTO in ${formatSeconds(vacuumMs[1]!)}; chunking both in a child process`);
  const figures = await runChild(first, second);
  return {
    database: { bytes: db.facts.bytes, runs: db.facts.runs, reviews: db.facts.reviews, cacheHit: db.cacheHit },
    published: { ...published, growthBytes },
    vacuumMs: vacuumMs.map((ms) => round(ms, 0)),
    ...figures,
  };
}

export function describeFigures(f: DedupFigures): string[] {
  const s = f.second;
  return [
    `database ${formatMb(f.database.bytes)} (${f.database.runs} runs); published ${f.published.runs} runs and ${f.published.reviews} reviews between the snapshots (+${formatMb(f.published.growthBytes)})`,
    `first snapshot: ${formatMb(f.first.bytes)} in ${f.first.chunks} chunks (${f.first.distinctChunks} distinct, mean ${(f.first.bytes / f.first.chunks / 1024).toFixed(1)} KiB), stored ${formatMb(f.first.storedBytes)} (${formatPercent(f.first.storedBytes / f.first.bytes)}); v1 artifact (zstd -1, whole file) ${formatMb(f.v1ArtifactBytes)} (${formatPercent(f.v1ArtifactBytes / s.bytes)})`,
    `second snapshot: ${s.chunks} chunks, ${s.newChunks} new: ${formatMb(s.newPlainBytes)} plain = ${((100 * s.newPlainBytes) / s.bytes).toFixed(2)}% of its bytes; ${formatMb(s.newStoredBytes)} compressed = ${((100 * s.newStoredBytes) / s.storedBytes).toFixed(2)}% of its stored bytes, ${((100 * s.newStoredBytes) / f.v1ArtifactBytes).toFixed(2)}% of a v1 artifact`,
    `manifest chunk list: ${formatMb(f.manifestChunkLinesBytes)} plain (${(f.manifestChunkLinesBytes / s.chunks).toFixed(0)} B a chunk), ${formatMb(f.manifestChunkLinesZstdBytes)} through zstd; upload for the second snapshot with the plain manifest: ${formatMb(s.newStoredBytes + f.manifestChunkLinesBytes)} = ${((100 * (s.newStoredBytes + f.manifestChunkLinesBytes)) / s.bytes).toFixed(2)}% of the database`,
    `throughput: cut points ${f.throughput.cutMBps} MB/s, chunking with sha256 ${f.throughput.chunkMBps} MB/s, zstd level ${CHUNK_ZSTD_LEVEL} per chunk ${f.throughput.compressMBps} MB/s; peak RSS of the chunking process ${formatMb(f.peakRssBytes)} (after each phase: ${Object.entries(
      f.peakRssAfter,
    )
      .map(([k, v]) => `${k} ${formatMb(v)}`)
      .join(', ')})`,
    `levels (stored share, speed): ${f.levels.map((l) => `${l.level}: ${formatPercent(l.storedShare)} at ${l.MBps} MB/s`).join('; ')}`,
    `other chunk sizes (plain share of new bytes): ${f.otherSizes.map((o) => `avg ${o.avgBytes / 1024} KiB: ${(100 * o.newPlainShare).toFixed(2)}% (${o.chunks} chunks)`).join('; ')}`,
    `VACUUM INTO: ${f.vacuumMs.map((ms) => formatSeconds(ms)).join(', ')}`,
  ];
}

export const dedupCase: BenchCase = {
  name: 'dedup',
  title: 'format 2: bytes a snapshot adds after 60 runs are published, against a v1 artifact',
  async run(options, ctx): Promise<CaseResult> {
    const f = await measureDedup({ sizeBytes: options.sizeBytes, seed: options.seed, runs: 60 }, ctx.workDir, ctx.progress);
    const upload = f.second.newStoredBytes + f.manifestChunkLinesBytes;
    return {
      checks: [
        atMost('upload of the second snapshot (new chunks + manifest) / database bytes', upload / f.database.bytes, 0.02, formatPercent),
        atMost('peak RSS while chunking and compressing', f.peakRssBytes, 200e6, formatMb),
      ],
      notes: describeFigures(f),
      details: { ...f },
    };
  },
};

async function main(argv: string[]): Promise<void> {
  if (argv[0] === '--measure-chunks') {
    process.stdout.write(`${JSON.stringify(await measureChunks(argv[1]!, argv[2]!))}\n`);
    return;
  }
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: { size: { type: 'string' }, seed: { type: 'string' }, runs: { type: 'string' }, keep: { type: 'boolean' } },
  });
  const sizeBytes = parseSize(values.size ?? '100MB');
  const seed = Number(values.seed ?? 1);
  const runs = Number(values.runs ?? 60);
  const workDir = await mkdtemp(join(tmpdir(), 'tcab-dedup-'));
  const progress = (line: string) => process.stderr.write(`dedup: ${line}\n`);
  try {
    await mkdir(workDir, { recursive: true });
    const f = await measureDedup({ sizeBytes, seed, runs }, workDir, progress);
    process.stdout.write(`${describeFigures(f).join('\n')}\n\n${JSON.stringify(f, null, 2)}\n`);
  } finally {
    if (values.keep) progress(`work folder kept: ${workDir}`);
    else await rm(workDir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`dedup: ${errorMessage(e)}\n`);
    process.exitCode = 1;
  });
}
