/**
 * The agent's second scheme, Bearer tokens from Microsoft Entra ID, against real agents over real HTTP. Entra ID
 * is played at the wire by a local HTTPS server publishing a tenant's OpenID configuration and keys; the client
 * gets its tokens from a TokenCredential, as DefaultAzureCredential would hand them out in Azure.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentClient, AgentError } from '../../src/agent/client.js';
import { EntraSigningKeys } from '../../src/agent/entra-keys.js';
import { startAgent, type RunningAgent } from '../../src/agent/run.js';
import { loadAgentConfig, type AgentConfig, type EntraAgentConfig } from '../../src/agent/config.js';
import { loadAgentClientConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { silentLogger } from '../../src/log.js';
import { openAgent } from '../../src/runtime.js';
import { newSigningKey, signToken, startFakeAuthority, tokenCredential, type FakeAuthority, type SigningKey } from './entra-authority.js';
import { agentConfig, KEY, KEY_ID, problemOf, rawRequest, signedRequest, type RawAnswer } from './helpers.js';
import { captureLog, tempDir } from '../support/world.js';

const TENANT = randomUUID();
const OTHER_TENANT = randomUUID();
const FUNCTION_APP_OID = randomUUID();
const FUNCTION_APP_CLIENT_ID = randomUUID();
const STRANGER_OID = randomUUID();
const AUDIENCE = 'api://tcab-backup-agent';
const SCOPE = `${AUDIENCE}/.default`;

let work: { dir: string; remove(): Promise<void> };
let authority: FakeAuthority;
let keyA: SigningKey;
let keyB: SigningKey;
let notPublished: SigningKey;
const issued: string[] = [];
const logs = captureLog();
const agents: RunningAgent[] = [];
let both: RunningAgent;

const now = () => Math.floor(Date.now() / 1000);

function entraConfig(overrides: Partial<EntraAgentConfig> = {}): EntraAgentConfig {
  return {
    tenantId: TENANT,
    audiences: [AUDIENCE],
    allowedObjectIds: [FUNCTION_APP_OID],
    authority: authority.url,
    ca: authority.ca,
    ...overrides,
  };
}

/** A v2.0 access token of the function app's managed identity, as Entra ID would issue it; `claims` overrides. */
function token(claims: Record<string, unknown> = {}, key: SigningKey = keyA, header: Record<string, unknown> = {}): string {
  const t = now();
  const jwt = signToken(
    {
      aud: AUDIENCE,
      iss: `${authority.url}/${TENANT}/v2.0`,
      iat: t - 60,
      nbf: t - 60,
      exp: t + 3600,
      azp: FUNCTION_APP_CLIENT_ID,
      azpacr: '2',
      idtyp: 'app',
      oid: FUNCTION_APP_OID,
      sub: FUNCTION_APP_OID,
      tid: TENANT,
      ver: '2.0',
      ...claims,
    },
    key,
    header,
  );
  issued.push(jwt);
  return jwt;
}

const bearer = (url: string, jwt: string, path = '/v1/status') => rawRequest(url, { path, headers: { Authorization: `Bearer ${jwt}` } });

async function start(overrides: Partial<AgentConfig>, logger = logs.logger): Promise<RunningAgent> {
  const agent = await startAgent(agentConfig(work.dir, { stagingDir: join(work.dir, `staging-${agents.length}`), ...overrides }), {
    logger,
  });
  agents.push(agent);
  return agent;
}

function lastRejection(): Record<string, unknown> {
  return logs.events('auth.rejected').at(-1) ?? {};
}

let hmac401: RawAnswer;

function expectGeneric401(answer: RawAnswer, challenge = 'TCAB-HMAC-SHA256, Bearer'): void {
  expect(answer.status).toBe(401);
  expect(answer.headers['www-authenticate']).toBe(challenge);
  expect(answer.headers['content-type']).toBe('application/problem+json');
  // The same body as any HMAC failure: nothing tells a prober which scheme or check it tripped.
  expect(problemOf(answer)).toEqual(problemOf(hmac401));
}

