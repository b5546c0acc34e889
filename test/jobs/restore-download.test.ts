/**
 * Restore and the download it opens: whatever fails after the target has started sending, the download is
 * closed, so no connection is left open holding the process (and the target) after the restore has failed.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runRestore } from '../../src/jobs/restore.js';
import type { Target } from '../../src/targets/target.js';
import { DATABASE, fileTarget, makeSnapshot, storeSnapshot } from '../support/stored-snapshots.js';

let stored: Awaited<ReturnType<typeof fileTarget>>;
let out: string;

beforeAll(async () => {
  stored = await fileTarget('restore-src');
  await storeSnapshot(stored.target, makeSnapshot({ time: new Date(), bytes: 256 * 1024 }));
  out = await mkdtemp(join(tmpdir(), 'tcab-restore-out-'));
});

afterAll(async () => {
  await stored?.remove();
  await rm(out, { recursive: true, force: true });
});

/** The same target, remembering the bodies it hands out. */
function watched(target: Target, bodies: Readable[]): Target {
  return {
    ...target,
    get: async (key, options) => {
      const got = await target.get(key, options);
      bodies.push(got.body);
      return got;
    },
  };
}

describe('restore', () => {
  it('closes the download when the temporary file beside the destination cannot be created', async () => {
    const bodies: Readable[] = [];
    // The temporary name adds about 20 characters to the destination's: past the 255 a file name may have.
    const destination = join(out, 'r'.repeat(240));
    const err = await runRestore({ targets: [watched(stored.target, bodies)], database: DATABASE }, { selector: { latest: true }, outPath: destination }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/failed on every target: "restore-src": .*ENAMETOOLONG/);
    // The manifest, read whole, and the artifact, whose download must not be left open.
    expect(bodies).toHaveLength(2);
    expect(bodies.map((b) => b.destroyed)).toEqual([true, true]);
    expect(await readdir(out)).toEqual([]);
  });
});
