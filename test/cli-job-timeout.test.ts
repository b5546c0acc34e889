/**
 * The CLI's writing jobs stop at TCAB_BACKUP_JOB_TIMEOUT, as the functions' do: the J of docs/format-2.md
 * then bounds every writer, wherever it runs. A real agent, a folder target and s3rver behind a proxy that
 * holds every write once told to (a destination that stops answering in the middle of a catch-up); the CLI
 * runs through `main`, as an operator's process does, and what it leaves behind is restored with the CLI.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from '../src/agent/run.js';
import { listCatalog } from '../src/catalog/catalog.js';
import { main } from '../src/cli/main.js';
import { startS3Server, type S3Server } from '../src/dev/emulators.js';
import { createSampleDatabase } from '../src/dev/sample-db.js';
import { silentLogger } from '../src/log.js';
import { openTarget } from '../src/targets/index.js';
import { parseTargetUrl } from '../src/targets/spec.js';
import type { Target } from '../src/targets/target.js';
import { agentConfig, KEY, KEY_ID } from './agent/helpers.js';
import { startForwardingProxy, type Exchange, type ForwardingProxy } from './support/http-proxy.js';
import { storeFileAsV2 } from './support/store-v2.js';
import { twoSnapshotFiles } from './support/v2-fixtures.js';

const HOUR = 3_600_000;
let work: string;
let s3: S3Server;
let proxy: ForwardingProxy;
let agent: RunningAgent;
/** Decides, per write request reaching s3rver, whether the proxy holds it (never answers) instead. */
let holdWrite: (x: Exchange) => boolean = () => false;
let held = 0;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-cli-j-'));
  s3 = await startS3Server({ buckets: ['tcab'] });
  proxy = await startForwardingProxy(s3.endpoint, async (x) => {
    const write = x.req.method !== 'GET' && x.req.method !== 'HEAD';
    if (write && holdWrite(x)) {
      held++;
      // Never answered: the client gives up when its job is stopped, and closes the connection.
      await new Promise((resolve) => x.req.socket.once('close', resolve));
      return;
    }
    await x.forward();
  });
  const agentDir = join(work, 'agent');
  await mkdir(agentDir);
  createSampleDatabase(join(agentDir, 'tcab.sqlite'), { runs: 1200, seed: 5 });
  agent = await startAgent(agentConfig(agentDir), { logger: silentLogger });
}, 60_000);

afterAll(async () => {
  await agent?.close();
  await proxy?.stop();
  await s3?.stop();
  await rm(work, { recursive: true, force: true });
});

function environment(prefix: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    TCAB_BACKUP_TARGETS: `a=file://${join(work, prefix, 'a')},b=s3://tcab/${prefix}?endpoint=${proxy.endpoint}`,
    TCAB_BACKUP_TARGET_B_ACCESS_KEY_ID: s3.accessKeyId,
    TCAB_BACKUP_TARGET_B_SECRET_ACCESS_KEY: s3.secretAccessKey,
    TCAB_BACKUP_AGENT_URL: agent.url,
    TCAB_BACKUP_AGENT_KEY_ID: KEY_ID,
    TCAB_BACKUP_AGENT_KEY: KEY,
    ...extra,
  };
}

async function cli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough() as unknown as NodeJS.WriteStream;
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  (stderr as unknown as PassThrough).on('data', (d: Buffer) => (err += d.toString()));
  const code = await main(args, { stdout, stderr, stdin: new PassThrough(), env });
  return { code, stdout: out, stderr: err };
}

function targetsOf(env: NodeJS.ProcessEnv, prefix: string): { a: Target; b: Target } {
  return {
    a: openTarget(parseTargetUrl('a', `file://${join(work, prefix, 'a')}`)),
    b: openTarget(
      parseTargetUrl('b', `s3://tcab/${prefix}?endpoint=${s3.endpoint}`, {
        accessKeyId: env.TCAB_BACKUP_TARGET_B_ACCESS_KEY_ID!,
        secretAccessKey: env.TCAB_BACKUP_TARGET_B_SECRET_ACCESS_KEY!,
      }),
    ),
  };
}

async function ids(target: Target): Promise<string[]> {
  return (await listCatalog(target, 'tcab')).snapshots.map((s) => s.id).sort();
}

/** Every snapshot the target lists restores through the CLI (chunks present, both sha256 sums, integrity_check). */
async function expectRestorable(env: NodeJS.ProcessEnv, target: string, snapshotIds: string[]): Promise<void> {
  for (const id of snapshotIds) {
    const out = join(work, `restored-${target}-${id}.sqlite`);
    const r = await cli(['restore', '--snapshot', id, '--target', target, '-o', out], env);
    expect(r.code, `${id} on ${target}: ${r.stderr}`).toBe(0);
    await rm(out, { force: true });
  }
}

