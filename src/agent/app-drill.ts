/**
 * The application drill (docs/agent-protocol.md, "POST /v1/drills"): a snapshot's artifact arrives in the request
 * body, is checked and restored into a scratch file in staging, and the configured backend command is started
 * on that file, asked for /healthz and /runs, and stopped. The live database is never involved: the backend
 * only ever sees the scratch file's URL.
 *
 * The backend runs in its own process group, so a wrapper script and whatever it starts are stopped together
 * (SIGTERM to the group, SIGKILL after the grace period). A request that goes away, or the agent stopping,
 * stops the drill at whatever step it is in and removes the scratch files.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { createServer } from 'node:net';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import { Digest } from './snapshotter.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { decompressor } from '../util/streams.js';
import { ZstdFrameSplitter } from '../util/zstd-frames.js';
import type { CompressionSupport } from './compression.js';
import type { Compression } from './protocol.js';
import { runSqliteTask } from './sqlite-worker.js';
import type { FreeBytes, Staging } from './staging.js';

/** Free staging space a drill needs, as a multiple of the snapshot's size: the copy plus what the backend may add (WAL, migrations). */
export const DRILL_HEADROOM = 1.2;
/** Lines of the backend's output kept for the answer when a step fails. */
const LOG_LINES = 40;
/** Bytes of a /runs answer read at most: enough to count runs, bounded so a huge page cannot fill the agent's memory. */
const RUNS_ANSWER_LIMIT = 64 * 1024 * 1024;

export interface AppDrillSettings {
  /** The backend command, split into words (splitCommand); unset: the endpoint answers 501. */
  command: string[] | undefined;
  healthTimeoutMs: number;
  stopGraceMs: number;
}

/**
 * What the signed query says of the body. Format 1: the body is the snapshot's artifact, named by its sha256.
 * Format 2: the body is the snapshot's chunks as stored (zstd frames) in chunk-list order, one zstd stream;
 * its sha256 is not known before it is sent, so the request names the chunk list's sha256 instead (the
 * signature's body hash), and the body's length (artifactBytes, the sum of the stored chunk sizes) and the
 * decompressed file's sha256 are what the agent checks.
 */
export type DrillRequest = {
  snapshotId: string | undefined;
  artifactBytes: number;
  compression: Compression;
  snapshotSha256: string;
  snapshotBytes: number;
} & ({ format: 1; artifactSha256: string } | { format: 2; chunkListSha256: string });

export interface DrillCheck {
  name: 'receive' | 'snapshot-sha256' | 'integrity' | 'start' | 'healthz' | 'runs' | 'stop';
  ok: boolean;
  ms: number;
  detail: string;
}

export interface DrillResult {
  passed: boolean;
  snapshotId: string | null;
  /** The first step that failed, or null. */
  failedStep: DrillCheck['name'] | null;
  checks: DrillCheck[];
  runs: { inFile: number | null; served: number | null; comparison: string | null };
  /** From the first byte received to the backend stopped and the scratch files gone. */
  totalMs: number;
  /** The backend's last output lines; only when a step after its start failed. */
  backendLog?: string[];
}

export class DrillBusyError extends Error {
  constructor() {
    super('another application drill is running');
    this.name = 'DrillBusyError';
  }
}

export class DrillNotConfiguredError extends Error {
  constructor() {
    super('no backend command is configured');
    this.name = 'DrillNotConfiguredError';
  }
}

export class DrillSpaceError extends Error {
  readonly freeBytes: number;
  readonly neededBytes: number;
  constructor(freeBytes: number, neededBytes: number) {
    super(
      `staging has ${freeBytes} bytes free, restoring this snapshot for a drill needs about ${neededBytes} (snapshot size x ${DRILL_HEADROOM})`,
    );
    this.name = 'DrillSpaceError';
    this.freeBytes = freeBytes;
    this.neededBytes = neededBytes;
  }
}

