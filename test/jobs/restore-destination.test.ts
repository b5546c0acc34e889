/**
 * Restore onto a live database path, as after a crash: the database's -wal and -shm (or a -journal) are
 * still beside it. SQLite replays a -wal over whatever file it finds at the path, so restoring there must
 * either refuse or move those files aside first, and must never touch the destination when a check fails.
 * Real SQLite files, a real agent snapshot on a file target, the CLI as an operator runs it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/agent/client.js';
import { startAgent } from '../../src/agent/run.js';
import { manifestKey } from '../../src/catalog/layout.js';
import type { ManifestV1 as Manifest } from '../../src/catalog/manifest.js';
import { main as cli } from '../../src/cli/main.js';
import { createSampleDatabase, SAMPLE_SCHEMA } from '../../src/dev/sample-db.js';
import { firstValue, inTransaction, openDatabase } from '../../src/util/sqlite.js';
import { publishNoClobber, runRestore } from '../../src/jobs/restore/index.js';
import { createLogger, silentLogger } from '../../src/log.js';
import { runSnapshot } from '../../src/jobs/snapshot/index.js';
import { openTarget } from '../../src/targets/index.js';
import type { GetOptions, GetResult, Target } from '../../src/targets/target.js';

let work: string;
let agent: { url: string; close(): Promise<void> };
let snapshot: Manifest;
/** db, db-wal and db-shm of a WAL database holding 2,000 runs, copied while its connection was open. */
let crashImage: string;
const key = randomBytes(32).toString('hex');
const LIVE_RUNS = 2000;

async function runCli(args: string[], targets = `a=file://${join(work, 'a')}`): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d));
  stderr.on('data', (d: Buffer) => (err += d));
  const code = await cli(args, {
    stdout,
    stderr: stderr as unknown as NodeJS.WriteStream,
    stdin: new PassThrough(),
    env: { TCAB_BACKUP_TARGETS: targets, TCAB_LOG_LEVEL: 'error' },
  });
  return { code, stdout: out, stderr: err };
}

function runsIn(path: string): number {
  const db = openDatabase(path, { mustExist: true });
  try {
    expect(firstValue(db, 'PRAGMA integrity_check')).toBe('ok');
    return firstValue<number>(db, 'SELECT count(*) FROM runs')!;
  } finally {
    db.close();
  }
}

/** The crash image placed at `dest` (the database and the files beside it), with the sha256 of each file. */
function placeCrashImage(dest: string, suffixes = ['', '-wal', '-shm']): Map<string, string> {
  const sums = new Map<string, string>();
  for (const s of suffixes) {
    copyFileSync(join(crashImage, `live.sqlite${s}`), `${dest}${s}`);
    sums.set(`${dest}${s}`, sha256(`${dest}${s}`));
  }
  return sums;
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Every file in the folder with its sha256: what "the destination is untouched" means. */
function folderState(dir: string): Record<string, string> {
  return Object.fromEntries(
    readdirSync(dir)
      .sort()
      .map((f) => [f, sha256(join(dir, f))]),
  );
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-restore-dest-'));
  createSampleDatabase(join(work, 'tcab.sqlite'), { runs: 500 });
  agent = await startAgent({
    dbPath: join(work, 'tcab.sqlite'),
    stagingDir: join(work, 'staging'),
    host: '127.0.0.1',
    port: 0,
    keys: new Map([['ops', key]]),
    tls: undefined,
    databaseName: 'tcab',
    compression: 'auto',
    stagingTtlMs: 3_600_000,
  });
  const target = openTarget({ kind: 'file', name: 'a', displayUrl: `file://${join(work, 'a')}`, path: join(work, 'a') });
  ({ manifest: snapshot } = await runSnapshot(
    { agent: new AgentClient({ url: agent.url, keyId: 'ops', key }), targets: [target], database: 'tcab' },
    { trigger: { kind: 'cli' } },
  ));
  expect(snapshot.database.tables.runs).toBe(500);

  // The live database after a crash: its newest writes live only in the -wal, which any open replays.
  crashImage = join(work, 'crash');
  await mkdir(crashImage);
  const livePath = join(work, 'live.sqlite');
  const live = openDatabase(livePath);
  live.exec('PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;');
  live.exec(SAMPLE_SCHEMA);
  const insert = live.prepare(
    "INSERT INTO runs (id, slug, title, published_at, record) VALUES (?, ?, 'live', '2026-01-01T00:00:00Z', '{}')",
  );
  inTransaction(live, () => {
    for (let i = 1; i <= LIVE_RUNS; i++) insert.run(i, `run-${i}`);
  });
  for (const s of ['', '-wal', '-shm']) copyFileSync(`${livePath}${s}`, join(crashImage, `live.sqlite${s}`));
  live.close();
  // The image is what a crash leaves: the database file alone does not hold the rows, the -wal does.
  expect(readFileSync(join(crashImage, 'live.sqlite-wal')).length).toBeGreaterThan(0);
  const probe = join(work, 'probe');
  await mkdir(probe);
  placeCrashImage(join(probe, 'live.sqlite'));
  expect(runsIn(join(probe, 'live.sqlite'))).toBe(LIVE_RUNS);
});