beforeAll(async () => {
  work = await tempDir('entra');
  createSampleDatabase(join(work.dir, 'tcab.sqlite'), { runs: 20 });
  authority = await startFakeAuthority(work.dir);
  [keyA, keyB, notPublished] = [newSigningKey(), newSigningKey(), newSigningKey()];
  authority.published = [keyA];
  both = await start({ auth: ['hmac', 'entra'], entra: entraConfig() });
  hmac401 = await rawRequest(both.url, { path: '/v1/status' });
});

afterAll(async () => {
  for (const agent of agents) await agent.close();
  await authority?.close();
  await work?.remove();
});

describe('an agent accepting both schemes', () => {
  it('serves a client holding a token credential: snapshot, download and delete, asking for the token once', async () => {
    const credential = tokenCredential(() => token());
    const client = new AgentClient({ url: both.url, credential, scope: SCOPE });
    expect((await client.status()).database.name).toBe('tcab');
    const description = await client.createSnapshot({ compression: 'gzip' });
    const { body, bytes } = await client.openSnapshot(description.id);
    let received = 0;
    for await (const chunk of body) received += (chunk as Buffer).length;
    expect(received).toBe(bytes);
    await client.deleteSnapshot(description.id);
    expect(credential.scopes).toEqual([SCOPE]);
    // The log says which identity made the snapshot.
    expect(logs.events('snapshot.deleted').at(-1)).toMatchObject({ clientObjectId: FUNCTION_APP_OID, clientAppId: FUNCTION_APP_CLIENT_ID });
  });

  it('still serves HMAC-signed requests', async () => {
    expect((await signedRequest(both.url, 'GET', '/v1/status')).status).toBe(200);
    expect((await new AgentClient({ url: both.url, keyId: KEY_ID, key: KEY }).status()).database.name).toBe('tcab');
  });

  it('accepts a v1.0 token (issuer https://sts.windows.net/<tenant>/, appid), the form managed identities get by default', async () => {
    const v1 = token({ iss: `https://sts.windows.net/${TENANT}/`, ver: '1.0', appid: FUNCTION_APP_CLIENT_ID, azp: undefined });
    expect((await bearer(both.url, v1)).status).toBe(200);
  });

  it('accepts a token expired or not yet valid by less than the 300 s allowed for clock skew', async () => {
    expect((await bearer(both.url, token({ exp: now() - 250 }))).status).toBe(200);
    expect((await bearer(both.url, token({ nbf: now() + 250 }))).status).toBe(200);
  });

  const refusals: Array<[string, () => string, RegExp]> = [
    [
      'a token signed by another key under a published key id',
      () => token({}, { ...notPublished, kid: keyA.kid }),
      /signature does not match the tenant's key/,
    ],
    ['alg none', () => token({}, keyA, { alg: 'none' }), /algorithm "none" is not accepted: only RS256/],
    ['HS256 with the public key as the secret', () => token({}, keyA, { alg: 'HS256' }), /algorithm "HS256" is not accepted/],
    ['an expired token', () => token({ exp: now() - 400, nbf: now() - 4000 }), /expired 40\d s ago/],
    ['a token not yet valid', () => token({ nbf: now() + 400 }), /not valid for another (39\d|40\d) s/],
    ['a token for another audience', () => token({ aud: 'api://some-other-api' }), /audience \(aud\) is not TCAB_AGENT_ENTRA_AUDIENCE/],
    [
      'a token from another issuer',
      () => token({ iss: `${authority.url}/${OTHER_TENANT}/v2.0` }),
      /issuer \(iss\) is not the configured tenant's/,
    ],
    ['a token of another tenant', () => token({ tid: OTHER_TENANT }), /tenant \(tid\) is not TCAB_AGENT_ENTRA_TENANT_ID/],
    [
      'a token of an identity not in the allow-list',
      () => token({ oid: STRANGER_OID }),
      new RegExp(`object id ${STRANGER_OID} is not in TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS`),
    ],
    ['a token without an expiry', () => token({ exp: undefined }), /no expiry/],
    ['something that is not a JWT', () => 'not-a-jwt', /not a signed JWT/],
  ];
  for (const [what, make, reason] of refusals) {
    it(`refuses ${what} with the generic 401, the reason in the log only`, async () => {
      const answer = await bearer(both.url, make());
      expectGeneric401(answer);
      expect(String(lastRejection().reason)).toMatch(reason);
      expect(answer.body.toString()).not.toMatch(reason);
    });
  }

  it('names the refused identity in the log once the signature holds, so an operator can tell who knocked', async () => {
    await bearer(both.url, token({ oid: STRANGER_OID }));
    expect(lastRejection()).toMatchObject({
      level: 'warn',
      clientObjectId: STRANGER_OID,
      clientAppId: FUNCTION_APP_CLIENT_ID,
      path: '/v1/status',
    });
    await bearer(both.url, token({ oid: STRANGER_OID }, { ...notPublished, kid: keyA.kid }));
    expect(lastRejection().clientObjectId).toBeUndefined();
  });

  it('fetches the keys again for an unknown key id (rotation) and then accepts it, at most once a minute', async () => {
    const jwks = authority.jwksPath(TENANT);
    const before = authority.hits.get(jwks) ?? 0;
    expect(before).toBeGreaterThanOrEqual(1);
    authority.published = [keyA, keyB];
    // Within a minute of the last fetch a new key id is refused without asking again ...
    expectGeneric401(await bearer(both.url, token({}, keyB)));
    expect(authority.hits.get(jwks)).toBe(before);
    // ... and a minute later it is looked up.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 61_000);
    expect((await bearer(both.url, token({}, keyB))).status).toBe(200);
    expect(authority.hits.get(jwks)).toBe(before + 1);
    expect((await bearer(both.url, token({}, keyB))).status).toBe(200);
    expect((await bearer(both.url, token({}, keyA))).status).toBe(200);
    // An unknown key id right after a fetch costs no new fetch: random key ids cannot make the agent hammer Entra ID.
    const unknown = newSigningKey();
    for (let i = 0; i < 3; i++) expectGeneric401(await bearer(both.url, token({}, unknown)));
    expect(String(lastRejection().reason)).toMatch(new RegExp(`signing key "${unknown.kid}" is not among the tenant's 2 keys`));
    expect(authority.hits.get(jwks)).toBe(before + 1);
    // The discovery document is read once: the key set's address does not change.
    expect(authority.hits.get(`/${TENANT}/v2.0/.well-known/openid-configuration`)).toBe(1);
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('tells the client what to check on a 401 in Entra mode, without the token', async () => {
    const jwt = token({ oid: STRANGER_OID });
    const client = new AgentClient({ url: both.url, credential: tokenCredential(() => jwt), scope: SCOPE });
    const err = await client.status().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).status).toBe(401);
    expect((err as AgentError).permanent).toBe(true);
    expect((err as AgentError).message).toContain('TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS');
    expect((err as AgentError).message).not.toContain(jwt);
  });

  it('says so when the credential cannot give a token, and sends nothing', async () => {
    const rejections = logs.events('auth.rejected').length;
    const failing = {
      getToken: async () => {
        throw Object.assign(new Error('ManagedIdentityCredential: no managed identity endpoint found'), {
          name: 'CredentialUnavailableError',
        });
      },
    };
    const err = await new AgentClient({ url: both.url, credential: failing, scope: SCOPE }).status().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).message).toMatch(/no Entra ID token for api:\/\/tcab-backup-agent\/\.default: ManagedIdentityCredential/);
    expect((err as AgentError).message).toContain('AZURE_CLIENT_ID');
    expect(logs.events('auth.rejected').length).toBe(rejections);
  });
});

