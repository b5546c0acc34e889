/**
 * What ships: the production dependencies (what the function app package and the agent load) hold no native
 * addon and nothing node-gyp would build, so a package built on any OS runs on the Linux function app and
 * `npm ci` compiles nothing; and the tests run on the Node that production runs.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as {
  packages: Record<string, { dev?: boolean; hasInstallScript?: boolean; gypfile?: boolean }>;
};

/** Files of one package, not descending into its own node_modules (those are packages of their own). */
function filesOf(dir: string, out: string[] = []): string[] {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      if (entry.name !== 'node_modules') filesOf(join(dir, entry.name), out);
    } else out.push(join(dir, entry.name));
  }
  return out;
}

describe('production dependencies', () => {
  it('hold no .node addon and no binding.gyp (npm ls --omit=dev)', () => {
    const listed = execFileSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: ROOT, encoding: 'utf8' });
    const dirs = listed
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && resolve(l) !== ROOT);
    expect(dirs.length, listed).toBeGreaterThan(20);
    const native = dirs.flatMap((dir) => filesOf(dir)).filter((f) => f.endsWith('.node') || basename(f) === 'binding.gyp');
    expect(native).toEqual([]);
  });

  it('run no install script, so npm ci builds nothing for them (package-lock.json)', () => {
    const scripted = Object.entries(lock.packages)
      .filter(([path, p]) => path !== '' && !p.dev && (p.hasInstallScript || p.gypfile))
      .map(([path]) => path);
    expect(scripted).toEqual([]);
  });
});

describe('the runtime', () => {
  it(`is the Node the project declares (${pkg.engines.node}), the one npm ci installs for the npm scripts`, () => {
    const wanted = /^>=(\d+)\.(\d+)$/.exec(pkg.engines.node);
    expect(wanted, 'engines.node is ">=MAJOR.MINOR"').not.toBeNull();
    const [major, minor] = process.versions.node.split('.').map(Number) as [number, number];
    const [wantMajor, wantMinor] = [Number(wanted![1]), Number(wanted![2])];
    expect(major > wantMajor || (major === wantMajor && minor >= wantMinor), `Node ${process.versions.node}`).toBe(true);
  });
});
