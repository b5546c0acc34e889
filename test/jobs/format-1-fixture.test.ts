/**
 * v1 snapshots made before format 2 existed still restore: test/fixtures/format-1-target is a file target
 * written by the code of commit 6225247 (its README says how), frozen in the repository. The current CLI lists
 * it, restores each snapshot byte for byte (the sha256 and row counts recorded when it was made), verifies and
 * drills it, and prunes a copy of it; and a target holding those old snapshots beside new format-2 ones made by
 * a real agent restores both kinds and prunes them by one policy.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { cp, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { main } from '../../src/cli/main.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { silentLogger } from '../../src/log.js';
import { firstValue, openDatabase } from '../../src/util/sqlite.js';
import { KEY, KEY_ID, agentConfig } from '../agent/helpers.js';
import { publishAgain } from '../support/v2-fixtures.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/format-1-target/', import.meta.url));

interface Expected {
  madeWith: string;
  snapshots: Array<{ id: string; reason: string; pinned: boolean; sha256: string; runs: number; reviews: number }>;
}

let work: string;
let expected: Expected;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-format1-fixture-'));
  expected = JSON.parse(await readFile(join(FIXTURE, 'expected.json'), 'utf8')) as Expected;
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function cli(args: string[], env: Record<string, string>): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const stderrStream = stderr as unknown as NodeJS.WriteStream;
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await main(args, {
    stdout,
    stderr: stderrStream,
    stdin: new PassThrough(),
    env: { PATH: process.env.PATH, TCAB_LOG_LEVEL: 'error', ...env },
  });
  return { code, out, err };
}

/** Runs a --json command that must succeed, and returns its document. */
async function json<T = Record<string, unknown>>(args: string[], env: Record<string, string>): Promise<T> {
  const r = await cli([...args, '--json'], env);
  expect(r.code, `tcab-backup ${args.join(' ')}: ${r.err}${r.out}`).toBe(0);
  return JSON.parse(r.out) as T;
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => hash.update(d))
      .on('end', () => resolve(hash.digest('hex')))
      .on('error', reject);
  });
}

function rowCounts(path: string): { runs: number; reviews: number } {
  const db = openDatabase(path, { readOnly: true });
  try {
    return { runs: firstValue<number>(db, 'SELECT count(*) FROM runs')!, reviews: firstValue<number>(db, 'SELECT count(*) FROM reviews')! };
  } finally {
    db.close();
  }
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

/** A copy of the fixture's target, so that nothing a test does reaches the committed files. */
async function copyOfFixture(name: string): Promise<string> {
  const dir = join(work, name);
  await cp(join(FIXTURE, 'target'), dir, { recursive: true });
  return dir;
}

/** Sizes of the files under `dir` whose relative path passes `keep`. */
async function bytesUnder(dir: string, keep: (path: string) => boolean): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  for (const path of await filesUnder(dir)) {
    if (!keep(path)) continue;
    files++;
    bytes += (await stat(join(dir, path))).size;
  }
  return { files, bytes };
}

/** `tcab-backup status --json` gives the bytes of the folder's artifacts, chunk lists and chunks, each chunk once. */
async function expectStatusCountsFolder(dir: string, env: Record<string, string>): Promise<void> {
  const r = await cli(['status', '--json'], env);
  const doc = JSON.parse(r.out) as {
    targets: Array<{ snapshots: { storedBytes: number; chunks: { count: number; bytes: number } | null } }>;
  };
  const chunks = await bytesUnder(dir, (p) => p.startsWith('chunks/'));
  const data = await bytesUnder(dir, (p) => p.startsWith('snapshots/') && !p.endsWith('.json'));
  expect(chunks.files).toBeGreaterThan(0);
  expect(doc.targets[0]!.snapshots.chunks).toEqual({ count: chunks.files, bytes: chunks.bytes });
  expect(doc.targets[0]!.snapshots.storedBytes).toBe(chunks.bytes + data.bytes);
}

interface Listed {
  targets: Array<{ name: string; ok: boolean; snapshots: Array<{ id: string; formatVersion: number; pinned: boolean; sha256: string }> }>;
}

