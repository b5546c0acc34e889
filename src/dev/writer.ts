/**
 * A stand-in for the TCAB backend writing while a snapshot is taken: a separate process with its own
 * connection (busy_timeout set, as the backend has), inserting a run (and sometimes a review) every
 * `intervalMs`. A separate process rather than a thread, so SQLite's locking is exercised across processes as
 * on the VM. Every failed insert is reported: a snapshot must never make the backend's writes fail.
 *
 * The child's code is a string run with `node -e` for the same reason as the agent's SQLite worker: it must
 * run from TypeScript sources under the test runner as well as from the compiled output.
 */
import { spawn } from 'node:child_process';
import { SQLITE_CODE_NAMES } from '../util/sqlite.js';

export interface WriterOptions {
  /** Pause between inserts; 0 inserts as fast as the database allows. Default 5 ms. */
  intervalMs?: number;
  /** Size of each run's JSON record in bytes (approximately). Default 3000. */
  recordBytes?: number;
  /** busy_timeout of the writer's connection. Default 5000 ms, like a typical backend. */
  busyTimeoutMs?: number;
}

export interface WriterResult {
  inserts: number;
  /** Messages of failed inserts (at most 100 kept), e.g. "SQLITE_BUSY: database is locked". */
  errors: string[];
}

export interface RunningWriter {
  /** Resolves once the writer has opened the database and made its first insert. */
  ready: Promise<void>;
  stop(): Promise<WriterResult>;
}

const CHILD_SOURCE = String.raw`
'use strict';
const { randomBytes } = require('node:crypto');
const args = JSON.parse(process.argv[1]);
const { DatabaseSync } = require('node:sqlite');
const { pathToFileURL } = require('node:url');
// mode=rw: open the existing database, never create one.
const url = pathToFileURL(args.path);
url.searchParams.set('mode', 'rw');
const db = new DatabaseSync(url, { timeout: Number(args.busyTimeoutMs) });
const insertRun = db.prepare('INSERT INTO runs (slug, title, published_at, record, source_url, build_url) VALUES (?, ?, ?, ?, ?, ?)');
const insertReview = db.prepare('INSERT INTO reviews (run_id, reviewer, score, body, created_at) VALUES (?, ?, ?, ?, ?)');
let inserts = 0;
const errors = [];
let stopping = false;
let readySent = false;
function insertOne() {
  const now = new Date().toISOString();
  const slug = 'live-' + randomBytes(6).toString('hex');
  const record = JSON.stringify({ slug, publishedAt: now, source: 'writer', notes: randomBytes(Math.ceil(args.recordBytes / 2)).toString('hex') });
  try {
    const id = insertRun.run(slug, 'live run ' + slug, now, record, null, null).lastInsertRowid;
    if (inserts % 2 === 0) insertReview.run(id, 'writer', 3, 'reviewed while a snapshot may be running', now);
    inserts++;
  } catch (err) {
    const code = typeof err.errcode === 'number' ? args.codeNames[err.errcode] || args.codeNames[err.errcode & 0xff] : err.code;
    if (errors.length < 100) errors.push((code ? code + ': ' : '') + err.message);
  }
}
function loop() {
  if (stopping) return;
  insertOne();
  if (!readySent) {
    readySent = true;
    process.send({ ready: true });
  }
  setTimeout(loop, args.intervalMs);
}
process.on('message', (m) => {
  if (m !== 'stop') return;
  stopping = true;
  db.close();
  process.send({ inserts, errors }, () => process.exit(0));
});
// The parent is gone (a test run killed): stop writing rather than run on.
process.on('disconnect', () => process.exit(0));
loop();
`;

export function startWriter(path: string, options: WriterOptions = {}): RunningWriter {
  const args = {
    codeNames: SQLITE_CODE_NAMES,
    path,
    intervalMs: options.intervalMs ?? 5,
    recordBytes: options.recordBytes ?? 3000,
    busyTimeoutMs: options.busyTimeoutMs ?? 5000,
  };
  const child = spawn(process.execPath, ['-e', CHILD_SOURCE, JSON.stringify(args)], { stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (t: string) => {
    if (stderr.length < 4000) stderr += t;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let result: WriterResult | undefined;
  let readyResolve!: () => void;
  const failed = (what: string) =>
    new Error(`The test writer for ${path} ${what}${stderr ? `: ${stderr.trim().split('\n').slice(-3).join(' ')}` : ''}`);
  const ready = new Promise<void>((resolve, reject) => {
    readyResolve = resolve;
    void exited.then(() => reject(failed('exited before its first insert')));
  });
  ready.catch(() => {});
  child.on('message', (m: { ready?: boolean } & Partial<WriterResult>) => {
    if (m.ready) readyResolve();
    else if (typeof m.inserts === 'number') result = { inserts: m.inserts, errors: m.errors ?? [] };
  });
  let stopping: Promise<WriterResult> | undefined;
  return {
    ready,
    stop: () => {
      stopping ??= (async () => {
        if (child.connected) child.send('stop');
        const code = await exited;
        if (!result) throw failed(`exited with code ${code} without reporting`);
        return result;
      })();
      return stopping;
    },
  };
}