describe('agents with one scheme', () => {
  it('entra only: Bearer works, HMAC is refused with a challenge naming Bearer alone', async () => {
    const agent = await start({ auth: ['entra'], keys: new Map(), entra: entraConfig() });
    expect((await bearer(agent.url, token())).status).toBe(200);
    expectGeneric401(await signedRequest(agent.url, 'GET', '/v1/status'), 'Bearer');
    expect(String(lastRejection().reason)).toMatch(/TCAB-HMAC-SHA256 signature, but TCAB_AGENT_AUTH does not enable hmac/);
    expect(logs.events('agent.started').at(-1)).toMatchObject({
      auth: ['entra'],
      entraTenantId: TENANT,
      entraAllowedObjectIds: [FUNCTION_APP_OID],
    });
  });

  it('hmac only (the default): Bearer is refused, HMAC works', async () => {
    const agent = await start({});
    expectGeneric401(await bearer(agent.url, token()), 'TCAB-HMAC-SHA256');
    expect(String(lastRejection().reason)).toMatch(/Bearer token, but TCAB_AGENT_AUTH does not enable entra/);
    expect((await signedRequest(agent.url, 'GET', '/v1/status')).status).toBe(200);
  });

  it('refuses to start with entra enabled but no Entra settings, naming them', async () => {
    await expect(startAgent(agentConfig(work.dir, { auth: ['entra'], keys: new Map() }), { logger: silentLogger })).rejects.toThrow(
      /TCAB_AGENT_ENTRA_TENANT_ID/,
    );
  });
});

