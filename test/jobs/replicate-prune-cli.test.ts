/**
 * `tcab-backup replicate` and `tcab-backup prune` as an operator runs them: flags, the short table, the
 * --json document (also on failure), configured only through environment variables.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError, type CommandContext } from '../../src/cli/command.js';
import { pruneCommand } from '../../src/cli/commands/prune.js';
import { replicateCommand } from '../../src/cli/commands/replicate.js';
import { ConfigError } from '../../src/errors.js';
import { PruneFailedError } from '../../src/jobs/prune/index.js';
import { silentLogger } from '../../src/log.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import { DAY, HOUR, history, idsOn, storeSnapshot } from '../support/stored-snapshots.js';

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-cli-rp-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function fresh(name: string) {
  const dir = await mkdtemp(join(work, `${name}-`));
  return { dir, target: openTarget(parseTargetUrl(name, `file://${dir}`)) };
}

function cli(env: Record<string, string>): { ctx: CommandContext; out: () => string } {
  const stdout = new PassThrough();
  let text = '';
  stdout.on('data', (d: Buffer) => (text += d.toString()));
  const fullEnv = { ...env } as NodeJS.ProcessEnv;
  return {
    ctx: { io: { stdout, stderr: process.stderr, stdin: new PassThrough(), env: fullEnv }, logger: silentLogger, env: fullEnv },
    out: () => text,
  };
}

async function twoTargets() {
  const a = await fresh('a');
  const b = await fresh('b');
  const snaps = history(4, new Date(Date.now() - 2 * HOUR), DAY);
  for (const s of snaps) await storeSnapshot(a.target, s);
  const env = {
    TCAB_BACKUP_TARGETS: `a=file://${a.dir},b=file://${b.dir}`,
    TCAB_BACKUP_RETENTION_MIN_KEEP: '1',
    TCAB_BACKUP_RETENTION_MIN_AGE: '1h',
  };
  return { a, b, ids: snaps.map((s) => s.manifest.id), env };
}

describe('tcab-backup replicate', () => {
  it('--dry-run prints a short table and each copy it would make, and copies nothing', async () => {
    const { b, ids, env } = await twoTargets();
    const run = cli(env);
    expect(await replicateCommand(['--dry-run'], run.ctx)).toBe(0);
    const text = run.out();
    expect(text).toContain('replicate "tcab" (dry run): would copy 4 snapshot(s)');
    expect(text).toMatch(/TARGET\s+HAD\s+TO COPY\s+BYTES\s+SKIPPED\s+FAILED/);
    expect(text).toMatch(/\n\s+b\s+0\s+4\s+128\.0 KiB\s+0\s+0\n/);
    for (const id of ids) expect(text).toContain(`would copy ${id} to "b" from "a"`);
    expect(await idsOn(b.target)).toEqual([]);
  });

  it('--json prints the result document', async () => {
    const { b, ids, env } = await twoTargets();
    const run = cli({ ...env, TCAB_BACKUP_RETENTION_B: 'last=2' });
    expect(await replicateCommand(['--json'], run.ctx)).toBe(0);
    const doc = JSON.parse(run.out());
    expect(doc.ok).toBe(true);
    expect(doc.copied).toBe(2);
    const onB = doc.targets.find((t: { target: string }) => t.target === 'b');
    expect(onB.copied.map((c: { id: string }) => c.id).sort()).toEqual(ids.slice(2));
    expect(onB.skipped).toHaveLength(2);
    expect(await idsOn(b.target)).toEqual(ids.slice(2));
  });

  it('rejects an unknown flag and names a bad setting', async () => {
    const { env } = await twoTargets();
    await expect(replicateCommand(['--force'], cli(env).ctx)).rejects.toBeInstanceOf(UsageError);
    await expect(replicateCommand([], cli({ ...env, TCAB_BACKUP_RETENTION_C: 'last=1' }).ctx)).rejects.toThrow(
      /TCAB_BACKUP_RETENTION_C: is set, but no target/,
    );
    await expect(replicateCommand([], cli({}).ctx)).rejects.toBeInstanceOf(ConfigError);
  });
});

describe('tcab-backup prune', () => {
  it('prints the refusal and fails, removes nothing; --force removes; --json on failure says ok: false', async () => {
    const { a, ids, env } = await twoTargets();
    // b's policy keeps only what a keeps too, so the last-good-copy rail does not hold a's older snapshots for b.
    const settings = { ...env, TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=1' };

    const dry = cli(settings);
    await expect(pruneCommand(['--dry-run'], dry.ctx)).rejects.toBeInstanceOf(PruneFailedError);
    expect(dry.out()).toMatch(/TARGET\s+SNAPSHOTS\s+KEPT\s+TO REMOVE\s+HELD\s+GARBAGE\s+POLICY/);
    expect(dry.out()).toMatch(/\n\s+a\s+4\s+4\s+refused\s+0\s+0\s+TCAB_BACKUP_RETENTION_A\n/);
    expect(dry.out()).toContain('a: REFUSED (max-delete-share)');

    const json = cli(settings);
    await expect(pruneCommand(['--json'], json.ctx)).rejects.toThrow(/--force/);
    const doc = JSON.parse(json.out());
    expect(doc.ok).toBe(false);
    expect(doc.targets.find((t: { target: string }) => t.target === 'a').refused.rail).toBe('max-delete-share');
    expect(await idsOn(a.target)).toEqual(ids);

    const forced = cli(settings);
    expect(await pruneCommand(['--force'], forced.ctx)).toBe(0);
    expect(forced.out()).toContain('prune "tcab" (forced): removed 3 snapshot(s)');
    expect(forced.out()).toContain(`a: removed ${ids.slice(0, 3).reverse().join(', ')}`);
    expect(await idsOn(a.target)).toEqual([ids[3]]);
  });

  it('fails naming the target and the verify record it cannot read, and removes nothing there, even with --force', async () => {
    const { a, ids, env } = await twoTargets();
    await a.target.put('status/tcab.verify.json', Buffer.from('{"formatVersion": 1, "kind": "verify-rec'));
    const run = cli({ ...env, TCAB_BACKUP_RETENTION_A: 'last=1', TCAB_BACKUP_RETENTION_B: 'last=1' });
    const err = await pruneCommand(['--force'], run.ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PruneFailedError);
    expect((err as PruneFailedError).code).toBe('PRUNE_FAILED');
    expect((err as Error).message).toMatch(
      /target "a": its verify record status\/tcab\.verify\.json could not be read \(.*is not valid JSON\)/,
    );
    expect(run.out()).toMatch(/\n\s+a\s+4\s+4\s+refused\s+0\s+0\s+TCAB_BACKUP_RETENTION_A\n/);
    expect(run.out()).toContain('a: REFUSED (verify-record): Retention refused on target "a"');
    expect(run.out()).toContain('Check: run "tcab-backup verify --target a"');
    expect(await idsOn(a.target)).toEqual(ids);
  });
});
