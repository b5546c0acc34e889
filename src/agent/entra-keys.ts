/**
 * The tenant's token signing keys, as Microsoft Entra ID publishes them: the OpenID configuration at
 * `<authority>/<tenant>/v2.0/.well-known/openid-configuration` names the JWKS, whose RSA keys are kept by `kid`.
 *
 * Fetches are rare and bounded, because anyone can send a token naming a key id we do not know: at most one
 * fetch per refresh interval (a minute) after a success, one per retry interval after a failure, and never two
 * at once. Keys are refetched when older than maxAge so that a key the tenant withdrew stops being accepted; if
 * that refetch fails, the keys already held stay in use rather than every token being refused.
 * Addresses found in tokens (jku, x5u) are never fetched.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { request } from 'node:https';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';

export interface SigningKeySourceOptions {
  /** e.g. https://login.microsoftonline.com, without a trailing slash. */
  authority: string;
  tenantId: string;
  /** PEM of a CA to trust for the authority, besides the public ones. */
  ca?: string | undefined;
  logger: Logger;
  nowMs?: () => number;
  /** Shortest time between fetches after a successful one; default 1 minute. */
  refreshIntervalMs?: number;
  /** Shortest time between fetches after a failed one; default 10 s. */
  retryIntervalMs?: number;
  /** Keys older than this are fetched again before use; default 1 hour. */
  maxAgeMs?: number;
  /** Per request; default 10 s. */
  timeoutMs?: number;
}

export type KeyLookup = { ok: true; key: KeyObject } | { ok: false; reason: string };

/** Entra ID publishes a handful of keys; far more than this is not a real key set. */
const MAX_KEYS = 64;
const MAX_DOCUMENT_BYTES = 256 * 1024;
const MIN_RSA_BITS = 2048;

export class EntraSigningKeys {
  readonly discoveryUrl: string;
  private readonly options: SigningKeySourceOptions;
  private readonly now: () => number;
  private keys = new Map<string, KeyObject>();
  private jwksUri: string | undefined;
  private loadedAt: number | undefined;
  private lastAttempt: number | undefined;
  private lastFailure: string | undefined;
  private inflight: Promise<void> | undefined;
  private readonly aborter = new AbortController();
  /** Completed fetches of the key set, successful or not. */
  fetches = 0;

  constructor(options: SigningKeySourceOptions) {
    this.options = options;
    this.now = options.nowMs ?? (() => Date.now());
    this.discoveryUrl = `${options.authority}/${options.tenantId}/v2.0/.well-known/openid-configuration`;
  }

  /** The public key for `kid`, fetching the key set first when it is unknown or old and a fetch is allowed now. */
  async find(kid: string): Promise<KeyLookup> {
    const now = this.now();
    const old = this.loadedAt === undefined || now - this.loadedAt > (this.options.maxAgeMs ?? 3_600_000);
    if ((old || !this.keys.has(kid)) && this.mayFetch(now)) await this.refresh();
    const key = this.keys.get(kid);
    if (key) return { ok: true, key };
    if (this.loadedAt === undefined) {
      return { ok: false, reason: `the tenant's signing keys could not be fetched (${this.lastFailure ?? 'not yet tried'})` };
    }
    const age = Math.round((this.now() - this.loadedAt) / 1000);
    return { ok: false, reason: `signing key "${kid}" is not among the tenant's ${this.keys.size} keys (fetched ${age} s ago)` };
  }

  /** Cuts a fetch in progress; later lookups only use the keys already held. */
  close(): void {
    this.aborter.abort();
  }

  private mayFetch(now: number): boolean {
    if (this.aborter.signal.aborted) return false;
    if (this.inflight || this.lastAttempt === undefined) return true;
    const interval = this.lastFailure ? (this.options.retryIntervalMs ?? 10_000) : (this.options.refreshIntervalMs ?? 60_000);
    return now - this.lastAttempt >= interval;
  }

  private refresh(): Promise<void> {
    this.inflight ??= this.fetchKeys().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private async fetchKeys(): Promise<void> {
    this.lastAttempt = this.now();
    let url = this.discoveryUrl;
    try {
      if (!this.jwksUri) {
        const config = await this.getJson(url);
        const jwksUri = (config as { jwks_uri?: unknown }).jwks_uri;
        if (typeof jwksUri !== 'string' || !jwksUri.startsWith('https://'))
          throw new Error('the OpenID configuration has no https jwks_uri');
        this.jwksUri = jwksUri;
      }
      url = this.jwksUri;
      const keys = parseKeySet(await this.getJson(url));
      this.keys = keys;
      this.loadedAt = this.now();
      this.lastFailure = undefined;
      this.options.logger.info('entra.keys_fetched', { jwksUri: url, keys: keys.size });
    } catch (err) {
      // The key set may have moved: look it up again next time.
      this.jwksUri = undefined;
      this.lastFailure = `GET ${url}: ${errorMessage(err)}`;
      this.options.logger.error('entra.keys_unavailable', {
        error: this.lastFailure,
        keptKeys: this.keys.size,
        hint: 'that the VM reaches the authority over HTTPS (outbound 443, DNS, proxy), TCAB_AGENT_ENTRA_AUTHORITY and TCAB_AGENT_ENTRA_TENANT_ID; TCAB_AGENT_ENTRA_CA for a private authority',
      });
    } finally {
      this.fetches++;
    }
  }

  private getJson(url: string): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const req = request(url, {
        method: 'GET',
        headers: { Accept: 'application/json' },
        agent: false,
        signal: this.aborter.signal,
        ...(this.options.ca ? { ca: this.options.ca } : {}),
      });
      req.setTimeout(this.options.timeoutMs ?? 10_000, () =>
        req.destroy(new Error(`no answer within ${this.options.timeoutMs ?? 10_000} ms`)),
      );
      req.on('error', (err: NodeJS.ErrnoException) =>
        reject(new Error(err.code && !err.message.includes(err.code) ? `${err.code} (${err.message})` : err.message)),
      );
      req.on('response', (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          return reject(new Error(`answered ${res.statusCode} ${res.statusMessage ?? ''}`.trim()));
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_DOCUMENT_BYTES) return req.destroy(new Error(`the answer is larger than ${MAX_DOCUMENT_BYTES} bytes`));
          chunks.push(chunk);
        });
        res.on('end', () => {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
          } catch {
            reject(new Error('the answer is not JSON'));
          }
        });
        res.on('error', reject);
      });
      req.end();
    });
  }
}

/** The usable RSA signing keys of a JWKS document, by kid; throws when there is none. */
function parseKeySet(doc: unknown): Map<string, KeyObject> {
  const list = (doc as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(list)) throw new Error('the key set has no "keys" array');
  const keys = new Map<string, KeyObject>();
  for (const jwk of list.slice(0, MAX_KEYS) as Array<Record<string, unknown>>) {
    if (jwk?.kty !== 'RSA' || typeof jwk.kid !== 'string' || typeof jwk.n !== 'string' || typeof jwk.e !== 'string') continue;
    if (jwk.use !== undefined && jwk.use !== 'sig') continue;
    try {
      const key = createPublicKey({ key: { kty: 'RSA', n: jwk.n, e: jwk.e } as JsonWebKey, format: 'jwk' });
      if ((key.asymmetricKeyDetails?.modulusLength ?? 0) >= MIN_RSA_BITS) keys.set(jwk.kid, key);
    } catch {
      // A malformed entry must not cost the others.
    }
  }
  if (keys.size === 0) throw new Error(`the key set holds no RSA signing key of at least ${MIN_RSA_BITS} bits`);
  return keys;
}