describe('when the signing keys cannot be fetched', () => {
  it('answers 401 with a clear log line (not a crash) while the key set answers 503, and keeps serving HMAC', async () => {
    authority.keysStatus = 503;
    try {
      // A new agent holds no keys yet: it must fetch them, and cannot.
      const agent = await start({ auth: ['hmac', 'entra'], entra: entraConfig() });
      expectGeneric401(await bearer(agent.url, token()));
      expect(String(lastRejection().reason)).toMatch(
        /signing keys could not be fetched \(GET https:\/\/127\.0\.0\.1:\d+\/[0-9a-f-]+\/discovery\/v2\.0\/keys: answered 503/,
      );
      expect(logs.events('entra.keys_unavailable').at(-1)).toMatchObject({
        level: 'error',
        hint: expect.stringContaining('TCAB_AGENT_ENTRA_AUTHORITY'),
      });
      expect((await rawRequest(agent.url, { path: '/healthz' })).status).toBe(200);
      expect((await signedRequest(agent.url, 'GET', '/v1/status')).status).toBe(200);
    } finally {
      authority.keysStatus = undefined;
    }
  });

  it('answers 401 when the authority is unreachable, naming the connection error', async () => {
    const closedPort = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(port));
      });
    });
    const agent = await start({ auth: ['entra'], keys: new Map(), entra: entraConfig({ authority: `https://127.0.0.1:${closedPort}` }) });
    expectGeneric401(await bearer(agent.url, token()), 'Bearer');
    expect(String(lastRejection().reason)).toMatch(/could not be fetched .*ECONNREFUSED/);
  });

  it("answers 401 when the authority's certificate is not trusted (no TCAB_AGENT_ENTRA_CA)", async () => {
    const agent = await start({ auth: ['entra'], keys: new Map(), entra: entraConfig({ ca: undefined }) });
    expectGeneric401(await bearer(agent.url, token()), 'Bearer');
    expect(String(lastRejection().reason)).toMatch(/could not be fetched .*(SELF_SIGNED|self-signed|certificate)/i);
  });
});

