/**
 * The SQLite work of the agent (VACUUM INTO, integrity_check, row counts, status queries) runs in a worker
 * thread: node:sqlite's DatabaseSync is synchronous, and a 1 GB VACUUM INTO takes seconds, during which
 * /healthz, a concurrent POST (409) and downloads must still be answered.
 *
 * The worker's code is a string evaluated in the worker (eval: true) rather than a module file: the agent must
 * run both from the compiled output and from TypeScript sources under the test runner, whose module
 * resolution a worker thread does not share. The code is small, and its contract is typed here.
 *
 * File permissions (the agent should run as its own user with read access only):
 * - the database file must be readable; the agent opens it read-only and never writes it;
 * - in WAL mode the -wal and -shm files must be readable too. Write access to -shm is not needed (SQLite >= 3.22
 *   then keeps its own copy of the index in memory), but it is faster;
 * - when the backend is stopped cleanly, SQLite deletes -wal and -shm, and a read-only opener must create them:
 *   without write access to the database's folder that fails with SQLITE_READONLY_DIRECTORY. Either keep the
 *   backend running during snapshots, or give the agent's group write access to the folder with umask 002 so
 *   the files it creates stay writable for the backend.
 * Nothing here sets a large mmap_size: mapped pages count in the agent's RSS (target <= 200 MB for 1 GB).
 */
import { Worker } from 'node:worker_threads';
import { SQLITE_CODE_NAMES } from '../util/sqlite.js';

export interface SnapshotTask {
  kind: 'snapshot';
  dbPath: string;
  /** Where VACUUM INTO writes the plain snapshot; must not exist. */
  outPath: string;
}

export interface SnapshotFacts {
  /** Wall-clock time taken immediately before VACUUM INTO started its read transaction. */
  createdAtMs: number;
  vacuumMs: number;
  checkMs: number;
  sqliteVersion: string;
  /** Journal mode of the source database (the snapshot itself is written in rollback mode). */
  journalMode: string;
  pageSize: number;
  pageCount: number;
  userVersion: number;
  /** 'ok', or the first lines integrity_check reported, joined by '; '. */
  integrity: string;
  tables: Record<string, number>;
}

export interface StatusTask {
  kind: 'status';
  dbPath: string;
}

/** integrity_check and row counts of a restored copy (the application drill's scratch file). */
export interface CheckTask {
  kind: 'check';
  dbPath: string;
}

export interface CheckFacts {
  checkMs: number;
  /** 'ok', or the first lines integrity_check reported, joined by '; '. */
  integrity: string;
  tables: Record<string, number>;
}

export interface StatusFacts {
  pageSize: number;
  journalMode: string;
  tables: Record<string, number>;
  /** max(runs.published_at) as stored, or null when there are no runs or no such column. */
  newestPublishedAt: string | number | null;
}

/** A failure inside the worker, with the step it happened in and SQLite's (or the OS's) error code. */
export class SqliteTaskError extends Error {
  readonly step: string;
  readonly code: string | undefined;
  constructor(message: string, step: string, code: string | undefined) {
    super(message);
    this.name = 'SqliteTaskError';
    this.step = step;
    this.code = code;
  }
}

