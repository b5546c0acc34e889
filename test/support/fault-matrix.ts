/**
 * The fault matrix: every job, every operation it performs on a target, every way that operation can fail,
 * at artifact sizes of one part and of many parts. The tables here are the whole matrix; the test files
 * (test/jobs/fault-matrix-*.test.ts) turn each row into cases and assert what an operator relies on after
 * any one thing fails:
 * - the job settles within DEADLINE_MS (a case that does not settle fails, naming what is still in flight);
 * - a fault that no retry absorbs fails the job, and the failure names the target;
 * - healthy targets keep a snapshot whose bytes match its manifest; no manifest is visible without whole data;
 * - no snapshot is deleted that is the last good copy; a failed restore leaves its destination untouched.
 */
import type { Fault, FaultKind, FaultPoint, FaultTarget } from './fault-target.js';

/**
 * A job that has not settled by then is stuck: every case settles in about a second when healthy, a few on a
 * machine shared with other work. Only a stuck job waits this long.
 */
export const DEADLINE_MS = 15_000;

/** Fast retries, as many as production would try for a blip, so a blip is absorbed and a storm exhausts them. */
export const MATRIX_RETRY = { retries: 3, baseDelayMs: 1, maxDelayMs: 4 };

/**
 * The nominal part size of the matrix: the file target writes in batches of 1 MiB (it has no parts, and no
 * setting for its batch), the snapshot job's fan-out buffers 1 MiB per target, and Azure blocks may be tuned
 * to any size from 64 KiB. S3 and R2 parts cannot be smaller than 5 MiB (src/targets/s3.ts clamps any
 * smaller setting), so the wire tests size their S3 artifacts from that.
 */
export const PART = 1024 * 1024;

export const SIZES = {
  /** Well inside one part. */
  one: { parts: 1 },
  /** Five parts: more than the fan-out buffers, so a target that stops reading is felt by the others. */
  many: { parts: 5 },
} as const;
export type SizeName = keyof typeof SIZES;

/** Bytes of a synthetic artifact of each size (a few bytes over the round figure, so no part is full by chance). */
export function artifactBytes(size: SizeName): number {
  return size === 'one' ? 96 * 1024 + 13 : (SIZES.many.parts - 0.5) * PART + 13;
}

/** The part a body fault hits: the middle one (part 0 of a one-part body: its first byte). */
export function faultPart(size: SizeName): number {
  return Math.floor(SIZES[size].parts / 2);
}

/** How each kind of the matrix is injected. 'blip' is a transient failure once; 'transient' is a storm that outlasts the retries. */
export const KINDS = {
  error: { kind: 'error' },
  transient: { kind: 'transient' },
  blip: { kind: 'transient', times: 1 },
  destroy: { kind: 'destroy' },
  hang: { kind: 'hang' },
  lost: { kind: 'lost', times: 1 },
} as const satisfies Record<string, { kind: FaultKind; times?: number }>;
export type KindName = keyof typeof KINDS;

/** Which kinds make sense at which point (a head has no stream to destroy; only a finished operation can lose its answer). */
const START_KINDS: KindName[] = ['error', 'transient', 'blip', 'hang', 'lost'];
const STREAM_PUT_START: KindName[] = ['error', 'transient', 'blip', 'destroy', 'hang'];
const BODY_KINDS: KindName[] = ['error', 'blip', 'destroy', 'hang'];
const COMMIT_KINDS: KindName[] = ['error', 'hang', 'lost'];
const BUFFER_PUT_KINDS: KindName[] = ['error', 'transient', 'blip', 'hang', 'lost'];
const LIST_KINDS: KindName[] = ['error', 'transient', 'blip', 'hang'];

export type PointAt = 'start' | 'body' | 'commit' | 'page';

export interface MatrixRow {
  /** Short name, e.g. "put artifact body". */
  name: string;
  op: Fault['op'];
  at: PointAt;
  /** Which keys the fault applies to. */
  keys?: RegExp;
  /** Matching calls let through first. */
  skip?: number;
  /** The target the fault is on (its name, which a failure must mention). */
  on: string;
  kinds: KindName[];
  /**
   * The operation is repeated after a transient failure (by the retry wrapper, or by the job, as replicate
   * repeats a copy), so a blip or a lost answer must not fail the job.
   */
  retried: boolean;
  /** A hard fault here may leave the job successful, and why that is right. */
  tolerated?: string;
}

