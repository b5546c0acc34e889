/**
 * A chunk whose stored frame is not the size its chunk list gives, because another zstd made it: zstd's output
 * is not the same from version to version, so after an upgrade of the agent's Node a renewal (or a replicate
 * from a target written by the old one) leaves frames of another size, with the same content, under keys older
 * chunk lists name. Restore, verify and replicate check a chunk's content (zstd's checksum, its plain length,
 * its sha256), not its frame's size: every snapshot naming the chunk stays restorable. A stored chunk with
 * bytes after its frame is refused: zstd alone would ignore them, and they would break `cat | zstd -d`.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { constants as zlibConstants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { chunkKey } from '../../src/format/chunk-key.js';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { VerifyFailedError, runVerifyRotation } from '../../src/jobs/verify/index.js';
import { storeFileAsV2, type StoredV2 } from '../support/store-v2.js';
import { sha256Of, twoSnapshotFiles } from '../support/v2-fixtures.js';
import { testWorld } from '../support/world.js';

const world = testWorld();
const DAY = 86_400_000;
let work: string;
let files: { first: string; second: string };

beforeAll(async () => {
  work = await world.tempDir('foreign-frame');
  files = twoSnapshotFiles(work);
});

/** The chunk-list lines of `stored` on the folder `dir`. */
async function lines(dir: string, stored: StoredV2): Promise<string[]> {
  return (await readFile(join(dir, stored.manifest.chunkList.key), 'utf8')).trim().split('\n');
}

/** Replaces the chunk of `line` on the folder `dir` by `make(its frame)`; returns its key and the new frame. */
async function replaceChunk(dir: string, line: string, make: (frame: Buffer) => Buffer): Promise<{ key: string; frame: Buffer }> {
  const key = chunkKey('tcab', line.split(' ')[0]!);
  const frame = make(await readFile(join(dir, key)));
  await writeFile(join(dir, key), frame);
  return { key, frame };
}

/** The same content as `frame`, compressed by zstd at another level: another frame, of another size. */
function otherZstd(frame: Buffer): Buffer {
  const plain = zstdDecompressSync(frame);
  for (const level of [19, 1, 9, 3, 12]) {
    const other = zstdCompressSync(plain, {
      params: { [zlibConstants.ZSTD_c_compressionLevel]: level, [zlibConstants.ZSTD_c_checksumFlag]: 1 },
    });
    if (other.length !== frame.length) return other;
  }
  throw new Error('no other frame size could be made for this chunk');
}

describe('a chunk whose frame another zstd made (another size, the same content)', () => {
  it('restores, verifies and replicates, and the copy restores too', async () => {
    const source = await world.folder('source');
    const stored = await storeFileAsV2(source.target, 'tcab', files.first);
    const listed = await lines(source.dir, stored);
    // Larger and smaller than listed: a longer frame is read again up to zstd's bound for the chunk.
    const bigger = await replaceChunk(source.dir, listed[2]!, (f) => {
      const plain = zstdDecompressSync(f);
      return zstdCompressSync(plain, { params: { [zlibConstants.ZSTD_c_compressionLevel]: -5, [zlibConstants.ZSTD_c_checksumFlag]: 1 } });
    });
    const smaller = await replaceChunk(source.dir, listed[5]!, otherZstd);
    expect(bigger.frame.length).toBeGreaterThan(Number(listed[2]!.split(' ')[2]));
    expect(smaller.frame.length).not.toBe(Number(listed[5]!.split(' ')[2]));

    const out = join(work, 'foreign.sqlite');
    await runRestore({ targets: [source.target], database: 'tcab' }, { selector: { id: stored.manifest.id }, outPath: out });
    expect(await sha256Of(out)).toBe(await sha256Of(files.first));

    const verified = await runVerifyRotation(
      { targets: [source.target], database: 'tcab' },
      { withinMs: 7 * DAY, intervalMs: DAY, all: true },
    );
    expect(verified.outcomes.map((o) => [o.id, o.verdict])).toEqual([[stored.manifest.id, 'ok']]);

    const dest = await world.folder('dest');
    const copied = await runReplicate({ targets: [source.target, dest.target], database: 'tcab' });
    expect([copied.copied, copied.failed]).toEqual([1, 0]);
    const copyOut = join(work, 'foreign-copy.sqlite');
    await runRestore({ targets: [dest.target], database: 'tcab' }, { selector: { id: stored.manifest.id }, outPath: copyOut });
    expect(await sha256Of(copyOut)).toBe(await sha256Of(files.first));
  });

  it('refuses a chunk with bytes after its frame, naming it, in restore and verify', async () => {
    const target = await world.folder('tail');
    const stored = await storeFileAsV2(target.target, 'tcab', files.second);
    const listed = await lines(target.dir, stored);
    const { key } = await replaceChunk(target.dir, listed[3]!, (f) => Buffer.concat([f, Buffer.from('tail')]));

    const error = await runRestore(
      { targets: [target.target], database: 'tcab' },
      { selector: { id: stored.manifest.id }, outPath: join(work, 'tail.sqlite') },
    ).catch((e: Error) => e);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toContain(`chunk ${key}, line 4 of the chunk list is damaged`);
    expect((error as Error).message).toContain('other bytes follow it');

    const failed = await runVerifyRotation(
      { targets: [target.target], database: 'tcab' },
      { withinMs: 7 * DAY, intervalMs: DAY, all: true },
    ).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(VerifyFailedError);
    const verified = (failed as VerifyFailedError).result;
    expect(verified.outcomes.map((o) => o.verdict)).toEqual(['damaged']);
    expect(verified.outcomes[0]!.error).toContain(key);
  });
});
