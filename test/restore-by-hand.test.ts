/**
 * The README's "Restoring by hand" recipe, run as written (bash, sha256sum, zstd/gunzip, sqlite3) against a
 * real snapshot stored by the snapshot job: the day tcab-backup itself is broken, these commands must work.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AgentClient } from '../src/agent/client.js';
import { startAgent } from '../src/agent/run.js';
import { createSampleDatabase } from '../src/dev/sample-db.js';
import { runSnapshot } from '../src/jobs/snapshot/index.js';
import { openTarget } from '../src/targets/index.js';

let work: string;
let agent: { url: string; close(): Promise<void> };
const key = randomBytes(32).toString('hex');

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-byhand-'));
  createSampleDatabase(join(work, 'tcab.sqlite'), { runs: 700 });
  agent = await startAgent({
    dbPath: join(work, 'tcab.sqlite'),
    stagingDir: join(work, 'staging'),
    host: '127.0.0.1',
    port: 0,
    keys: new Map([['ops', key]]),
    tls: undefined,
    databaseName: 'tcab',
    compression: 'auto',
    stagingTtlMs: 3_600_000,
  });
});

afterAll(async () => {
  await agent?.close();
  await rm(work, { recursive: true, force: true });
});

/** The shell block of the README section, with the example id and backup folder replaced. */
async function readmeRecipe(): Promise<string> {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('## Restoring by hand'));
  const block = /```sh\n([\s\S]*?)```/.exec(section);
  if (!block) throw new Error('README has no shell block under "Restoring by hand"');
  return block[1]!;
}

for (const compression of ['zstd', 'gzip'] as const) {
  it(`restores a ${compression} snapshot with standard tools alone, following the README`, async () => {
    const backups = join(work, `backups-${compression}`);
    const target = openTarget({ kind: 'file', name: 'local', displayUrl: `file://${backups}`, path: backups });
    const { manifest } = await runSnapshot(
      { agent: new AgentClient({ url: agent.url, keyId: 'ops', key }), targets: [target], database: 'tcab' },
      { trigger: { kind: 'cli' }, compression },
    );
    let script = (await readmeRecipe())
      .replace(/^ID=.*$/m, `ID=${manifest.id}`)
      .replaceAll(
        '/var/backups/tcab/snapshots/tcab/2026/11/24/',
        `${backups}/snapshots/tcab/${manifest.id.slice(0, 4)}/${manifest.id.slice(4, 6)}/${manifest.id.slice(6, 8)}/`,
      );
    if (compression === 'gzip') {
      // The README shows the .zst form with the gzip alternative beside it; run the gzip alternative.
      script = script.replaceAll('$ID.sqlite.zst', '$ID.sqlite.gz').replace(/^zstd -d .*$/m, 'gunzip -c $ID.sqlite.gz > tcab.sqlite');
    }
    const dir = await mkdtemp(join(work, 'by-hand-'));
    const out = execFileSync('bash', ['-euo', 'pipefail', '-c', script], { cwd: dir, encoding: 'utf8' });
    expect(out).toContain(`$ID.sqlite.${compression === 'zstd' ? 'zst' : 'gz'}: OK`.replace('$ID', manifest.id));
    expect(out).toContain('tcab.sqlite: OK');
    expect(out).toContain('ok');
    expect(out.trim().split('\n').pop()).toBe(String(manifest.database.tables.runs));
  });
}
