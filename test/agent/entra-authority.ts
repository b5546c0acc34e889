/**
 * A local stand-in for Microsoft Entra ID at the wire: an HTTPS server on 127.0.0.1:0 serving a tenant's OpenID
 * configuration and JWKS the way login.microsoftonline.com does, and RS256 tokens signed with node:crypto by
 * keys made here. It exists because Entra ID itself cannot run on this machine.
 */
import { execFile } from 'node:child_process';
import { createHmac, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { AccessToken, TokenCredential } from '@azure/identity';

const run = promisify(execFile);

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export function newSigningKey(kid = randomUUID()): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { kid, privateKey, publicKey };
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A compact JWS: RS256 with `key` unless the header says otherwise; `none` gets an empty signature. */
export function signToken(claims: Record<string, unknown>, key: SigningKey, header: Record<string, unknown> = {}): string {
  const h = { typ: 'JWT', alg: 'RS256', kid: key.kid, ...header };
  const input = `${b64(h)}.${b64(claims)}`;
  if (h.alg === 'none') return `${input}.`;
  if (h.alg === 'HS256') {
    // The classic confusion attack: the public key, which anyone can fetch, used as an HMAC secret.
    const secret = key.publicKey.export({ type: 'spki', format: 'pem' });
    return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
  }
  return `${input}.${sign('RSA-SHA256', Buffer.from(input), key.privateKey).toString('base64url')}`;
}

export interface FakeAuthority {
  /** e.g. https://127.0.0.1:41234 */
  url: string;
  /** PEM of the server's self-signed certificate, to give the agent as TCAB_AGENT_ENTRA_CA. */
  ca: string;
  /** The keys the JWKS currently publishes; replace to rotate. */
  published: SigningKey[];
  /** When set, the JWKS answers with this status instead. */
  keysStatus: number | undefined;
  /** Requests per path. */
  hits: Map<string, number>;
  jwksPath(tenant: string): string;
  close(): Promise<void>;
}

export async function startFakeAuthority(workDir: string): Promise<FakeAuthority> {
  const certPath = join(workDir, 'authority.crt');
  const keyPath = join(workDir, 'authority.key');
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '1',
    '-subj',
    '/CN=login.test',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
    '-keyout',
    keyPath,
    '-out',
    certPath,
  ]);
  const cert = await readFile(certPath, 'utf8');
  const authority: FakeAuthority = {
    url: '',
    ca: cert,
    published: [],
    keysStatus: undefined,
    hits: new Map(),
    jwksPath: (tenant) => `/${tenant}/discovery/v2.0/keys`,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  const server: Server = createServer({ cert, key: await readFile(keyPath, 'utf8') }, (req, res) => {
    const path = req.url ?? '/';
    authority.hits.set(path, (authority.hits.get(path) ?? 0) + 1);
    const discovery = /^\/([0-9a-f-]{36})\/v2\.0\/\.well-known\/openid-configuration$/.exec(path);
    const keys = /^\/([0-9a-f-]{36})\/discovery\/v2\.0\/keys$/.exec(path);
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (discovery) {
      const tenant = discovery[1]!;
      return json(200, {
        issuer: `${authority.url}/${tenant}/v2.0`,
        jwks_uri: `${authority.url}${authority.jwksPath(tenant)}`,
        id_token_signing_alg_values_supported: ['RS256'],
      });
    }
    if (keys) {
      if (authority.keysStatus) return json(authority.keysStatus, { error: 'temporarily_unavailable' });
      return json(200, {
        keys: authority.published.map((k) => ({ ...k.publicKey.export({ format: 'jwk' }), kid: k.kid, use: 'sig', kty: 'RSA' })),
      });
    }
    json(404, { error: 'not_found' });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  authority.url = `https://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  return authority;
}

/** What DefaultAzureCredential is to the client: here it hands out tokens made by `issue`, and counts the asks. */
export function tokenCredential(issue: (scope: string) => string, lifetimeMs = 3_600_000): TokenCredential & { scopes: string[] } {
  const scopes: string[] = [];
  return {
    scopes,
    async getToken(scope: string | string[]): Promise<AccessToken> {
      const s = Array.isArray(scope) ? scope[0]! : scope;
      scopes.push(s);
      return { token: issue(s), expiresOnTimestamp: Date.now() + lifetimeMs };
    },
  };
}
