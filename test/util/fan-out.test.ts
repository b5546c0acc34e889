/**
 * fanOut, the piece that writes one download into every target: a sink that stops at any moment (before
 * the first byte, while a write waits for room, after the last byte) is dropped and reported, and the
 * healthy sinks still get every byte. Real streams; a "target" here is a PassThrough and the code that
 * reads it, stopping the way a failing backend does.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { PassThrough, Readable, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { fanOut } from '../../src/util/streams.js';

const CHUNK = 64 * 1024;
const CHUNKS = 128; // 8 MiB: many times what a sink buffers, so writes wait for room
const TOTAL = CHUNK * CHUNKS;

function chunk(n: number): Buffer {
  return Buffer.alloc(CHUNK, n % 251);
}

function source(): Readable {
  return Readable.from(
    (function* () {
      for (let i = 0; i < CHUNKS; i++) yield chunk(i);
    })(),
    { objectMode: false },
  );
}

const expectedSha256 = (() => {
  const h = createHash('sha256');
  for (let i = 0; i < CHUNKS; i++) h.update(chunk(i));
  return h.digest('hex');
})();

interface Reader {
  sink: PassThrough;
  /** What the reader got: the bytes and their sha256 when it read to the end. */
  done: Promise<{ bytes: number; sha256: string | undefined }>;
}

/** Reads `sink` to its end; or, with `stopAt`, stops after that many bytes the way a failing backend does. */
function reader(options: { stopAt?: number; error?: Error; waitFor?: Promise<unknown> } = {}): Reader {
  const sink = new PassThrough({ highWaterMark: 1 << 20 });
  const done = (async () => {
    const hash = createHash('sha256');
    let bytes = 0;
    if (options.stopAt === 0) {
      sink.destroy(options.error);
      return { bytes, sha256: undefined };
    }
    try {
      for await (const c of sink) {
        hash.update(c as Buffer);
        bytes += (c as Buffer).length;
        if (options.stopAt !== undefined && bytes >= options.stopAt) {
          await options.waitFor;
          sink.destroy(options.error);
          return { bytes, sha256: undefined };
        }
      }
    } catch {
      return { bytes, sha256: undefined };
    }
    return { bytes, sha256: hash.digest('hex') };
  })();
  return { sink, done };
}

async function run(readers: Reader[], options: { signal?: AbortSignal } = {}) {
  const failures: Array<{ index: number; error: Error }> = [];
  const copy = fanOut(
    source(),
    readers.map((r) => r.sink),
    (index, error) => failures.push({ index, error }),
    options,
  );
  return { copy, failures };
}

const whole = { bytes: TOTAL, sha256: expectedSha256 };

describe('fanOut with a sink that stops', () => {
  it('drops a sink that was already destroyed and closed before the copy started', async () => {
    const dead = reader();
    dead.sink.destroy();
    await once(dead.sink, 'close');
    const healthy = [reader(), reader()];
    const { copy, failures } = await run([healthy[0]!, dead, healthy[1]!]);
    await copy;
    expect(await healthy[0]!.done).toEqual(whole);
    expect(await healthy[1]!.done).toEqual(whole);
    expect(failures.map((f) => f.index)).toEqual([1]);
    expect(failures[0]!.error.message).toMatch(/stopped taking data after 0 bytes without giving a reason/);
  });

  it('drops a sink destroyed without an error before the first byte', async () => {
    const healthy = reader();
    const dead = reader({ stopAt: 0 });
    const { copy, failures } = await run([healthy, dead]);
    await copy;
    expect(await healthy.done).toEqual(whole);
    expect(failures.map((f) => f.index)).toEqual([1]);
    expect(failures[0]!.error.message).toMatch(/stopped taking data/);
  });

  it('drops a sink destroyed without an error mid-stream, while writes wait for room, and keeps feeding the others', async () => {
    const healthy = [reader(), reader()];
    const dead = reader({ stopAt: 3 * 1024 * 1024 });
    const { copy, failures } = await run([dead, ...healthy]);
    await copy;
    for (const h of healthy) expect(await h.done).toEqual(whole);
    expect((await dead.done).bytes).toBeLessThan(TOTAL);
    expect(failures.map((f) => f.index)).toEqual([0]);
    expect(failures[0]!.error.message).toMatch(/stopped taking data after \d+ bytes/);
  });

  it('reports the error a sink was destroyed with, as it is', async () => {
    const healthy = reader();
    const why = new Error('Target "dead": put failed: connect ECONNREFUSED 127.0.0.1:9');
    const dead = reader({ stopAt: 2 * 1024 * 1024, error: why });
    const { copy, failures } = await run([healthy, dead]);
    await copy;
    expect(await healthy.done).toEqual(whole);
    expect(failures).toEqual([{ index: 1, error: why }]);
  });

  it('reports a sink that stops after the last byte, once the copy has returned, and the others end whole', async () => {
    const healthy = reader();
    let returned!: () => void;
    const copyReturned = new Promise<void>((resolve) => (returned = resolve));
    // It stops half a MiB before the end: that half is in its buffer when the copy ends it.
    const dead = reader({ stopAt: TOTAL - 512 * 1024, waitFor: copyReturned });
    const { copy, failures } = await run([healthy, dead]);
    await copy;
    expect(failures).toEqual([]);
    returned();
    await dead.done;
    await once(dead.sink, 'close');
    expect(await healthy.done).toEqual(whole);
    expect(failures.map((f) => f.index)).toEqual([1]);
    expect(failures[0]!.error.message).toMatch(/stopped taking data after 8388608 bytes/);
  });

  it('returns when every sink has stopped, and stops reading the source', async () => {
    const sinks = [reader({ stopAt: 0 }), reader({ stopAt: 1024 * 1024 })];
    const src = source();
    const failures: number[] = [];
    await fanOut(
      src,
      sinks.map((r) => r.sink),
      (i) => failures.push(i),
    );
    expect(failures.sort()).toEqual([0, 1]);
    expect(src.destroyed).toBe(true);
  });

  it('rejects on abort while a sink that no longer takes data holds the copy, and destroys every sink', async () => {
    const controller = new AbortController();
    // A backend stuck in a request: it takes the first chunk and never says it is done with it.
    const stuck = new Writable({
      highWaterMark: CHUNK,
      write() {
        setImmediate(() => controller.abort());
      },
    });
    const healthy = reader();
    const failures: number[] = [];
    const copy = fanOut(source(), [healthy.sink, stuck], (i) => failures.push(i), { signal: controller.signal });
    await expect(copy).rejects.toMatchObject({ name: 'AbortError' });
    expect(stuck.destroyed).toBe(true);
    expect(healthy.sink.destroyed).toBe(true);
    expect((await healthy.done).sha256).toBeUndefined();
    expect(failures).toEqual([]);
  });

  it('fails every sink with a source error instead of ending any of them', async () => {
    const readers = [reader(), reader()];
    const broken = new Readable({ read() {} });
    broken.push(chunk(0));
    const copy = fanOut(
      broken,
      readers.map((r) => r.sink),
      () => undefined,
    );
    setImmediate(() => broken.destroy(new Error('the agent went away')));
    await expect(copy).rejects.toThrow('the agent went away');
    for (const r of readers) {
      expect((await r.done).sha256).toBeUndefined();
      expect(r.sink.errored?.message).toBe('the agent went away');
    }
  });
});
