/**
 * GET /api/status (function key): the status computed fresh from the targets. JSON by default; with
 * `Accept: text/html` the status page. A critical state is shown, not thrown: the answer is 200 either way,
 * with the state in the body and in the X-Tcab-Backup-State header. Nothing is written.
 */
import functions from '@azure/functions';
import type { HttpRequest, HttpResponseInit, InvocationContext } from '@azure/functions';
import { ConfigError, errorMessage } from '../errors.js';
import { backupConfig, invocation, json, problem } from '../host/context.js';
import { monitorPostgresSource } from '../jobs/deps.js';
import { loadMonitorSettings } from '../jobs/settings.js';
import { runMonitor } from '../jobs/monitor/index.js';
import { openTargets } from '../runtime.js';
import { renderStatusPage } from '../status/page.js';

const { app } = functions;

/** True when the client asks for HTML before (or instead of) JSON, as a browser does. */
export function wantsHtml(accept: string | null): boolean {
  if (!accept) return false;
  const types = accept.split(',').map((part) => {
    const [type = '', ...params] = part.trim().toLowerCase().split(';');
    const q = Number(
      params
        .map((p) => p.trim())
        .find((p) => p.startsWith('q='))
        ?.slice(2) ?? '1',
    );
    return { type: type.trim(), q: Number.isNaN(q) ? 0 : q };
  });
  const html = Math.max(0, ...types.filter((t) => t.type === 'text/html').map((t) => t.q));
  const jsonQ = Math.max(0, ...types.filter((t) => t.type === 'application/json').map((t) => t.q));
  return html > 0 && html >= jsonQ;
}

export async function statusHttp(request: HttpRequest, context: InvocationContext): Promise<HttpResponseInit> {
  const { logger, bounded } = invocation(context);
  try {
    const config = backupConfig();
    const settings = loadMonitorSettings();
    const targets = openTargets(config, logger);
    const doc = await bounded('status', (signal) =>
      runMonitor(
        {
          targets,
          database: config.database,
          thresholds: settings.thresholds,
          postgres: monitorPostgresSource(process.env, targets),
          logger,
        },
        { write: false, throwOnCritical: false, signal },
      ),
    );
    if (wantsHtml(request.headers.get('accept'))) {
      return {
        status: 200,
        headers: {
          'Content-Type': 'text/html; charset=utf-8',
          'Cache-Control': 'no-store',
          'X-Tcab-Backup-State': doc.state,
          // The page needs nothing from anywhere: say so, so nothing can be injected into it either.
          'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
          'X-Content-Type-Options': 'nosniff',
        },
        body: renderStatusPage(doc),
      };
    }
    const res = json(200, doc);
    return { ...res, headers: { ...(res.headers as Record<string, string>), 'X-Tcab-Backup-State': doc.state } };
  } catch (e) {
    logger.error('status.failed', { error: errorMessage(e) });
    if (e instanceof ConfigError) return problem(500, 'The function app is misconfigured', errorMessage(e));
    return problem(500, 'The status could not be computed', errorMessage(e));
  }
}

app.http('statusHttp', { methods: ['GET'], route: 'status', authLevel: 'function', handler: statusHttp });
