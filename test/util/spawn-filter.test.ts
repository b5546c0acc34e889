/**
 * spawnFilter, the zstd command as a stream where Node has no zstd: a tool that exits before it has read
 * all of its input must fail the stream, not leave the writer waiting for room that never comes.
 */
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { spawnFilter } from '../../src/util/streams.js';

function input(bytes: number): Readable {
  const chunk = Buffer.alloc(64 * 1024, 7);
  return Readable.from(
    (function* () {
      for (let sent = 0; sent < bytes; sent += chunk.length) yield chunk;
    })(),
  );
}

function discard(): Writable {
  return new Writable({ write: (_c, _e, cb) => cb() });
}

describe('spawnFilter', () => {
  it('passes a whole stream through a tool that reads all of it', async () => {
    let out = 0;
    await pipeline(
      input(4 << 20),
      spawnFilter('cat', [], 'install coreutils'),
      new Writable({
        write: (c: Buffer, _e, cb) => {
          out += c.length;
          cb();
        },
      }),
    );
    expect(out).toBe(4 << 20);
  });

  it('fails, naming the tool, when it exits with status 0 before reading all of its input', async () => {
    // head exits as soon as it has its 10 bytes; megabytes are still to be written to it.
    await expect(pipeline(input(4 << 20), spawnFilter('head', ['-c', '10'], 'install coreutils'), discard())).rejects.toMatchObject({
      code: 'FILTER_FAILED',
      message: expect.stringMatching(/head -c 10 .*before reading all of its input/),
    });
  });

  it('fails when the tool exits with status 0 without reading anything', async () => {
    await expect(pipeline(input(4 << 20), spawnFilter('true', [], 'install coreutils'), discard())).rejects.toMatchObject({
      code: 'FILTER_FAILED',
    });
  });
});
