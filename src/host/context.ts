/**
 * What every function shares: settings validated once per process, a logger that writes JSON lines to the
 * invocation's log (Application Insights traces), and problem+json responses.
 */
import type { HttpResponseInit, InvocationContext } from '@azure/functions';
import { loadBackupConfig, type BackupConfig } from '../config.js';
import { createLogger, redact, type Level, type Logger } from '../log.js';

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

export function invocationLogger(context: InvocationContext): Logger {
  const write: Record<Level, (line: string) => void> = {
    debug: (l) => context.debug(l),
    info: (l) => context.info(l),
    warn: (l) => context.warn(l),
    error: (l) => context.error(l),
  };
  return createLogger({ sink: (level, line) => write[level](line), fields: { invocationId: context.invocationId, function: context.functionName } });
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
