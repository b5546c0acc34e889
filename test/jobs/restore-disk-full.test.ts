/**
 * A restore whose destination runs out of room: `tcab-backup restore` in its own process, with -o on a
 * tmpfs smaller than the database, mounted in a mount namespace of that process only (unshare), so the
 * disk is really full (ENOSPC from the kernel) and nothing is left mounted if the test dies.
 *
 * What the operator must read: the local file could not be written, where, and that the stored copy is not
 * at fault; the restore stops there instead of downloading the snapshot again from every other target and
 * ending with "failed on every target"; and the partial file is gone.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATABASE, startFixture, type Fixture } from '../status/fixture.js';

const run = promisify(execFile);
const CLI = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'cli', 'main.js');
const MiB = 1024 * 1024;

let fx: Fixture;
let mountPoint: string;
const ids: Record<1 | 2, string> = { 1: '', 2: '' };

function env(): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    // Two targets holding the same snapshots: a restore that blamed the first would go on to the second.
    TCAB_BACKUP_TARGETS: `local=file://${join(fx.work, 'backups')},copy=file://${join(fx.work, 'copy')}`,
    TCAB_BACKUP_DATABASE: DATABASE,
    TCAB_BACKUP_AGENT_URL: fx.agent.url,
    TCAB_BACKUP_AGENT_KEY_ID: 'functions',
    TCAB_BACKUP_AGENT_KEY: fx.key,
    TCAB_LOG_LEVEL: 'warn',
  };
}

beforeAll(async () => {
  // About 12 MB of database: more than the small tmpfs below, less than the large one.
  fx = await startFixture({ runs: 2000 });
  for (const format of [1, 2] as const) {
    const { stdout } = await run(process.execPath, [CLI, 'snapshot', '--format', String(format), '--json'], { env: env() });
    ids[format] = (JSON.parse(stdout) as { manifest: { id: string } }).manifest.id;
  }
  await cp(join(fx.work, 'backups'), join(fx.work, 'copy'), { recursive: true });
  mountPoint = await mkdtemp(join(tmpdir(), 'tcab-small-dest-'));
}, 180_000);

afterAll(async () => {
  await fx?.stop();
  if (mountPoint) await rm(mountPoint, { recursive: true, force: true });
});

/**
 * `tcab-backup restore --snapshot ID -o <tmpfs>/restored.sqlite` with the tmpfs `sizeMiB` large; resolves with
 * the exit code, the output, and what the tmpfs held when the command ended.
 */
async function restoreOnto(sizeMiB: number, id: string): Promise<{ code: number; stdout: string; stderr: string; left: string[] }> {
  const unshare = ['--mount', '--propagation', 'private', ...(process.getuid?.() === 0 ? [] : ['--map-root-user'])];
  const script =
    'mount -t tmpfs -o "size=$1" tmpfs "$2" || exit 99; dir="$2"; shift 2; "$@"; rc=$?; echo "LEFT:$(ls -A "$dir" | tr "\\n" " ")"; exit $rc';
  const args = [CLI, 'restore', '--snapshot', id, '-o', join(mountPoint, 'restored.sqlite')];
  const done = await run('unshare', [...unshare, 'sh', '-c', script, 'sh', `${sizeMiB}m`, mountPoint, process.execPath, ...args], {
    env: env(),
    timeout: 120_000,
    maxBuffer: 16 * MiB,
  }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
  expect(done.code, `the tmpfs could not be mounted: ${done.stderr}`).not.toBe(99);
  const left = /LEFT:(.*)$/m.exec(done.stdout)![1]!.trim();
  return { ...done, left: left ? left.split(' ') : [] };
}

describe.each([1, 2] as const)('restore of a format-%i snapshot onto a disk without room for it', (format) => {
  it('fails naming the local file and the full disk, blames no target, tries no other, and leaves nothing', async () => {
    const r = await restoreOnto(2, ids[format]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`could not write`);
    expect(r.stderr).toContain(`its temporary file ${join(mountPoint, '.restored.sqlite.restore-')}`);
    expect(r.stderr).toContain('ENOSPC');
    expect(r.stderr).toContain(`${mountPoint} has no room for the database`);
    expect(r.stderr).toContain('the stored copy was not at fault');
    expect(r.stderr).not.toMatch(/damaged|does not decompress|failed on every target/);
    // One target read, not both: the second would meet the same disk.
    expect(r.stderr).not.toContain('restore.target_failed');
    expect(r.left).toEqual([]);
  });

  it('restores the same snapshot where there is room', async () => {
    const r = await restoreOnto(64, ids[format]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.left).toEqual(['restored.sqlite']);
    expect(r.stdout).toContain(ids[format]);
  });
});