describe('the key cache, on a clock of its own', () => {
  it('retries a failed fetch after 10 s, refetches old keys after an hour, and drops a withdrawn key', async () => {
    let clock = 1_800_000_000_000;
    const keys = new EntraSigningKeys({
      authority: authority.url,
      tenantId: TENANT,
      ca: authority.ca,
      logger: silentLogger,
      nowMs: () => clock,
    });
    authority.keysStatus = 500;
    try {
      expect(await keys.find(keyA.kid)).toMatchObject({ ok: false, reason: expect.stringContaining('answered 500') });
      expect(keys.fetches).toBe(1);
      authority.keysStatus = undefined;
      clock += 5_000;
      expect((await keys.find(keyA.kid)).ok).toBe(false);
      expect(keys.fetches).toBe(1);
      clock += 5_000;
    } finally {
      authority.keysStatus = undefined;
    }
    authority.published = [keyA, keyB];
    expect((await keys.find(keyA.kid)).ok).toBe(true);
    expect(keys.fetches).toBe(2);
    // The tenant withdraws key B; within the hour the held keys are used as they are.
    authority.published = [keyA];
    clock += 30 * 60_000;
    expect((await keys.find(keyB.kid)).ok).toBe(true);
    expect(keys.fetches).toBe(2);
    // Past the hour they are fetched again, and B is no longer accepted.
    clock += 31 * 60_000;
    expect((await keys.find(keyB.kid)).ok).toBe(false);
    expect(keys.fetches).toBe(3);
    // Concurrent lookups of an unknown key share one fetch.
    clock += 61_000;
    const results = await Promise.all([1, 2, 3, 4].map(() => keys.find('rotated-in')));
    expect(results.every((r) => !r.ok)).toBe(true);
    expect(keys.fetches).toBe(4);
  });
});

