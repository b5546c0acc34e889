import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NotFoundError, PreconditionFailedError } from '../../src/errors.js';
import { FileTarget } from '../../src/targets/file.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl, type FileTargetSpec } from '../../src/targets/spec.js';
import { describeTargetConformance, failureOf, listKeys, randomStream, readAll } from './conformance.js';

let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tcab-file-target-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function specFor(path: string): FileTargetSpec {
  return parseTargetUrl('local', pathToFileURL(path).href) as FileTargetSpec;
}

async function freshFolder(): Promise<string> {
  const dir = join(root, randomBytes(4).toString('hex'));
  await mkdir(dir);
  return dir;
}

/** Every file under `dir`, relative, including the hidden temporary and lock files. */
async function allFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

describeTargetConformance('file', async () => openTarget(specFor(await freshFolder())), { pageSize: 1 });

describe('file target', () => {
  it('reads a small object whole with readSmall, and tells a longer one, a missing one and a folder apart', async () => {
    const t = openTarget(specFor(await freshFolder()));
    const bytes = randomBytes(3000);
    await t.put('chunks/tcab/ab/x.zst', bytes);
    expect(t.readSmall).toBeTypeOf('function');
    expect(Buffer.compare(await t.readSmall!('chunks/tcab/ab/x.zst', 3000), bytes)).toBe(0);
    expect(Buffer.compare(await t.readSmall!('chunks/tcab/ab/x.zst', 5000), bytes)).toBe(0);
    // Longer than asked: maxBytes + 1 bytes, so that the caller sees it.
    const cut = await t.readSmall!('chunks/tcab/ab/x.zst', 1000);
    expect(cut.length).toBe(1001);
    expect(Buffer.compare(cut, bytes.subarray(0, 1001))).toBe(0);
    await expect(t.readSmall!('chunks/tcab/ab/missing.zst', 10)).rejects.toBeInstanceOf(NotFoundError);
    await expect(t.readSmall!('chunks/tcab/ab', 10)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('keeps a put invisible until it is complete, then renames it into place', async () => {
    const dir = await freshFolder();
    const t = openTarget(specFor(dir));
    const body = new PassThrough();
    const put = t.put('snapshots/x.sqlite.gz', body);
    body.write(randomBytes(100_000));
    await new Promise((r) => setTimeout(r, 100));
    await expect(t.head('snapshots/x.sqlite.gz')).rejects.toBeInstanceOf(NotFoundError);
    expect(await listKeys(t, '')).toEqual([]);
    const during = await allFiles(dir);
    expect(during).toHaveLength(1);
    expect(during[0]).toMatch(/^snapshots\/\.tcab-partial\.[0-9a-f]+\.x\.sqlite\.gz$/);
    body.end(randomBytes(50_000));
    await put;
    expect(await allFiles(dir)).toEqual(['snapshots/x.sqlite.gz']);
    expect((await stat(join(dir, 'snapshots/x.sqlite.gz'))).size).toBe(150_000);
  });

  it('removes its temporary file when the body fails or the put is aborted', async () => {
    const dir = await freshFolder();
    const t = openTarget(specFor(dir));
    await expect(t.put('a/broken', randomStream(3_000_000, { failAfter: 1_000_000 }).stream)).rejects.toThrow(/broke off/);
    const controller = new AbortController();
    const aborted = t.put('a/aborted', randomStream(50_000_000, { onRead: (n) => n > 1_000_000 && controller.abort() }).stream, {
      signal: controller.signal,
    });
    await expect(aborted).rejects.toMatchObject({ name: 'AbortError' });
    expect(await allFiles(dir)).toEqual([]);
  });

  it('lets exactly one of two targets on the same folder win a conditional write', async () => {
    const dir = await freshFolder();
    const one = new FileTarget(specFor(dir));
    const two = new FileTarget(specFor(dir));
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => (i % 2 ? one : two).put('snapshots/m.json', Buffer.from(`w${i}`), { ifNoneMatch: '*' })),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(PreconditionFailedError);
    expect(await allFiles(dir)).toEqual(['snapshots/m.json']);
  });

  it('takes over a lock left by a crashed writer once it is stale', async () => {
    const dir = await freshFolder();
    const t = new FileTarget(specFor(dir));
    await mkdir(join(dir, 'status'));
    const lock = join(dir, 'status/.tcab-lock.tcab.json');
    await writeFile(lock, '99999\n');
    const old = new Date(Date.now() - 5 * 60_000);
    await utimes(lock, old, old);
    await t.put('status/tcab.json', Buffer.from('{}'), { ifNoneMatch: '*' });
    expect(await allFiles(dir)).toEqual(['status/tcab.json']);
  });

  it('gives a new etag on every write, even of the same bytes', async () => {
    const t = openTarget(specFor(await freshFolder()));
    const a = await t.put('k', Buffer.from('same'));
    const b = await t.put('k', Buffer.from('same'));
    expect(b.etag).not.toBe(a.etag);
    await expect(t.put('k', Buffer.from('other'), { ifMatch: a.etag })).rejects.toBeInstanceOf(PreconditionFailedError);
  });

  it('removes date folders left empty by a delete, but not the target folder', async () => {
    const dir = await freshFolder();
    const t = openTarget(specFor(dir));
    await t.put('snapshots/tcab/2026/11/24/a.json', Buffer.from('a'));
    await t.put('snapshots/tcab/2026/11/25/b.json', Buffer.from('b'));
    await t.delete('snapshots/tcab/2026/11/24/a.json');
    expect(await readdir(join(dir, 'snapshots/tcab/2026/11'))).toEqual(['25']);
    await t.delete('snapshots/tcab/2026/11/25/b.json');
    expect(await readdir(dir)).toEqual([]);
  });

  it('removes stale temporary files and keeps young ones', async () => {
    const dir = await freshFolder();
    const t = new FileTarget(specFor(dir));
    await mkdir(join(dir, 'snapshots/tcab'), { recursive: true });
    const stale = join(dir, 'snapshots/tcab/.tcab-partial.aaaa.x.sqlite.gz');
    const young = join(dir, 'snapshots/.tcab-partial.bbbb.y.sqlite.gz');
    await writeFile(stale, 'half');
    await writeFile(young, 'half');
    const old = new Date(Date.now() - 2 * 86_400_000);
    await utimes(stale, old, old);
    await t.put('snapshots/tcab/kept.json', Buffer.from('{}'));
    expect(await t.abortStaleUploads(new Date(Date.now() - 86_400_000))).toBe(1);
    expect(await allFiles(dir)).toEqual(['snapshots/.tcab-partial.bbbb.y.sqlite.gz', 'snapshots/tcab/kept.json']);
  });

  it('refuses keys that would collide with its temporary and lock files', async () => {
    const t = openTarget(specFor(await freshFolder()));
    await expect(t.put('a/.tcab-lock.x', Buffer.from('x'))).rejects.toMatchObject({ code: 'INVALID_KEY' });
  });

  it('names the folder and what to check when it cannot write', async () => {
    const dir = await freshFolder();
    await writeFile(join(dir, 'blocker'), 'a file where a folder should be');
    const t = openTarget(specFor(join(dir, 'blocker')));
    const err = await failureOf(t.put('x.json', Buffer.from('{}')));
    expect(err.message).toContain('Target "local"');
    expect(err.message).toContain(pathToFileURL(join(dir, 'blocker')).href);
    expect(err.message).toContain('Check:');
    expect(await readAll((await openTarget(specFor(dir)).get('blocker')).body)).toEqual(Buffer.from('a file where a folder should be'));
  });
});
