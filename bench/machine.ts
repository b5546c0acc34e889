/** The machine a run was measured on, printed with the figures so they are never quoted without it. */
import { spawnSync } from 'node:child_process';
import { cpus, freemem, loadavg, release, totalmem } from 'node:os';

export interface MachineFacts {
  cpu: string;
  cores: number;
  memoryBytes: number;
  freeMemoryBytes: number;
  kernel: string;
  node: string;
  sqlite3Cli: string;
  zstd: string;
  /** 1, 5 and 15 minute load averages when the run started: other work on a shared machine skews times. */
  loadAverage: number[];
}

function firstLine(command: string, args: string[]): string {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0 ? (r.stdout || r.stderr).trim().split('\n')[0]! : 'not installed';
}

export function describeMachine(): MachineFacts {
  const cpu = cpus();
  return {
    cpu: cpu[0]?.model.trim() ?? 'unknown',
    cores: cpu.length,
    memoryBytes: totalmem(),
    freeMemoryBytes: freemem(),
    kernel: release(),
    node: process.version,
    sqlite3Cli: firstLine('sqlite3', ['--version']).split(' ')[0]!,
    zstd: /v\d+\.\d+\.\d+/.exec(firstLine('zstd', ['--version']))?.[0] ?? 'not installed',
    loadAverage: loadavg().map((l) => Math.round(l * 100) / 100),
  };
}

export function machineLine(m: MachineFacts): string {
  return (
    `${m.cores} x ${m.cpu}, ${(m.memoryBytes / 1e9).toFixed(1)} GB RAM (${(m.freeMemoryBytes / 1e9).toFixed(1)} GB free), Linux ${m.kernel}, ` +
    `Node ${m.node}, sqlite3 CLI ${m.sqlite3Cli}, zstd CLI ${m.zstd}, load ${m.loadAverage.join(' ')}`
  );
}