describe('a format-1 target written before format 2 existed', () => {
  it('is listed, restored byte for byte, verified and drilled by the current code, and leaves the committed files alone', async () => {
    const before = await filesUnder(join(FIXTURE, 'target'));
    expect(before.filter((f) => f.endsWith('.json'))).toHaveLength(expected.snapshots.length);
    // Verify and drill write their records on the target: read-only jobs still run on a copy.
    const env = { TCAB_BACKUP_TARGETS: `old=file://${await copyOfFixture('read')}`, TCAB_BACKUP_DRILL_WORK_DIR: work };

    const listed = await json<Listed>(['list'], env);
    const snapshots = listed.targets[0]!.snapshots;
    expect(snapshots.map((s) => s.id).sort()).toEqual(expected.snapshots.map((s) => s.id).sort());
    expect(snapshots.every((s) => s.formatVersion === 1)).toBe(true);
    expect(snapshots.filter((s) => s.pinned).map((s) => s.id)).toEqual(expected.snapshots.filter((s) => s.pinned).map((s) => s.id));

    for (const snap of expected.snapshots) {
      const out = join(work, `${snap.id}.sqlite`);
      const restored = await json<{ id: string; target: string }>(['restore', '--snapshot', snap.id, '-o', out], env);
      expect(restored).toMatchObject({ id: snap.id, target: 'old' });
      expect(await sha256File(out)).toBe(snap.sha256);
      expect(rowCounts(out)).toEqual({ runs: snap.runs, reviews: snap.reviews });
    }

    const verified = await json<{ checked: number; failed: number; unreadable: number; outcomes: Array<{ id: string; verdict: string }> }>(
      ['verify', '--all'],
      env,
    );
    expect(verified).toMatchObject({ checked: expected.snapshots.length, failed: 0, unreadable: 0 });
    expect(verified.outcomes.map((o) => o.verdict)).toEqual(expected.snapshots.map(() => 'ok'));

    const drilled = await json<{ ok: boolean; targets: Array<{ ok: boolean; snapshot: { id: string } | null; error?: string }> }>(
      ['drill'],
      env,
    );
    const newest = [...expected.snapshots].sort((a, b) => b.id.localeCompare(a.id))[0]!;
    expect(drilled.targets.map((t) => t.error ?? '')).toEqual(['']);
    expect(drilled).toMatchObject({ ok: true, targets: [{ ok: true, snapshot: { id: newest.id } }] });

    expect(await filesUnder(join(FIXTURE, 'target'))).toEqual(before);
  });

  it('is pruned by the policy on a copy: the pinned snapshot and the newest stay, and they still restore', async () => {
    const dir = await copyOfFixture('prune');
    const env = {
      TCAB_BACKUP_TARGETS: `old=file://${dir}`,
      TCAB_BACKUP_RETENTION_OLD: 'last=1',
      TCAB_BACKUP_RETENTION_MIN_KEEP: '1',
      TCAB_BACKUP_RETENTION_MIN_AGE: '0h',
      TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
    };
    // The newest-verified rail keeps the newest snapshot verify found good: verify first, as the timers would.
    await json(['verify', '--all'], env);
    const byId = [...expected.snapshots].sort((a, b) => a.id.localeCompare(b.id));
    const [oldest, middle, newest] = byId as [(typeof byId)[0], (typeof byId)[0], (typeof byId)[0]];
    // The fixture's newest is also its pinned one; last=1 keeps it, and the other two go.
    expect(newest.pinned).toBe(true);
    const pruned = await json<{ removed: number; targets: Array<{ removed: string[] }> }>(['prune'], env);
    expect(pruned.targets[0]!.removed.sort()).toEqual([oldest.id, middle.id].sort());
    const listed = await json<Listed>(['list'], env);
    expect(listed.targets[0]!.snapshots.map((s) => s.id)).toEqual([newest.id]);
    const files = await filesUnder(join(dir));
    expect(files.filter((f) => f.includes(oldest.id) || f.includes(middle.id))).toEqual([]);
    const out = join(work, 'after-prune.sqlite');
    await json(['restore', '--snapshot', newest.id, '-o', out], env);
    expect(await sha256File(out)).toBe(newest.sha256);
  });
});