export interface JobTable {
  job: string;
  sizes: SizeName[];
  /** Why the job has fewer sizes, when it does. */
  sizeNote?: string;
  rows: MatrixRow[];
}

export const ARTIFACT = /\.sqlite(\.gz|\.zst)?$/;
export const MANIFEST = /^snapshots\/.*\.json$/;
export const VERIFY_RECORD = /^status\/[^/]+\.verify\.json$/;
export const DRILL_RECORD = /^drills\/[a-z0-9_-]+\/\d{8}T\d{6}Z-[0-9a-f]{8}\.json$/;
export const DRILLS_PREFIX = /^drills\//;
export const SNAPSHOTS_PREFIX = /^snapshots\//;
export const PG_RECORD = /^drills\/pg-[^/]+\/\d{8}T\d{6}Z-[0-9a-f]{8}\.json$/;
export const PG_POINTER = /^drills\/pg-[^/]+\/current\.json$/;

function streamPut(on: string, what: string, keys: RegExp, retried: boolean, extra: Partial<MatrixRow> = {}): MatrixRow[] {
  return [
    { name: `put ${what} start`, op: 'put', at: 'start', keys, on, kinds: STREAM_PUT_START, retried, ...extra },
    { name: `put ${what} body`, op: 'put', at: 'body', keys, on, kinds: BODY_KINDS, retried, ...extra },
    { name: `put ${what} commit`, op: 'put', at: 'commit', keys, on, kinds: COMMIT_KINDS, retried, ...extra },
  ];
}

function bufferPut(on: string, what: string, keys: RegExp, extra: Partial<MatrixRow> = {}): MatrixRow {
  return { name: `put ${what}`, op: 'put', at: 'start', keys, on, kinds: BUFFER_PUT_KINDS, retried: true, ...extra };
}

function getRows(on: string, what: string, keys: RegExp, bodyRetried: boolean, extra: Partial<MatrixRow> = {}): MatrixRow[] {
  return [
    { name: `get ${what} start`, op: 'get', at: 'start', keys, on, kinds: START_KINDS, retried: true, ...extra },
    { name: `get ${what} body`, op: 'get', at: 'body', keys, on, kinds: BODY_KINDS, retried: bodyRetried, ...extra },
  ];
}

function listRow(on: string, what: string, keys: RegExp, extra: Partial<MatrixRow> = {}): MatrixRow {
  return { name: `list ${what}`, op: 'list', at: 'page', keys, on, kinds: LIST_KINDS, retried: true, ...extra };
}

function simpleRow(op: 'head' | 'delete', on: string, what: string, keys: RegExp, extra: Partial<MatrixRow> = {}): MatrixRow {
  return { name: `${op} ${what}`, op, at: 'start', keys, on, kinds: START_KINDS, retried: true, ...extra };
}

/** Snapshot: the real agent over HTTP into "healthy" and "faulty" (file targets); the fault is on "faulty". */
export const SNAPSHOT_TABLE: JobTable = {
  job: 'snapshot',
  sizes: ['one', 'many'],
  rows: [
    ...streamPut('faulty', 'artifact', ARTIFACT, false),
    ...getRows('faulty', 'artifact (read back)', ARTIFACT, false),
    bufferPut('faulty', 'manifest', MANIFEST),
  ],
};

/**
 * Replicate from "src" (two snapshots) to "dst" (lacks the newer, holds the older damaged and recorded as
 * failed by verify): a copy and a repair, each artifact, manifest, check and the verify record entry.
 */
export const REPLICATE_TABLE: JobTable = {
  job: 'replicate',
  sizes: ['one', 'many'],
  rows: [
    listRow('src', 'snapshots (source)', SNAPSHOTS_PREFIX),
    ...getRows('src', 'artifact (source)', ARTIFACT, true),
    listRow('dst', 'snapshots (destination)', SNAPSHOTS_PREFIX),
    ...getRows('dst', 'verify record (destination)', VERIFY_RECORD, true, {
      tolerated:
        'replicate reads the verify record only to find copies to repair; unreadable, it repairs nothing this run and the damaged copy stays recorded as failed',
    }).slice(0, 1),
    ...streamPut('dst', 'artifact', ARTIFACT, true),
    bufferPut('dst', 'manifest', MANIFEST),
    simpleRow('head', 'dst', 'artifact (after the manifest)', ARTIFACT),
    bufferPut('dst', 'verify record', VERIFY_RECORD),
  ],
};

/**
 * Prune: "keeper" keeps the last snapshot, "holder" keeps three and holds the middle one damaged (recorded
 * by verify), so keeper's copy of it is the last good one; keeper also holds an old orphan artifact.
 */
