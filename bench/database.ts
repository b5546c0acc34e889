/**
 * The database the snapshot case works on. Generating 1 GB takes minutes, so the generated file is cached
 * under .tmp/bench/ by size and seed, and every run works on a fresh copy of it: the concurrent writer adds
 * rows during the run, and the cached file must stay exactly what its size and seed say.
 */
import { copyFile, mkdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createSampleDatabase } from '../src/dev/sample-db.js';
import { TcabError, errorMessage } from '../src/errors.js';
import { firstValue, openDatabase } from '../src/util/sqlite.js';
import { repoRoot } from './processes.js';

export interface SampleFacts {
  runs: number;
  reviews: number;
  bytes: number;
  seed: number;
  /** How long generating it took, when it was generated (not on a cache hit). */
  generateMs?: number;
}

export interface PreparedDatabase {
  /** The working copy (WAL mode), safe to write to. */
  path: string;
  facts: SampleFacts;
  cachePath: string;
  cacheHit: boolean;
  copyMs: number;
}

export function cacheFolder(): string {
  return join(repoRoot(), '.tmp', 'bench');
}

async function readFacts(path: string): Promise<SampleFacts | undefined> {
  try {
    const [facts, file] = await Promise.all([readFile(`${path}.json`, 'utf8'), stat(path)]);
    const parsed = JSON.parse(facts) as SampleFacts;
    // A cache file changed behind our back (opened by hand, say) is not the database its name promises.
    return parsed.bytes === file.size ? parsed : undefined;
  } catch {
    return undefined;
  }
}

/** Refuses to start a run that would fill the disk half-way: copy, VACUUM INTO output, artifacts, cache. */
async function checkFreeSpace(folder: string, neededBytes: number, what: string): Promise<void> {
  const s = await statfs(folder);
  const free = s.bavail * s.bsize;
  if (free < neededBytes) {
    throw new TcabError(
      `Not enough free disk space in ${folder} for ${what}: ${(free / 1e9).toFixed(1)} GB free, about ${(neededBytes / 1e9).toFixed(1)} GB needed`,
      {
        hint: 'free some space, or pass a smaller --size',
        code: 'BENCH_NO_SPACE',
      },
    );
  }
}

export async function prepareDatabase(
  options: { sizeBytes: number; seed: number },
  workDir: string,
  progress: (line: string) => void,
): Promise<PreparedDatabase> {
  const folder = cacheFolder();
  await mkdir(folder, { recursive: true });
  const cachePath = join(folder, `tcab-${options.sizeBytes}b-seed${options.seed}.sqlite`);
  let facts = await readFacts(cachePath);
  const cacheHit = facts !== undefined;
  if (!facts) {
    await checkFreeSpace(folder, options.sizeBytes * 1.1, 'the sample database');
    const partial = `${cachePath}.partial`;
    await Promise.all(['', '-wal', '-shm'].map((s) => rm(partial + s, { force: true })));
    progress(
      `generating a ${(options.sizeBytes / 1e6).toFixed(0)} MB sample database (seed ${options.seed}) into ${cachePath}; later runs reuse it`,
    );
    const t0 = performance.now();
    let made: { runs: number; reviews: number; bytes: number };
    try {
      made = createSampleDatabase(partial, { targetBytes: options.sizeBytes, seed: options.seed });
    } catch (e) {
      await Promise.all(['', '-wal', '-shm'].map((s) => rm(partial + s, { force: true })));
      throw new TcabError(`Generating the sample database ${partial} failed: ${errorMessage(e)}`, {
        hint: 'free disk space in .tmp/bench, then run again',
        cause: e,
      });
    }
    facts = { ...made, seed: options.seed, generateMs: Math.round(performance.now() - t0) };
    // The facts file first, then the rename: a database in place always has its facts next to it.
    await writeFile(`${cachePath}.json`, JSON.stringify(facts, null, 2) + '\n');
    await rename(partial, cachePath);
  }

  // Working copy, its VACUUM INTO output, its artifacts on two targets, the shell recipe's files.
  await checkFreeSpace(workDir, facts.bytes * 3.5, 'the working copy and the snapshots of this run');
  const path = join(workDir, 'tcab.sqlite');
  const t0 = performance.now();
  await copyFile(cachePath, path);
  const copyMs = performance.now() - t0;
  assertWalMode(path);
  return { path, facts, cachePath, cacheHit, copyMs };
}

/** The backend keeps its database in WAL mode, and the snapshot path is tuned for it: make sure the copy is too. */
function assertWalMode(path: string): void {
  const db = openDatabase(path, { mustExist: true });
  try {
    const mode = firstValue<string>(db, 'PRAGMA journal_mode');
    if (mode !== 'wal')
      throw new TcabError(`The benchmark database ${path} is in journal mode "${String(mode)}", not WAL`, {
        hint: 'delete .tmp/bench/ so it is generated again',
      });
  } finally {
    db.close();
  }
}
