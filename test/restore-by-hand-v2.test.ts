/**
 * The README's manual restore of a format-2 snapshot ("Format 2 (deduplicated) snapshots"), run as written
 * (bash, cut, cat, zstd, sha256sum, sqlite3) against a file target holding two real snapshots that share most
 * of their chunks, stored by test/support/store-v2.ts.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { chunkListKey } from '../src/catalog/layout.js';
import { createSampleDatabase } from '../src/dev/sample-db.js';
import type { ManifestV2 } from '../src/catalog/manifest-v2.js';
import { openTarget } from '../src/targets/index.js';
import { publishAgain, vacuumInto } from './support/v2-fixtures.js';
import { storeFileAsV2 } from './support/store-v2.js';

let work: string;
let backups: string;
const files: string[] = [];
const manifests: ManifestV2[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-byhand-v2-'));
  backups = join(work, 'backups');
  const live = join(work, 'live.sqlite');
  createSampleDatabase(live, { runs: 900, seed: 5 });
  files.push(vacuumInto(live, join(work, 'first.sqlite')));
  publishAgain(live, 12, '-2');
  files.push(vacuumInto(live, join(work, 'second.sqlite')));
  const target = openTarget({ kind: 'file', name: 'local', displayUrl: `file://${backups}`, path: backups });
  const a = await storeFileAsV2(target, 'tcab', files[0]!, { createdAt: new Date('2026-12-02T23:59:30Z') });
  const b = await storeFileAsV2(target, 'tcab', files[1]!, { createdAt: new Date('2026-12-03T00:04:30Z') });
  expect(b.reused).toBeGreaterThan(b.uploaded);
  manifests.push(a.manifest, b.manifest);
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** The shell block of the README's format-2 section, with the example folder, id and date replaced. */
async function readmeRecipe(id: string): Promise<string> {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('### Format 2 (deduplicated) snapshots'));
  const block = /```sh\n([\s\S]*?)```/.exec(section);
  if (!block) throw new Error('README has no shell block under "Format 2 (deduplicated) snapshots"');
  return block[1]!
    .replace(/^T=\/var\/backups\/tcab /m, `T=${backups} `)
    .replace(/^ID=.*$/m, `ID=${id}`)
    .replace(/^D=\$T\/snapshots\/tcab\/2026\/11\/24$/m, `D=$T/snapshots/tcab/${id.slice(0, 4)}/${id.slice(4, 6)}/${id.slice(6, 8)}`);
}

async function sha256Of(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

it.each([0, 1])('restores snapshot %i with standard tools alone, following the README', async (n) => {
  const manifest = manifests[n]!;
  const script = await readmeRecipe(manifest.id);
  // Only the three placeholders changed: the rest is the README's text.
  expect(script).toContain(`T=${backups} `);
  expect(script).toContain(`ID=${manifest.id}\n`);
  const dir = await mkdtemp(join(work, 'by-hand-'));
  const out = execFileSync('bash', ['-euo', 'pipefail', '-c', script], { cwd: dir, encoding: 'utf8' });
  const folder = `${backups}/snapshots/tcab/${manifest.id.slice(0, 4)}/${manifest.id.slice(4, 6)}/${manifest.id.slice(6, 8)}`;
  expect(out.trim().split('\n')).toEqual([
    `${folder}/${manifest.id}.chunks: OK`,
    'tcab.sqlite: OK',
    'ok',
    String(manifest.database.tables.runs),
  ]);
  expect(await sha256Of(join(dir, 'tcab.sqlite'))).toBe(await sha256Of(files[n]!));
  // And sqlite3 itself agrees, as the recipe's last step says.
  expect(execFileSync('sqlite3', [join(dir, 'tcab.sqlite'), 'PRAGMA integrity_check'], { encoding: 'utf8' }).trim()).toBe('ok');
});

it('stops with a clear failure when a listed chunk is missing', async () => {
  const manifest = manifests[1]!;
  const list = await readFile(join(backups, chunkListKey('tcab', manifest.id)), 'latin1');
  const hash = list.split('\n')[1]!.split(' ')[0]!;
  const chunk = join(backups, 'chunks', 'tcab', hash.slice(0, 2), `${hash}.zst`);
  await rename(chunk, `${chunk}.away`);
  try {
    const dir = await mkdtemp(join(work, 'by-hand-missing-'));
    const run = spawnSync('bash', ['-euo', 'pipefail', '-c', await readmeRecipe(manifest.id)], { cwd: dir, encoding: 'utf8' });
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain(`${hash}.zst: No such file or directory`);
    expect(run.stdout).not.toContain('tcab.sqlite: OK');
  } finally {
    await rename(`${chunk}.away`, chunk);
  }
});