afterAll(async () => {
  await agent?.close();
  await rm(work, { recursive: true, force: true });
});

describe('restore onto a database path with -wal, -shm or -journal beside it', () => {
  it('with --force moves the old database and its -wal and -shm aside, and the restored file opens as the snapshot', async () => {
    const dir = await mkdtemp(join(work, 'force-'));
    const dest = join(dir, 'runs.sqlite');
    const before = placeCrashImage(dest);

    const r = await runCli(['restore', '--snapshot', snapshot.id, '--force', '-o', dest, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const leftBeside = ['-wal', '-shm', '-journal'].filter((s) => existsSync(`${dest}${s}`));
    expect(runsIn(dest)).toBe(500);
    // Nothing SQLite would replay is left beside the restored file.
    expect(leftBeside).toEqual([]);

    const result = JSON.parse(r.stdout) as { movedAside: Array<{ from: string; to: string }> };
    expect(result.movedAside.map((m) => m.from)).toEqual([dest, `${dest}-wal`, `${dest}-shm`]);
    const aside = result.movedAside[0]!.to;
    expect(aside).toMatch(/runs\.sqlite\.replaced-\d{8}T\d{6}Z$/);
    expect(result.movedAside.map((m) => m.to)).toEqual([aside, `${aside}-wal`, `${aside}-shm`]);
    // Kept whole and as a set, byte for byte: nothing of the old database is lost.
    for (const m of result.movedAside) expect(sha256(m.to)).toBe(before.get(m.from));
    // Opened under its new name, the set is the pre-crash database with all its rows.
    expect(runsIn(aside)).toBe(LIVE_RUNS);
    expect(readdirSync(dir).filter((f) => f.includes('.restore-'))).toEqual([]);
  });

  it('names what it moved aside in the human output, and keeps a replaced database without companions too', async () => {
    const dir = await mkdtemp(join(work, 'human-'));
    const dest = join(dir, 'runs.sqlite');
    placeCrashImage(dest, ['', '-wal']);
    await writeFile(`${dest}-journal`, '');

    const r = await runCli(['restore', '--snapshot', snapshot.id, '--force', '-o', dest]);
    expect(r.code).toBe(0);
    expect(runsIn(dest)).toBe(500);
    const moved = [...r.stdout.matchAll(/^ {4}(\S+) -> (\S+)$/gm)].map((m) => [m[1], m[2]]);
    expect(moved.map(([from]) => from)).toEqual([dest, `${dest}-wal`, `${dest}-journal`]);
    expect(r.stdout).toMatch(/moved aside/);
    for (const [, to] of moved) expect(existsSync(to!)).toBe(true);

    // A second --force onto the now healthy path: the restored file it replaces is kept aside as well.
    const again = await runCli(['restore', '--snapshot', snapshot.id, '--force', '-o', dest, '--json']);
    expect(again.code).toBe(0);
    const second = JSON.parse(again.stdout) as { movedAside: Array<{ from: string; to: string }> };
    expect(second.movedAside.map((m) => m.from)).toEqual([dest]);
    expect(second.movedAside[0]!.to).not.toBe(moved[0]![1]);
    expect(runsIn(second.movedAside[0]!.to)).toBe(500);
  });

  it('without --force refuses, naming the files and what to do, and leaves them untouched', async () => {
    const dir = await mkdtemp(join(work, 'refuse-'));
    const dest = join(dir, 'runs.sqlite');
    placeCrashImage(dest);
    const before = folderState(dir);

    const r = await runCli(['restore', '--snapshot', snapshot.id, '-o', dest]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${dest}-wal`);
    expect(r.stderr).toContain(`${dest}-shm`);
    expect(r.stderr).toContain('--force');
    expect(folderState(dir)).toEqual(before);
  });

  it('without --force refuses a -wal or -journal left where the database is missing', async () => {
    for (const suffix of ['-wal', '-journal']) {
      const dir = await mkdtemp(join(work, `stray${suffix}-`));
      const dest = join(dir, 'runs.sqlite');
      if (suffix === '-wal') placeCrashImage(dest, ['-wal']);
      else {
        // A real rollback journal: PERSIST mode keeps it beside the database after each transaction.
        const db = openDatabase(join(dir, 'other.sqlite'));
        db.exec('PRAGMA journal_mode = PERSIST');
        db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1);');
        db.close();
        await writeFile(`${dest}-journal`, await readFile(join(dir, 'other.sqlite-journal')));
        await rm(join(dir, 'other.sqlite'));
        await rm(join(dir, 'other.sqlite-journal'));
      }
      const before = folderState(dir);
      const r = await runCli(['restore', '--snapshot', snapshot.id, '-o', dest]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`${dest}${suffix}`);
      expect(existsSync(dest)).toBe(false);
      expect(folderState(dir)).toEqual(before);
    }
  });

  it('with --force leaves the database and its -wal untouched when a check fails', async () => {
    // A second target holding the same snapshot with one byte of its artifact flipped.
    const damaged = join(work, 'damaged');
    await mkdir(dirname(join(damaged, snapshot.key)), { recursive: true });
    const bytes = await readFile(join(work, 'a', snapshot.key));
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    await writeFile(join(damaged, snapshot.key), bytes);
    const manifest = manifestKey('tcab', snapshot.id);
    await writeFile(join(damaged, manifest), await readFile(join(work, 'a', manifest)));

    const dir = await mkdtemp(join(work, 'failing-'));
    const dest = join(dir, 'runs.sqlite');
    placeCrashImage(dest);
    const before = folderState(dir);
    const r = await runCli(['restore', '--snapshot', snapshot.id, '--force', '-o', dest], `damaged=file://${damaged}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`Snapshot ${snapshot.id} on target "damaged"`);
    expect(folderState(dir)).toEqual(before);
  });
});

/** A real target that keeps every body it hands out, and runs `beforeGet` before each read. */
function watched(target: Target, beforeGet: (key: string) => Promise<void>): { target: Target; bodies: Readable[] } {
  const bodies: Readable[] = [];
  return {
    bodies,
    target: {
      name: target.name,
      url: target.url,
      put: (k, b, o) => target.put(k, b, o),
      head: (k, o) => target.head(k, o),
      list: (p, o) => target.list(p, o),
      delete: (k, o) => target.delete(k, o),
      async get(k: string, o?: GetOptions): Promise<GetResult> {
        await beforeGet(k);
        const got = await target.get(k, o);
        bodies.push(got.body);
        return got;
      },
    },
  };
}

describe('restore when the destination folder fails', () => {
  it('stops at once naming the folder, and leaves no download open, when the temporary file cannot be created', async () => {
    const dir = join(work, 'vanishing', 'db');
    const a = openTarget({ kind: 'file', name: 'a', displayUrl: `file://${join(work, 'a')}`, path: join(work, 'a') });
    // The folder is removed (an unmounted volume, a cleanup job) while the restore reads the manifest.
    const vanish = async (k: string) => void (k.endsWith('.json') && (await rm(dir, { recursive: true, force: true })));
    const first = watched(a, vanish);
    const second = watched(a, vanish);
    const err = await runRestore(
      { targets: [first.target, { ...second.target, name: 'b' }], database: 'tcab' },
      { selector: { id: snapshot.id }, outPath: join(dir, 'runs.sqlite') },
    ).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).toContain(dir);
    expect(err!.message).toMatch(/ENOENT|no such file/);
    const open = [...first.bodies, ...second.bodies].filter((b) => !b.destroyed);
    expect(open).toHaveLength(0);
    // Every target would meet the same folder: the second is not asked for the snapshot's data.
    expect(second.bodies).toHaveLength(0);
    expect(existsSync(dir)).toBe(false);
  });
});

describe('publishing the restored file on a file system without hard links (an SMB share)', () => {
  // An Azure Files SMB mount answers link() with EPERM or ENOTSUP; no such file system mounts here, so only
  // link() is replaced, by one that answers as such a share does. Everything else is the real file system.
  const noLinks = (code: string) => async () => {
    throw Object.assign(new Error(`${code}: operation not permitted, link`), { code });
  };

  it('reserves the free name and renames the verified file onto it', async () => {
    const dir = await mkdtemp(join(work, 'smb-'));
    const tmp = join(dir, '.runs.sqlite.restore-x.tmp');
    await writeFile(tmp, 'the verified snapshot');
    const events: string[] = [];
    const log = createLogger({ sink: (_level, _line, record) => events.push(String(record.event)) });
    for (const code of ['EPERM', 'ENOTSUP']) {
      const out = join(dir, `runs-${code}.sqlite`);
      await writeFile(tmp, 'the verified snapshot');
      await publishNoClobber(tmp, out, log, noLinks(code));
      expect(await readFile(out, 'utf8')).toBe('the verified snapshot');
      expect(existsSync(tmp)).toBe(false);
    }
    expect(events.filter((e) => e === 'restore.no_hard_links')).toHaveLength(2);
  });

  it('still never replaces a file that appeared at the path', async () => {
    const dir = await mkdtemp(join(work, 'smb-'));
    const tmp = join(dir, '.runs.sqlite.restore-y.tmp');
    const out = join(dir, 'runs.sqlite');
    await writeFile(tmp, 'the verified snapshot');
    await writeFile(out, 'a database someone opened meanwhile');
    const err = await publishNoClobber(tmp, out, silentLogger, noLinks('EPERM')).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toContain(`Restore destination ${out} appeared during the restore`);
    expect(await readFile(out, 'utf8')).toBe('a database someone opened meanwhile');
  });

  it('reports another link() failure as it is, naming the path', async () => {
    const dir = await mkdtemp(join(work, 'smb-'));
    const tmp = join(dir, '.runs.sqlite.restore-z.tmp');
    await writeFile(tmp, 'x');
    const err = await publishNoClobber(tmp, join(dir, 'runs.sqlite'), silentLogger, noLinks('EIO')).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toContain(`Restore destination ${join(dir, 'runs.sqlite')} cannot be created (EIO)`);
    expect(existsSync(join(dir, 'runs.sqlite'))).toBe(false);
  });
});
