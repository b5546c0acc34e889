/**
 * A TCAB-like database for tests, the demo and the benchmark: `runs` with verbatim JSON records of a few KB,
 * `reviews`, an index on each, WAL mode, the way the backend keeps it. Deterministic for a given seed, so two
 * runs of a benchmark compare like with like. The text is drawn from a vocabulary, with ids and numbers mixed
 * in, so it compresses about as well as real run records (roughly 3 to 5x) rather than absurdly well.
 */
import { existsSync, statSync } from 'node:fs';
import { TcabError } from '../errors.js';
import { firstValue, inTransaction, openDatabase } from '../util/sqlite.js';

export interface SampleDatabaseOptions {
  /** Exactly this many runs. Default 1000 when targetBytes is not given either. */
  runs?: number;
  /** Keep adding runs until the database is at least this large (e.g. 100e6 or 1e9 for benchmarks). */
  targetBytes?: number;
  seed?: number;
}

export const SAMPLE_SCHEMA = `
CREATE TABLE runs (
  id INTEGER PRIMARY KEY,
  slug TEXT NOT NULL,
  title TEXT NOT NULL,
  published_at TEXT NOT NULL,
  record TEXT NOT NULL,
  source_url TEXT,
  build_url TEXT
);
CREATE TABLE reviews (
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL REFERENCES runs(id),
  reviewer TEXT NOT NULL,
  score INTEGER NOT NULL,
  body TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX runs_published_at ON runs(published_at);
CREATE INDEX reviews_run_id ON reviews(run_id);
`;

const WORDS = (
  'agent benchmark task solved failed retry tool call observation plan step verify patch test suite build ' +
  'compile error warning timeout budget token context window model prompt answer reference score review ' +
  'repository commit branch diff file function class method module import export config setting value ' +
  'input output result expected actual mismatch assertion trace log event latency cache index query table ' +
  'row column schema migration backup restore snapshot manifest target replica checksum integrity the a of ' +
  'to and in for with on by from that this is was were be as it not or an at which when then than into over'
).split(' ');
const REVIEWERS = ['alice', 'bob', 'carol', 'dmitri', 'erin', 'farah', 'gus', 'hiro', 'ines', 'jo'];
const BATCH = 500;
const START_MS = Date.UTC(2024, 0, 1);

/** mulberry32: small, fast and good enough for test data; the same seed gives the same database. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class TextMaker {
  constructor(private readonly random: () => number) {}
  int(n: number): number {
    return Math.floor(this.random() * n);
  }
  hex(chars: number): string {
    let s = '';
    while (s.length < chars) s += this.int(0x100000000).toString(16).padStart(8, '0');
    return s.slice(0, chars);
  }
  sentence(words: number): string {
    const out: string[] = [];
    for (let i = 0; i < words; i++) out.push(WORDS[this.int(WORDS.length)]!);
    return out.join(' ');
  }
}

/** One run record: the JSON document the backend stores verbatim. About 2 to 8 KB. */
function runRecord(text: TextMaker, id: number, slug: string, publishedAt: string): string {
  const steps = 4 + text.int(16);
  return JSON.stringify({
    id,
    slug,
    publishedAt,
    schema: 'tcab.run/v3',
    model: { name: `model-${text.int(12)}`, revision: text.hex(12), temperature: text.int(100) / 100 },
    task: { suite: `suite-${text.int(30)}`, name: text.sentence(4), prompt: text.sentence(30 + text.int(60)) },
    steps: Array.from({ length: steps }, (_, i) => ({
      index: i,
      action: text.sentence(3 + text.int(8)),
      observation: text.sentence(10 + text.int(40)),
      tokens: text.int(4000),
      latencyMs: text.int(30000),
      digest: text.hex(40),
    })),
    metrics: { passed: text.int(2) === 1, score: text.int(1000) / 1000, cost: text.int(100000) / 10000, tokens: text.int(200000) },
    notes: text.sentence(10 + text.int(50)),
  });
}

export function createSampleDatabase(path: string, options: SampleDatabaseOptions = {}): { runs: number; reviews: number; bytes: number } {
  if (existsSync(path)) {
    throw new TcabError(`Will not create a sample database at ${path}: the file exists`, { hint: 'pass a new path; nothing was changed' });
  }
  const wantRuns = options.runs ?? (options.targetBytes === undefined ? 1000 : Number.POSITIVE_INFINITY);
  const targetBytes = options.targetBytes ?? Number.POSITIVE_INFINITY;
  const text = new TextMaker(rng(options.seed ?? 1));
  const db = openDatabase(path);
  try {
    db.exec('PRAGMA journal_mode = WAL');
    db.exec('PRAGMA synchronous = NORMAL');
    db.exec(SAMPLE_SCHEMA);
    const insertRun = db.prepare(
      'INSERT INTO runs (id, slug, title, published_at, record, source_url, build_url) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    const insertReview = db.prepare('INSERT INTO reviews (run_id, reviewer, score, body, created_at) VALUES (?, ?, ?, ?, ?)');
    const pageSize = firstValue<number>(db, 'PRAGMA page_size')!;
    let runs = 0;
    let reviews = 0;
    let timeMs = START_MS;
    const batch = (count: number) =>
      inTransaction(db, () => {
        for (let i = 0; i < count; i++) {
          const id = ++runs;
          timeMs += 30_000 + text.int(600_000);
          const publishedAt = new Date(timeMs).toISOString();
          const slug = `run-${id}-${text.hex(8)}`;
          insertRun.run(
            id,
            slug,
            text.sentence(3 + text.int(6)),
            publishedAt,
            runRecord(text, id, slug, publishedAt),
            `https://github.com/tcab/runs/blob/main/${slug}.json`,
            `https://ci.tcab.example/builds/${text.int(1e7)}`,
          );
          for (let r = text.int(3); r > 0; r--) {
            reviews++;
            insertReview.run(
              id,
              REVIEWERS[text.int(REVIEWERS.length)]!,
              1 + text.int(5),
              text.sentence(15 + text.int(80)),
              new Date(timeMs + text.int(86_400_000)).toISOString(),
            );
          }
        }
      });
    while (runs < wantRuns && firstValue<number>(db, 'PRAGMA page_count')! * pageSize < targetBytes)
      batch(Math.min(BATCH, wantRuns - runs));
    // Fold the WAL into the main file so `bytes` is the database's size, as a fresh copy would have it.
    db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
    return { runs, reviews, bytes: statSync(path).size };
  } finally {
    db.close();
  }
}