/** The artifact that arrived is not the one the request named: nothing was started. */
export class DrillRefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DrillRefusedError';
  }
}

export interface AppDrillerOptions {
  staging: Staging;
  freeBytes: FreeBytes;
  compressions: CompressionSupport;
  settings: AppDrillSettings;
  logger: Logger;
}

export class AppDriller {
  private readonly options: AppDrillerOptions;
  private running: Promise<unknown> | undefined;
  private readonly stopAll = new AbortController();

  constructor(options: AppDrillerOptions) {
    this.options = options;
  }

  get configured(): boolean {
    return this.options.settings.command !== undefined;
  }

  /** Resolves when no drill is running (its backend stopped and its scratch files removed). */
  async idle(): Promise<void> {
    await this.running?.catch(() => undefined);
  }

  /** Stops a running drill (the agent is stopping) and waits until it has cleaned up. */
  async close(): Promise<void> {
    this.stopAll.abort(new Error('the agent is stopping'));
    await this.idle();
  }

  /**
   * Claims the one drill slot and checks the space, before a byte of the body is read. Throws DrillBusyError
   * synchronously, so two requests arriving together can never both start one.
   */
  async run(body: IncomingMessage, req: DrillRequest, signal: AbortSignal, accept: () => void = () => undefined): Promise<DrillResult> {
    if (!this.options.settings.command) throw new DrillNotConfiguredError();
    if (this.running) throw new DrillBusyError();
    const work = this.drill(body, req, AbortSignal.any([signal, this.stopAll.signal]), accept);
    this.running = work;
    try {
      return await work;
    } finally {
      this.running = undefined;
    }
  }