describe('settings', () => {
  const agentEnv = { TCAB_AGENT_DB: '/srv/tcab/tcab.sqlite', TCAB_AGENT_STAGING: '/var/lib/tcab-backup' };
  const problems = (load: () => unknown): string => {
    try {
      load();
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      return (e as ConfigError).problems.join('\n');
    }
    throw new Error('the settings were accepted');
  };

  it('agent: TCAB_AGENT_AUTH=entra needs the Entra settings, not TCAB_AGENT_KEYS, and names each one that is wrong', () => {
    const text = problems(() =>
      loadAgentConfig({
        ...agentEnv,
        TCAB_AGENT_AUTH: 'entra',
        TCAB_AGENT_ENTRA_TENANT_ID: 'contoso.onmicrosoft.com',
        TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS: `${FUNCTION_APP_OID},app-identity`,
        TCAB_AGENT_ENTRA_AUTHORITY: 'http://login.microsoftonline.com',
      }),
    );
    expect(text).toMatch(/TCAB_AGENT_ENTRA_TENANT_ID: "contoso.onmicrosoft.com" is invalid: expected the directory \(tenant\) id, a GUID/);
    expect(text).toMatch(/TCAB_AGENT_ENTRA_AUDIENCE: is not set/);
    expect(text).toMatch(/TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS: .*"app-identity": expected an object id, a GUID/);
    expect(text).toMatch(/TCAB_AGENT_ENTRA_AUTHORITY: .*expected an https URL/);
    expect(text).not.toContain('TCAB_AGENT_KEYS');
    expect(problems(() => loadAgentConfig({ ...agentEnv, TCAB_AGENT_AUTH: 'hmac,kerberos' }))).toMatch(
      /TCAB_AGENT_AUTH: .*expected hmac, entra, or hmac,entra/,
    );
    expect(
      problems(() =>
        loadAgentConfig({
          ...agentEnv,
          TCAB_AGENT_AUTH: 'hmac,entra',
          TCAB_AGENT_ENTRA_TENANT_ID: TENANT,
          TCAB_AGENT_ENTRA_AUDIENCE: AUDIENCE,
          TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS: FUNCTION_APP_OID,
        }),
      ),
    ).toMatch(/TCAB_AGENT_KEYS: is not set/);
  });

  it('agent: reads a complete Entra configuration, with the CA from a file', async () => {
    const caFile = join(work.dir, 'authority-ca.pem');
    await import('node:fs/promises').then((fs) => fs.writeFile(caFile, authority.ca));
    const config = loadAgentConfig({
      ...agentEnv,
      TCAB_AGENT_AUTH: ' entra ',
      TCAB_AGENT_ENTRA_TENANT_ID: TENANT.toUpperCase(),
      TCAB_AGENT_ENTRA_AUDIENCE: `${AUDIENCE}, ${FUNCTION_APP_CLIENT_ID}`,
      TCAB_AGENT_ENTRA_ALLOWED_OBJECT_IDS: `${FUNCTION_APP_OID},${STRANGER_OID.toUpperCase()}`,
      TCAB_AGENT_ENTRA_AUTHORITY: `${authority.url}/`,
      TCAB_AGENT_ENTRA_CA: caFile,
    });
    expect(config.auth).toEqual(['entra']);
    expect(config.keys.size).toBe(0);
    expect(config.entra).toEqual({
      tenantId: TENANT,
      audiences: [AUDIENCE, FUNCTION_APP_CLIENT_ID],
      allowedObjectIds: [FUNCTION_APP_OID, STRANGER_OID],
      authority: authority.url,
      ca: authority.ca,
    });
    expect(loadAgentConfig({ ...agentEnv, TCAB_AGENT_KEYS: `${KEY_ID}=${KEY}` }).auth).toEqual(['hmac']);
  });

  it('client: TCAB_BACKUP_AGENT_AUTH=entra needs a scope ending in /.default and no key; openAgent then sends Bearer tokens', async () => {
    const clientEnv = { TCAB_BACKUP_AGENT_URL: both.url, TCAB_BACKUP_AGENT_AUTH: 'entra' };
    const text = problems(() => loadAgentClientConfig({ ...clientEnv, TCAB_BACKUP_AGENT_ENTRA_SCOPE: AUDIENCE }));
    expect(text).toMatch(/TCAB_BACKUP_AGENT_ENTRA_SCOPE: "api:\/\/tcab-backup-agent" is invalid: expected .* followed by \/\.default/);
    expect(text).not.toMatch(/TCAB_BACKUP_AGENT_KEY/);
    expect(problems(() => loadAgentClientConfig(clientEnv))).toMatch(/TCAB_BACKUP_AGENT_ENTRA_SCOPE: is not set/);
    expect(problems(() => loadAgentClientConfig({ ...clientEnv, TCAB_BACKUP_AGENT_AUTH: 'oauth' }))).toMatch(
      /TCAB_BACKUP_AGENT_AUTH: .*expected hmac or entra/,
    );
    expect(problems(() => loadAgentClientConfig({ ...clientEnv, TCAB_BACKUP_AGENT_AUTH: 'hmac' }))).toMatch(
      /TCAB_BACKUP_AGENT_KEY_ID: is not set/,
    );

    const config = loadAgentClientConfig({ ...clientEnv, TCAB_BACKUP_AGENT_ENTRA_SCOPE: SCOPE });
    expect(config.auth).toEqual({ scheme: 'entra', scope: SCOPE });
    const credential = tokenCredential(() => token());
    const client = openAgent(config, silentLogger, credential);
    expect((await client.status()).database.name).toBe('tcab');
    expect(credential.scopes).toEqual([SCOPE]);
    expect(logs.events('auth.rejected').length).toBeGreaterThan(0);
  });
});

describe('secrets', () => {
  it('never writes a token, or the claims part of one, into the log', () => {
    expect(issued.length).toBeGreaterThan(15);
    const all = logs.lines.join('\n');
    for (const jwt of issued) {
      expect(all).not.toContain(jwt);
      const [, claims, signature] = jwt.split('.');
      expect(all).not.toContain(claims);
      if (signature) expect(all).not.toContain(signature);
    }
    expect(all).not.toContain(KEY);
  });
});