describe('tcab-backup replicate at TCAB_BACKUP_JOB_TIMEOUT', () => {
  it('stops a catch-up to a new target, exits 1 saying what was copied and what to do, and leaves every manifest restorable', async () => {
    const prefix = 'replicate';
    const env = environment(prefix, { TCAB_BACKUP_JOB_TIMEOUT: '8s' });
    const { a, b } = targetsOf(env, prefix);
    const files = twoSnapshotFiles(await mkdtemp(join(work, 'files-')));
    const now = Date.now();
    for (const [i, file] of [files.first, files.second, files.first, files.second].entries())
      await storeFileAsV2(a, 'tcab', file, { createdAt: new Date(now - (4 - i) * HOUR) });
    const all = await ids(a);
    expect(all).toHaveLength(4);

    // Once the first manifest has reached b, every later write to b is held: the destination stalls mid-run.
    let manifests = 0;
    held = 0;
    holdWrite = (x) => {
      if (manifests > 0) return true;
      if (x.req.method === 'PUT' && /\/snapshots\/.*\.json$/.test(x.url.pathname)) manifests++;
      return false;
    };
    const started = Date.now();
    const stopped = await cli(['replicate'], env);
    holdWrite = () => false;
    const elapsed = Date.now() - started;

    expect(stopped.code).toBe(1);
    expect(held).toBeGreaterThan(0);
    expect(elapsed).toBeGreaterThanOrEqual(8000);
    expect(elapsed).toBeLessThan(8000 + 60_000);
    expect(stopped.stderr).toContain(
      'tcab-backup replicate failed: The replicate command was stopped at TCAB_BACKUP_JOB_TIMEOUT=8s, the longest a snapshot or replicate job may run',
    );
    expect(stopped.stderr).toMatch(/: 1 snapshot copy completed and checked before it stopped \([^)]+\); nothing half-written is visible/);
    expect(stopped.stderr).toContain(
      'Check: run it again to go on: it copies only what is still missing; or raise TCAB_BACKUP_JOB_TIMEOUT, keeping TCAB_BACKUP_CHUNK_GRACE (7d) above 4 x it',
    );
    // The table says where that copy went.
    expect(stopped.stdout).toMatch(/\n\s+b\s+0\s+1\s+/);

    // b lists exactly the one copy said to be done, and it restores; a is untouched.
    const onB = await ids(b);
    expect(onB).toHaveLength(1);
    expect(all).toContain(onB[0]);
    await expectRestorable(env, 'b', onB);
    expect(await ids(a)).toEqual(all);

    // Run again (the default timeout): the rest is copied, and everything restores from b.
    const again = await cli(['replicate', '--json'], environment(prefix));
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ ok: true, copied: 3 });
    expect(await ids(b)).toEqual(all);
    await expectRestorable(env, 'b', all);
  }, 180_000);

  it('--json says ok: false with the same message and the copies done', async () => {
    const prefix = 'replicate-json';
    const env = environment(prefix, { TCAB_BACKUP_JOB_TIMEOUT: '3s' });
    const { a, b } = targetsOf(env, prefix);
    const files = twoSnapshotFiles(await mkdtemp(join(work, 'files-')));
    await storeFileAsV2(a, 'tcab', files.first, { createdAt: new Date(Date.now() - HOUR) });
    holdWrite = () => true;
    const stopped = await cli(['replicate', '--json'], env);
    holdWrite = () => false;
    expect(stopped.code).toBe(1);
    const doc = JSON.parse(stopped.stdout);
    expect(doc).toMatchObject({ ok: false, copied: 0 });
    expect(doc.error).toMatch(/^The replicate command was stopped at TCAB_BACKUP_JOB_TIMEOUT=3s.*: 0 snapshot copies completed/);
    expect(await ids(b)).toEqual([]);
  }, 120_000);
});

describe('tcab-backup snapshot at TCAB_BACKUP_JOB_TIMEOUT', () => {
  it('stops a snapshot a target stalls, exits 1 saying so, and leaves only restorable manifests; the next one succeeds', async () => {
    const prefix = 'snapshot';
    const env = environment(prefix, { TCAB_BACKUP_JOB_TIMEOUT: '4s' });
    const { a, b } = targetsOf(env, prefix);
    held = 0;
    holdWrite = () => true;
    const stopped = await cli(['snapshot', '--reason', 'timeout test'], env);
    holdWrite = () => false;

    expect(stopped.code).toBe(1);
    expect(held).toBeGreaterThan(0);
    expect(stopped.stderr).toContain(
      'tcab-backup snapshot failed: The snapshot command was stopped at TCAB_BACKUP_JOB_TIMEOUT=4s, the longest a snapshot or replicate job may run',
    );
    expect(stopped.stderr).toContain('the snapshot is stored on a target only if its manifest was written there');
    expect(stopped.stderr).toContain(
      'Check: run it again for a new snapshot: a format-2 snapshot uploads only the chunks a target still lacks; or raise TCAB_BACKUP_JOB_TIMEOUT, keeping TCAB_BACKUP_CHUNK_GRACE (7d) above 4 x it',
    );
    expect(await ids(b)).toEqual([]);
    // Whatever a lists (the upload to a may have finished before b stalled the job) restores.
    await expectRestorable(env, 'a', await ids(a));

    const again = await cli(['snapshot', '--json'], environment(prefix));
    expect(again.code, again.stderr).toBe(0);
    const id = JSON.parse(again.stdout).manifest.id as string;
    expect(await ids(b)).toEqual([id]);
    await expectRestorable(env, 'b', [id]);
    await expectRestorable(env, 'a', await ids(a));
  }, 180_000);

  it('refuses a timeout the chunk grace does not cover by 4 times, naming both settings, before anything runs', async () => {
    const r = await cli(['snapshot'], environment('refused', { TCAB_BACKUP_JOB_TIMEOUT: '2d' }));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('TCAB_BACKUP_CHUNK_GRACE: 7d must exceed 4 x TCAB_BACKUP_JOB_TIMEOUT (4 x 2d = 8d)');
    const rep = await cli(['replicate'], environment('refused', { TCAB_BACKUP_JOB_TIMEOUT: '2d' }));
    expect(rep.code).toBe(2);
  }, 60_000);
});
