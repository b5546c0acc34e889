/**
 * Both zstd paths on one runtime: node:zlib's (what Node 24, the function app and the agent use) and the zstd
 * program's (a runtime without zstd in node:zlib). Each compresses a real snapshot file; each artifact must
 * decompress to the same bytes through both decompressors and through `zstd -d`, as an operator restores.
 */
import { execFile } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCompressor, detectCompressions, runtimeHasZstd, zstdFileCompressor } from '../../src/agent/compression.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { decompressor } from '../../src/util/streams.js';
import { sha256OfFile, sha256OfStream } from './helpers.js';
import { tempDir } from '../support/world.js';

const run = promisify(execFile);

let work: { dir: string; remove(): Promise<void> };
let plain: string;
let plainSha: string;

beforeAll(async () => {
  work = await tempDir('compression');
  plain = join(work.dir, 'tcab.sqlite');
  createSampleDatabase(plain, { runs: 300, seed: 11 });
  plainSha = await sha256OfFile(plain);
});

afterAll(() => work?.remove());

/** The three ways the agent can make a zstd artifact of a file. */
const makers = {
  'node:zlib': async (out: string) => {
    // A machine without the zstd program: the runtime's own zstd makes the artifact.
    const support = detectCompressions({ zstdCommand: join(work.dir, 'no-such-zstd') });
    expect(support.zstdSource).toBe('zlib');
    const c = createCompressor('zstd', support);
    await pipeline(createReadStream(plain), c.stream, createWriteStream(out));
    await c.done;
  },
  'zstd program, through stdin': async (out: string) => {
    const support = detectCompressions();
    expect(support.zstdSource).toBe('command');
    const c = createCompressor('zstd', support);
    await pipeline(createReadStream(plain), c.stream, createWriteStream(out));
    await c.done;
  },
  'zstd program, reading the file': async (out: string) => {
    const c = zstdFileCompressor('zstd', plain);
    await Promise.all([pipeline(c.output, createWriteStream(out)), c.done]);
  },
};

describe('zstd artifacts', () => {
  it("this runtime has zstd in node:zlib, as the function app's Node 24 does", () => {
    expect(runtimeHasZstd()).toBe(true);
    expect(detectCompressions().available).toEqual(['zstd', 'gzip', 'none']);
  });

  for (const [name, make] of Object.entries(makers)) {
    it(`made by ${name}, decompress to the snapshot's bytes through node:zlib, the zstd program and zstd -d`, async () => {
      const artifact = join(work.dir, `${name.replace(/\W+/g, '-')}.zst`);
      await make(artifact);
      const viaZlib = await sha256OfStream(createReadStream(artifact).pipe(decompressor('zstd')));
      const viaProgram = await sha256OfStream(createReadStream(artifact).pipe(decompressor('zstd', { runtimeZstd: false })));
      const out = `${artifact}.plain`;
      await run('zstd', ['-d', '-q', '-f', artifact, '-o', out]);
      expect({ viaZlib, viaProgram, zstdD: await sha256OfFile(out) }).toEqual({ viaZlib: plainSha, viaProgram: plainSha, zstdD: plainSha });
    });
  }

  it('the program path without the program fails the stream, saying what to install', async () => {
    const inflate = decompressor('zstd', { runtimeZstd: false, zstdCommand: join(work.dir, 'no-such-zstd') });
    const failed = await pipeline(createReadStream(plain), inflate, new PassThrough().resume()).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(String(failed)).toContain('was not found on PATH');
    expect((failed as { hint?: string }).hint).toContain('apt-get install zstd');
  });
});