const WORKER_SOURCE = String.raw`
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
const { performance } = require('node:perf_hooks');
const { DatabaseSync } = require('node:sqlite');
let task;
let step = 'open';

function quote(name) { return '"' + name.replace(/"/g, '""') + '"'; }

function value(db, sql) {
  const statement = db.prepare(sql);
  statement.setReturnArrays(true);
  const row = statement.get();
  return row === undefined ? undefined : row[0];
}

function column(db, sql) {
  const statement = db.prepare(sql);
  statement.setReturnArrays(true);
  return statement.all().map((row) => row[0]);
}

// Virtual tables are skipped: counting them may need a module this process does not have.
function tableNames(db) {
  return column(db, "SELECT name FROM sqlite_schema WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' " +
    "AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name");
}

function countRows(db, names) {
  const out = {};
  for (const name of names) out[name] = value(db, 'SELECT count(*) FROM ' + quote(name));
  return out;
}

// Read-only: a file that does not exist is an error, never created.
function openReadOnly(path) {
  return new DatabaseSync(path, { readOnly: true, timeout: 10000 });
}

// node:sqlite gives SQLite's extended result code as a number; the agent's hints and logs use its name.
function codeOf(err) {
  if (!err) return undefined;
  if (typeof err.errcode === 'number') {
    return workerData.codeNames[err.errcode] || workerData.codeNames[err.errcode & 0xff] || 'SQLITE_' + err.errcode;
  }
  return err.code;
}

function snapshot() {
  const src = openReadOnly(task.dbPath);
  let createdAtMs, vacuumMs, journalMode;
  try {
    journalMode = value(src, 'PRAGMA journal_mode');
    // VACUUM INTO gives its output this connection's synchronous setting. The staged file is read once and
    // removed, and a crash discards it anyway: syncing it to disk only costs time (50 ms of 160 at 100 MB).
    // The source is opened read-only, so nothing else is affected.
    src.exec('PRAGMA synchronous = OFF');
    step = 'vacuum';
    createdAtMs = Date.now();
    const t0 = performance.now();
    src.prepare('VACUUM INTO ?').run(task.outPath);
    vacuumMs = performance.now() - t0;
  } finally {
    src.close();
  }
  // The file is complete: the agent compresses and hashes it while this thread checks it.
  parentPort.postMessage({ vacuumed: { createdAtMs, vacuumMs } });
  step = 'check';
  const t1 = performance.now();
  const out = openReadOnly(task.outPath);
  try {
    const problems = column(out, 'PRAGMA integrity_check').map(String);
    const integrity = problems.length === 1 && problems[0] === 'ok' ? 'ok' : problems.slice(0, 20).join('; ');
    step = 'count';
    const tables = countRows(out, tableNames(out));
    return {
      createdAtMs, vacuumMs, checkMs: performance.now() - t1, journalMode, integrity, tables,
      sqliteVersion: value(out, 'SELECT sqlite_version()'),
      pageSize: value(out, 'PRAGMA page_size'),
      pageCount: value(out, 'PRAGMA page_count'),
      userVersion: value(out, 'PRAGMA user_version'),
    };
  } finally {
    out.close();
  }
}

function status() {
  const db = openReadOnly(task.dbPath);
  try {
    const journalMode = value(db, 'PRAGMA journal_mode');
    // One read transaction, so the counts and the newest run belong to the same moment.
    db.exec('BEGIN');
    step = 'count';
    const all = tableNames(db);
    const key = all.filter((n) => n === 'runs' || n === 'reviews');
    const tables = countRows(db, key.length ? key : all);
    let newestPublishedAt = null;
    if (all.includes('runs')) {
      const columns = column(db, "SELECT name FROM pragma_table_info('runs')");
      if (columns.includes('published_at')) newestPublishedAt = value(db, 'SELECT max(published_at) FROM runs') ?? null;
    }
    db.exec('COMMIT');
    return { pageSize: value(db, 'PRAGMA page_size'), journalMode, tables, newestPublishedAt };
  } finally {
    db.close();
  }
}

function check() {
  const t0 = performance.now();
  const db = openReadOnly(task.dbPath);
  try {
    step = 'check';
    const problems = column(db, 'PRAGMA integrity_check').map(String);
    const integrity = problems.length === 1 && problems[0] === 'ok' ? 'ok' : problems.slice(0, 20).join('; ');
    step = 'count';
    const tables = countRows(db, tableNames(db));
    return { checkMs: performance.now() - t0, integrity, tables };
  } finally {
    db.close();
  }
}

// Started ahead of need with node:sqlite loaded; one task, then the thread ends.
parentPort.once('message', (message) => {
  task = message;
  try {
    const result = task.kind === 'snapshot' ? snapshot() : task.kind === 'check' ? check() : status();
    parentPort.postMessage({ ok: true, result });
  } catch (err) {
    parentPort.postMessage({ ok: false, step, code: codeOf(err), message: String((err && err.message) || err) });
  }
});
`;

type Reply<T> =
  | { ok: true; result: T }
  | { ok: false; step: string; code?: string; message: string }
  | { vacuumed: Vacuumed; ok?: undefined };

/** The snapshot file is complete (sent before the integrity check and counts start). */
export interface Vacuumed {
  createdAtMs: number;
  vacuumMs: number;
}

export interface TaskHooks {
  /** Called once VACUUM INTO has written the whole file, while the worker goes on to check it. */
  onVacuumed?: (v: Vacuumed) => void;
}

/**
 * A worker started ahead of need: starting a thread and loading node:sqlite takes about 25 ms, which a
 * snapshot need not wait for. It does not keep the process alive while it waits for a task.
 */
let spare: Worker | undefined;

function startWorker(): Worker {
  const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { codeNames: SQLITE_CODE_NAMES } });
  worker.unref();
  return worker;
}

/** Starts the spare worker if there is none: when the agent starts, and after each task, once its answer is out. */
export function prepareSqliteWorker(): void {
  if (spare) return;
  const worker = startWorker();
  const forget = () => {
    if (spare === worker) spare = undefined;
  };
  // A spare that failed to start is forgotten; the next task starts its own and reports the failure.
  worker.once('error', forget);
  worker.once('exit', forget);
  spare = worker;
}

function takeWorker(): Worker {
  // threadId is -1 once a thread has ended: a spare that died unnoticed is not used.
  const worker = spare && spare.threadId !== -1 ? spare : startWorker();
  spare = undefined;
  worker.removeAllListeners();
  worker.ref();
  return worker;
}

export function runSqliteTask(task: SnapshotTask, hooks?: TaskHooks): Promise<SnapshotFacts>;
export function runSqliteTask(task: StatusTask): Promise<StatusFacts>;
export function runSqliteTask(task: CheckTask): Promise<CheckFacts>;
export function runSqliteTask(
  task: SnapshotTask | StatusTask | CheckTask,
  hooks: TaskHooks = {},
): Promise<SnapshotFacts | StatusFacts | CheckFacts> {
  return new Promise<SnapshotFacts | StatusFacts | CheckFacts>((resolve, reject) => {
    let replied = false;
    const worker = takeWorker();
    worker.postMessage(task);
    worker.on('message', (reply: Reply<SnapshotFacts | StatusFacts | CheckFacts>) => {
      if ('vacuumed' in reply) {
        hooks.onVacuumed?.(reply.vacuumed);
        return;
      }
      replied = true;
      if (reply.ok) resolve(reply.result);
      else reject(new SqliteTaskError(reply.message, reply.step, reply.code));
    });
    worker.on('error', (err) => {
      replied = true;
      reject(new SqliteTaskError(err.message, 'worker', (err as NodeJS.ErrnoException).code));
    });
    worker.on('exit', (code) => {
      if (!replied) reject(new SqliteTaskError(`the SQLite worker exited with code ${code} without an answer`, 'worker', undefined));
    });
  });
}
