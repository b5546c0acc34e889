/**
 * The function app's deployment package as `npm run package` builds it for azd (a local build): the
 * compiled functions and the production dependencies only, nothing native, every function module loading
 * from it alone, and nothing of it dropped by .funcignore (read with git's own gitignore rules, the
 * syntax azd follows).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..');
const OUT = join(ROOT, '.tmp', 'function-app');

function allFiles(dir: string, prefix = ''): string[] {
  return readdirSync(join(dir, prefix), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? allFiles(dir, join(prefix, e.name)) : [join(prefix, e.name)],
  );
}

beforeAll(() => {
  // dist/ is what `npm test` built just before; the script copies it and installs the production dependencies.
  execFileSync('bash', [join(ROOT, 'scripts', 'function-package.sh')], { cwd: ROOT, stdio: 'pipe', timeout: 240_000 });
}, 300_000);

describe('the function app package (npm run package)', () => {
  it('holds the compiled functions, host.json, package.json and the production dependencies, and no development one', () => {
    expect(readdirSync(OUT).sort()).toEqual(['dist', 'host.json', 'node_modules', 'package-lock.json', 'package.json']);
    expect(readdirSync(join(OUT, 'dist'))).toEqual(['src']);
    for (const dev of ['node', 'typescript', 'vitest', 'azurite', 's3rver', '@types']) {
      expect(existsSync(join(OUT, 'node_modules', dev)), `${dev} is a development dependency`).toBe(false);
    }
    for (const prod of ['@azure/functions', '@aws-sdk/client-s3', 'zod'])
      expect(existsSync(join(OUT, 'node_modules', prod)), prod).toBe(true);
    const native = allFiles(join(OUT, 'node_modules')).filter((f) => f.endsWith('.node') || f.endsWith('binding.gyp'));
    expect(native).toEqual([]);
  });

  it('registers every function from the package alone (no file outside it is needed)', () => {
    const modules = readdirSync(join(OUT, 'dist', 'src', 'functions')).filter((f) => f.endsWith('.js'));
    expect(modules.length).toBeGreaterThanOrEqual(8);
    const script = `for (const f of ${JSON.stringify(modules)}) await import('./dist/src/functions/' + f);`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: OUT,
      encoding: 'utf8',
      timeout: 60_000,
      env: { PATH: process.env.PATH },
    });
    expect(r.status, r.stderr).toBe(0);
    // Outside the Functions host the library names each function it is asked to register, then skips it.
    const registered = [...r.stderr.matchAll(/register function "([A-Za-z]+)"/g)].map((m) => m[1]).sort();
    expect(registered).toEqual([
      'drillTimer',
      'monitorTimer',
      'pgCheckTimer',
      'pgDrillTimer',
      'pruneTimer',
      'replicateTimer',
      'snapshotHttp',
      'snapshotTimer',
      'statusHttp',
      'verifyTimer',
    ]);
  });

  it('loses nothing to .funcignore, and .funcignore does not name node_modules (which would ask azd for a remote build)', () => {
    const gitDir = mkdtempSync(join(tmpdir(), 'tcab-funcignore-'));
    try {
      execFileSync('git', ['--git-dir', gitDir, 'init', '-q']);
      const kept = execFileSync(
        'git',
        ['--git-dir', gitDir, '--work-tree', OUT, 'ls-files', '--others', `--exclude-from=${join(ROOT, '.funcignore')}`],
        {
          encoding: 'utf8',
          maxBuffer: 64 << 20,
        },
      )
        .split('\n')
        .filter(Boolean);
      const keptSet = new Set(kept);
      expect(allFiles(OUT).filter((f) => !keptSet.has(f))).toEqual([]);
      expect(keptSet.has('dist/src/functions/snapshot.js')).toBe(true);
    } finally {
      rmSync(gitDir, { recursive: true, force: true });
    }
  });
});