describe('a target with the old format-1 snapshots and new format-2 ones', () => {
  let agent: RunningAgent;
  let agentWork: string;
  beforeAll(async () => {
    agentWork = await mkdtemp(join(tmpdir(), 'tcab-format1-mixed-agent-'));
    createSampleDatabase(join(agentWork, 'tcab.sqlite'), { runs: 300, seed: 5 });
    agent = await startAgent(agentConfig(agentWork), { logger: silentLogger });
  });
  afterAll(async () => {
    await agent?.close();
    await rm(agentWork, { recursive: true, force: true });
  });

  it('restores both formats, and prunes them by one policy across both', async () => {
    const dir = await copyOfFixture('mixed');
    const env = {
      TCAB_BACKUP_TARGETS: `mixed=file://${dir}`,
      TCAB_BACKUP_AGENT_URL: agent.url,
      TCAB_BACKUP_AGENT_KEY_ID: KEY_ID,
      TCAB_BACKUP_AGENT_KEY: KEY,
      TCAB_BACKUP_RETENTION_MIXED: 'last=2',
      TCAB_BACKUP_RETENTION_MIN_KEEP: '1',
      TCAB_BACKUP_RETENTION_MIN_AGE: '0h',
      TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
    };
    const live = join(agentWork, 'tcab.sqlite');
    const v2: Array<{ id: string; sha256: string; runs: number }> = [];
    for (let i = 0; i < 3; i++) {
      publishAgain(live, 5, `-mixed-${i}`);
      const snap = await json<{
        manifest: { id: string; formatVersion: number; snapshot: { sha256: string }; database: { tables: { runs: number } } };
      }>(['snapshot', '--format', '2', '--reason', `mixed ${i}`], env);
      expect(snap.manifest.formatVersion).toBe(2);
      v2.push({ id: snap.manifest.id, sha256: snap.manifest.snapshot.sha256, runs: snap.manifest.database.tables.runs });
    }

    const listed = (await json<Listed>(['list'], env)).targets[0]!.snapshots;
    expect(listed.map((s) => `${s.formatVersion} ${s.id}`).sort()).toEqual(
      [...expected.snapshots.map((s) => `1 ${s.id}`), ...v2.map((s) => `2 ${s.id}`)].sort(),
    );

    // --latest is the newest of either format; every one of both formats restores byte for byte.
    const latest = join(work, 'mixed-latest.sqlite');
    expect(await json(['restore', '--latest', '-o', latest], env)).toMatchObject({ id: v2[2]!.id });
    for (const snap of [...expected.snapshots, ...v2]) {
      const out = join(work, `mixed-${snap.id}.sqlite`);
      await json(['restore', '--snapshot', snap.id, '-o', out], env);
      expect(await sha256File(out)).toBe(snap.sha256);
      expect(rowCounts(out).runs).toBe(snap.runs);
    }

    // The status counts what the folder really holds: artifacts, chunk lists, and each chunk once.
    await expectStatusCountsFolder(dir, env);

    await json(['verify', '--all'], env);
    // last=2 counts across both formats: the two newest format-2 snapshots stay, the oldest format-2 one
    // and the unpinned format-1 ones go, and the pinned format-1 snapshot stays by its pin.
    const pinned = expected.snapshots.filter((s) => s.pinned).map((s) => s.id);
    const unpinned = expected.snapshots.filter((s) => !s.pinned).map((s) => s.id);
    const pruned = await json<{ targets: Array<{ removed: string[]; rails: Array<{ rail: string; ids: string[] }> }> }>(['prune'], env);
    expect(pruned.targets[0]!.removed.sort()).toEqual([...unpinned, v2[0]!.id].sort());
    expect(pruned.targets[0]!.rails.find((r) => r.rail === 'pinned')?.ids).toEqual(pinned);
    const after = (await json<Listed>(['list'], env)).targets[0]!.snapshots.map((s) => `${s.formatVersion} ${s.id}`);
    expect(after.sort()).toEqual([...pinned.map((id) => `1 ${id}`), `2 ${v2[1]!.id}`, `2 ${v2[2]!.id}`].sort());

    // The pruned snapshot's chunks no other snapshot names stay until the grace has passed: still counted.
    await expectStatusCountsFolder(dir, env);

    // What is left restores: the pinned format-1 snapshot and both format-2 ones (their shared chunks kept).
    for (const snap of [...expected.snapshots.filter((s) => s.pinned), v2[1]!, v2[2]!]) {
      const out = join(work, `mixed-after-${snap.id}.sqlite`);
      await json(['restore', '--snapshot', snap.id, '-o', out], env);
      expect(await sha256File(out)).toBe(snap.sha256);
    }
  });
});
