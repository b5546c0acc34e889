#!/usr/bin/env -S node --max-semi-space-size=4
/**
 * tcab-backup: the operators' command line. It runs the same jobs as the functions, with the same
 * configuration (environment variables). `--json` outputs are a stable interface.
 * Exit status: 0 success, 1 the job failed (or stalled before it finished), 2 usage or configuration error.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ConfigError, TcabError, errorMessage } from '../errors.js';
import { createLogger, redact, type EventObserver, type Logger } from '../log.js';
import { LastStep } from '../util/last-step.js';
import { UsageError, type Command, type CommandContext } from './command.js';

/**
 * The commands by name, each a file of ./commands/ imported only when that command runs: `--help`, a usage
 * error and `list` never load the SDKs, the agent or SQLite that another command needs.
 */
const REGISTRY: Record<string, () => Promise<Command>> = {
  agent: async () => (await import('./commands/agent.js')).agentCommand,
  snapshot: async () => (await import('./commands/snapshot.js')).snapshotCommand,
  list: async () => (await import('./commands/list.js')).listCommand,
  restore: async () => (await import('./commands/restore.js')).restoreCommand,
  retention: async () => (await import('./commands/retention-plan.js')).retentionCommand,
  verify: async () => (await import('./commands/verify.js')).verifyCommand,
  drill: async () => (await import('./commands/drill.js')).drillCommand,
  status: async () => (await import('./commands/status.js')).statusCommand,
  replicate: async () => (await import('./commands/replicate.js')).replicateCommand,
  prune: async () => (await import('./commands/prune.js')).pruneCommand,
  pg: async () => (await import('./commands/pg.js')).pgCommand,
};

/** The command table `main` runs from: each entry loads its file, then runs it. */
export const COMMANDS: Record<string, Command> = Object.fromEntries(
  Object.entries(REGISTRY).map(([name, load]): [string, Command] => [name, async (args, ctx) => (await load())(args, ctx)]),
);

export const USAGE = `Usage: tcab-backup <command> [options]

Commands:
  agent                                   run the snapshot agent (TCAB_AGENT_* settings)
  snapshot [--reason TEXT] [--pin] [--format 1|2] [--json]
                                          take a snapshot now and store it on every target
  list [--target NAME] [--json]           list the snapshots on each target
  restore (--snapshot ID | --at ISO-TIME | --latest) -o PATH [--target NAME] [--force] [--json]
                                          restore a snapshot to a verified SQLite file
  verify [--all] [--target NAME] [--json]
                                          re-read stored snapshots (a rotating share, or --all) and check sha256
  replicate [--dry-run] [--json]          copy snapshots that one target has and another lacks
  prune [--dry-run] [--force] [--json]    age snapshots out per each target's retention policy
  drill [--target NAME] [--app] [--json]  restore the newest snapshot of each target and measure RPO/RTO;
                                          --app also starts the backend on it through the agent
  status [--target NAME] [--json] [--html PATH]
                                          snapshot, drill and verify ages against thresholds
  retention plan                          apply a retention policy read as JSON on stdin (no safety rails)
  pg check [--json]                       check Postgres servers' backup settings against the policy
  pg drill [--force] [--json]             advance the Postgres point-in-time-restore drill by one step

Settings are environment variables; see the README's configuration reference.
Logs go to stderr as JSON lines (TCAB_LOG_LEVEL=debug|info|warn|error, default warn for the CLI).`;

type CliIo = { stdout: NodeJS.WritableStream; stderr: NodeJS.WriteStream; stdin: NodeJS.ReadableStream; env: NodeJS.ProcessEnv };

const PROCESS_IO: CliIo = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env };

export interface MainOptions {
  /** The command table; the real one unless a caller brings its own. */
  commands?: Record<string, Command>;
  /** Sees every event the command logs, at every level. */
  onEvent?: EventObserver;
}

export async function main(argv: string[], io: CliIo = PROCESS_IO, options: MainOptions = {}): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    io.stdout.write(USAGE + '\n');
    return name ? 0 : 2;
  }
  const logger: Logger = createLogger({
    level: (io.env.TCAB_LOG_LEVEL as 'debug') || (name === 'agent' ? 'info' : 'warn'),
    sink: (_l, line) => io.stderr.write(line + '\n'),
    ...(options.onEvent ? { onEvent: options.onEvent } : {}),
  });
  const ctx: CommandContext = { io, logger, env: io.env };
  const command = (options.commands ?? COMMANDS)[name];
  if (!command) {
    io.stderr.write(`tcab-backup: unknown command "${name}"\n\n${USAGE}\n`);
    return 2;
  }
  try {
    return await command(rest, ctx);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr.write(`tcab-backup ${name}: ${e.message}\n\n${USAGE}\n`);
      return 2;
    }
    if (e instanceof ConfigError) {
      io.stderr.write(`tcab-backup ${name}: ${redact(e.message)}\n`);
      return 2;
    }
    const message = e instanceof TcabError ? e.message : `unexpected error: ${errorMessage(e)}`;
    io.stderr.write(`tcab-backup ${name} failed: ${redact(message)}\n`);
    if (!(e instanceof TcabError) && io.env.TCAB_LOG_LEVEL === 'debug') io.stderr.write(redact(String((e as Error).stack)) + '\n');
    return 1;
  }
}

function isEntryPoint(): boolean {
  try {
    return realpathSync(process.argv[1] ?? '') === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

/**
 * Runs the CLI as this process: the exit status is the command's. A command still unfinished when the event
 * loop has nothing left to do is waiting for something that can never happen, and Node would then exit with
 * status 0, as if it had succeeded. It exits 1 instead, saying which command stalled and where.
 */
export function runAsProcess(argv: string[], options: Pick<MainOptions, 'commands'> = {}): void {
  const step = new LastStep();
  let settled = false;
  process.once('beforeExit', () => {
    if (settled) return;
    const name = argv[0] ?? '';
    const message =
      `tcab-backup ${name} stalled ${step.describe()}: it was waiting for something that can no longer happen, so it did not finish. ` +
      'Check: the targets and the agent it was using (tcab-backup list); run it again with TCAB_LOG_LEVEL=debug to see each step, and report the stall with that log';
    if (argv.includes('--json')) PROCESS_IO.stdout.write(JSON.stringify({ ok: false, error: redact(message) }, null, 2) + '\n');
    PROCESS_IO.stderr.write(redact(message) + '\n');
    process.exitCode = 1;
  });
  main(argv, PROCESS_IO, { ...options, onEvent: step.observe }).then(
    (code) => {
      settled = true;
      process.exitCode = code;
    },
    (e: unknown) => {
      settled = true;
      PROCESS_IO.stderr.write(`tcab-backup ${argv[0] ?? ''} failed: unexpected error: ${redact(errorMessage(e))}\n`);
      process.exitCode = 1;
    },
  );
}

if (isEntryPoint()) {
  runAsProcess(process.argv.slice(2));
}
