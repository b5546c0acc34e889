/**
 * What every function shares: settings validated once per process, a logger that writes JSON lines to the
 * invocation's log (Application Insights traces), and problem+json responses.
 */
import type { HttpResponseInit, InvocationContext } from '@azure/functions';
import { loadBackupConfig, loadJobTimeoutMs, type BackupConfig, type Env } from '../config.js';
import { ConfigError, TcabError } from '../errors.js';
import { createLogger, redact, type EventObserver, type Level, type Logger } from '../log.js';
import { formatDuration } from '../util/duration.js';
import { LastStep } from '../util/last-step.js';

let cached: { config?: BackupConfig; error?: unknown } | undefined;

/** The Function App's settings, validated on first use and then reused; an invalid setting fails every invocation. */
export function backupConfig(env: NodeJS.ProcessEnv = process.env): BackupConfig {
  cached ??= (() => {
    try {
      return { config: loadBackupConfig(env) };
    } catch (error) {
      return { error };
    }
  })();
  if (cached.error) throw cached.error;
  return cached.config!;
}

/** Forget the cached settings (tests change the environment between cases). */
export function resetBackupConfig(): void {
  cached = undefined;
}

export function invocationLogger(context: InvocationContext, onEvent?: EventObserver): Logger {
  const write: Record<Level, (line: string) => void> = {
    debug: (l) => context.debug(l),
    info: (l) => context.info(l),
    warn: (l) => context.warn(l),
    error: (l) => context.error(l),
  };
  return createLogger({
    sink: (level, line) => write[level](line),
    fields: { invocationId: context.invocationId, function: context.functionName },
    ...(onEvent ? { onEvent } : {}),
  });
}

/** How long a job stopped at its timeout gets to settle before its invocation fails anyway. */
export const JOB_SETTLE_GRACE_MS = 60_000;

/** host.json's functionTimeout (test/functions/job-timeout.test.ts checks the two agree). */
export const FUNCTION_TIMEOUT_MS = 30 * 60_000;

/**
 * TCAB_BACKUP_JOB_TIMEOUT, read at every invocation; an invalid value fails the invocation naming it, and so
 * does one that leaves the stopped job less than JOB_SETTLE_GRACE_MS before the host's functionTimeout: the
 * host would then end the invocation first, without a word of what was stuck.
 */
export function jobTimeoutMs(env: Env = process.env): number {
  const ms = loadJobTimeoutMs(env);
  if (ms + JOB_SETTLE_GRACE_MS > FUNCTION_TIMEOUT_MS) {
    throw new ConfigError([
      `TCAB_BACKUP_JOB_TIMEOUT: ${formatDuration(ms)} leaves less than ${formatDuration(JOB_SETTLE_GRACE_MS)} (the time a stopped job is given to settle) before the host's functionTimeout of ${formatDuration(FUNCTION_TIMEOUT_MS)} in host.json; set ${formatDuration(FUNCTION_TIMEOUT_MS - JOB_SETTLE_GRACE_MS)} or less (the default is 25m)`,
    ]);
  }
  return ms;
}

export class JobTimeoutError extends TcabError {
  constructor(job: string, timeoutMs: number, where: string) {
    super(
      `The ${job} job did not finish within ${formatDuration(timeoutMs)} (TCAB_BACKUP_JOB_TIMEOUT): it was stopped ${where}, so that this invocation fails now instead of being cut off by the host`,
      {
        code: 'JOB_TIMEOUT',
        hint: 'the agent or target named in that step (reachability, throttling, a request that is never answered); a job that needs longer can have it with TCAB_BACKUP_JOB_TIMEOUT, kept below functionTimeout in host.json',
      },
    );
    this.name = 'JobTimeoutError';
  }
}

export interface Invocation {
  logger: Logger;
  /**
   * Runs a job with a signal that aborts at TCAB_BACKUP_JOB_TIMEOUT. At that moment the invocation fails with
   * JobTimeoutError, naming the job and its last logged step, even should some wait of the job not heed the
   * signal: the host's functionTimeout would end it anyway, but without a word of what was stuck.
   */
  bounded<T>(job: string, run: (signal: AbortSignal) => Promise<T>): Promise<T>;
}

export function invocation(context: InvocationContext): Invocation {
  const step = new LastStep();
  const logger = invocationLogger(context, step.observe);
  return {
    logger,
    async bounded(job, run) {
      const timeoutMs = jobTimeoutMs();
      const controller = new AbortController();
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          const err = new JobTimeoutError(job, timeoutMs, step.describe());
          logger.error('job.timed_out', { job, timeoutMs, error: err.message });
          reject(err);
          controller.abort(err);
        }, timeoutMs);
      });
      const running = Promise.resolve().then(() => run(controller.signal));
      try {
        return await Promise.race([running, deadline]);
      } catch (e) {
        if (controller.signal.aborted) {
          // The aborted job closes its streams and removes what it staged; the invocation (and a caller's
          // one-at-a-time flag) ends only after that, or after a bounded wait for a job that ignores the abort.
          const graceMs = Math.min(timeoutMs, JOB_SETTLE_GRACE_MS);
          let wait: NodeJS.Timeout | undefined;
          const settled = await Promise.race([
            running.then(
              () => true,
              () => true,
            ),
            new Promise<false>((resolve) => {
              wait = setTimeout(() => resolve(false), graceMs);
            }),
          ]);
          clearTimeout(wait);
          if (!settled)
            logger.error('job.not_settled', {
              job,
              graceMs,
              note: 'the stopped job did not settle; whatever it holds is released when the instance recycles',
            });
        }
        throw e;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

export function problem(status: number, title: string, detail: string, extra: Record<string, unknown> = {}): HttpResponseInit {
  return {
    status,
    headers: { 'Content-Type': 'application/problem+json', 'Cache-Control': 'no-store' },
    body: JSON.stringify({ type: 'about:blank', title, status, detail: redact(detail), ...extra }),
  };
}

export function json(status: number, body: unknown): HttpResponseInit {
  return { status, headers: { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' }, body: JSON.stringify(body) };
}
