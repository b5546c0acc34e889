/**
 * Errors that reach an operator. Every message says what failed and where; `hint` says what to check next.
 * The rendered message is "<what failed>: <detail>. Check: <hint>" so a single log line is actionable.
 */
export class TcabError extends Error {
  readonly hint: string | undefined;
  readonly code: string;

  constructor(message: string, options: { hint?: string; cause?: unknown; code?: string } = {}) {
    super(options.hint ? `${message}. Check: ${options.hint}` : message, { cause: options.cause });
    this.name = 'TcabError';
    this.hint = options.hint;
    this.code = options.code ?? 'TCAB_ERROR';
  }
}

/** A setting is missing or invalid. The message names the variable and what is expected. */
export class ConfigError extends TcabError {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`Invalid configuration:\n  - ${problems.join('\n  - ')}`, { code: 'CONFIG_INVALID' });
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** The object (or snapshot) does not exist. Targets convert their backend's "not found" to this at the edge. */
export class NotFoundError extends TcabError {
  constructor(what: string, options: { cause?: unknown } = {}) {
    super(`Not found: ${what}`, { code: 'NOT_FOUND', ...options });
    this.name = 'NotFoundError';
  }
}

/** A conditional write lost: the object changed (If-Match) or already exists (If-None-Match: *). */
export class PreconditionFailedError extends TcabError {
  constructor(what: string, options: { cause?: unknown } = {}) {
    super(`Precondition failed: ${what} changed or already exists`, { code: 'PRECONDITION_FAILED', ...options });
    this.name = 'PreconditionFailedError';
  }
}

/** Bytes read back do not hash to what the manifest or the agent promised. Never retried. */
export class IntegrityError extends TcabError {
  constructor(message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, { code: 'INTEGRITY', ...options });
    this.name = 'IntegrityError';
  }
}

/** Marks an error that retrying cannot fix (auth, bad request, integrity). The retry wrapper gives up at once. */
export function isPermanent(err: unknown): boolean {
  return (
    err instanceof NotFoundError ||
    err instanceof PreconditionFailedError ||
    err instanceof IntegrityError ||
    err instanceof ConfigError ||
    (err as { permanent?: boolean } | null)?.permanent === true
  );
}

export function isAbortError(err: unknown): boolean {
  return (err as { name?: string } | null)?.name === 'AbortError';
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/**
 * An object cannot be deleted or overwritten because an immutability lock (Blob version-level WORM, an R2
 * bucket lock) or a legal hold protects it. Retention reports such objects as held, not as failures.
 */
export class ObjectHeldError extends TcabError {
  readonly permanent = true;
  constructor(what: string, options: { cause?: unknown } = {}) {
    super(`Held: ${what} is protected by an immutability policy, bucket lock or legal hold`, {
      code: 'OBJECT_HELD',
      hint: 'nothing to do; it can be deleted once its retention period ends or the hold is lifted',
      ...options,
    });
    this.name = 'ObjectHeldError';
  }
}

/**
 * A storage operation failed. The message names the target, its URL (never a credential), the operation
 * and the key. `transient` marks what waiting and retrying may fix (throttling, 5xx, timeouts, connection
 * resets); the retry wrapper retries only those.
 */
export class TargetError extends TcabError {
  readonly target: string;
  readonly operation: string;
  readonly key: string | undefined;
  /** HTTP status of the backend's answer, when there was one. */
  readonly status: number | undefined;
  readonly transient: boolean;
  readonly permanent: boolean;
  /** How long the backend asked us to wait (Retry-After), when it did. */
  readonly retryAfterMs: number | undefined;

  constructor(options: {
    target: string;
    url: string;
    operation: string;
    key?: string;
    detail: string;
    hint?: string;
    cause?: unknown;
    status?: number;
    code?: string;
    transient?: boolean;
    retryAfterMs?: number;
  }) {
    const where = options.key === undefined ? options.operation : `${options.operation} ${options.key}`;
    super(`Target "${options.target}" (${options.url}): ${where} failed: ${options.detail}`, {
      code: options.code ?? 'TARGET_FAILED',
      ...(options.hint ? { hint: options.hint } : {}),
      cause: options.cause,
    });
    this.name = 'TargetError';
    this.target = options.target;
    this.operation = options.operation;
    this.key = options.key;
    this.status = options.status;
    this.transient = options.transient ?? false;
    this.permanent = !this.transient;
    this.retryAfterMs = options.retryAfterMs;
  }
}
