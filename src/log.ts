/**
 * Structured logging. One JSON object per event so Application Insights and `jq` can both query it.
 * Secrets are registered once (when configuration loads) and masked in every message and field,
 * wherever they appear; field names that usually hold secrets are masked too.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
export type Fields = Record<string, unknown>;

export interface Logger {
  debug(event: string, fields?: Fields): void;
  info(event: string, fields?: Fields): void;
  warn(event: string, fields?: Fields): void;
  error(event: string, fields?: Fields): void;
  child(fields: Fields): Logger;
}

const secrets = new Set<string>();
const SECRET_FIELD = /(secret|password|passwd|key$|^key|connectionstring|token|authorization|sig$|credential)/i;
// Short values would mask innocent text ("a", "1"); real secrets are long.
const MIN_SECRET_LENGTH = 6;

/** Remember a secret value so that no log line or error message rendered through `redact` can carry it. */
export function registerSecret(value: string | undefined | null): void {
  if (value && value.length >= MIN_SECRET_LENGTH) secrets.add(value);
}

export function redact(text: string): string {
  let out = text;
  for (const s of secrets) if (out.includes(s)) out = out.split(s).join('***');
  // Connection-string and URL-embedded credentials, even when never registered.
  out = out.replace(/(AccountKey|SharedAccessSignature|sig)=([^;&\s"]+)/gi, '$1=***');
  return out;
}

export function redactValue(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redact(value);
  if (value instanceof Error) return redact(value.message);
  if (depth > 6 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => redactValue(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    out[k] = SECRET_FIELD.test(k) && typeof v === 'string' ? '***' : redactValue(v, depth + 1);
  }
  return out;
}

const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Sink = (level: Level, line: string, record: Fields) => void;

/** Sees every event, at every level, before the level filter: to know where a job was, not to print it. */
export type EventObserver = (event: string, fields: Fields) => void;

export function createLogger(options: { sink?: Sink; level?: Level; fields?: Fields; onEvent?: EventObserver } = {}): Logger {
  const min = ORDER[options.level ?? ((process.env.TCAB_LOG_LEVEL as Level) || 'info')] ?? ORDER.info;
  const sink: Sink = options.sink ?? ((_level, line) => process.stderr.write(line + '\n'));
  const base = options.fields ?? {};
  const { onEvent } = options;
  const emit = (level: Level, event: string, fields?: Fields) => {
    onEvent?.(event, { ...base, ...fields });
    if (ORDER[level] < min) return;
    const record = redactValue({ time: new Date().toISOString(), level, event, ...base, ...fields }) as Fields;
    sink(level, JSON.stringify(record), record);
  };
  return {
    debug: (e, f) => emit('debug', e, f),
    info: (e, f) => emit('info', e, f),
    warn: (e, f) => emit('warn', e, f),
    error: (e, f) => emit('error', e, f),
    child: (fields) => createLogger({ sink, level: options.level, fields: { ...base, ...fields }, ...(onEvent ? { onEvent } : {}) }),
  };
}

/** A logger that drops everything; for library callers that pass none. */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  child: () => silentLogger,
};
