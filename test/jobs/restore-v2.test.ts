/**
 * Restore of format-2 snapshots on real parts: real SQLite files stored as chunks (test/support/store-v2.ts)
 * on a file folder, Azurite and s3rver; the CLI's restore and list; and the failures a user meets: a damaged
 * chunk, a missing chunk, a chunk list that is not the manifest's. Each names the snapshot, the target and the
 * chunk, and leaves nothing at the destination.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Transform } from 'node:stream';
import { constants as zlibConstants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readManifest } from '../../src/catalog/catalog.js';
import { chunkListKey, manifestKey } from '../../src/catalog/layout.js';
import { main as cli } from '../../src/cli/main.js';
import { chunkKey } from '../../src/format/chunk-key.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { IN_FLIGHT, READS_PER_CHUNK } from '../../src/jobs/restore/chunks.js';
import type { Target } from '../../src/targets/target.js';
import { readsThrough, twoSnapshotFiles } from '../support/v2-fixtures.js';
import { blobTarget, captureLog, s3Target, testWorld } from '../support/world.js';
import { storeFileAsV2 } from '../support/store-v2.js';

const world = testWorld();
let work: string;
let first: string;
let second: string;

async function sha256Of(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-restore-v2-'));
  // The second snapshot shares most of its chunks with the first (15 more runs).
  ({ first, second } = twoSnapshotFiles(work));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

function restoreTo(target: Target | Target[], id: string, name: string, signal?: AbortSignal) {
  return runRestore(
    { targets: Array.isArray(target) ? target : [target], database: 'tcab' },
    { selector: { id }, outPath: join(work, name), ...(signal ? { signal } : {}) },
  );
}

describe.each(['file', 'blob', 's3'] as const)('on a %s target', (kind) => {
  it("restores both snapshots to their exact bytes, the second reusing the first one's chunks", async () => {
    const target =
      kind === 'file' ? (await world.folder('v2')).target : kind === 'blob' ? blobTarget(world.clouds, 'v2') : s3Target(world.clouds, 'v2');
    const a = await storeFileAsV2(target, 'tcab', first);
    const b = await storeFileAsV2(target, 'tcab', second, { createdAt: new Date(Date.parse(a.manifest.createdAt) + 1000) });
    expect(a.reused).toBe(0);
    expect(b.reused).toBeGreaterThan(b.uploaded * 3);
    // The manifest on the target is format 2 and small; the chunk list is beside it.
    const stored = await readManifest(target, 'tcab', b.manifest.id);
    expect(stored.formatVersion).toBe(2);
    for (const [s, file] of [
      [a, first],
      [b, second],
    ] as const) {
      const out = `${kind}-${s.manifest.id}.sqlite`;
      const result = await restoreTo(target, s.manifest.id, out);
      expect(await sha256Of(join(work, out))).toBe(await sha256Of(file));
      expect(result.bytes).toBe((await readFile(file)).length);
      expect(result.artifactBytes).toBe(s.manifest.stored.bytes);
      expect(result.tables).toEqual(s.manifest.database.tables);
      expect(result.tables.runs).toBeGreaterThan(1000);
    }
  });
});

describe('on a file target', () => {
  let dir: string;
  let target: Target;
  let id: string;
  beforeAll(async () => {
    ({ dir, target } = await world.folder('damage'));
    id = (await storeFileAsV2(target, 'tcab', first)).manifest.id;
  });

  async function listLines(): Promise<string[]> {
    return (await readFile(join(dir, chunkListKey('tcab', id)), 'latin1')).trimEnd().split('\n');
  }

  async function expectNothingLeft(name: string) {
    expect(existsSync(join(work, name))).toBe(false);
    expect((await readdir(work)).filter((f) => f.includes('.restore-'))).toEqual([]);
  }

  it('fetches chunks in parallel, never more than IN_FLIGHT (32) at once', async () => {
    let now = 0;
    let most = 0;
    const counting: Target = readsThrough(target, async (key, options) => {
      const isChunk = key.startsWith('chunks/');
      if (isChunk) most = Math.max(most, ++now);
      try {
        const got = await target.get(key, options);
        if (isChunk) got.body.once('close', () => now--);
        return got;
      } catch (e) {
        if (isChunk) now--;
        throw e;
      }
    });
    await restoreTo(counting, id, 'parallel.sqlite');
    expect(IN_FLIGHT).toBe(32);
    expect(most).toBeGreaterThan(1);
    expect(most).toBeLessThanOrEqual(IN_FLIGHT);
  });

  /** The target, counting the GETs of `key`. */
  function readsOf(key: string): { target: Target; count: () => number } {
    let n = 0;
    const counting: Target = readsThrough(target, (k, options) => {
      if (k === key) n++;
      return target.get(k, options);
    });
    return { target: counting, count: () => n };
  }

  /** The target, with the first read of the chunk of line 5 spoilt on the way by `spoil`; the object stays intact. */
  function spoiltOnce(spoil: 'flip' | 'break'): { target: Target; key: () => string; reads: () => number } {
    let key = '';
    let reads = 0;
    const spoiling: Target = readsThrough(target, async (k, options) => {
      const got = await target.get(k, options);
      if (!key && k.startsWith('chunks/')) {
        const lines = await listLines();
        if (k === chunkKey('tcab', lines[4]!.split(' ')[0]!)) key = k;
      }
      if (k !== key) return got;
      if (++reads > 1) return got;
      let at = 0;
      const spoilt = new Transform({
        transform(piece: Buffer, _enc, cb) {
          if (spoil === 'break' && at + piece.length > 100) return cb(new Error('connection reset by peer (test)'));
          const copy = Buffer.from(piece);
          if (at <= 40 && at + copy.length > 40) copy[40 - at]! ^= 0xff;
          at += copy.length;
          cb(null, copy);
        },
      });
      got.body.on('error', (e) => spoilt.destroy(e));
      return { ...got, body: got.body.pipe(spoilt) };
    });
    return { target: spoiling, key: () => key, reads: () => reads };
  }

  for (const spoil of ['flip', 'break'] as const) {
    it(`reads a chunk again after one ${spoil === 'flip' ? 'damaged read (a byte flipped on the way)' : 'read whose body broke off'}, restores the exact file and warns naming the chunk`, async () => {
      const { logger, events } = captureLog();
      const rereads: string[] = [];
      const spoilt = spoiltOnce(spoil);
      const name = `healed-${spoil}.sqlite`;
      const result = await runRestore(
        { targets: [spoilt.target], database: 'tcab', logger },
        { selector: { id }, outPath: join(work, name), onReread: (r) => rereads.push(r.message) },
      );
      expect(spoilt.key()).toMatch(/^chunks\/tcab\/[0-9a-f]{2}\/[0-9a-f]{64}\.zst$/);
      expect(spoilt.reads()).toBe(2);
      expect(result.skipped).toEqual([]);
      expect(await sha256Of(join(work, name))).toBe(await sha256Of(first));
      const warned = events('chunk.reread');
      expect(warned).toHaveLength(1);
      expect(warned[0]).toMatchObject({ level: 'warn', target: 'damage', snapshot: id, object: spoilt.key(), line: 5, read: 1, of: 3 });
      expect(String(warned[0]!.error)).toMatch(spoil === 'flip' ? /is damaged/ : /connection reset by peer \(test\)/);
      expect(rereads).toEqual([expect.stringContaining(`chunk ${spoilt.key()}, line 5 of the chunk list of snapshot ${id}`)]);
      expect(rereads[0]).toContain('read 1 of 3 failed');
    });
  }

  it('refuses a damaged chunk (bytes flipped), naming the snapshot, the target and the chunk key', async () => {
    const [hash] = (await listLines())[3]!.split(' ');
    const path = join(dir, chunkKey('tcab', hash!));
    const good = await readFile(path);
    const bad = Buffer.from(good);
    for (let i = 20; i < 28 && i < bad.length; i++) bad[i]! ^= 0xff;
    await writeFile(path, bad);
    const { logger, events } = captureLog();
    const reads = readsOf(chunkKey('tcab', hash!));
    try {
      const error = await runRestore(
        { targets: [reads.target], database: 'tcab', logger },
        { selector: { id }, outPath: join(work, 'damaged.sqlite') },
      ).catch((e: Error) => e);
      expect(error).toBeInstanceOf(Error);
      const message = (error as Error).message;
      expect(message).toContain(`Snapshot ${id} on target "damage"`);
      expect(message).toContain(`chunk ${chunkKey('tcab', hash!)}, line 4 of the chunk list is damaged`);
      // Damaged at rest: every read fails the check, and the error says the chunk was read more than once.
      expect(message).toContain(`(read ${READS_PER_CHUNK} times, every read failed)`);
      expect(reads.count()).toBe(READS_PER_CHUNK);
      expect(events('chunk.reread').map((e) => [e.object, e.line, e.read])).toEqual([
        [chunkKey('tcab', hash!), 4, 1],
        [chunkKey('tcab', hash!), 4, 2],
      ]);
      expect(message).toMatch(/restore from another target/);
      await expectNothingLeft('damaged.sqlite');
    } finally {
      await writeFile(path, good);
    }
  });

  /** A valid zstd frame, with its checksum, of the same stored size and plain length as `good` but other plain bytes. */
  function forgeFrame(good: Buffer): Buffer | undefined {
    const plain = zstdDecompressSync(good);
    let forged: Buffer | undefined;
    for (let at = 0; at < 400 && !forged; at++) {
      const other = Buffer.from(plain);
      other[(at * 7919) % other.length]! ^= 0x5a;
      for (let level = 1; level <= 9 && !forged; level++) {
        const frame = zstdCompressSync(other, {
          params: {
            [zlibConstants.ZSTD_c_compressionLevel]: level,
            [zlibConstants.ZSTD_c_checksumFlag]: 1,
            [zlibConstants.ZSTD_c_contentSizeFlag]: 1,
          },
        });
        if (frame.length === good.length) forged = frame;
      }
    }
    return forged;
  }

  it('names a chunk whose frame is whole but holds other bytes, after the whole file differs', async () => {
    // A valid zstd frame, with its checksum, of the chunk's length and stored size but other plain bytes: what a
    // writer that stored the wrong bytes under a chunk's key leaves. zstd's checksum cannot see it; the whole
    // file's sha256 does, and a second pass, with each chunk's sha256, names the chunk.
    const [hash] = (await listLines())[5]!.split(' ');
    const path = join(dir, chunkKey('tcab', hash!));
    const good = await readFile(path);
    const forged = forgeFrame(good);
    expect(forged, 'no frame of the same stored size could be made for this chunk').toBeDefined();
    await writeFile(path, forged!);
    const { logger, events } = captureLog();
    const reads = readsOf(chunkKey('tcab', hash!));
    try {
      const error = await runRestore(
        { targets: [reads.target], database: 'tcab', logger },
        { selector: { id }, outPath: join(work, 'forged.sqlite') },
      ).catch((e: Error) => e);
      expect(error).toBeInstanceOf(Error);
      const message = (error as Error).message;
      expect(message).toContain(`chunk ${chunkKey('tcab', hash!)}, line 6 of the chunk list is damaged`);
      expect(message).toContain('decompresses to bytes whose sha256 is');
      expect(message).toContain(`(read ${READS_PER_CHUNK} times, every read failed)`);
      // Once in the first pass (checked by zstd, passed), then READS_PER_CHUNK times in the second.
      expect(reads.count()).toBe(1 + READS_PER_CHUNK);
      expect(events('chunk.whole_file_differs')).toHaveLength(1);
      await expectNothingLeft('forged.sqlite');
    } finally {
      await writeFile(path, good);
    }
  });

  it('says the whole file differed when the second pass that would name the chunk cannot read every chunk', async () => {
    const lines = await listLines();
    const [hash] = lines[5]!.split(' ');
    const [other] = lines[1]!.split(' ');
    const path = join(dir, chunkKey('tcab', hash!));
    const good = await readFile(path);
    const forged = forgeFrame(good);
    expect(forged, 'no frame of the same stored size could be made for this chunk').toBeDefined();
    await writeFile(path, forged!);
    // The chunk of line 2 reads in the first pass, and is refused for good after that.
    let reads = 0;
    const refusing: Target = readsThrough(target, (k, options) => {
      if (k === chunkKey('tcab', other!) && ++reads > 1) {
        return Promise.reject(Object.assign(new Error('403 AuthorizationFailure'), { permanent: true }));
      }
      return target.get(k, options);
    });
    try {
      const error = await runRestore(
        { targets: [refusing], database: 'tcab' },
        { selector: { id }, outPath: join(work, 'forged-unread.sqlite') },
      ).catch((e: Error) => e);
      expect(error).toBeInstanceOf(Error);
      const message = (error as Error).message;
      expect(message).toMatch(/the chunks make a file of \d+ bytes with sha256 [0-9a-f]{64}, the manifest says/);
      expect(message).toContain('reading every chunk again to name the one at fault failed');
      expect(message).toContain(chunkKey('tcab', other!));
      expect(message).toContain('403 AuthorizationFailure');
      await expectNothingLeft('forged-unread.sqlite');
    } finally {
      await writeFile(path, good);
    }
  });

  it('refuses a missing chunk, naming it', async () => {
    const lines = await listLines();
    const [hash] = lines[lines.length - 2]!.split(' ');
    const path = join(dir, chunkKey('tcab', hash!));
    const good = await readFile(path);
    await rm(path);
    const reads = readsOf(chunkKey('tcab', hash!));
    try {
      const message = (await restoreTo(reads.target, id, 'missing.sqlite').catch((e: Error) => e)) as Error;
      expect(message.message).toContain(`Snapshot ${id} on target "damage"`);
      expect(message.message).toContain(`chunk ${chunkKey('tcab', hash!)}, line ${lines.length - 1} of the chunk list is missing`);
      // A missing chunk is not read again: no read would find it.
      expect(reads.count()).toBe(1);
      expect(message.message).not.toContain('read 3 times');
      await expectNothingLeft('missing.sqlite');
    } finally {
      await writeFile(path, good);
    }
  });

  it("refuses a chunk list whose sha256 is not the manifest's, before fetching any chunk", async () => {
    const path = join(dir, chunkListKey('tcab', id));
    const good = await readFile(path, 'latin1');
    // Same length, same sizes: only the hash of the list tells.
    const lines = good.split('\n');
    const [h, ...rest] = lines[0]!.split(' ');
    lines[0] = [`${h!.slice(0, -1)}${h!.endsWith('0') ? '1' : '0'}`, ...rest].join(' ');
    await writeFile(path, lines.join('\n'), 'latin1');
    let chunkGets = 0;
    const counting: Target = readsThrough(target, (key, options) => {
      if (key.startsWith('chunks/')) chunkGets++;
      return target.get(key, options);
    });
    try {
      const error = (await restoreTo(counting, id, 'list.sqlite').catch((e: Error) => e)) as Error;
      expect(error.message).toContain(`Snapshot ${id} on target "damage"`);
      expect(error.message).toMatch(
        new RegExp(
          `Chunk list ${chunkListKey('tcab', id)} on target "damage" of snapshot ${id}: it is \\d+ bytes with sha256 [0-9a-f]{64}, the manifest says`,
        ),
      );
      expect(chunkGets).toBe(0);
      await expectNothingLeft('list.sqlite');
    } finally {
      await writeFile(path, good, 'latin1');
    }
  });

  it('restores from the next target when the first has lost a chunk', async () => {
    const { target: other } = await world.folder('other');
    await storeFileAsV2(other, 'tcab', first, { id, createdAt: new Date() });
    const lines = await listLines();
    const path = join(dir, chunkKey('tcab', lines[0]!.split(' ')[0]!));
    const good = await readFile(path);
    await rm(path);
    try {
      const result = await restoreTo([target, other], id, 'fallback.sqlite');
      expect(result.target).toBe('other');
      expect(result.skipped[0]!.error).toMatch(/line 1 of the chunk list is missing/);
      expect(await sha256Of(join(work, 'fallback.sqlite'))).toBe(await sha256Of(first));
    } finally {
      await writeFile(path, good);
    }
  });

  it('restores and lists with the CLI', async () => {
    const run = async (args: string[]) => {
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
        env: { TCAB_BACKUP_TARGETS: `damage=file://${dir}`, TCAB_LOG_LEVEL: 'warn' },
      });
      return { code, out, err };
    };
    const listed = await run(['list', '--json']);
    expect(listed.code).toBe(0);
    const snap = JSON.parse(listed.out).targets[0].snapshots.find((s: { id: string }) => s.id === id);
    const manifest = await readManifest(target, 'tcab', id);
    expect(manifest.formatVersion).toBe(2);
    if (manifest.formatVersion !== 2) return;
    expect(snap).toMatchObject({
      formatVersion: 2,
      bytes: manifest.snapshot.bytes,
      artifactBytes: manifest.stored.bytes,
      compression: 'zstd chunks',
      key: chunkListKey('tcab', id),
    });
    expect(JSON.parse(listed.out).targets[0].orphans).toEqual([]);
    const text = await run(['list']);
    expect(text.out).toMatch(new RegExp(`${id} .* zstd chunks`));
    const out = join(work, 'cli.sqlite');
    const restored = await run(['restore', '--snapshot', id, '-o', out, '--json']);
    expect(restored.err).toBe('');
    expect(restored.code).toBe(0);
    expect(JSON.parse(restored.out)).toMatchObject({ id, target: 'damage', bytes: manifest.snapshot.bytes });
    expect(await sha256Of(out)).toBe(await sha256Of(first));
    // A chunk list without its manifest is an orphan, like an artifact.
    await rm(join(dir, manifestKey('tcab', id)));
    const orphaned = JSON.parse((await run(['list', '--json'])).out).targets[0];
    expect(orphaned.snapshots.map((s: { id: string }) => s.id)).not.toContain(id);
    expect(orphaned.orphans.map((o: { key: string }) => o.key)).toEqual([chunkListKey('tcab', id)]);
  });
});
