/**
 * A real PostgreSQL for tests: initdb into a temporary folder owned by the postgres user (tests run as root,
 * and PostgreSQL refuses to run as root), started on a free loopback port with fsync off, with a TCAB-like
 * schema loaded. One per test file: initdb and start take a few seconds on a shared machine.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chown } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { tempDir } from './world.js';

const run = promisify(execFile);

export interface PgTestServer {
  host: '127.0.0.1';
  port: number;
  /** The login the drill uses (password authentication over TCP). */
  user: string;
  password: string;
  /** Runs a statement as the superuser, over the private Unix socket. */
  query(database: string, sql: string, params?: unknown[]): Promise<pg.QueryResult>;
  /** Creates a database owned by the drill login with the TCAB-like schema, holding runs published at `publishedAt`. */
  createTcabDatabase(database: string, publishedAt: Date[]): Promise<void>;
  stop(): Promise<void>;
}

async function binDir(): Promise<string> {
  const debian = '/usr/lib/postgresql/15/bin';
  if (existsSync(join(debian, 'initdb'))) return debian;
  const { stdout } = await run('pg_config', ['--bindir']);
  return stdout.trim();
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

async function asPostgres(bin: string, tool: string, args: string[]): Promise<void> {
  await run('runuser', ['-u', 'postgres', '--', join(bin, tool), ...args], { timeout: 60_000 });
}

export async function startPgServer(options: { user?: string; password?: string } = {}): Promise<PgTestServer> {
  const bin = await binDir();
  const { dir, remove } = await tempDir('pg');
  const { uid, gid } = await postgresIds();
  await chown(dir, uid, gid);
  const data = join(dir, 'data');
  const user = options.user ?? 'tcab_drill';
  const password = options.password ?? 'Drill-Pass-' + Math.random().toString(36).slice(2, 14);
  await asPostgres(bin, 'initdb', [
    '-D',
    data,
    '-U',
    'postgres',
    '--auth-local=trust',
    '--auth-host=scram-sha-256',
    '-E',
    'UTF8',
    '--no-sync',
  ]);
  const port = await freePort();
  const serverOptions = `-p ${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${dir} -c fsync=off -c synchronous_commit=off -c full_page_writes=off`;
  await asPostgres(bin, 'pg_ctl', ['-D', data, '-o', serverOptions, '-l', join(dir, 'server.log'), '-w', '-t', '60', 'start']);

  const query = async (database: string, sql: string, params: unknown[] = []) => {
    const client = new pg.Client({ host: dir, port, user: 'postgres', database });
    await client.connect();
    try {
      return await client.query(sql, params);
    } finally {
      await client.end();
    }
  };
  await query('postgres', `CREATE ROLE ${user} LOGIN PASSWORD '${password.replace(/'/g, "''")}'`);

  let stopped = false;
  return {
    host: '127.0.0.1',
    port,
    user,
    password,
    query,
    async createTcabDatabase(database, publishedAt) {
      await query('postgres', `CREATE DATABASE ${database} OWNER ${user}`);
      await query(
        database,
        `
        CREATE TABLE runs (id bigserial PRIMARY KEY, published_at timestamptz NOT NULL, record jsonb NOT NULL);
        CREATE TABLE reviews (id bigserial PRIMARY KEY, run_id bigint NOT NULL REFERENCES runs(id), verdict text NOT NULL);
        CREATE INDEX runs_published_at ON runs (published_at);
        ALTER TABLE runs OWNER TO ${user};
        ALTER TABLE reviews OWNER TO ${user};`,
      );
      for (const [i, at] of publishedAt.entries()) {
        await query(database, 'INSERT INTO runs (published_at, record) VALUES ($1, $2)', [
          at,
          JSON.stringify({ run: i, model: 'm', score: i / 10 }),
        ]);
      }
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await asPostgres(bin, 'pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
      } finally {
        await remove();
      }
    },
  };
}

async function postgresIds(): Promise<{ uid: number; gid: number }> {
  const [{ stdout: uid }, { stdout: gid }] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]);
  return { uid: Number(uid.trim()), gid: Number(gid.trim()) };
}
