/**
 * Checks TCAB-HMAC-SHA256 signatures (docs/agent-protocol.md, "Authentication"), and picks the scheme a request uses
 * among those the agent enables (HMAC, Entra ID Bearer tokens). The verdict carries the reason for the agent's
 * log; the client only ever sees one generic 401, so a prober learns nothing about which check failed.
 */
import type { Fields } from '../log.js';
import type { EntraTokenValidator } from './entra.js';
import {
  AUTH_SCHEME,
  AUTH_WINDOW_SECONDS,
  computeSignature,
  EMPTY_SHA256,
  parseAuthorization,
  sha256Hex,
  signaturesEqual,
  stringToSign,
} from './protocol.js';

export type AuthVerdict = { ok: true; keyId: string } | { ok: false; reason: string; keyId?: string };

export interface SignedRequest {
  method: string;
  /** Path and query exactly as on the request line. */
  pathAndQuery: string;
  authorization: string | undefined;
  body: Buffer;
  /**
   * Stands for hex(sha256(body)) when the body is streamed and not yet read: the drill's artifact, whose
   * sha256 the signed query names and the agent checks as the bytes arrive.
   */
  bodySha256?: string;
}

/** Enough for far more requests than the backup functions ever make in one window. */
const DEFAULT_MAX_NONCES = 100_000;
// Signs unknown key ids too, so an unknown id costs the same time as a known one with a wrong signature.
const DECOY_SECRET = 'decoy-secret-for-unknown-key-ids-0000000000000000';

export class RequestAuthenticator {
  private readonly keys: ReadonlyMap<string, string>;
  private readonly windowSeconds: number;
  private readonly maxNonces: number;
  private readonly now: () => number;
  /** `${keyId}\n${nonce}` -> the unix second after which the timestamp check alone rejects a replay. */
  private readonly seen = new Map<string, number>();

  constructor(keys: ReadonlyMap<string, string>, options: { windowSeconds?: number; maxNonces?: number; nowMs?: () => number } = {}) {
    this.keys = keys;
    this.windowSeconds = options.windowSeconds ?? AUTH_WINDOW_SECONDS;
    this.maxNonces = options.maxNonces ?? DEFAULT_MAX_NONCES;
    const nowMs = options.nowMs ?? Date.now;
    this.now = () => Math.floor(nowMs() / 1000);
  }

  verify(req: SignedRequest): AuthVerdict {
    const auth = parseAuthorization(req.authorization);
    if (!auth) return { ok: false, reason: req.authorization ? 'malformed Authorization header' : 'no Authorization header' };
    const now = this.now();
    const skew = auth.ts - now;
    if (Math.abs(skew) > this.windowSeconds) {
      return {
        ok: false,
        keyId: auth.keyId,
        reason: `timestamp ${skew > 0 ? 'ahead of' : 'behind'} the agent's clock by ${Math.abs(skew)} s (limit ${this.windowSeconds} s)`,
      };
    }
    const secret = this.keys.get(auth.keyId);
    const bodyHash = req.bodySha256 ?? (req.body.length > 0 ? sha256Hex(req.body) : EMPTY_SHA256);
    const expected = computeSignature(secret ?? DECOY_SECRET, stringToSign(req.method, req.pathAndQuery, auth.ts, auth.nonce, bodyHash));
    const matches = signaturesEqual(expected, auth.sig);
    if (secret === undefined) return { ok: false, keyId: auth.keyId, reason: 'unknown key id' };
    if (!matches)
      return { ok: false, keyId: auth.keyId, reason: 'signature does not match (wrong secret, or method, path, query or body changed)' };
    // Remembered only after the signature holds, so unsigned traffic cannot fill the cache.
    const nonceKey = `${auth.keyId}\n${auth.nonce}`;
    if (this.seen.has(nonceKey)) return { ok: false, keyId: auth.keyId, reason: 'nonce already used (replayed request)' };
    if (this.seen.size >= this.maxNonces) this.forgetExpired(now);
    if (this.seen.size >= this.maxNonces)
      return { ok: false, keyId: auth.keyId, reason: `more than ${this.maxNonces} signed requests within the time window` };
    this.seen.set(nonceKey, auth.ts + this.windowSeconds);
    return { ok: true, keyId: auth.keyId };
  }

  /** Nonces whose timestamps are outside the window: a replay of those fails the timestamp check anyway. */
  forgetExpired(now = this.now()): void {
    for (const [key, until] of this.seen) if (until < now) this.seen.delete(key);
  }

  get rememberedNonces(): number {
    return this.seen.size;
  }
}

export type AgentAuthVerdict =
  /** `client` names the caller in log lines: clientKeyId, or clientObjectId and clientAppId. */
  { ok: true; scheme: 'hmac' | 'entra'; client: Fields } | { ok: false; reason: string; client: Fields };

const BEARER_RE = /^Bearer +([^\s]+) *$/i;

/** Dispatches on the Authorization scheme to whichever checks TCAB_AGENT_AUTH enables. */
export class AgentAuthenticator {
  private readonly hmac: RequestAuthenticator | undefined;
  private readonly entra: EntraTokenValidator | undefined;
  /** The WWW-Authenticate value of a 401: the schemes this agent accepts. */
  readonly challenge: string;

  constructor(schemes: { hmac?: RequestAuthenticator; entra?: EntraTokenValidator }) {
    if (!schemes.hmac && !schemes.entra) throw new Error('the agent needs at least one authentication scheme');
    this.hmac = schemes.hmac;
    this.entra = schemes.entra;
    this.challenge = [schemes.hmac ? AUTH_SCHEME : '', schemes.entra ? 'Bearer' : ''].filter(Boolean).join(', ');
  }

  async verify(req: SignedRequest): Promise<AgentAuthVerdict> {
    const bearer = BEARER_RE.exec(req.authorization ?? '');
    if (bearer) {
      if (!this.entra)
        return {
          ok: false,
          reason: 'malformed Authorization header (a Bearer token, but TCAB_AGENT_AUTH does not enable entra)',
          client: {},
        };
      const verdict = await this.entra.verify(bearer[1]!);
      const client: Fields = {};
      if (verdict.objectId) client.clientObjectId = verdict.objectId;
      if (verdict.appId) client.clientAppId = verdict.appId;
      return verdict.ok ? { ok: true, scheme: 'entra', client } : { ok: false, reason: verdict.reason, client };
    }
    if (!this.hmac) {
      const header = req.authorization;
      const reason = !header
        ? 'no Authorization header'
        : header.startsWith(`${AUTH_SCHEME} `)
          ? `a ${AUTH_SCHEME} signature, but TCAB_AGENT_AUTH does not enable hmac`
          : 'malformed Authorization header (expected Bearer <token>)';
      return { ok: false, reason, client: {} };
    }
    const verdict = this.hmac.verify(req);
    if (verdict.ok) return { ok: true, scheme: 'hmac', client: { clientKeyId: verdict.keyId } };
    return { ok: false, reason: verdict.reason, client: verdict.keyId === undefined ? {} : { clientKeyId: verdict.keyId } };
  }

  forgetExpired(): void {
    this.hmac?.forgetExpired();
  }
}
