/**
 * The built CLI as an operator runs it: its own Node process, an S3 target on s3rver. What it prints on
 * stderr is what an operator reads at 3 a.m., so a third party's notice must not be there.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3Server, type S3Server } from '../src/dev/emulators.js';

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
