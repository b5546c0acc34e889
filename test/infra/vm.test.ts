/**
 * The VM side: the agent's systemd unit (checked by systemd itself) and its environment file example
 * (checked by the agent's own configuration loader).
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { loadAgentConfig } from '../../src/agent/config.js';
import { NODE_FLAGS } from '../../src/node-flags.js';
import { SETTINGS } from '../../src/settings.js';
import { INFRA } from './bicep.js';

const run = promisify(execFile);
const UNIT_NAME = 'tcab-backup-agent.service';
const UNIT = path.join(INFRA, 'vm', UNIT_NAME);
const ENV_EXAMPLE = path.join(INFRA, 'vm', 'agent.env.example');

/** key -> every value it is given, in order (systemd allows repeating a directive). */
function directives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!]);
  }
  return out;
}

function envFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!;
  }
  return env;
}

let tmp: string;
let unit: Map<string, string[]>;
let example: Record<string, string>;
const first = (key: string) => unit.get(key)?.[0];

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'tcab-infra-vm-'));
  unit = directives(await readFile(UNIT, 'utf8'));
  example = envFile(await readFile(ENV_EXAMPLE, 'utf8'));
});

afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('infra/vm: the agent unit', () => {
  it('passes systemd-analyze verify without a single remark', async () => {
    const copy = path.join(tmp, UNIT_NAME);
    await copyFile(UNIT, copy);
    const { stdout, stderr } = await run('systemd-analyze', ['verify', copy]);
    expect(`${stdout}${stderr}`.trim()).toBe('');
  });

  it('rates as a well-confined service in systemd-analyze security (exposure at most 2.0)', async () => {
    const copy = path.join(tmp, UNIT_NAME);
    await copyFile(UNIT, copy);
    const { stdout } = await run('systemd-analyze', ['security', '--offline=true', '--no-pager', copy]);
    const exposure = /Overall exposure level for .*: (\d+\.\d+)/.exec(stdout);
    expect(exposure, stdout).not.toBeNull();
    expect(Number(exposure![1])).toBeLessThanOrEqual(2.0);
  });

  it('runs `tcab-backup agent` as a dedicated user with the hardening the deployment guide promises', () => {
    expect(first('ExecStart')).toMatch(/ agent$/);
    // The Node options of src/node-flags.ts, before the script (after it they would be the agent's arguments).
    expect(first('ExecStart')).toBe(`/usr/bin/node ${NODE_FLAGS.join(' ')} /opt/tcab-backup/dist/src/cli/main.js agent`);
    expect(first('User')).toBe('tcab-backup');
    expect(first('User')).not.toBe('root');
    expect(first('NoNewPrivileges')).toBe('yes');
    expect(first('ProtectSystem')).toBe('strict');
    expect(first('ProtectHome')).toBe('yes');
    expect(first('PrivateTmp')).toBe('yes');
    expect(first('Restart')).toBe('on-failure');
    expect(first('EnvironmentFile')).toBe('/etc/tcab-backup/agent.env');
    expect(first('CapabilityBoundingSet')).toBe('');
  });

  it('agrees with the environment example: staging, the database folder and the TLS credentials', () => {
    expect(example.TCAB_AGENT_STAGING).toBe(`/var/lib/${first('StateDirectory')}`);
    expect(first('StateDirectoryMode')).toBe('0700');
    const writable = (unit.get('ReadWritePaths') ?? []).flatMap((v) => v.split(/\s+/));
    expect(writable).toContain(path.posix.dirname(example.TCAB_AGENT_DB!));
    const credentials = new Map((unit.get('LoadCredential') ?? []).map((v) => v.split(':') as [string, string]));
    for (const setting of ['TCAB_AGENT_TLS_CERT', 'TCAB_AGENT_TLS_KEY']) {
      const m = new RegExp(`^/run/credentials/${UNIT_NAME.replace(/\./g, '\\.')}/(.+)$`).exec(example[setting]!);
      expect(m, `${setting} points at a credential of the unit`).not.toBeNull();
      expect(credentials.has(m![1]!), `LoadCredential=${m![1]}:...`).toBe(true);
    }
  });
});