  /** `accept` is called once every refusal is past, just before the body is read (the server's 100 Continue). */
  private async drill(body: IncomingMessage, req: DrillRequest, signal: AbortSignal, accept: () => void): Promise<DrillResult> {
    const { staging, logger, settings } = this.options;
    const needed = Math.ceil(req.snapshotBytes * DRILL_HEADROOM);
    const free = await this.options.freeBytes(staging.dir);
    if (free < needed) throw new DrillSpaceError(free, needed);
    accept();

    const t0 = performance.now();
    const scratch = staging.newDrillPath();
    const checks: DrillCheck[] = [];
    const runs: DrillResult['runs'] = { inFile: null, served: null, comparison: null };
    const log = logger.child({ snapshot: req.snapshotId ?? 'unnamed' });
    let backend: Backend | undefined;
    const finish = (failed?: DrillCheck['name']): DrillResult => ({
      passed: failed === undefined,
      snapshotId: req.snapshotId ?? null,
      failedStep: failed ?? null,
      checks,
      runs,
      totalMs: Math.round(performance.now() - t0),
      ...(failed && backend ? { backendLog: backend.lastLines() } : {}),
    });
    const step = async <T>(name: DrillCheck['name'], fn: () => Promise<{ ok: boolean; detail: string; value?: T }>) => {
      const s0 = performance.now();
      const r = await fn();
      checks.push({ name, ok: r.ok, ms: Math.round(performance.now() - s0), detail: r.detail });
      if (!r.ok) log.warn('drill.check_failed', { step: name, detail: r.detail });
      return r;
    };
    log.info('drill.started', { format: req.format, artifactBytes: req.artifactBytes, compression: req.compression });
    try {
      // 1. Receive: artifact sha256 as it arrives, decompressed straight into the scratch file.
      let received!: { artifact: Digest; plain: Digest };
      const recv = await step('receive', async () => {
        received = await this.receive(body, req, scratch, signal);
        const got = received.artifact.result();
        if (req.format === 2) {
          // No sha256 of the body is named: its length here, and the restored file's sha256 in the next step.
          if (got.bytes !== req.artifactBytes) {
            throw new DrillRefusedError(
              `the chunks received are ${got.bytes} bytes, not the ${req.artifactBytes} named: they were changed or cut on the way`,
            );
          }
          return { ok: true, detail: `${got.bytes} bytes of chunks, as named; the restored file's sha256 is checked next` };
        }
        if (got.bytes !== req.artifactBytes || got.sha256 !== req.artifactSha256) {
          throw new DrillRefusedError(
            `the artifact received (${got.bytes} bytes, sha256 ${got.sha256}) is not the one named (${req.artifactBytes} bytes, sha256 ${req.artifactSha256}): it was changed or cut on the way`,
          );
        }
        return { ok: true, detail: `${got.bytes} bytes, sha256 matches` };
      });
      if (!recv.ok) return finish('receive');
      const plain = received.plain.result();
      const sha = await step('snapshot-sha256', async () =>
        plain.sha256 === req.snapshotSha256 && plain.bytes === req.snapshotBytes
          ? { ok: true, detail: `${plain.bytes} bytes, sha256 matches` }
          : {
              ok: false,
              detail: `the restored file (${plain.bytes} bytes, sha256 ${plain.sha256}) is not the snapshot the manifest names (${req.snapshotBytes} bytes, sha256 ${req.snapshotSha256})`,
            },
      );
      if (!sha.ok) return finish('snapshot-sha256');
      signal.throwIfAborted();
      const integrity = await step('integrity', async () => {
        const facts = await runSqliteTask({ kind: 'check', dbPath: scratch });
        runs.inFile = facts.tables.runs ?? null;
        return facts.integrity === 'ok'
          ? {
              ok: true,
              detail: `integrity_check ok; ${Object.entries(facts.tables)
                .map(([t, n]) => `${t}: ${n}`)
                .join(', ')}`,
            }
          : { ok: false, detail: `integrity_check: ${facts.integrity}` };
      });
      if (!integrity.ok) return finish('integrity');
      signal.throwIfAborted();

      // 2. The backend on the scratch copy.
      const port = await freeLoopbackPort();
      const databaseUrl = `sqlite://${scratch}`;
      const started = await step('start', async () => {
        backend = startBackend(settings.command!, databaseUrl, port);
        await backend.spawned;
        log.info('drill.backend_started', { pid: backend.pid, port });
        return { ok: true, detail: `${settings.command![0]} started (pid ${backend.pid}) on 127.0.0.1:${port}` };
      });
      if (!started.ok) return finish('start');
      const healthy = await step('healthz', () => waitHealthy(backend!, port, settings.healthTimeoutMs, signal));
      if (!healthy.ok) return finish('healthz');
      const served = await step('runs', async () => {
        const answer = await checkRuns(port, runs.inFile, signal);
        runs.served = answer.served;
        runs.comparison = answer.comparison;
        return answer;
      });
      if (!served.ok) return finish('runs');
      const stopped = await step('stop', async () => {
        const how = await backend!.stop(settings.stopGraceMs);
        return { ok: true, detail: how };
      });
      if (!stopped.ok) return finish('stop');
      const result = finish();
      log.info('drill.passed', { runsInFile: runs.inFile, runsServed: runs.served, totalMs: result.totalMs });
      return result;
    } catch (err) {
      if (err instanceof DrillRefusedError) throw err;
      if (signal.aborted) {
        log.warn('drill.cancelled', { reason: errorMessage(signal.reason) });
        throw signal.reason;
      }
      const failed = checks.length === 0 ? 'receive' : undefined;
      if (failed) throw err;
      // A step threw rather than failed: record it as that step's failure.
      const name = nextStep(checks);
      checks.push({ name, ok: false, ms: 0, detail: errorMessage(err) });
      log.warn('drill.check_failed', { step: name, detail: errorMessage(err) });
      return finish(name);
    } finally {
      if (backend) await backend.stop(settings.stopGraceMs).catch(() => undefined);
      for (const suffix of ['', '-journal', '-wal', '-shm']) await rm(scratch + suffix, { force: true });
    }
  }

