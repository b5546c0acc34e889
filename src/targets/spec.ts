/**
 * Target URLs, parsed and checked before anything connects. A spec carries everything a backend needs;
 * `displayUrl` is the URL without credentials, for logs and errors.
 *
 *   file:///var/backups/tcab
 *   azblob://<account>/<container>[/<prefix>][?endpoint=<blob service URL>]
 *   r2://<account-id>/<bucket>[/<prefix>]
 *   s3://<bucket>[/<prefix>]?endpoint=<URL>&region=<region>[&pathStyle=true]
 */
import { fileURLToPath } from 'node:url';
import { isLoopbackHost } from '../util/net.js';

export type TargetSpec = FileTargetSpec | AzureBlobTargetSpec | S3TargetSpec;

interface BaseSpec {
  name: string;
  displayUrl: string;
}

export interface FileTargetSpec extends BaseSpec {
  kind: 'file';
  /** Absolute directory path. */
  path: string;
}

export interface AzureBlobTargetSpec extends BaseSpec {
  kind: 'azblob';
  account: string;
  container: string;
  /** '' or a prefix ending in '/'. */
  prefix: string;
  /** Blob service URL; default https://<account>.blob.core.windows.net. */
  endpoint: string;
  /** Set for local runs (Azurite); in Azure the managed identity is used instead. */
  connectionString?: string;
}

export interface S3TargetSpec extends BaseSpec {
  kind: 's3';
  /** True for r2:// URLs: Cloudflare R2's limits apply (upload concurrency). */
  r2: boolean;
  bucket: string;
  /** '' or a prefix ending in '/'. */
  prefix: string;
  endpoint: string | undefined;
  region: string;
  forcePathStyle: boolean;
  accessKeyId?: string;
  secretAccessKey?: string;
}

/** Per-target credentials, looked up by target name (upper-cased, '-' as '_'). */
export interface TargetCredentials {
  connectionString?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
}

export const TARGET_NAME_RE = /^[a-z][a-z0-9-]{0,31}$/;
const AZ_ACCOUNT_RE = /^[a-z0-9]{3,24}$/;
const AZ_CONTAINER_RE = /^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/;
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** The environment-variable stem of a target's credentials: blob -> TCAB_BACKUP_TARGET_BLOB_. */
export function credentialVariable(targetName: string, what: 'CONNECTION_STRING' | 'ACCESS_KEY_ID' | 'SECRET_ACCESS_KEY'): string {
  return `TCAB_BACKUP_TARGET_${targetName.toUpperCase().replace(/-/g, '_')}_${what}`;
}

function normalisePrefix(p: string): string {
  const trimmed = p.replace(/^\/+|\/+$/g, '');
  if (trimmed.split('/').some((seg) => seg === '..' || seg === '.')) throw new Error(`prefix "${p}" may not contain "." or ".." segments`);
  return trimmed ? trimmed + '/' : '';
}

