/**
 * The benchmark measures what it says: its options, the peak-memory watcher on real processes, and a whole
 * run of the built benchmark on a tiny database (real agent and client processes, real shell recipe).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { atMost } from '../../bench/case.js';
import { ProcessTreeWatcher } from '../../bench/memory.js';
import { parseBenchArgs, parseSize } from '../../bench/options.js';
import { repoRoot } from '../../bench/processes.js';
import { median } from '../../bench/stats.js';
import { NODE_FLAGS } from '../../src/node-flags.js';

const CASES = ['snapshot', 'replication', 'retention'];

describe('bench options', () => {
  it('reads sizes the way the docs write them, decimal for MB and GB', () => {
    expect(parseSize('100MB')).toBe(100e6);
    expect(parseSize('1GB')).toBe(1e9);
    expect(parseSize('1.5gb')).toBe(1.5e9);
    expect(parseSize('512MiB')).toBe(512 * 1024 * 1024);
    const defaults = parseBenchArgs([], CASES)!;
    expect(defaults).toMatchObject({ sizeBytes: 1e9, sizeLabel: '1GB', seed: 1, samples: 3, keep: false, json: false, cases: undefined });
    expect(
      parseBenchArgs(
        ['--size', '100MB', '--samples', '5', '--case', 'retention,snapshot', '--json', '--keep', '--replicate-snapshots', '2'],
        CASES,
      ),
    ).toMatchObject({ sizeBytes: 100e6, samples: 5, cases: ['retention', 'snapshot'], json: true, keep: true, replicateSnapshots: 2 });
    expect(parseBenchArgs([], CASES)).toMatchObject({ replicateSnapshots: 6 });
    expect(parseBenchArgs(['--help'], CASES)).toBeUndefined();
  });

  it('names the option that is wrong', () => {
    expect(() => parseSize('lots')).toThrow(/--size "lots" is not a size/);
    expect(() => parseSize('10KB')).toThrow(/below the smallest useful size/);
    expect(() => parseBenchArgs(['--samples', '0'], CASES)).toThrow(/--samples "0" is not a whole number from 1/);
    expect(() => parseBenchArgs(['--case', 'replicate'], CASES)).toThrow(/unknown: replicate.*known: snapshot, replication, retention/);
    expect(() => parseBenchArgs(['--sise', '1GB'], CASES)).toThrow(/--sise/);
  });
});

describe('bench figures', () => {
  it('takes the median of odd and even sample counts', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });

  it('says by how much a target was missed', () => {
    const ok = atMost('ratio', 1.2, 1.25, (v) => v.toFixed(2));
    expect(ok).toMatchObject({ ok: true, shown: '1.20', target: '<= 1.25' });
    expect(ok.miss).toBeUndefined();
    const missed = atMost('ratio', 1.5, 1.25, (v) => v.toFixed(2));
    expect(missed.ok).toBe(false);
    expect(missed.miss).toBe('1.50 is 0.25 over the target of 1.25 (20% above)');
  });
});

describe('ProcessTreeWatcher', () => {
  it('sees the peak of a process and, separately, of the program it starts', async () => {
    // The parent holds 120 MB, then starts `sleep`: the child must not be charged with the parent's memory,
    // which a forked child shows until it execs.
    const script = "const b = Buffer.alloc(120e6, 1); require('child_process').spawnSync('sleep', ['0.4']); b[0] = 2;";
    const child = spawn(process.execPath, ['-e', script], { stdio: 'ignore' });
    const watcher = new ProcessTreeWatcher(child.pid!, 10);
    await new Promise((resolve) => child.once('exit', resolve));
    const peaks = watcher.stop();
    expect(peaks.root?.name).toBe('node');
    expect(peaks.root!.peakHwmBytes).toBeGreaterThan(120e6);
    expect(peaks.root!.peakHwmBytes).toBeLessThan(400e6);
    const sleeper = peaks.descendants.find((p) => p.name === 'sleep');
    expect(sleeper?.command).toBe('sleep 0.4');
    expect(sleeper!.peakHwmBytes).toBeGreaterThan(0);
    expect(sleeper!.peakHwmBytes).toBeLessThan(20e6);
  });
});

describe('npm run bench (built)', () => {
  const main = join(repoRoot(), 'dist', 'bench', 'main.js');
  const run = (args: string[]) => {
    expect(existsSync(main), `${main} is missing: npm run build first`).toBe(true);
    return spawnSync(process.execPath, [main, ...args], { encoding: 'utf8', timeout: 110_000 });
  };

  it('runs every case on a small database and reports each figure against its target', { timeout: 120_000 }, () => {
    const r = run(['--size', '2MB', '--samples', '1', '--retention-runs', '3', '--replicate-snapshots', '2', '--json']);
    const report = JSON.parse(r.stdout) as {
      ok: boolean;
      failures: string[];
      cases: Array<{
        name: string;
        ok: boolean;
        checks: Array<{ measure: string; value: number; ok: boolean; miss?: string }>;
        details: Record<string, any>;
      }>;
    };
    expect(report.cases.map((c) => c.name)).toEqual(['snapshot', 'replication', 'retention']);
    const snapshot = report.cases[0]!;
    const check = (measure: string) => snapshot.checks.find((c) => c.measure.startsWith(measure))!;
    expect(check('each stored artifact sha256 = its manifest')).toMatchObject({ ok: true, value: 1 });
    expect(check('backend writer errors')).toMatchObject({ ok: true });
    expect(check('our artifact compression')).toMatchObject({ ok: true });
    expect(check('snapshot time, ours / shell recipe').value).toBeGreaterThan(0);
    for (const who of ['agent', 'client']) {
      const peak = check(`${who} process peak RSS`).value;
      expect(peak, who).toBeGreaterThan(30e6);
      expect(peak, who).toBeLessThan(1e9);
    }
    const ours = snapshot.details.samples.ours[0];
    expect(ours.targets).toHaveLength(2);
    expect(ours.writer.inserts).toBeGreaterThan(0);

    const replication = report.cases[1]!;
    // Both ways: Azurite -> s3rver, and back from copies on s3rver to Azurite.
    for (const direction of ['Azurite -> s3rver', 's3rver -> Azurite']) {
      expect(
        replication.checks.find((c) => c.measure === `${direction}: every copy of ours has its manifest and matches its sha256`),
        direction,
      ).toMatchObject({ ok: true });
      expect(
        replication.checks.find((c) => c.measure === `${direction}: rclone copied every object`),
        direction,
      ).toMatchObject({ ok: true });
      expect(replication.details.directions[direction].samples.ours[0].copied, direction).toBe(2);
      expect(replication.details.directions[direction].samples.rclone[0].count, direction).toBe(4);
    }
    expect(replication.checks.find((c) => c.measure.startsWith('replicate there and back'))).toBeDefined();
    expect(replication.details.snapshots).toHaveLength(2);
    // Sizes mixed: the second snapshot is of the database cut down to a fifth of its runs.
    const [big, small] = replication.details.snapshots as Array<{ artifactBytes: number }>;
    expect(small!.artifactBytes).toBeLessThan(big!.artifactBytes * 0.4);
    expect(report.cases[2]!.checks[1]).toMatchObject({ ok: true });

    // Exit status and failure lines follow the checks: one line per missed target, saying by how much.
    const missed = report.cases.flatMap((c) => c.checks.filter((k) => !k.ok).map((k) => `MISSED ${c.name}: ${k.measure}: ${k.miss}`));
    expect(report.failures).toEqual(missed);
    expect(r.status).toBe(missed.length ? 1 : 0);
    expect(report.ok).toBe(missed.length === 0);
  });

  it('runs the opt-in format2 case only when named: 12 snapshots of each format, then restores', { timeout: 120_000 }, () => {
    const r = run(['--size', '2MB', '--samples', '1', '--case', 'format2', '--json']);
    const report = JSON.parse(r.stdout) as {
      failures: string[];
      cases: Array<{ name: string; checks: Array<{ measure: string; value: number; ok: boolean }>; details: Record<string, any> }>;
    };
    expect(report.cases.map((c) => c.name)).toEqual(['format2']);
    const format2 = report.cases[0]!;
    const check = (measure: string) => format2.checks.find((c) => c.measure.startsWith(measure))!;
    expect(check('v2 and v1 snapshots of each state have the same row counts')).toMatchObject({ ok: true });
    expect(check('restores are the newest snapshot')).toMatchObject({ ok: true });
    const { v1, v2 } = format2.details.snapshots as Record<string, Array<{ addedBytes: number; tables: { runs: number } }>>;
    expect(v1).toHaveLength(12);
    expect(v2).toHaveLength(12);
    // 15 runs are published between two snapshots, and a later v2 snapshot adds far less than its first.
    expect(v2[11]!.tables.runs - v2[0]!.tables.runs).toBe(11 * 15);
    for (const later of v2.slice(1)) expect(later.addedBytes).toBeLessThan(v2[0]!.addedBytes / 3);
    for (const later of v1.slice(1)) expect(later.addedBytes).toBeGreaterThan(v1[0]!.addedBytes * 0.9);
    for (const who of ['format-2 agent', 'client']) expect(check(`${who} process peak RSS`).value, who).toBeGreaterThan(30e6);
    // Each format has an agent process of its own, started with production's Node options.
    expect(check("agents ran with production's Node options")).toMatchObject({ ok: true });
    const agents = format2.details.memory.agents as Record<string, { pid: number; command: string; peakHwmBytes: number }>;
    expect(agents.v1!.pid).not.toBe(agents.v2!.pid);
    for (const agent of [agents.v1!, agents.v2!]) expect(agent.command).toContain(`${NODE_FLAGS.join(' ')} `);
    expect(r.status).toBe(report.failures.length ? 1 : 0);
  });

  it('refuses bad options with status 2 and says which', () => {
    const r = run(['--size', '10']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--size "10" is below the smallest useful size');
    expect(r.stdout).toBe('');
  });
});
