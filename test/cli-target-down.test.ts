/**
 * One target failing while a snapshot of several parts streams into every target, as an operator meets it:
 * `tcab-backup snapshot --format 1 --json` in its own process, a real agent, a healthy file target beside a dead one.
 * The snapshot must be stored whole on the healthy target and the command must fail naming the dead one;
 * it must never stop early and exit 0 with nothing said.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent } from '../src/agent/run.js';
import { listCatalog, manifestArtifactKey, readManifest } from '../src/catalog/catalog.js';
import { v1 } from './support/stored-snapshots.js';
import { createSampleDatabase } from '../src/dev/sample-db.js';
import { createLogger } from '../src/log.js';
import { openTarget } from '../src/targets/index.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli', 'main.js');
const key = randomBytes(32).toString('hex');
let work: string;
let agent: { url: string; close(): Promise<void> };

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-down-'));
  // About 12 MB, sent uncompressed: three parts of 5 MiB on S3, and many times the 1 MiB a target's pipe buffers.
  createSampleDatabase(join(work, 'tcab.sqlite'), { runs: 2000 });
  await writeFile(join(work, 'a-file'), 'not a folder\n');
  agent = await startAgent(
    {
      dbPath: join(work, 'tcab.sqlite'),
      stagingDir: join(work, 'staging'),
      host: '127.0.0.1',
      port: 0,
      keys: new Map([['ops', key]]),
      tls: undefined,
      databaseName: 'tcab',
      compression: 'auto',
      stagingTtlMs: 3_600_000,
    },
    { logger: createLogger({ level: 'error' }) },
  );
});

afterAll(async () => {
  await agent?.close();
  await rm(work, { recursive: true, force: true });
});

/** The built CLI in its own process; the agent answers from this one, so the child is waited for without blocking. */
function cli(args: string[], env: Record<string, string>): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: {
        PATH: process.env.PATH,
        TCAB_BACKUP_AGENT_URL: agent.url,
        TCAB_BACKUP_AGENT_KEY_ID: 'ops',
        TCAB_BACKUP_AGENT_KEY: key,
        TCAB_BACKUP_COMPRESSION: 'none',
        ...env,
      },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

const DEAD: Array<{ why: string; url: () => string; env: Record<string, string> }> = [
  { why: 'its folder is below a regular file (ENOTDIR)', url: () => `file://${join(work, 'a-file', 'dead')}`, env: {} },
  {
    why: 'its S3 endpoint refuses connections',
    url: () => 's3://tcab?endpoint=http://127.0.0.1:9',
    env: {
      TCAB_BACKUP_TARGET_DEAD_ACCESS_KEY_ID: 'AKIADEADTARGET',
      TCAB_BACKUP_TARGET_DEAD_SECRET_ACCESS_KEY: 'dead-target-secret-access-key',
    },
  },
];

describe('tcab-backup snapshot --format 1 with one target down', () => {
  it.each(DEAD)('stores the snapshot whole on the healthy target and exits 1 naming the dead one when $why', async ({ url, env }) => {
    const good = join(work, `good-${randomBytes(4).toString('hex')}`);
    const r = await cli(['snapshot', '--format', '1', '--json'], { TCAB_BACKUP_TARGETS: `good=file://${good},dead=${url()}`, ...env });

    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/tcab-backup snapshot failed: Snapshot \S+ failed on 1 of 2 target\(s\): "dead" \(upload failed: /);
    expect(r.stderr).toContain('stored on "good"');
    expect(r.stderr).not.toContain('dead-target-secret-access-key');
    expect(r.stderr).not.toContain('stalled');
    const out = JSON.parse(r.stdout);
    expect(out.ok).toBe(false);
    expect(out.targets.map((t: { target: string; ok: boolean }) => [t.target, t.ok])).toEqual([
      ['good', true],
      ['dead', false],
    ]);
    expect(out.targets[1].error).toMatch(/Target "dead"/);

    // The healthy target holds a real snapshot: a manifest, and data whose bytes are the ones it promises.
    const target = openTarget({ kind: 'file', name: 'good', displayUrl: `file://${good}`, path: good });
    const { snapshots, orphans } = await listCatalog(target, 'tcab');
    expect(snapshots.map((s) => s.id)).toEqual([out.manifest.id]);
    expect(orphans).toEqual([]);
    const manifest = v1(await readManifest(target, 'tcab', out.manifest.id));
    expect(manifest.artifact.bytes).toBeGreaterThan(10 * 1024 * 1024);
    const artifact = join(good, ...manifestArtifactKey(manifest).split('/'));
    expect(await sha256Of(artifact)).toBe(manifest.artifact.sha256);
    const folder = await readdir(join(artifact, '..'));
    expect(folder.filter((f) => f.startsWith('.tcab-'))).toEqual([]);
    // The staged file on the agent was removed: the job ran to its end.
    expect(await readdir(join(work, 'staging'))).toEqual([]);
  });
});