describe('infra/vm: the agent unit and the application drill', () => {
  it("keeps the agent and the backend it starts off every network but loopback, the function subnet and the VM's own services", async () => {
    expect(unit.get('IPAddressDeny')).toEqual(['any']);
    const allowed = (unit.get('IPAddressAllow') ?? []).flatMap((v) => v.split(/\s+/));
    expect(allowed).toEqual(expect.arrayContaining(['localhost', 'link-local', '168.63.129.16']));
    // The function app's integration subnet: the same one the deployment guide's NSG rule admits.
    const subnets = allowed.filter((a) => /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(a));
    expect(subnets).toHaveLength(1);
    const deploy = await readFile(path.join(INFRA, '..', 'docs', 'deploy.md'), 'utf8');
    expect(deploy).toContain(`--source-address-prefixes ${subnets[0]} --destination-port-ranges 8787`);
    // Nothing else opens the fence: no address family beyond IP and Unix sockets.
    expect(first('RestrictAddressFamilies')).toBe('AF_INET AF_INET6 AF_UNIX');
  });

  it("says how the backend runs: as the unit's user, with an optional settings file, writing only to staging", async () => {
    const text = await readFile(UNIT, 'utf8');
    expect(text).toMatch(/TCAB_AGENT_DRILL_BACKEND_COMMAND/);
    expect(unit.get('EnvironmentFile')).toEqual(['/etc/tcab-backup/agent.env', '-/etc/tcab-backup/drill-backend.env']);
    const writable = (unit.get('ReadWritePaths') ?? []).flatMap((v) => v.split(/\s+/));
    expect(writable).toContain(example.TCAB_AGENT_STAGING);
    expect(writable).toHaveLength(2);
    // The example leaves it unset: application drills are refused (501) until the operator configures one.
    expect(example.TCAB_AGENT_DRILL_BACKEND_COMMAND).toBe('');
    const deploy = await readFile(path.join(INFRA, '..', 'docs', 'deploy.md'), 'utf8');
    expect(deploy).toMatch(/TCAB_AGENT_DRILL_BACKEND_COMMAND=/);
    expect(deploy).toContain('/etc/tcab-backup/drill-backend.env');
    expect(deploy).toContain('TCAB_BACKUP_DRILL_APP');
  });
});

describe('infra/vm: agent.env.example', () => {
  it('lists every agent setting and nothing else', () => {
    const agentSettings = SETTINGS.filter((s) => s.side === 'agent')
      .map((s) => s.name)
      .sort();
    expect(Object.keys(example).sort()).toEqual(agentSettings);
  });

  it('cannot be used unedited: the agent refuses the placeholder key and names the setting', () => {
    let error: unknown;
    try {
      loadAgentConfig(example);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems.join('\n')).toMatch(
      /TCAB_AGENT_KEYS: the secret of key "functions-1" is shorter than 32 characters/,
    );
  });

  it('is accepted by the agent once a real key and certificate are filled in', async () => {
    const cert = path.join(tmp, 'agent.crt');
    const key = path.join(tmp, 'agent.key');
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=10.0.1.4',
    ]);
    const secret = (await run('openssl', ['rand', '-hex', '32'])).stdout.trim();
    const config = loadAgentConfig({
      ...example,
      TCAB_AGENT_KEYS: example.TCAB_AGENT_KEYS!.replace(/=.*$/, `=${secret}`),
      TCAB_AGENT_TLS_CERT: cert,
      TCAB_AGENT_TLS_KEY: key,
    });
    expect(config.host).toBe('10.0.1.4');
    expect(config.port).toBe(8787);
    expect(config.tls?.cert).toContain('BEGIN CERTIFICATE');
    expect([...config.keys.keys()]).toEqual(['functions-1']);
    expect(config.dbPath).toBe(example.TCAB_AGENT_DB);
    expect(config.stagingTtlMs).toBe(60 * 60 * 1000);
  });
});