  private async receive(body: IncomingMessage, req: DrillRequest, scratch: string, signal: AbortSignal) {
    const artifact = new Digest();
    const plain = new Digest();
    // The request is piped in rather than made part of the pipeline: a failure downstream must not destroy it,
    // or the connection would be reset under the refusal the client is to read. Its rest is drained instead.
    const first = artifact.tap();
    const forward = (err: Error) => first.destroy(err);
    body.once('error', forward);
    body.pipe(first);
    const runtimeZstd = this.options.compressions.zstdSource === 'zlib';
    const inflate = decompressor(req.compression, { runtimeZstd, zstdCommand: this.options.compressions.zstdCommand });
    // Node's zstd decompressor drops every frame after the first within one write: a format-2 body is many
    // frames (and a format-1 artifact may be), so the writes are cut at frame boundaries. The program needs no help.
    const split = req.compression === 'zstd' && runtimeZstd ? [new ZstdFrameSplitter()] : [];
    const stages = [first, ...split, inflate, plain.tap(), createWriteStream(scratch, { flags: 'wx', mode: 0o600 })] as const;
    try {
      await pipeline(stages, { signal });
      body.off('error', forward);
    } catch (err) {
      body.off('error', forward);
      body.unpipe(first);
      if (!body.complete && !body.destroyed) body.resume();
      if (signal.aborted) throw err;
      // A body whose bytes were changed may not even decompress: that is the same refusal as a wrong sha256.
      const got = artifact.result();
      if (req.format === 2) {
        // The frames are checked as they decompress (each carries its checksum): bytes that fail were changed.
        if (!isDiskError(err)) {
          throw new DrillRefusedError(
            `the chunks received (${got.bytes} bytes so far) could not be restored (${errorMessage(err)}): they were changed or cut on the way`,
          );
        }
      } else if (got.sha256 !== req.artifactSha256) {
        throw new DrillRefusedError(
          `the artifact received (${got.bytes} bytes so far) could not be restored (${errorMessage(err)}) and its sha256 is not the one named: it was changed or cut on the way`,
        );
      }
      throw err;
    }
    return { artifact, plain };
  }
}

/** An error of the scratch file's disk (the agent's problem, 500), as opposed to bytes that do not decompress. */
function isDiskError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return typeof code === 'string' && ['ENOSPC', 'EDQUOT', 'EIO', 'EROFS', 'EACCES', 'EPERM', 'EEXIST', 'EMFILE'].includes(code);
}

function nextStep(checks: DrillCheck[]): DrillCheck['name'] {
  const order: DrillCheck['name'][] = ['receive', 'snapshot-sha256', 'integrity', 'start', 'healthz', 'runs', 'stop'];
  return order[checks.length] ?? 'stop';
}

/** A port the kernel says is free on 127.0.0.1 right now (the backend binds it a moment later). */
function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

interface Backend {
  pid: number | undefined;
  /** Resolves once the process runs; rejects when it could not be started (no such file, not executable). */
  spawned: Promise<void>;
  /** Settles when the process has exited; the value says how. */
  exited: Promise<string>;
  hasExited(): boolean;
  lastLines(): string[];
  /** SIGTERM to its process group, SIGKILL after `graceMs`; resolves once it has exited. */
  stop(graceMs: number): Promise<string>;
}

// The agent's own settings (its HMAC keys above all) are not the backend's business.
function backendEnv(databaseUrl: string, port: number): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TCAB_AGENT_')) env[k] = v;
  return { ...env, TCAB_BACKEND_DATABASE_URL: databaseUrl, PORT: String(port) };
}