/** Throws an Error whose message says what is wrong with the URL (the caller adds which setting). */
export function parseTargetUrl(name: string, rawUrl: string, creds: TargetCredentials = {}): TargetSpec {
  if (!TARGET_NAME_RE.test(name)) {
    throw new Error(`target name "${name}" must be lower-case letters, digits and '-', starting with a letter`);
  }
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    throw new Error(`target "${name}": "${rawUrl}" is not a URL (expected file://, azblob://, r2:// or s3://)`);
  }
  if (url.username || url.password) {
    throw new Error(
      `target "${name}": credentials may not be written in the URL; use ${credentialVariable(name, 'CONNECTION_STRING')} or ${credentialVariable(name, 'ACCESS_KEY_ID')}/${credentialVariable(name, 'SECRET_ACCESS_KEY')}`,
    );
  }
  const display = `${url.protocol}//${url.host}${url.pathname}`;
  switch (url.protocol) {
    case 'file:': {
      if (url.host && url.host !== 'localhost') throw new Error(`target "${name}": file URLs must be file:///absolute/path`);
      const path = fileURLToPath(url).replace(/\/+$/, '') || '/';
      return { kind: 'file', name, displayUrl: display, path };
    }
    case 'azblob:': {
      const account = url.host;
      const [container, ...rest] = url.pathname.replace(/^\//, '').split('/');
      if (!AZ_ACCOUNT_RE.test(account))
        throw new Error(`target "${name}": "${account}" is not a storage account name (3-24 lower-case letters and digits)`);
      if (!container || !AZ_CONTAINER_RE.test(container))
        throw new Error(`target "${name}": "${container ?? ''}" is not a container name (3-63 lower-case letters, digits and '-')`);
      const endpoint = url.searchParams.get('endpoint') ?? `https://${account}.blob.core.windows.net`;
      checkEndpoint(name, endpoint);
      return {
        kind: 'azblob',
        name,
        displayUrl: display,
        account,
        container,
        prefix: normalisePrefix(rest.join('/')),
        endpoint,
        ...(creds.connectionString ? { connectionString: creds.connectionString } : {}),
      };
    }
    case 'r2:':
    case 's3:': {
      const r2 = url.protocol === 'r2:';
      let bucket: string;
      let prefixPath: string;
      let endpoint: string | undefined;
      if (r2) {
        const accountId = url.host;
        if (!/^[0-9a-f]{32}$/.test(accountId))
          throw new Error(`target "${name}": "${accountId}" is not a Cloudflare account id (32 hex characters)`);
        const [b, ...rest] = url.pathname.replace(/^\//, '').split('/');
        bucket = b ?? '';
        prefixPath = rest.join('/');
        endpoint = url.searchParams.get('endpoint') ?? `https://${accountId}.r2.cloudflarestorage.com`;
      } else {
        bucket = url.host;
        prefixPath = url.pathname;
        endpoint = url.searchParams.get('endpoint') ?? undefined;
      }
      if (!BUCKET_RE.test(bucket))
        throw new Error(`target "${name}": "${bucket}" is not a bucket name (3-63 lower-case letters, digits, '.' and '-')`);
      if (endpoint) checkEndpoint(name, endpoint);
      const region = url.searchParams.get('region') ?? (r2 ? 'auto' : 'us-east-1');
      const pathStyle = url.searchParams.get('pathStyle');
      return {
        kind: 's3',
        name,
        displayUrl: display + (endpoint && !r2 ? `?endpoint=${endpoint}` : ''),
        r2,
        bucket,
        prefix: normalisePrefix(prefixPath),
        endpoint,
        region,
        forcePathStyle: pathStyle === null ? !r2 && endpoint !== undefined : pathStyle === 'true',
        ...(creds.accessKeyId ? { accessKeyId: creds.accessKeyId } : {}),
        ...(creds.secretAccessKey ? { secretAccessKey: creds.secretAccessKey } : {}),
      };
    }
    default:
      throw new Error(`target "${name}": unknown scheme "${url.protocol}" (expected file://, azblob://, r2:// or s3://)`);
  }
}

function checkEndpoint(name: string, endpoint: string): void {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    throw new Error(`target "${name}": endpoint "${endpoint}" is not a URL`);
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error(`target "${name}": endpoint must be http(s), got "${u.protocol}"`);
  if (u.protocol === 'http:' && !isLoopbackHost(u.hostname)) {
    throw new Error(`target "${name}": plain http endpoint "${u.host}" is only allowed on loopback (emulators); use https`);
  }
}

/** Parses `name=url,name=url` (TCAB_BACKUP_TARGETS). */
export function parseTargetList(text: string, credsFor: (name: string) => TargetCredentials): TargetSpec[] {
  const specs: TargetSpec[] = [];
  const entries = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (entries.length === 0) throw new Error('no targets: expected name=url[,name=url...]');
  for (const entry of entries) {
    const eq = entry.indexOf('=');
    if (eq <= 0) throw new Error(`entry "${entry}" is not name=url`);
    const name = entry.slice(0, eq).trim();
    if (specs.some((s) => s.name === name)) throw new Error(`target "${name}" is named twice`);
    specs.push(parseTargetUrl(name, entry.slice(eq + 1).trim(), credsFor(name)));
  }
  return specs;
}
