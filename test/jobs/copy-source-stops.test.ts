/**
 * A replicate copy whose source stops sending without an error (its stream closed before the end, as a
 * backend that gives up on a download may do): the copy must fail, naming the source, instead of leaving
 * the destination waiting for bytes that never come. Real file targets; the source's body is cut off by
 * destroying it after the first MiB.
 */
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listCatalog, manifestArtifactKey } from '../../src/catalog/catalog.js';
import { CopyError, copySnapshot } from '../../src/jobs/replicate/copy.js';
import type { Target } from '../../src/targets/target.js';
import { DATABASE, makeSnapshot, storeSnapshot, type TestSnapshot } from '../support/stored-snapshots.js';
import { FAST_RETRY, folderTarget, type FolderTarget } from '../support/world.js';

let source: FolderTarget;
let destination: FolderTarget;
let snapshot: TestSnapshot;

beforeAll(async () => {
  source = await folderTarget('copy-src', { retry: FAST_RETRY });
  destination = await folderTarget('copy-dst', { retry: FAST_RETRY });
  snapshot = makeSnapshot({ time: new Date(), bytes: 6 * 1024 * 1024 });
  await storeSnapshot(source.target, snapshot);
});

afterAll(async () => {
  await source?.remove();
  await destination?.remove();
});

/** The source, but every download it hands out is closed without an error once `after` bytes have passed. */
function closingEarly(target: Target, after: number): Target {
  return {
    ...target,
    get: async (key, options) => {
      const got = await target.get(key, options);
      let seen = 0;
      const body: Readable = got.body;
      body.on('data', (c: Buffer) => {
        seen += c.length;
        if (seen >= after) body.destroy();
      });
      body.pause();
      return got;
    },
  };
}

describe('copySnapshot', () => {
  it('fails naming the source, and stores nothing, when the source closes its download early without an error', async () => {
    const err = await copySnapshot(closingEarly(source.target, 1024 * 1024), destination.target, snapshot.manifest).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CopyError);
    expect((err as CopyError).side).toBe('source');
    expect((err as CopyError).brokeOff).toBe(true);
    expect((err as CopyError).message).toMatch(
      new RegExp(
        `reading snapshot ${snapshot.manifest.id} on target "copy-src" broke off \\(object ${manifestArtifactKey(snapshot.manifest)}\\): the download was closed before its end, without an error`,
      ),
    );
    const { snapshots, orphans } = await listCatalog(destination.target, DATABASE);
    expect(snapshots).toEqual([]);
    expect(orphans).toEqual([]);
  });
});