function startBackend(command: string[], databaseUrl: string, port: number): Backend {
  const argv = command.map((w) => w.replaceAll('{database_url}', databaseUrl).replaceAll('{port}', String(port)));
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: backendEnv(databaseUrl, port),
    detached: true,
  });
  const lines: string[] = [];
  let partial = '';
  const collect = (chunk: Buffer) => {
    const text = partial + chunk.toString('utf8');
    const parts = text.split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      lines.push(line.slice(0, 2000));
      if (lines.length > LOG_LINES) lines.shift();
    }
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  let exitedWith: string | undefined;
  const exited = new Promise<string>((resolve) => {
    child.once('close', (code, signal) => {
      exitedWith = signal ? `stopped by ${signal}` : `exited with status ${code}`;
      resolve(exitedWith);
    });
  });
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', (err) => {
      exitedWith ??= `could not be started (${(err as NodeJS.ErrnoException).code ?? err.message})`;
      reject(
        new Error(
          `the backend command ${argv[0]} could not be started (${(err as NodeJS.ErrnoException).code ?? err.message}): check TCAB_AGENT_DRILL_BACKEND_COMMAND and that the agent's user may run it`,
        ),
      );
    });
  });
  spawned.catch(() => undefined);
  const signalGroup = (sig: NodeJS.Signals) => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, sig);
    } catch {
      // The group is gone already.
    }
  };
  let stopping: Promise<string> | undefined;
  return {
    get pid() {
      return child.pid;
    },
    spawned,
    exited,
    hasExited: () => exitedWith !== undefined,
    lastLines: () => (partial ? [...lines, partial] : [...lines]).slice(-LOG_LINES),
    stop: (graceMs) => {
      stopping ??= (async () => {
        if (child.pid === undefined) return exitedWith ?? 'never started';
        if (exitedWith !== undefined) {
          // The main process is gone; whatever it left in its group is not to outlive the drill.
          signalGroup('SIGKILL');
          return exitedWith;
        }
        signalGroup('SIGTERM');
        let timer: NodeJS.Timeout | undefined;
        const killed = new Promise<string>((resolve) => {
          timer = setTimeout(() => {
            signalGroup('SIGKILL');
            resolve('did not stop within the grace period after SIGTERM: killed');
          }, graceMs);
        });
        const how = await Promise.race([exited.then((h) => `stopped after SIGTERM (${h})`), killed]);
        clearTimeout(timer);
        await exited;
        signalGroup('SIGKILL');
        return how;
      })();
      return stopping;
    },
  };
}

function get(
  port: number,
  path: string,
  signal: AbortSignal,
  limit: number,
): Promise<{ status: number; type: string; body: string; truncated: boolean }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      path,
      method: 'GET',
      agent: false,
      signal,
      headers: { Accept: 'application/json' },
    });
    req.on('response', (res) => {
      let body = '';
      let size = 0;
      let truncated = false;
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        size += chunk.length;
        if (size > limit) {
          truncated = true;
          res.destroy();
          resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body, truncated });
          return;
        }
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body, truncated }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Asks /healthz until it answers 200, the process exits, or the timeout passes. */
async function waitHealthy(
  backend: Backend,
  port: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<{ ok: boolean; detail: string }> {
  const deadline = performance.now() + timeoutMs;
  let last = 'no answer yet';
  let pause = 50;
  while (performance.now() < deadline) {
    signal.throwIfAborted();
    if (backend.hasExited())
      return { ok: false, detail: `the backend ${await backend.exited} before /healthz answered 200 (last: ${last})` };
    const left = deadline - performance.now();
    const attempt = AbortSignal.any([signal, AbortSignal.timeout(Math.max(1, Math.ceil(Math.min(left, 5_000))))]);
    try {
      const answer = await get(port, '/healthz', attempt, 64 * 1024);
      if (answer.status === 200) return { ok: true, detail: 'GET /healthz answered 200' };
      last = `status ${answer.status}`;
    } catch (err) {
      signal.throwIfAborted();
      last = (err as NodeJS.ErrnoException).code ?? errorMessage(err);
    }
    // Waits for the process to exit or for the next attempt, whichever comes first.
    const wait = Math.min(pause, deadline - performance.now());
    if (wait > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        backend.exited,
        new Promise<void>((r) => {
          timer = setTimeout(r, wait);
        }),
      ]);
      clearTimeout(timer);
    }
    pause = Math.min(pause * 2, 1_000);
  }
  return {
    ok: false,
    detail: `GET /healthz did not answer 200 within ${timeoutMs} ms (last: ${last}): check TCAB_AGENT_DRILL_HEALTH_TIMEOUT and the backend's log lines`,
  };
}

