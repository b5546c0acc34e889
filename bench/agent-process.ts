/**
 * The snapshot agent as its own process, started the way the systemd unit starts it on the VM
 * (`tcab-backup agent` with TCAB_AGENT_* settings), on loopback, with an HMAC key made for this run. Its
 * memory, and that of the programs it starts (the zstd command), is watched for as long as it runs.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { TcabError } from '../src/errors.js';
import { redact, registerSecret } from '../src/log.js';
import { ProcessTreeWatcher, type TreePeaks } from './memory.js';
import { cliArgs, cliPath, killOnExit } from './processes.js';

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 30_000;

export interface AgentProcess {
  url: string;
  keyId: string;
  key: string;
  pid: number;
  /** What the agent said it can make, best first (from its agent.started log line). */
  compressions: string[];
  /** Where its zstd comes from: "zlib", "command" or "unavailable". */
  zstdSource: string;
  /** Memory of the agent and its children so far. */
  memory(): TreePeaks;
  /** SIGTERM (the agent finishes a snapshot in progress and empties staging), then the peaks. */
  stop(): Promise<TreePeaks>;
}

export async function startAgentProcess(options: { dbPath: string; stagingDir: string }): Promise<AgentProcess> {
  const keyId = 'bench';
  const key = randomBytes(32).toString('hex');
  registerSecret(key);
  await mkdir(options.stagingDir, { recursive: true, mode: 0o700 });
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    TCAB_AGENT_DB: options.dbPath,
    TCAB_AGENT_STAGING: options.stagingDir,
    TCAB_AGENT_LISTEN: '127.0.0.1:0',
    TCAB_AGENT_KEYS: `${keyId}=${key}`,
    TCAB_LOG_LEVEL: 'info',
  };
  const child = spawn(process.execPath, cliArgs('agent'), { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const forget = killOnExit(child);
  if (child.pid === undefined) {
    forget();
    throw new TcabError('Cannot start the snapshot agent process', { hint: `that ${process.execPath} can run ${cliPath()}` });
  }
  const pid = child.pid;
  const watcher = new ProcessTreeWatcher(pid);
  let log = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );

  const started = await new Promise<{ url: string; compressions: string[]; zstd: string }>((resolve, reject) => {
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(
        new TcabError(`The snapshot agent process ${why}`, { hint: `its log:\n${redact(log.slice(-2000))}`, code: 'BENCH_AGENT_START' }),
      );
    };
    const timer = setTimeout(() => fail(`did not report agent.started within ${START_TIMEOUT_MS / 1000} s`), START_TIMEOUT_MS);
    let pending = '';
    child.stderr!.setEncoding('utf8').on('data', (text: string) => {
      log = (log + text).slice(-20_000);
      pending += text;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        let record: { event?: string; url?: string; compressions?: string[]; zstd?: string };
        try {
          record = JSON.parse(line) as typeof record;
        } catch {
          continue;
        }
        if (record.event === 'agent.started' && record.url) {
          clearTimeout(timer);
          resolve({ url: record.url, compressions: record.compressions ?? [], zstd: record.zstd ?? 'unknown' });
        }
      }
    });
    void exited.then(({ code, signal }) => fail(`exited (${signal ?? `status ${code}`}) before it was ready`));
  });

  let stopping: Promise<TreePeaks> | undefined;
  return {
    url: started.url,
    keyId,
    key,
    pid,
    compressions: started.compressions,
    zstdSource: started.zstd,
    memory: () => {
      watcher.poll();
      return watcher.result();
    },
    stop: () => {
      stopping ??= (async () => {
        watcher.poll();
        child.kill('SIGTERM');
        const force = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        const { code, signal } = await exited;
        clearTimeout(force);
        forget();
        const peaks = watcher.stop();
        if (code !== 0) {
          throw new TcabError(`The snapshot agent process ended badly on SIGTERM (${signal ?? `status ${code}`})`, {
            hint: `its log:\n${redact(log.slice(-2000))}`,
            code: 'BENCH_AGENT_STOP',
          });
        }
        return peaks;
      })();
      return stopping;
    },
  };
}