export const PRUNE_TABLE: JobTable = {
  job: 'prune',
  sizes: ['one'],
  sizeNote: 'prune reads manifests and records and deletes objects, it never streams an artifact: its size changes nothing',
  rows: [
    listRow('holder', 'snapshots (holder)', SNAPSHOTS_PREFIX),
    ...getRows('holder', 'manifest (holder)', MANIFEST, false),
    ...getRows('holder', 'verify record (holder)', VERIFY_RECORD, false),
    listRow('keeper', 'snapshots (keeper)', SNAPSHOTS_PREFIX),
    ...getRows('keeper', 'verify record (keeper)', VERIFY_RECORD, false),
    simpleRow('delete', 'keeper', 'manifest', MANIFEST),
    simpleRow('delete', 'keeper', 'artifact', ARTIFACT),
    simpleRow('head', 'keeper', 'orphan artifact', ARTIFACT),
  ],
};

/** Verify --all of "good" and "faulty", each with two snapshots and a verify record from an earlier clean run. */
export const VERIFY_TABLE: JobTable = {
  job: 'verify',
  sizes: ['one', 'many'],
  rows: [
    listRow('faulty', 'snapshots', SNAPSHOTS_PREFIX),
    ...getRows('faulty', 'verify record', VERIFY_RECORD, false),
    getRows('faulty', 'manifest', MANIFEST, false)[0]!,
    ...getRows('faulty', 'artifact', ARTIFACT, false),
    bufferPut('faulty', 'verify record', VERIFY_RECORD),
  ],
};

/** The restore drill of "good" then "faulty", each holding a real snapshot made by the agent. */
export const DRILL_TABLE: JobTable = {
  job: 'drill',
  sizes: ['one', 'many'],
  rows: [
    listRow('faulty', 'snapshots', SNAPSHOTS_PREFIX),
    getRows('faulty', 'manifest', MANIFEST, false)[0]!,
    ...getRows('faulty', 'artifact', ARTIFACT, false),
    bufferPut('faulty', 'drill record', DRILL_RECORD),
    listRow('faulty', 'drill records (trim)', DRILLS_PREFIX, {
      tolerated:
        'trimming old drill records is housekeeping after a drill that passed and was recorded; a failure is logged and retried by the next drill',
    }),
  ],
};

/** Restore --latest --force from "faulty" alone over an existing database file. */
export const RESTORE_TABLE: JobTable = {
  job: 'restore',
  sizes: ['one', 'many'],
  rows: [
    listRow('faulty', 'snapshots', SNAPSHOTS_PREFIX),
    ...getRows('faulty', 'manifest', MANIFEST, false),
    ...getRows('faulty', 'artifact', ARTIFACT, false),
  ],
};

/** One tick of the Postgres PITR drill, whose records are its lock: every conditional write it makes. */
export const PG_DRILL_TABLE: JobTable = {
  job: 'pg drill',
  sizes: ['one'],
  sizeNote: 'its records are a few KB; there is no artifact',
  rows: [
    { ...getRows('primary', 'pointer', PG_POINTER, false)[0]!, kinds: ['error', 'transient', 'blip', 'hang'] },
    bufferPut('primary', 'drill record (create, If-None-Match)', PG_RECORD, { skip: 0 }),
    bufferPut('primary', 'pointer (If-None-Match)', PG_POINTER),
    bufferPut('primary', 'drill record (claim, If-Match)', PG_RECORD, { skip: 1 }),
    bufferPut('primary', 'drill record (poller, If-Match)', PG_RECORD, { skip: 2 }),
  ],
};

export const TABLES: JobTable[] = [SNAPSHOT_TABLE, REPLICATE_TABLE, PRUNE_TABLE, VERIFY_TABLE, DRILL_TABLE, RESTORE_TABLE, PG_DRILL_TABLE];

export interface MatrixCase {
  job: string;
  row: MatrixRow;
  kind: KindName;
  size: SizeName;
  /** "put artifact body | destroy | many" */
  title: string;
  /** What must happen. */
  expect: 'fails' | 'succeeds' | 'either' | 'aborted' | 'settles';
}

export function expectation(row: MatrixRow, kind: KindName): MatrixCase['expect'] {
  // Aborted during housekeeping after its work is done and recorded, a job may truthfully report success.
  if (kind === 'hang') return row.tolerated ? 'settles' : 'aborted';
  if (kind === 'blip' || kind === 'lost') return row.retried ? 'succeeds' : 'either';
  return row.tolerated ? 'either' : 'fails';
}

