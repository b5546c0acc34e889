/**
 * Checks the Bearer tokens of the agent protocol's second scheme: Microsoft Entra ID access tokens that the
 * function app's managed identity obtained for the agent's application. node:crypto alone, so that what is
 * accepted is exactly what this file says:
 *
 * - a compact JWS signed with RS256 by one of the tenant's published keys (alg "none", HS* and every other
 *   algorithm are refused before any key is looked at, so a public key can never serve as an HMAC secret);
 * - issued by the configured tenant: `iss` is the v2.0 issuer `<authority>/<tenant>/v2.0` or the v1.0 issuer
 *   `https://sts.windows.net/<tenant>/`. Both, because Entra ID issues the version the *agent's* app
 *   registration asks for (accessTokenAcceptedVersion), which is v1.0 unless changed, and managed identity
 *   tokens follow it; `tid` must name the same tenant;
 * - for the configured audience, within its lifetime (`exp`, `nbf`) give or take the same 300 s as HMAC;
 * - of an allowed identity: `oid` in the allow-list. The tenant signs tokens for every identity in it, so
 *   this list, not the signature, is what limits callers to the function app.
 *
 * The verdict's reason goes to the agent's log only. It names claims but never their values, except the
 * caller's object id and application id, and never the token.
 */
import { verify } from 'node:crypto';
import { AUTH_WINDOW_SECONDS } from './protocol.js';
import type { EntraSigningKeys } from './entra-keys.js';

export interface EntraTokenValidatorOptions {
  /** Lower-case GUID. */
  tenantId: string;
  audiences: readonly string[];
  allowedObjectIds: readonly string[];
  /** e.g. https://login.microsoftonline.com, without a trailing slash. */
  authority: string;
  keys: EntraSigningKeys;
  /** Accepted clock skew either way, in seconds; default 300 like HMAC. */
  clockSkewSeconds?: number;
  nowMs?: () => number;
}

/** `objectId`/`appId` are set once the signature holds, so the log can say who was refused. */
export type EntraVerdict =
  | { ok: true; objectId: string; appId: string | undefined }
  | { ok: false; reason: string; objectId?: string; appId?: string | undefined };

// Real Entra ID access tokens are 1 to 3 KB; the HTTP header limit caps the rest anyway.
const MAX_TOKEN_CHARS = 12_000;
const B64URL_RE = /^[A-Za-z0-9_-]+$/;

export class EntraTokenValidator {
  readonly issuers: readonly string[];
  private readonly options: EntraTokenValidatorOptions;
  private readonly audiences: ReadonlySet<string>;
  private readonly allowed: ReadonlySet<string>;
  private readonly skew: number;
  private readonly now: () => number;

  constructor(options: EntraTokenValidatorOptions) {
    this.options = options;
    const tenant = options.tenantId.toLowerCase();
    this.issuers = [`${options.authority}/${tenant}/v2.0`, `https://sts.windows.net/${tenant}/`];
    this.audiences = new Set(options.audiences);
    this.allowed = new Set(options.allowedObjectIds.map((id) => id.toLowerCase()));
    this.skew = options.clockSkewSeconds ?? AUTH_WINDOW_SECONDS;
    const nowMs = options.nowMs ?? (() => Date.now());
    this.now = () => Math.floor(nowMs() / 1000);
  }

  async verify(token: string): Promise<EntraVerdict> {
    if (token.length > MAX_TOKEN_CHARS) return { ok: false, reason: `the bearer token is longer than ${MAX_TOKEN_CHARS} characters` };
    const parts = token.split('.');
    if (parts.length !== 3 || !parts.slice(0, 2).every((p) => B64URL_RE.test(p))) {
      return { ok: false, reason: 'the bearer token is not a signed JWT (three base64url parts)' };
    }
    const header = decodeJson(parts[0]!);
    const claims = decodeJson(parts[1]!);
    if (!header || !claims) return { ok: false, reason: 'the bearer token is not a JWT (its header or claims are not JSON objects)' };

    if (header.alg !== 'RS256') {
      return {
        ok: false,
        reason: `the token's algorithm ${typeof header.alg === 'string' ? `"${header.alg.slice(0, 16)}"` : '(none given)'} is not accepted: only RS256`,
      };
    }
    if (header.crit !== undefined)
      return { ok: false, reason: 'the token has critical header parameters (crit), which the agent does not understand' };
    if (typeof header.kid !== 'string' || header.kid.length === 0 || header.kid.length > 128) {
      return { ok: false, reason: 'the token names no signing key (kid)' };
    }
    const signature = parts[2]!;
    if (!B64URL_RE.test(signature)) return { ok: false, reason: 'the token carries no signature' };
    const found = await this.options.keys.find(header.kid);
    if (!found.ok) return { ok: false, reason: found.reason };
    const signed = verify('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`, 'ascii'), found.key, Buffer.from(signature, 'base64url'));
    if (!signed)
      return { ok: false, reason: `the signature does not match the tenant's key "${header.kid}" (not issued by the tenant, or altered)` };

    const who = { objectId: guidOrUndefined(claims.oid), appId: guidOrUndefined(claims.appid ?? claims.azp) };
    const refuse = (reason: string): EntraVerdict => ({ ok: false, reason, ...who });
    if (typeof claims.iss !== 'string' || !this.issuers.includes(claims.iss)) {
      return refuse(
        `the issuer (iss) is not the configured tenant's (expected ${this.issuers.join(' or ')}): check TCAB_AGENT_ENTRA_TENANT_ID`,
      );
    }
    if (typeof claims.tid !== 'string' || claims.tid.toLowerCase() !== this.options.tenantId.toLowerCase()) {
      return refuse('the tenant (tid) is not TCAB_AGENT_ENTRA_TENANT_ID');
    }
    const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!aud.some((a) => typeof a === 'string' && this.audiences.has(a))) {
      return refuse(
        "the audience (aud) is not TCAB_AGENT_ENTRA_AUDIENCE: check that the function app asks for TCAB_BACKUP_AGENT_ENTRA_SCOPE of this agent's application (a v2.0 token's aud is the client id, a v1.0 token's the application id URI)",
      );
    }
    const now = this.now();
    if (typeof claims.exp !== 'number') return refuse('the token has no expiry (exp)');
    if (now > claims.exp + this.skew)
      return refuse(`the token expired ${now - claims.exp} s ago (beyond the ${this.skew} s allowed for clock skew)`);
    if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || now < claims.nbf - this.skew)) {
      return refuse(
        typeof claims.nbf === 'number'
          ? `the token is not valid for another ${claims.nbf - now} s (nbf; beyond the ${this.skew} s allowed for clock skew)`
          : "the token's not-before (nbf) is not a number",
      );
    }
    if (!who.objectId) return refuse('the token names no object id (oid)');
    if (!this.allowed.has(who.objectId)) return refuse(`object id ${who.objectId} is not in TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS`);
    return { ok: true, objectId: who.objectId, appId: who.appId };
  }
}

function decodeJson(part: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Only well-formed ids reach the log: a signed token is still the caller's text. */
function guidOrUndefined(value: unknown): string | undefined {
  return typeof value === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value)
    ? value.toLowerCase()
    : undefined;
}
