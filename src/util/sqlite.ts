/**
 * SQLite through Node's own `node:sqlite` (DatabaseSync): no native module to compile or ship, so a package
 * built on any machine runs on the function app and on the VM. Node 24.15 and later have it without an
 * experimental warning; the module is loaded on first use, so an older runtime gets a message saying so
 * instead of failing to start.
 *
 * node:sqlite reports SQLite's extended result code as a number (`errcode`); `sqliteErrorCode` names it the
 * way SQLite's documentation does (SQLITE_BUSY, SQLITE_READONLY_DIRECTORY ...), which is what the agent's
 * hints and logs key on.
 */
import { createRequire } from 'node:module';
import type { DatabaseSync, SQLInputValue, StatementSync } from 'node:sqlite';
import { pathToFileURL } from 'node:url';
import { TcabError } from '../errors.js';

/** The first Node release whose node:sqlite runs without an ExperimentalWarning. */
export const MIN_NODE = '24.15';

let sqlite: typeof import('node:sqlite') | undefined;

/** node:sqlite, or a TcabError naming the Node version found and the one needed. */
export function nodeSqlite(): typeof import('node:sqlite') {
  if (sqlite) return sqlite;
  try {
    sqlite = createRequire(import.meta.url)('node:sqlite') as typeof import('node:sqlite');
    return sqlite;
  } catch (e) {
    throw new TcabError(`This runtime (Node ${process.versions.node}) has no node:sqlite; tcab-backup needs Node ${MIN_NODE} or later`, {
      hint: "run it with Node 24 (npm scripts use the Node that npm ci installs under node_modules/.bin; on the VM install Node 24 and point the unit's ExecStart at it)",
      code: 'NODE_TOO_OLD',
      cause: e,
    });
  }
}

export interface OpenOptions {
  /** Open read-only (the file must exist). */
  readOnly?: boolean;
  /** Read-write, but fail instead of creating the file when it does not exist. */
  mustExist?: boolean;
  /** How long to wait on a lock before SQLITE_BUSY. Default 0: fail at once, as SQLite does. */
  busyTimeoutMs?: number;
  /**
   * With readOnly: the file cannot change while open (a restored scratch copy nobody else has), so SQLite
   * takes no locks. Locks are what a network file system (the drill's Azure Files share, SMB) may refuse.
   */
  immutable?: boolean;
}

export function openDatabase(path: string, options: OpenOptions = {}): DatabaseSync {
  const { DatabaseSync } = nodeSqlite();
  const settings = { readOnly: options.readOnly ?? false, timeout: options.busyTimeoutMs ?? 0 };
  if (options.readOnly && options.immutable) {
    const url = pathToFileURL(path);
    url.searchParams.set('immutable', '1');
    return new DatabaseSync(url, settings);
  }
  if (options.mustExist && !options.readOnly) {
    // mode=rw: SQLite's own "open, do not create", so there is no window between a check and the open.
    const url = pathToFileURL(path);
    url.searchParams.set('mode', 'rw');
    return new DatabaseSync(url, settings);
  }
  return new DatabaseSync(path, settings);
}

/** The first column of the first row, or undefined when there is no row. */
export function firstValue<T = unknown>(db: DatabaseSync, sql: string, ...params: SQLInputValue[]): T | undefined {
  const row = arrays(db.prepare(sql)).get(...params) as unknown[] | undefined;
  return row === undefined ? undefined : (row[0] as T);
}

/** The first column of every row. */
export function firstColumn<T = unknown>(db: DatabaseSync, sql: string, ...params: SQLInputValue[]): T[] {
  return (arrays(db.prepare(sql)).all(...params) as unknown as unknown[][]).map((row) => row[0] as T);
}

function arrays(statement: StatementSync): StatementSync {
  statement.setReturnArrays(true);
  return statement;
}

/** Runs `work` in one transaction: committed when it returns, rolled back when it throws. */
export function inTransaction<T>(db: DatabaseSync, work: () => T, mode: 'DEFERRED' | 'IMMEDIATE' = 'DEFERRED'): T {
  db.exec(`BEGIN ${mode}`);
  try {
    const result = work();
    db.exec('COMMIT');
    return result;
  } catch (e) {
    if (db.isTransaction) db.exec('ROLLBACK');
    throw e;
  }
}

