/**
 * The behaviour every target must show, whatever its backend. Each backend's test file calls
 * `describeTargetConformance` with a factory of fresh, empty targets (a new folder or a new prefix).
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { NotFoundError, PreconditionFailedError, TargetError } from '../../src/errors.js';
import type { Target } from '../../src/targets/target.js';

export const MiB = 1024 * 1024;

export interface ConformanceOptions {
  /** The listing page size the factory's targets use; listings are tested across several pages. */
  pageSize: number;
}

/** A stream of `size` random bytes, produced lazily in 64 KiB chunks, with the sha256 of what it produced. */
export function randomStream(
  size: number,
  options: { failAfter?: number; chunk?: number; onRead?: (bytesSoFar: number) => void } = {},
): { stream: Readable; sha256: () => string } {
  const hash = createHash('sha256');
  const chunkSize = options.chunk ?? 64 * 1024;
  let sent = 0;
  const stream = new Readable({
    read() {
      if (options.failAfter !== undefined && sent >= options.failAfter) {
        this.destroy(new Error('the source broke off half-way'));
        return;
      }
      if (sent >= size) {
        this.push(null);
        return;
      }
      const n = Math.min(chunkSize, size - sent);
      const chunk = randomBytes(n);
      hash.update(chunk);
      sent += n;
      options.onRead?.(sent);
      this.push(chunk);
    },
  });
  return { stream, sha256: () => hash.digest('hex') };
}

/**
 * A stream of `data` in 64 KiB chunks that, with `failAtEnd`, fails after its last byte instead of ending:
 * what a copy checked against its manifest does when the bytes turn out not to match.
 */
export function bufferStream(data: Buffer, options: { failAtEnd?: boolean } = {}): Readable {
  let offset = 0;
  return new Readable({
    read() {
      if (offset >= data.length) {
        if (options.failAtEnd) this.destroy(new Error('the bytes do not match the manifest'));
        else this.push(null);
        return;
      }
      this.push(data.subarray(offset, offset + 64 * 1024));
      offset += 64 * 1024;
    },
  });
}

export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function sha256Of(body: Readable): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of body) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), bytes };
}

export async function readAll(body: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of body) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

/** The error `operation` fails with; a success fails the test. */
export async function failureOf(operation: Promise<unknown>): Promise<Error> {
  try {
    await operation;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the operation to fail, but it succeeded');
}

export async function listKeys(target: Target, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of target.list(prefix)) keys.push(o.key);
  return keys;
}

function byCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function describeTargetConformance(name: string, fresh: () => Promise<Target>, options: ConformanceOptions): void {
  describe(`${name}: target conformance`, () => {
    it('round-trips a multi-part stream byte for byte (12 MiB, sha256)', async () => {
      const t = await fresh();
      const { stream, sha256 } = randomStream(12 * MiB);
      const put = await t.put('snapshots/tcab/2026/11/24/big.sqlite.zst', stream);
      const expected = sha256();
      expect(put.size).toBe(12 * MiB);
      const got = await t.get('snapshots/tcab/2026/11/24/big.sqlite.zst');
      expect(got.size).toBe(12 * MiB);
      expect(got.etag).toBe(put.etag);
      expect(await sha256Of(got.body)).toEqual({ sha256: expected, bytes: 12 * MiB });
    });

    it('stores a Buffer, and an overwrite replaces the content and the etag', async () => {
      const t = await fresh();
      const first = await t.put('status/tcab.json', Buffer.from('{"v":1}'), { contentType: 'application/json' });
      expect(first.size).toBe(7);
      expect((await readAll((await t.get('status/tcab.json')).body)).toString()).toBe('{"v":1}');
      const second = await t.put('status/tcab.json', Buffer.from('{"v":2,"more":true}'));
      expect(second.etag).not.toBe(first.etag);
      expect((await readAll((await t.get('status/tcab.json')).body)).toString()).toBe('{"v":2,"more":true}');
      expect((await t.head('status/tcab.json')).size).toBe(19);
    });

    it('stores an empty object', async () => {
      const t = await fresh();
      await t.put('empty', Buffer.alloc(0));
      expect((await t.head('empty')).size).toBe(0);
      expect((await readAll((await t.get('empty')).body)).length).toBe(0);
    });

    it('reads byte ranges, reporting the size of the whole object', async () => {
      const t = await fresh();
      const data = randomBytes(100_000);
      await t.put('ranged.bin', data);
      const middle = await t.get('ranged.bin', { range: { start: 10, end: 19 } });
      expect(middle.size).toBe(100_000);
      expect((await readAll(middle.body)).equals(data.subarray(10, 20))).toBe(true);
      const tail = await t.get('ranged.bin', { range: { start: 99_000 } });
      expect((await readAll(tail.body)).equals(data.subarray(99_000))).toBe(true);
      const header = await t.get('ranged.bin', { range: { start: 0, end: 15 } });
      expect((await readAll(header.body)).equals(data.subarray(0, 16))).toBe(true);
    });

    it('heads an object: size, a recent time and the etag the put returned', async () => {
      const t = await fresh();
      const before = Date.now();
      const put = await t.put('drills/tcab/d1.json', Buffer.from('x'.repeat(1234)));
      const info = await t.head('drills/tcab/d1.json');
      expect(info).toMatchObject({ key: 'drills/tcab/d1.json', size: 1234, etag: put.etag });
      // Second-precision clocks (HTTP dates) round down; allow for that and a little skew.
      expect(info.lastModified.getTime()).toBeGreaterThan(before - 5_000);
      expect(info.lastModified.getTime()).toBeLessThan(Date.now() + 5_000);
    });

    it('throws NotFoundError for get and head of a missing key', async () => {
      const t = await fresh();
      await expect(t.get('snapshots/missing.json')).rejects.toBeInstanceOf(NotFoundError);
      await expect(t.head('snapshots/missing.json')).rejects.toBeInstanceOf(NotFoundError);
      await expect(t.get('no/such/folder/x')).rejects.toBeInstanceOf(NotFoundError);
      const err = await failureOf(t.head('snapshots/missing.json'));
      expect(err.message).toContain('snapshots/missing.json');
      expect(err.message).toContain(t.name);
    });

    it('deletes idempotently', async () => {
      const t = await fresh();
      await t.put('a/b.json', Buffer.from('1'));
      await t.delete('a/b.json');
      await expect(t.head('a/b.json')).rejects.toBeInstanceOf(NotFoundError);
      await t.delete('a/b.json');
      await t.delete('never/was/here.json');
      expect(await listKeys(t, '')).toEqual([]);
    });

    it('lists in key order across several pages, and by prefix', async () => {
      const t = await fresh();
      const keys = [
        'snapshots/tcab/2026/11/24/a.json',
        'snapshots/tcab/2026/11/24/a.sqlite.gz',
        'snapshots/tcab/2026/11/25/b.json',
        'snapshots/tcab/2026/11/3/c.json',
        'snapshots/tcab-old/x.json',
        'snapshots/tcab.json',
        'snapshots/tcab0',
        'drills/tcab/1.json',
        'drills/tcab/10.json',
        'drills/tcab/2.json',
        'status/tcab.json',
        'a-b',
        'a/c',
        'a0',
      ];
      expect(keys.length).toBeGreaterThan(options.pageSize * 2);
      const shuffled = [...keys].sort(() => Math.random() - 0.5);
      await Promise.all(shuffled.map((k, i) => t.put(k, Buffer.from(`object ${i}`))));
      const sorted = [...keys].sort(byCodeUnits);
      expect(await listKeys(t, '')).toEqual(sorted);
      expect(await listKeys(t, 'snapshots/tcab/')).toEqual(sorted.filter((k) => k.startsWith('snapshots/tcab/')));
      expect(await listKeys(t, 'snapshots/tcab')).toEqual(sorted.filter((k) => k.startsWith('snapshots/tcab')));
      expect(await listKeys(t, 'drills/tcab/1')).toEqual(['drills/tcab/1.json', 'drills/tcab/10.json']);
      expect(await listKeys(t, 'nothing/')).toEqual([]);
      const infos = [];
      for await (const o of t.list('status/')) infos.push(o);
      expect(infos).toHaveLength(1);
      expect(infos[0]).toMatchObject({ key: 'status/tcab.json', size: `object ${shuffled.indexOf('status/tcab.json')}`.length });
      expect(infos[0]!.etag).toBe((await t.head('status/tcab.json')).etag);
    });

    it('leaves nothing visible when the body stream fails half-way', async () => {
      const t = await fresh();
      const { stream } = randomStream(12 * MiB, { failAfter: 6 * MiB });
      const err = await failureOf(t.put('snapshots/tcab/broken.sqlite.zst', stream));
      expect(err).toBeInstanceOf(TargetError);
      expect(err.message).toContain('reading the data to upload failed: the source broke off half-way');
      expect(err.message).toContain('snapshots/tcab/broken.sqlite.zst');
      expect(err.message).toMatch(/Check: the source of the upload/);
      await expect(t.head('snapshots/tcab/broken.sqlite.zst')).rejects.toBeInstanceOf(NotFoundError);
      expect(await listKeys(t, '')).toEqual([]);
      const small = randomStream(1000, { failAfter: 500, chunk: 100 });
      await expect(t.put('small-broken', small.stream)).rejects.toThrow(/broke off/);
      expect(await listKeys(t, '')).toEqual([]);
    });

    it('stores a stream given with its length and sha256 byte for byte (7 MiB)', async () => {
      const t = await fresh();
      const data = randomBytes(7 * MiB);
      const put = await t.put('snapshots/tcab/known.sqlite.zst', bufferStream(data), {
        contentLength: data.length,
        sha256: sha256Hex(data),
      });
      expect(put.size).toBe(data.length);
      expect(await sha256Of((await t.get('snapshots/tcab/known.sqlite.zst')).body)).toEqual({
        sha256: sha256Hex(data),
        bytes: data.length,
      });
    });

    it('leaves nothing visible when the body fails after its last byte instead of ending, with or without its sha256', async () => {
      const t = await fresh();
      for (const size of [1000, 6 * MiB + 3]) {
        const data = randomBytes(size);
        for (const sha256 of [undefined, sha256Hex(data)]) {
          const err = await failureOf(
            t.put('snapshots/tcab/late.sqlite.zst', bufferStream(data, { failAtEnd: true }), {
              contentLength: size,
              ...(sha256 ? { sha256 } : {}),
            }),
          );
          expect(err.message).toContain('do not match the manifest');
          await expect(t.head('snapshots/tcab/late.sqlite.zst')).rejects.toBeInstanceOf(NotFoundError);
          expect(await listKeys(t, '')).toEqual([]);
        }
      }
    });

    it('fails, and leaves nothing visible, when the body is closed half-way without an error, with or without its sha256', async () => {
      const t = await fresh();
      const size = 6 * MiB + 3;
      const data = randomBytes(size);
      for (const sha256 of [undefined, sha256Hex(data)]) {
        // A source that gives up without saying why: its stream is destroyed with no error after 3 MiB.
        const body = bufferStream(data);
        let sent = 0;
        body.on('data', (chunk: Buffer) => {
          sent += chunk.length;
          if (sent >= 3 * MiB) body.destroy();
        });
        const err = await failureOf(
          t.put('snapshots/tcab/closed.sqlite.zst', body, { contentLength: size, ...(sha256 ? { sha256 } : {}) }),
        );
        expect(err).toBeInstanceOf(Error);
        await expect(t.head('snapshots/tcab/closed.sqlite.zst')).rejects.toBeInstanceOf(NotFoundError);
        expect(await listKeys(t, '')).toEqual([]);
      }
    });

    it('stops an upload when its AbortSignal aborts, leaving nothing visible', async () => {
      const t = await fresh();
      const controller = new AbortController();
      let read = 0;
      const { stream } = randomStream(64 * MiB, {
        onRead: (n) => {
          read = n;
          if (n >= 6 * MiB && !controller.signal.aborted) controller.abort();
        },
      });
      const started = Date.now();
      const err = await failureOf(t.put('aborted.bin', stream, { signal: controller.signal }));
      expect(err.name).toBe('AbortError');
      expect(Date.now() - started).toBeLessThan(20_000);
      expect(read).toBeLessThan(40 * MiB);
      await expect(t.head('aborted.bin')).rejects.toBeInstanceOf(NotFoundError);
      expect(await listKeys(t, '')).toEqual([]);
      await expect(t.head('aborted.bin', { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: 'AbortError' });
    });

    it('stops a download when its AbortSignal aborts', async () => {
      const t = await fresh();
      await t.put('download.bin', randomBytes(3 * MiB));
      const controller = new AbortController();
      const got = await t.get('download.bin', { signal: controller.signal });
      const reading = readAll(got.body);
      controller.abort();
      await expect(reading).rejects.toMatchObject({ name: 'AbortError' });
    });

    it('ifNoneMatch "*": the second writer loses with PreconditionFailedError', async () => {
      const t = await fresh();
      await t.put('snapshots/tcab/m.json', Buffer.from('first'), { ifNoneMatch: '*' });
      await expect(t.put('snapshots/tcab/m.json', Buffer.from('second'), { ifNoneMatch: '*' })).rejects.toBeInstanceOf(
        PreconditionFailedError,
      );
      const big = randomStream(11 * MiB);
      await expect(t.put('snapshots/tcab/m.json', big.stream, { ifNoneMatch: '*' })).rejects.toBeInstanceOf(PreconditionFailedError);
      expect((await readAll((await t.get('snapshots/tcab/m.json')).body)).toString()).toBe('first');
    });

    it('ifNoneMatch "*": of concurrent writers of a new key exactly one wins', async () => {
      const t = await fresh();
      const results = await Promise.allSettled(
        Array.from({ length: 6 }, (_, i) => t.put('race.json', Buffer.from(`writer ${i}`), { ifNoneMatch: '*' })),
      );
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r) => r.status === 'rejected');
      expect(won).toHaveLength(1);
      for (const r of lost) expect((r as PromiseRejectedResult).reason).toBeInstanceOf(PreconditionFailedError);
      const winner = results.findIndex((r) => r.status === 'fulfilled');
      expect((await readAll((await t.get('race.json')).body)).toString()).toBe(`writer ${winner}`);
    });

    it('ifMatch: a writer with a stale etag loses', async () => {
      const t = await fresh();
      const v1 = await t.put('status/tcab.json', Buffer.from('v1'));
      const v2 = await t.put('status/tcab.json', Buffer.from('v2'), { ifMatch: v1.etag });
      expect(v2.etag).not.toBe(v1.etag);
      await expect(t.put('status/tcab.json', Buffer.from('v3'), { ifMatch: v1.etag })).rejects.toBeInstanceOf(PreconditionFailedError);
      expect((await readAll((await t.get('status/tcab.json')).body)).toString()).toBe('v2');
      await expect(t.put('status/missing.json', Buffer.from('x'), { ifMatch: v2.etag })).rejects.toBeInstanceOf(PreconditionFailedError);
      await expect(t.head('status/missing.json')).rejects.toBeInstanceOf(NotFoundError);
      const big = randomStream(11 * MiB);
      await expect(t.put('status/tcab.json', big.stream, { ifMatch: v1.etag })).rejects.toBeInstanceOf(PreconditionFailedError);
      const v3 = await t.put('status/tcab.json', randomStream(6 * MiB).stream, { ifMatch: v2.etag });
      expect((await t.head('status/tcab.json')).etag).toBe(v3.etag);
    });

    it('handles concurrent puts of different keys', async () => {
      const t = await fresh();
      const buffers = Array.from({ length: 8 }, (_, i) => randomBytes(1000 + i));
      const streams = [randomStream(6 * MiB), randomStream(7 * MiB)];
      await Promise.all([...buffers.map((b, i) => t.put(`many/b${i}`, b)), ...streams.map((s, i) => t.put(`many/s${i}`, s.stream))]);
      for (const [i, b] of buffers.entries()) expect((await readAll((await t.get(`many/b${i}`)).body)).equals(b)).toBe(true);
      for (const [i, s] of streams.entries()) expect((await sha256Of((await t.get(`many/s${i}`)).body)).sha256).toBe(s.sha256());
      expect(await listKeys(t, 'many/')).toEqual([...buffers.map((_, i) => `many/b${i}`), 'many/s0', 'many/s1']);
    });

    it('stores keys in nested folders', async () => {
      const t = await fresh();
      const key = 'snapshots/tcab/2026/11/24/20261124T161300Z-3f9a1c2e.json';
      await t.put(key, Buffer.from('{}'));
      expect(await listKeys(t, 'snapshots/')).toEqual([key]);
      expect(await listKeys(t, 'snapshots/tcab/2026/11/')).toEqual([key]);
      await t.delete(key);
      expect(await listKeys(t, '')).toEqual([]);
    });

    it('rejects keys that could escape the target or mean different things on different backends', async () => {
      const t = await fresh();
      for (const bad of ['../escape', 'a/../../b', '/absolute', 'back\\slash', 'a//b', '', 'folder/', 'ctl\u0001']) {
        const err = await failureOf(t.put(bad, Buffer.from('x')));
        expect(err, bad).toBeInstanceOf(TargetError);
        expect((err as TargetError).code).toBe('INVALID_KEY');
        expect((err as Error).message).toContain(t.name);
      }
      expect(await listKeys(t, '')).toEqual([]);
    });
  });
}
