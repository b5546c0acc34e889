import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { statusCommand } from '../../src/cli/commands/status.js';
import { verifyCommand } from '../../src/cli/commands/verify.js';
import { drillCommand } from '../../src/cli/commands/drill.js';
import { UsageError, type Command } from '../../src/cli/command.js';
import { createLogger } from '../../src/log.js';
import { startFixture, type Fixture } from './fixture.js';

let fx: Fixture;

beforeAll(async () => {
  fx = await startFixture({ runs: 80 });
  await fx.snapshot();
  fx.publishRuns(3);
});

afterAll(async () => {
  await fx?.stop();
});

async function run(command: Command, args: string[], extraEnv: Record<string, string> = {}): Promise<{ code: number; stdout: string }> {
  const stdout = new PassThrough();
  let text = '';
  stdout.on('data', (d: Buffer) => (text += d.toString()));
  const env = {
    TCAB_BACKUP_TARGETS: `local=file://${fx.work}/backups`,
    TCAB_BACKUP_AGENT_URL: fx.agent.url,
    TCAB_BACKUP_AGENT_KEY_ID: 'functions',
    TCAB_BACKUP_AGENT_KEY: fx.key,
    TCAB_BACKUP_DRILL_WORK_DIR: join(fx.work, 'scratch'),
    ...extraEnv,
  };
  const code = await command(args, {
    io: { stdout, stderr: process.stderr, stdin: process.stdin, env },
    logger: createLogger({ level: 'error' }),
    env,
  });
  return { code, stdout: text };
}

describe('drill, verify and status commands', () => {
  it('drill prints what a restore would lose and how long it took; --json is the drill result', async () => {
    const human = await run(drillCommand, []);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(
      /^restore drill \S+ of "tcab":\n {2}target local: snapshot \S+ restored and verified in (\d+ ms|\d+(\.\d)? s)/,
    );
    expect(human.stdout).toContain('runs published since the snapshot: 3');
    expect(human.stdout).toMatch(/runs 80 -> 83 \(\+3\)/);
    const json = JSON.parse((await run(drillCommand, ['--json'])).stdout);
    expect(json).toMatchObject({ ok: true, database: 'tcab', targets: [{ target: 'local', ok: true, recoveryPoint: { runsSince: 3 } }] });
  });

  it('drill without agent settings still restores and warns why it could not compare', async () => {
    const { code, stdout } = await run(drillCommand, [], { TCAB_BACKUP_AGENT_URL: '' });
    expect(code).toBe(0);
    expect(stdout).toContain('warning: live comparison unavailable: TCAB_BACKUP_AGENT_URL is not set');
  });

  it('verify reads the rotation, or everything with --all', async () => {
    const all = JSON.parse((await run(verifyCommand, ['--all', '--json'])).stdout);
    expect(all).toMatchObject({ ok: true, all: true, checked: 1, failed: 0, withinMs: 7 * 86_400_000, intervalMs: 86_400_000 });
    const human = await run(verifyCommand, []);
    expect(human.stdout).toMatch(
      /^target local: read 1 of 1 snapshot\(s\), .* all match their manifests; longest any snapshot has gone unread: \d+s \(window 7d\)/,
    );
  });

  it('status prints the state, exits 1 when critical, and writes the page with --html', async () => {
    await run(drillCommand, []);
    const ok = await run(statusCommand, ['--html', join(fx.work, 'status.html')]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^tcab: OK \(as of /);
    expect(ok.stdout).toMatch(/target local OK: newest snapshot \d+s ago/);
    expect(await readFile(join(fx.work, 'status.html'), 'utf8')).toContain('data-target="local"');
    const critical = await run(statusCommand, ['--json'], {
      TCAB_BACKUP_SNAPSHOT_WARN_AGE: '1ms',
      TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE: '2ms',
    });
    expect(critical.code).toBe(1);
    expect(JSON.parse(critical.stdout)).toMatchObject({ state: 'critical', problems: [{ check: 'snapshot', target: 'local' }] });
  });

  it('refuses unknown flags as usage errors', async () => {
    await expect(run(statusCommand, ['--everything'])).rejects.toBeInstanceOf(UsageError);
    await expect(run(drillCommand, ['--all'])).rejects.toBeInstanceOf(UsageError);
  });
});