export function casesOf(table: JobTable): MatrixCase[] {
  return table.rows.flatMap((row) =>
    row.kinds.flatMap((kind) =>
      table.sizes.map((size) => ({
        job: table.job,
        row,
        kind,
        size,
        title: `${row.name} | ${kind} | ${size}${row.skip ? ` (call ${row.skip + 1})` : ''}`,
        expect: expectation(row, kind),
      })),
    ),
  );
}

/** The fault of a case, for a body of `bytes` bytes where it has one. */
export function faultOf(c: MatrixCase, bytes: number, onHang?: (what: string) => void): Fault {
  const k = KINDS[c.kind];
  const point: FaultPoint =
    c.row.at === 'body'
      ? { at: 'body', offset: c.row.op === 'put' ? faultPart(c.size) * PART : Math.floor(bytes / 2) }
      : c.row.at === 'page'
        ? { at: 'page', items: 1 }
        : { at: c.row.at };
  return {
    op: c.row.op,
    point,
    kind: k.kind,
    ...(c.row.keys ? { keys: c.row.keys } : {}),
    ...(c.row.skip ? { skip: c.row.skip } : {}),
    ...('times' in k ? { times: k.times } : {}),
    ...(onHang ? { onHang } : {}),
  };
}

/** The size of the matrix, per job: rows x kinds x sizes, as a sentence and as numbers. */
export function matrixSize(): { total: number; byJob: Record<string, number>; text: string } {
  const byJob: Record<string, number> = {};
  for (const t of TABLES) byJob[t.job] = casesOf(t).length;
  const total = Object.values(byJob).reduce((a, b) => a + b, 0);
  const lines = TABLES.map((t) => {
    const pairs = t.rows.reduce((n, r) => n + r.kinds.length, 0);
    return `${t.job}: ${t.rows.length} points, ${pairs} point x kind pairs x ${t.sizes.length} size(s) = ${byJob[t.job]}`;
  });
  return { total, byJob, text: `fault matrix: ${total} cases\n  ${lines.join('\n  ')}` };
}

/** Outcome of a job run under a deadline. */
export type Settled<T> = { status: 'resolved'; value: T; ms: number } | { status: 'rejected'; error: unknown; ms: number };

/**
 * Runs the job with `controller`'s signal and waits for it to settle, at most DEADLINE_MS. A job still
 * pending then is a failure of the case, naming what the fault targets still have in flight; the job is
 * aborted so it does not hold the rest of the file up, but its result no longer counts.
 */
export async function settleWithin<T>(
  what: string,
  controller: AbortController,
  faulty: FaultTarget[],
  run: (signal: AbortSignal) => Promise<T>,
  deadlineMs = DEADLINE_MS,
): Promise<Settled<T>> {
  const started = Date.now();
  const deadline = AbortSignal.timeout(deadlineMs);
  let onDeadline: (() => void) | undefined;
  const timedOut = new Promise<'deadline'>((resolve) => {
    onDeadline = () => resolve('deadline');
    deadline.addEventListener('abort', onDeadline, { once: true });
  });
  const job = run(controller.signal).then(
    (value): Settled<T> => ({ status: 'resolved', value, ms: Date.now() - started }),
    (error: unknown): Settled<T> => ({ status: 'rejected', error, ms: Date.now() - started }),
  );
  const first = await Promise.race([job, timedOut]);
  deadline.removeEventListener('abort', onDeadline!);
  if (first !== 'deadline') return first;
  const pending = faulty.flatMap((t) => [...t.inFlight].map((op) => `${t.name}: ${op}`));
  controller.abort(new Error('the test deadline passed'));
  throw new Error(
    `${what} did not settle within ${deadlineMs} ms (the job hangs: a Function would wait for its host timeout, the CLI would exit without a result). ` +
      `Faults fired: ${faulty.flatMap((t) => t.fired).join('; ') || 'none'}. Target operations still in flight: ${pending.join('; ') || 'none (it waits on something else, e.g. a stream)'}`,
  );
}

/** The message of an error and of its causes, for checking that a failure names its target. */
export function fullMessage(err: unknown): string {
  const parts: string[] = [];
  for (let e = err, depth = 0; e && depth < 6; e = (e as { cause?: unknown }).cause, depth++)
    parts.push(e instanceof Error ? e.message : String(e));
  return parts.join(' <- ');
}