/**
 * GET /runs and the comparison with the restored file. What the answer allows: a JSON array of runs, or an
 * object holding one under `runs` (or `items`/`data`). When the answer states a total (`total`, `count`,
 * `totalCount`), it must equal the file's runs. Without a total, a list that says more pages follow (`next`,
 * `nextCursor`, `next_cursor`, `hasMore`, `has_more`) must hold at least one run and no more than the file;
 * a list that does not is the whole set and must hold exactly the file's runs.
 */
async function checkRuns(
  port: number,
  inFile: number | null,
  signal: AbortSignal,
): Promise<{ ok: boolean; detail: string; served: number | null; comparison: string | null }> {
  const answer = await get(port, '/runs', signal, RUNS_ANSWER_LIMIT);
  if (answer.status !== 200)
    return { ok: false, detail: `GET /runs answered ${answer.status}, expected 200`, served: null, comparison: null };
  if (answer.truncated)
    return {
      ok: false,
      detail: `GET /runs answered more than ${RUNS_ANSWER_LIMIT} bytes: too large to count`,
      served: null,
      comparison: null,
    };
  let json: unknown;
  try {
    json = JSON.parse(answer.body);
  } catch {
    return { ok: false, detail: `GET /runs did not answer JSON (Content-Type ${answer.type || 'none'})`, served: null, comparison: null };
  }
  const obj = json !== null && typeof json === 'object' && !Array.isArray(json) ? (json as Record<string, unknown>) : undefined;
  const list = Array.isArray(json) ? json : [obj?.runs, obj?.items, obj?.data].find(Array.isArray);
  if (!list)
    return {
      ok: false,
      detail: 'GET /runs answered JSON without a list of runs (an array, or one under runs, items or data)',
      served: null,
      comparison: null,
    };
  const served = list.length;
  const total = [obj?.total, obj?.count, obj?.totalCount].find((v): v is number => typeof v === 'number');
  const paged =
    obj !== undefined &&
    ['next', 'nextCursor', 'next_cursor', 'hasMore', 'has_more'].some((k) => obj[k] !== undefined && obj[k] !== null && obj[k] !== false);
  if (inFile === null) {
    return {
      ok: true,
      detail: `GET /runs answered 200 with ${served} runs (the restored file has no runs table to compare with)`,
      served,
      comparison: 'none: no runs table',
    };
  }
  if (inFile > 0 && served === 0)
    return { ok: false, detail: `GET /runs served no runs, but the restored file holds ${inFile}`, served, comparison: 'non-empty' };
  if (total !== undefined) {
    return total === inFile
      ? {
          ok: true,
          detail: `GET /runs served ${served} runs and a total of ${total}, as in the restored file`,
          served,
          comparison: 'total',
        }
      : {
          ok: false,
          detail: `GET /runs states a total of ${total} runs, but the restored file holds ${inFile}`,
          served,
          comparison: 'total',
        };
  }
  if (paged) {
    return served <= inFile
      ? {
          ok: true,
          detail: `GET /runs served a first page of ${served} runs (the restored file holds ${inFile})`,
          served,
          comparison: 'first page',
        }
      : {
          ok: false,
          detail: `GET /runs served ${served} runs on one page, but the restored file holds only ${inFile}`,
          served,
          comparison: 'first page',
        };
  }
  return served === inFile
    ? { ok: true, detail: `GET /runs served ${served} runs, as many as the restored file holds`, served, comparison: 'all' }
    : { ok: false, detail: `GET /runs served ${served} runs, but the restored file holds ${inFile}`, served, comparison: 'all' };
}
