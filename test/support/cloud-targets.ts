/**
 * Real Azure Blob and Cloudflare R2 targets for `npm run test:cloud`, from TCAB_TEST_AZBLOB_* and
 * TCAB_TEST_R2_*. Every run works under its own prefix (`tcab-cloud-test/<time>-<random>/`) and removes
 * what it wrote. Pointing the variables at Azurite and s3rver is a dry run of the same code (README).
 */
import { randomBytes } from 'node:crypto';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { FAST_RETRY } from './world.js';

export const AZBLOB_VARIABLES = ['TCAB_TEST_AZBLOB_ACCOUNT_URL', 'TCAB_TEST_AZBLOB_CONTAINER'] as const;
/** One of these authenticates to the storage account. */
export const AZBLOB_SECRETS = ['TCAB_TEST_AZBLOB_SAS', 'TCAB_TEST_AZBLOB_KEY'] as const;
export const R2_VARIABLES = [
  'TCAB_TEST_R2_ENDPOINT',
  'TCAB_TEST_R2_BUCKET',
  'TCAB_TEST_R2_ACCESS_KEY_ID',
  'TCAB_TEST_R2_SECRET_ACCESS_KEY',
] as const;

/** What is missing from `env` for a cloud run, one entry per variable (or pair of alternatives). */
export function missingCloudVariables(env: NodeJS.ProcessEnv = process.env): string[] {
  const missing: string[] = AZBLOB_VARIABLES.filter((v) => !env[v]);
  if (!AZBLOB_SECRETS.some((v) => env[v])) missing.push(AZBLOB_SECRETS.join(' or '));
  missing.push(...R2_VARIABLES.filter((v) => !env[v]));
  return missing;
}

/** Throws, naming every missing variable, unless the cloud run has all it needs. */
export function requireCloudVariables(env: NodeJS.ProcessEnv = process.env): void {
  const missing = missingCloudVariables(env);
  if (missing.length === 0) return;
  throw new Error(
    `npm run test:cloud runs the target conformance suite against real Azure Blob and R2, and these variables are not set: ${missing.join(', ')}. ` +
      'Check: the README, "Testing against Azure Blob and R2" (what each variable holds, and a dry run against Azurite and s3rver).',
  );
}

/** A prefix no other run uses, under one folder-like root that is easy to find and remove by hand. */
export function runPrefix(): string {
  const time = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, 'Z');
  return `tcab-cloud-test/${time}-${randomBytes(4).toString('hex')}`;
}

/** The storage account's name: the first label of <account>.blob.core.windows.net, else the first path segment (Azurite). */
function accountOf(accountUrl: URL): string {
  const host = /^([a-z0-9]{3,24})\.blob\.core\.windows\.net$/.exec(accountUrl.hostname);
  const account = host?.[1] ?? accountUrl.pathname.split('/').filter(Boolean)[0];
  if (!account) {
    throw new Error(
      `TCAB_TEST_AZBLOB_ACCOUNT_URL "${accountUrl.origin}" names no storage account. Check: it is https://<account>.blob.core.windows.net (or an emulator's URL ending in /<account>)`,
    );
  }
  return account;
}

/** The Azure Blob target at `prefix` in TCAB_TEST_AZBLOB_CONTAINER, authenticated by the SAS or the account key. */
export function azblobCloudTarget(
  prefix: string,
  tuning: { pageSize?: number; partSize?: number } = {},
  env: NodeJS.ProcessEnv = process.env,
): Target {
  const raw = env.TCAB_TEST_AZBLOB_ACCOUNT_URL!.replace(/\/+$/, '');
  const account = accountOf(new URL(raw));
  const sas = env.TCAB_TEST_AZBLOB_SAS?.replace(/^\?/, '');
  const connectionString = sas
    ? `BlobEndpoint=${raw};SharedAccessSignature=${sas}`
    : `DefaultEndpointsProtocol=${new URL(raw).protocol.slice(0, -1)};AccountName=${account};AccountKey=${env.TCAB_TEST_AZBLOB_KEY};BlobEndpoint=${raw};`;
  const spec = parseTargetUrl('azblob-cloud', `azblob://${account}/${env.TCAB_TEST_AZBLOB_CONTAINER}/${prefix}?endpoint=${raw}`, {
    connectionString,
  });
  return openTarget(spec, { retry: FAST_RETRY, tuning });
}

/**
 * The R2 target at `prefix` in TCAB_TEST_R2_BUCKET. An endpoint of the form https://<account id>.r2.cloudflarestorage.com
 * is R2 as production addresses it; any other (an emulator, for a dry run) is addressed path-style.
 */
export function r2CloudTarget(
  prefix: string,
  tuning: { pageSize?: number; partSize?: number } = {},
  env: NodeJS.ProcessEnv = process.env,
): Target {
  const endpoint = env.TCAB_TEST_R2_ENDPOINT!.replace(/\/+$/, '');
  const accountId = /^([0-9a-f]{32})\.r2\.cloudflarestorage\.com$/.exec(new URL(endpoint).hostname)?.[1];
  const url = `r2://${accountId ?? '0'.repeat(32)}/${env.TCAB_TEST_R2_BUCKET}/${prefix}?endpoint=${endpoint}${accountId ? '' : '&pathStyle=true'}`;
  const spec = parseTargetUrl('r2-cloud', url, {
    accessKeyId: env.TCAB_TEST_R2_ACCESS_KEY_ID!,
    secretAccessKey: env.TCAB_TEST_R2_SECRET_ACCESS_KEY!,
  });
  return openTarget(spec, { retry: FAST_RETRY, tuning });
}

/**
 * Removes everything under `target` (the run's prefix): its objects and its unfinished uploads. Returns
 * the keys it deleted; throws naming the prefix when anything is left.
 */
export async function removeEverything(target: Target): Promise<number> {
  let deleted = 0;
  const keys: string[] = [];
  for await (const o of target.list('')) keys.push(o.key);
  for (const key of keys) {
    await target.delete(key);
    deleted++;
  }
  await target.abortStaleUploads?.(new Date(Date.now() + 60_000));
  const left: string[] = [];
  for await (const o of target.list('')) left.push(o.key);
  if (left.length > 0) {
    throw new Error(
      `target "${target.name}": ${left.length} object(s) left under the test prefix after clean-up (${left.slice(0, 5).join(', ')}). Check: delete everything under ${target.url} by hand`,
    );
  }
  return deleted;
}
