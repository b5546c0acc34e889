/** The sample database and the concurrent writer that the agent tests, the demo and the benchmark rely on. */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { startWriter } from '../../src/dev/writer.js';
import { TcabError } from '../../src/errors.js';
import { firstColumn, firstValue, openDatabase } from '../../src/util/sqlite.js';
import { sha256OfFile, tableCounts } from './helpers.js';
import { tempDir } from '../support/world.js';

let work: { dir: string; remove(): Promise<void> };
beforeAll(async () => {
  work = await tempDir('sample');
});
afterAll(() => work?.remove());

describe('createSampleDatabase', () => {
  it('makes a WAL-mode TCAB-like database with the runs and reviews it reports', () => {
    const path = join(work.dir, 'a.sqlite');
    const made = createSampleDatabase(path, { runs: 250, seed: 42 });
    expect(made.runs).toBe(250);
    expect(made.bytes).toBe(statSync(path).size);
    expect(tableCounts(path)).toEqual({ runs: 250, reviews: made.reviews });
    expect(made.reviews).toBeGreaterThan(100);

    const db = openDatabase(path, { readOnly: true });
    try {
      expect(firstValue(db, 'PRAGMA journal_mode')).toBe('wal');
      const indexes = db.prepare("SELECT name, tbl_name FROM sqlite_schema WHERE type = 'index' ORDER BY name").all();
      expect(indexes).toEqual([
        { name: 'reviews_run_id', tbl_name: 'reviews' },
        { name: 'runs_published_at', tbl_name: 'runs' },
      ]);
      const columns = firstColumn(db, "SELECT name FROM pragma_table_info('runs')");
      expect(columns).toEqual(['id', 'slug', 'title', 'published_at', 'record', 'source_url', 'build_url']);
      const run = db.prepare('SELECT * FROM runs WHERE id = 17').get() as unknown as { slug: string; published_at: string; record: string };
      // The record is verbatim JSON of a few KB, and published_at an ISO time.
      const record = JSON.parse(run.record) as { slug: string; publishedAt: string };
      expect(record.slug).toBe(run.slug);
      expect(record.publishedAt).toBe(run.published_at);
      expect(new Date(run.published_at).toISOString()).toBe(run.published_at);
      const avg = firstValue<number>(db, 'SELECT avg(length(record)) FROM runs')!;
      expect(avg).toBeGreaterThan(1500);
      expect(avg).toBeLessThan(10_000);
      const orphans = firstValue(db, 'SELECT count(*) FROM reviews WHERE run_id NOT IN (SELECT id FROM runs)');
      expect(orphans).toBe(0);
    } finally {
      db.close();
    }
  });

  it('is deterministic for a seed, and differs between seeds', async () => {
    const a = join(work.dir, 'seed-a.sqlite');
    const b = join(work.dir, 'seed-b.sqlite');
    const c = join(work.dir, 'seed-c.sqlite');
    createSampleDatabase(a, { runs: 100, seed: 5 });
    createSampleDatabase(b, { runs: 100, seed: 5 });
    createSampleDatabase(c, { runs: 100, seed: 6 });
    expect(await sha256OfFile(a)).toBe(await sha256OfFile(b));
    expect(await sha256OfFile(a)).not.toBe(await sha256OfFile(c));
  });

  it('grows to targetBytes when asked for a size instead of a count', () => {
    const made = createSampleDatabase(join(work.dir, 'sized.sqlite'), { targetBytes: 5e6 });
    expect(made.bytes).toBeGreaterThanOrEqual(5e6);
    expect(made.bytes).toBeLessThan(7e6);
  });

  it('refuses to touch an existing file', () => {
    const path = join(work.dir, 'a.sqlite');
    const before = statSync(path).size;
    expect(() => createSampleDatabase(path, { runs: 1 })).toThrow(TcabError);
    expect(() => createSampleDatabase(path, { runs: 1 })).toThrow(/the file exists/);
    expect(statSync(path).size).toBe(before);
  });
});

describe('startWriter', () => {
  it('inserts runs from a separate process until stopped, and reports how many', async () => {
    const path = join(work.dir, 'written.sqlite');
    createSampleDatabase(path, { runs: 10 });
    const writer = startWriter(path, { intervalMs: 1 });
    await writer.ready;
    await new Promise((r) => setTimeout(r, 200));
    const result = await writer.stop();
    expect(result.errors).toEqual([]);
    expect(result.inserts).toBeGreaterThan(5);
    expect(tableCounts(path).runs).toBe(10 + result.inserts);
    // stop() is idempotent.
    expect(await writer.stop()).toEqual(result);
  });

  it('reports the errors its inserts hit instead of hiding them', async () => {
    const path = join(work.dir, 'locked.sqlite');
    createSampleDatabase(path, { runs: 5 });
    // Another connection holds the write lock longer than the writer's busy_timeout.
    const holder = openDatabase(path);
    holder.exec('BEGIN IMMEDIATE');
    const writer = startWriter(path, { intervalMs: 1, busyTimeoutMs: 20 });
    await writer.ready;
    await new Promise((r) => setTimeout(r, 150));
    const result = await writer.stop();
    holder.exec('ROLLBACK');
    holder.close();
    expect(result.errors.length).toBeGreaterThan(0);
    expect(result.errors[0]).toMatch(/SQLITE_BUSY/);
  });

  it('fails to start, saying why, when the database is not there', async () => {
    const writer = startWriter(join(work.dir, 'nothing.sqlite'));
    await expect(writer.ready).rejects.toThrow(/exited before its first insert/);
    expect(existsSync(join(work.dir, 'nothing.sqlite'))).toBe(false);
  });
});
