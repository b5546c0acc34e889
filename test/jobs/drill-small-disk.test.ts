/**
 * The drill on a machine whose temporary folder is smaller than the database, as on a Flex Consumption
 * instance (0.8 GB of temporary disk): `tcab-backup drill` in its own process, with default settings and
 * TMPDIR on a tmpfs of a given size, mounted in a mount namespace of that process only (unshare), so
 * nothing outside the test sees it and nothing is left mounted if the test dies.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/catalog/manifest.js';
import { readRecentDrills } from '../../src/catalog/drill-record.js';
import { DATABASE, startFixture, type Fixture } from '../status/fixture.js';

const run = promisify(execFile);
const CLI = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'cli', 'main.js');
const MiB = 1024 * 1024;

let fx: Fixture;
let manifest: Manifest;
let mountPoint: string;

beforeAll(async () => {
  // About 24 MB of database: more than the small tmpfs below, less than the large one.
  fx = await startFixture({ runs: 4000 });
  ({ manifest } = await fx.snapshot());
  fx.publishRuns(7);
  mountPoint = await mkdtemp(join(tmpdir(), 'tcab-small-tmp-'));
}, 180_000);

afterAll(async () => {
  await fx?.stop();
  if (mountPoint) await rm(mountPoint, { recursive: true, force: true });
});

/** `tcab-backup <args>` with TMPDIR on a fresh tmpfs of `sizeMiB`, in a mount namespace of its own. */
async function withSmallTmp(sizeMiB: number, args: string[]): Promise<{ stdout: string; stderr: string }> {
  // As root (CI) a private mount namespace is enough; otherwise a user namespace maps the caller to root in it.
  const unshare = ['--mount', '--propagation', 'private', ...(process.getuid?.() === 0 ? [] : ['--map-root-user'])];
  const script = 'mount -t tmpfs -o "size=$1" tmpfs "$2" && shift 2 && exec "$@"';
  return run('unshare', [...unshare, 'sh', '-c', script, 'sh', `${sizeMiB}m`, mountPoint, process.execPath, CLI, ...args], {
    env: {
      PATH: process.env.PATH,
      TMPDIR: mountPoint,
      TCAB_BACKUP_TARGETS: `local=file://${join(fx.work, 'backups')}`,
      TCAB_BACKUP_DATABASE: DATABASE,
      TCAB_BACKUP_AGENT_URL: fx.agent.url,
      TCAB_BACKUP_AGENT_KEY_ID: 'functions',
      TCAB_BACKUP_AGENT_KEY: fx.key,
      TCAB_LOG_LEVEL: 'error',
    },
    timeout: 120_000,
    maxBuffer: 16 * MiB,
  });
}

describe('the drill with a temporary folder smaller than the database (default settings)', () => {
  it('verifies the snapshot as it streams, passes, and says which checks it ran and why', async () => {
    expect(manifest.snapshot.bytes).toBeGreaterThan(16 * MiB);
    const { stdout } = await withSmallTmp(16, ['drill', '--json']);
    const result = JSON.parse(stdout) as { ok: boolean; targets: Array<Record<string, any>> };
    expect(result.ok).toBe(true);
    const r = result.targets[0]!;
    expect(r).toMatchObject({ ok: true, target: 'local', snapshot: { id: manifest.id, bytes: manifest.snapshot.bytes } });
    expect(r.checks).toMatchObject({
      method: 'stream',
      ran: ['artifact-sha256', 'snapshot-sha256'],
      fromSnapshot: ['integrity-check', 'row-counts'],
    });
    const free = Number(/has (\d+) bytes free/.exec(r.checks.reason)![1]);
    expect(free).toBeLessThanOrEqual(16 * MiB);
    expect(r.checks.reason).toContain(`${manifest.snapshot.bytes}-byte database`);
    // The live comparison still works from the agent's counts of these very bytes.
    expect(r.recoveryPoint.runsSince).toBe(7);
    expect(r.tables.runs).toEqual({ snapshot: 4000, live: 4007, difference: 7 });
    const [stored] = await readRecentDrills(fx.local, DATABASE, 1);
    expect(stored!.record!.checks).toEqual(r.checks);
    expect(await readdir(mountPoint)).toEqual([]);

    // What the operator reads: the drill's own output, and the status the monitor computes.
    const text = await withSmallTmp(16, ['drill']);
    expect(text.stdout).toContain(`snapshot ${manifest.id} verified while streaming`);
    expect(text.stdout).toContain('proved: verified as it streamed, nothing written');
    const status = await run(process.execPath, [CLI, 'status', '--json'], {
      env: { PATH: process.env.PATH, TCAB_BACKUP_TARGETS: `local=file://${join(fx.work, 'backups')}`, TCAB_LOG_LEVEL: 'error' },
    }).catch((e: { stdout: string }) => e);
    const doc = JSON.parse(status.stdout) as { targets: Array<{ drill: { lastSucceeded: { checks: { method: string } } } }> };
    expect(doc.targets[0]!.drill.lastSucceeded.checks.method).toBe('stream');
  });

  it('restores and runs every SQLite check itself when the folder has room', async () => {
    const { stdout } = await withSmallTmp(96, ['drill', '--json']);
    const r = (JSON.parse(stdout) as { targets: Array<Record<string, any>> }).targets[0]!;
    expect(r).toMatchObject({
      ok: true,
      checks: { method: 'restore', ran: ['artifact-sha256', 'snapshot-sha256', 'integrity-check', 'row-counts'], fromSnapshot: [] },
    });
    expect(r.recoveryPoint.newestPublishedAt.snapshot).not.toBeNull();
  });
});