/** Extended result codes by primary code; the n-th name (from 1) is primary | n << 8, as in sqlite3.h. */
const EXTENDED: Record<number, [string, string[]]> = {
  0: ['OK', ['LOAD_PERMANENTLY', 'SYMLINK']],
  1: ['ERROR', ['MISSING_COLLSEQ', 'RETRY', 'SNAPSHOT', 'RESERVESIZE', 'KEY', 'UNABLE']],
  2: ['INTERNAL', []],
  3: ['PERM', []],
  4: ['ABORT', ['ROLLBACK']],
  5: ['BUSY', ['RECOVERY', 'SNAPSHOT', 'TIMEOUT']],
  6: ['LOCKED', ['SHAREDCACHE', 'VTAB']],
  7: ['NOMEM', []],
  8: ['READONLY', ['RECOVERY', 'CANTLOCK', 'ROLLBACK', 'DBMOVED', 'CANTINIT', 'DIRECTORY']],
  9: ['INTERRUPT', []],
  10: [
    'IOERR',
    [
      'READ',
      'SHORT_READ',
      'WRITE',
      'FSYNC',
      'DIR_FSYNC',
      'TRUNCATE',
      'FSTAT',
      'UNLOCK',
      'RDLOCK',
      'DELETE',
      'BLOCKED',
      'NOMEM',
      'ACCESS',
      'CHECKRESERVEDLOCK',
      'LOCK',
      'CLOSE',
      'DIR_CLOSE',
      'SHMOPEN',
      'SHMSIZE',
      'SHMLOCK',
      'SHMMAP',
      'SEEK',
      'DELETE_NOENT',
      'MMAP',
      'GETTEMPPATH',
      'CONVPATH',
      'VNODE',
      'AUTH',
      'BEGIN_ATOMIC',
      'COMMIT_ATOMIC',
      'ROLLBACK_ATOMIC',
      'DATA',
      'CORRUPTFS',
      'IN_PAGE',
    ],
  ],
  11: ['CORRUPT', ['VTAB', 'SEQUENCE', 'INDEX']],
  12: ['NOTFOUND', []],
  13: ['FULL', []],
  14: ['CANTOPEN', ['NOTEMPDIR', 'ISDIR', 'FULLPATH', 'CONVPATH', 'DIRTYWAL', 'SYMLINK']],
  15: ['PROTOCOL', []],
  16: ['EMPTY', []],
  17: ['SCHEMA', []],
  18: ['TOOBIG', []],
  19: [
    'CONSTRAINT',
    ['CHECK', 'COMMITHOOK', 'FOREIGNKEY', 'FUNCTION', 'NOTNULL', 'PRIMARYKEY', 'TRIGGER', 'UNIQUE', 'VTAB', 'ROWID', 'PINNED', 'DATATYPE'],
  ],
  20: ['MISMATCH', []],
  21: ['MISUSE', []],
  22: ['NOLFS', []],
  23: ['AUTH', ['USER']],
  24: ['FORMAT', []],
  25: ['RANGE', []],
  26: ['NOTADB', []],
  27: ['NOTICE', ['RECOVER_WAL', 'RECOVER_ROLLBACK', 'RBU']],
  28: ['WARNING', ['AUTOINDEX']],
};

/** SQLite's names of its result codes, by number: what `errcode` on a node:sqlite error means. */
export const SQLITE_CODE_NAMES: Readonly<Record<number, string>> = Object.freeze(
  Object.fromEntries(
    Object.entries(EXTENDED).flatMap(([primary, [name, extended]]) => [
      [Number(primary), `SQLITE_${name}`],
      ...extended.map((ext, i) => [Number(primary) | ((i + 1) << 8), `SQLITE_${name}_${ext}`]),
    ]),
  ),
);

/** SQLITE_BUSY, SQLITE_READONLY_DIRECTORY ... for a node:sqlite error; the error's own code (ENOENT ...) otherwise. */
export function sqliteErrorCode(err: unknown): string | undefined {
  const e = err as { errcode?: unknown; code?: unknown } | null | undefined;
  if (typeof e?.errcode === 'number') return SQLITE_CODE_NAMES[e.errcode] ?? SQLITE_CODE_NAMES[e.errcode & 0xff] ?? `SQLITE_${e.errcode}`;
  return typeof e?.code === 'string' ? e.code : undefined;
}
