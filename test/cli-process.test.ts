/**
 * The built CLI as an operator runs it: its own Node process, an S3 target on s3rver. What it prints on
 * stderr is what an operator reads at 3 a.m., so a third party's notice must not be there.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3Server, type S3Server } from '../src/dev/emulators.js';
import { NODE_FLAGS } from '../src/node-flags.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli', 'main.js');
let s3: S3Server;

beforeAll(async () => {
  s3 = await startS3Server({ buckets: ['tcab'] });
});

afterAll(async () => {
  await s3?.stop();
});

function list(extra: Record<string, string> = {}) {
  return spawnSync(process.execPath, [CLI, 'list', '--json'], {
    encoding: 'utf8',
    timeout: 60_000,
    env: {
      PATH: process.env.PATH,
      TCAB_BACKUP_TARGETS: `r2=s3://tcab/cli?endpoint=${s3.endpoint}`,
      TCAB_BACKUP_TARGET_R2_ACCESS_KEY_ID: s3.accessKeyId,
      TCAB_BACKUP_TARGET_R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
      ...extra,
    },
  });
}

describe('tcab-backup in its own process', () => {
  it('lists an S3 target and prints nothing on stderr: no notice of the S3 client about the Node version', () => {
    const r = list();
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ database: 'tcab' });
    expect(r.stderr).toBe('');
  });
});

describe('the built CLI started through its #! line, as the tcab-backup command an operator runs', () => {
  it('passes the Node options of src/node-flags.ts to node and runs', () => {
    const [interpreter, ...rest] = readFileSync(CLI, 'utf8').split('\n', 1)[0]!.replace(/^#!/, '').split(' ');
    // The kernel hands everything after the interpreter to it as one argument; env -S splits it.
    expect(interpreter).toBe('/usr/bin/env');
    expect(rest).toEqual(['-S', 'node', ...NODE_FLAGS]);
    const r = spawnSync(interpreter!, [rest.join(' '), CLI, '--help'], {
      encoding: 'utf8',
      timeout: 60_000,
      env: { PATH: process.env.PATH },
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^Usage: tcab-backup <command>/);
  });
});
