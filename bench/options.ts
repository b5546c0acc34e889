/**
 * Command-line options of `npm run bench`. Every case receives the same options object, so a new case can
 * read what it needs without another parser.
 */
import { parseArgs } from 'node:util';
import { TcabError, errorMessage } from '../src/errors.js';

export interface BenchOptions {
  /** Size of the generated database in bytes (the generator stops at the first batch past it). */
  sizeBytes: number;
  /** The size as the operator wrote it, for labels and the cache file name. */
  sizeLabel: string;
  /** Seed of the sample database: the same seed and size give the same database. */
  seed: number;
  /** Pairs of runs (the standard tool's, then ours) per comparison; the medians of each side are compared. */
  samples: number;
  /** Runs of the retention planner over 10,000 snapshots. */
  retentionRuns: number;
  /** Snapshots the replication case copies per run. */
  replicateSnapshots: number;
  /** Which cases to run, in order; default all. */
  cases: string[] | undefined;
  /** Keep the work folder (database copy, targets, shell outputs) instead of removing it. */
  keep: boolean;
  /** Print one JSON document on stdout instead of the summary. */
  json: boolean;
}

export const USAGE = `Usage: npm run bench -- [options]

  --size SIZE           database size, e.g. 100MB, 1GB, 512MiB (default 1GB; MB and GB are decimal)
  --seed N              seed of the sample database (default 1)
  --samples N           pairs of runs, the standard tool's and ours, per comparison (default 3)
  --retention-runs N    runs of the retention planner (default 15)
  --replicate-snapshots N
                        snapshots copied per replication run, of mixed sizes (default 6)
  --case NAME[,NAME]    run only these cases (default: all but format2, which runs only when named)
  --keep                keep the work folder and print where it is
  --json                one JSON document on stdout (progress still goes to stderr)
  --help                this text

Exit status: 0 every target met, 1 a target was missed or a case failed, 2 bad options.`;

export class BenchUsageError extends TcabError {
  constructor(message: string) {
    super(message, { hint: 'npm run bench -- --help', code: 'BENCH_USAGE' });
    this.name = 'BenchUsageError';
  }
}

const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
  k: 1e3,
  m: 1e6,
  g: 1e9,
};
/** Below this the database is a few hundred runs and the timings say nothing; it also keeps tests quick. */
export const MIN_SIZE_BYTES = 1e6;

export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = UNITS[(m?.[2] || 'b').toLowerCase()];
  if (!m || unit === undefined) throw new BenchUsageError(`--size "${text}" is not a size (expected e.g. 100MB, 1GB or 512MiB)`);
  const bytes = Math.round(Number(m[1]) * unit);
  if (bytes < MIN_SIZE_BYTES) throw new BenchUsageError(`--size "${text}" is below the smallest useful size, 1MB`);
  return bytes;
}

function positiveInteger(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new BenchUsageError(`--${name} "${text}" is not a whole number from 1`);
  return Number(text);
}

/** Returns undefined for --help. */
export function parseBenchArgs(argv: string[], knownCases: readonly string[]): BenchOptions | undefined {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        size: { type: 'string' },
        seed: { type: 'string' },
        samples: { type: 'string' },
        'retention-runs': { type: 'string' },
        'replicate-snapshots': { type: 'string' },
        case: { type: 'string' },
        keep: { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    throw new BenchUsageError(errorMessage(e));
  }
  if (values.help) return undefined;
  const sizeLabel = (values.size ?? '1GB').trim();
  let cases: string[] | undefined;
  if (values.case !== undefined) {
    cases = values.case
      .split(',')
      .map((c) => c.trim())
      .filter(Boolean);
    const unknown = cases.filter((c) => !knownCases.includes(c));
    if (unknown.length || cases.length === 0) {
      throw new BenchUsageError(
        `--case "${values.case}" names no known case${unknown.length ? ` (unknown: ${unknown.join(', ')})` : ''}; known: ${knownCases.join(', ')}`,
      );
    }
  }
  return {
    sizeBytes: parseSize(sizeLabel),
    sizeLabel,
    seed: values.seed === undefined ? 1 : positiveInteger('seed', values.seed, 1),
    samples: positiveInteger('samples', values.samples, 3),
    retentionRuns: positiveInteger('retention-runs', values['retention-runs'], 15),
    replicateSnapshots: positiveInteger('replicate-snapshots', values['replicate-snapshots'], 6),
    cases,
    keep: Boolean(values.keep),
    json: Boolean(values.json),
  };
}
