/**
 * Runs the real Bicep compiler (restored from NuGet by scripts/infra-check.sh) on infra/main.bicep.
 * `snapshot` evaluates the template with concrete parameters, the way Azure Resource Manager would
 * before deploying, and returns the resources it would create, with nested modules expanded.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const INFRA = path.join(ROOT, 'infra');
const OUT = path.join(ROOT, '.tmp', 'infra');
export const COMPILED = path.join(OUT, 'main.json');

export const SUBSCRIPTION = '44444444-4444-4444-4444-444444444444';
export const TENANT = '55555555-5555-5555-5555-555555555555';
export const LOCATION = 'westeurope';

export interface ArmResource {
  id: string;
  type: string;
  name: string;
  location?: string;
  kind?: string;
  sku?: { name: string; tier?: string };
  identity?: { type: string; userAssignedIdentities?: Record<string, unknown> };
  tags?: Record<string, string>;
  condition?: string;
  properties?: any;
}

export interface Snapshot {
  resources: ArmResource[];
  outputs: Record<string, unknown>;
  /** The whole file, for "does this text appear anywhere" checks. */
  text: string;
}

export async function runInfraCheck(): Promise<string> {
  const { stdout } = await run('bash', [path.join(ROOT, 'scripts/infra-check.sh')], { cwd: ROOT, maxBuffer: 16 << 20 });
  return stdout;
}

let bicepPath: Promise<string> | undefined;
export function bicep(): Promise<string> {
  bicepPath ??= run('bash', [path.join(ROOT, 'scripts/infra-check.sh'), 'bicep-path'], { cwd: ROOT }).then((r) => r.stdout.trim());
  return bicepPath;
}

function newestBicepSource(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestBicepSource(p));
    else if (/\.(bicep|json)$/.test(entry.name)) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/** The compiled ARM template; built through the check script when missing or older than infra/. */
export async function compiledTemplate(): Promise<any> {
  const built = await stat(COMPILED).then(
    (s) => s.mtimeMs,
    () => 0,
  );
  if (built < newestBicepSource(INFRA)) await runInfraCheck();
  return JSON.parse(await readFile(COMPILED, 'utf8'));
}

/** A value written as a Bicep literal, for .bicepparam files. */
export function bicepLiteral(value: unknown): string {
  if (typeof value === 'string')
    return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\$\{/g, '\\${').replace(/\n/g, '\\n')}'`;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return `[${value.map(bicepLiteral).join(', ')}]`;
  if (value && typeof value === 'object') {
    return `{ ${Object.entries(value)
      .map(([k, v]) => `${/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ? k : bicepLiteral(k)}: ${bicepLiteral(v)}`)
      .join(', ')} }`;
  }
  throw new Error(`cannot write ${String(value)} as a Bicep literal`);
}

/** Parameters every snapshot needs; tests override or add to them. */
export const BASE_PARAMS = {
  environmentName: 'prod',
  location: LOCATION,
  agentUrl: 'https://10.0.1.4:8787',
  alertEmails: 'ops@example.org',
};

/**
 * Evaluates infra/main.bicep with `params`. Rejects with the compiler's message when the template
 * refuses them (a fail() check, a parameter constraint).
 */
export async function snapshot(name: string, params: Record<string, unknown>): Promise<Snapshot> {
  const dir = path.join(OUT, 'snapshots', name);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const using = path.relative(dir, path.join(INFRA, 'main.bicep')).split(path.sep).join('/');
  const lines = [`using '${using}'`, ...Object.entries(params).map(([k, v]) => `param ${k} = ${bicepLiteral(v)}`)];
  const file = path.join(dir, 'main.bicepparam');
  await writeFile(file, lines.join('\n') + '\n');
  try {
    await run(
      await bicep(),
      [
        'snapshot',
        file,
        '--mode',
        'overwrite',
        '--subscription-id',
        SUBSCRIPTION,
        '--tenant-id',
        TENANT,
        '--location',
        LOCATION,
        '--deployment-name',
        'tcab-backup',
      ],
      { cwd: dir, maxBuffer: 16 << 20 },
    );
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${err.stdout ?? ''}${err.stderr ?? ''}`.trim() || err.message);
  }
  const text = await readFile(path.join(dir, 'main.snapshot.json'), 'utf8');
  const parsed = JSON.parse(text) as { predictedResources: ArmResource[]; outputs?: Record<string, unknown>; diagnostics: string[] };
  if (parsed.diagnostics.length) throw new Error(`snapshot "${name}" is incomplete:\n${parsed.diagnostics.join('\n')}`);
  return { resources: parsed.predictedResources, outputs: parsed.outputs ?? {}, text };
}

export function ofType(s: Snapshot, type: string): ArmResource[] {
  return s.resources.filter((r) => r.type.toLowerCase() === type.toLowerCase());
}

export function one(s: Snapshot, type: string, nameEndsWith = ''): ArmResource {
  const found = ofType(s, type).filter((r) => r.name.endsWith(nameEndsWith));
  if (found.length !== 1)
    throw new Error(`expected one ${type} named *${nameEndsWith}, found ${found.map((r) => r.name).join(', ') || 'none'}`);
  return found[0]!;
}

/** The function app's settings as an environment, the way the app will see them. */
export function appSettings(s: Snapshot): Record<string, string> {
  const site = one(s, 'Microsoft.Web/sites');
  const list = site.properties.siteConfig.appSettings as Array<{ name: string; value: string }>;
  const env: Record<string, string> = {};
  for (const { name, value } of list) {
    if (name in env) throw new Error(`app setting ${name} is set twice`);
    env[name] = value;
  }
  return env;
}

export interface KeyVaultReference {
  vault: string;
  secret: string;
}

/**
 * Reads an app setting as a Key Vault reference. The vault URI is built with environment() (the
 * cloud's DNS suffix), which only Azure resolves, so the expression form is accepted too.
 */
export function keyVaultReference(value: string): KeyVaultReference | null {
  const literal = /^@Microsoft\.KeyVault\(SecretUri=https:\/\/([a-z0-9-]+)\.vault\.azure\.net\/secrets\/([A-Za-z0-9-]+)\/?\)$/.exec(value);
  if (literal) return { vault: literal[1]!, secret: literal[2]! };
  const expression =
    /^\[format\('@Microsoft\.KeyVault\(SecretUri=\{0\}secrets\/\{1\}\)', format\('https:\/\/\{0\}\{1\}\/', '([a-z0-9-]+)', environment\(\)\.suffixes\.keyvaultDns\), '([A-Za-z0-9-]+)'\)\]$/.exec(
      value,
    );
  if (expression) return { vault: expression[1]!, secret: expression[2]! };
  return null;
}
