import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';

const SCRIPT = fileURLToPath(new URL('../scripts/check-layers.mjs', import.meta.url));
const work: string[] = [];
afterAll(async () => {
  for (const dir of work) await rm(dir, { recursive: true, force: true });
});

function checkLayers(srcDir?: string) {
  const r = spawnSync(process.execPath, [SCRIPT, ...(srcDir ? [srcDir] : [])], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout + r.stderr };
}

async function tree(files: Record<string, string>): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'tcab-layers-'));
  work.push(root);
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), text);
  }
  return root;
}

it('no two folders (or top-level files) of src/ import each other, nor loop through others', () => {
  // On failure the output names both imports of each pair: move the shared piece down (often to src/util/).
  const r = checkLayers();
  expect(r.out).toContain('no two parts');
  expect(r.status).toBe(0);
});

it('the check names a pair of folders that import each other, type imports and re-exports included', async () => {
  const src = await tree({
    'jobs/monitor/index.ts': "import { render } from '../../status/page.js';\nexport const run = () => render();\n",
    'status/page.ts': "import type { Run } from '../jobs/settings.js';\nexport const render = (r?: Run) => r;\n",
    'jobs/settings.ts': 'export type Run = number;\n',
    'agent/run.ts': "export { type Env } from '../config.js';\n",
    'config.ts': "import type { A } from './agent/protocol.js';\nexport type Env = A;\n",
    'agent/protocol.ts': 'export type A = string;\n',
    // One way only, and an import in a comment: no pair.
    'cli/main.ts': "// import { x } from '../util/format.js';\nimport { f } from '../util/format.js';\nexport const y = f;\n",
    'util/format.ts': "/** see import('../cli/main.js') */\nexport const f = 1;\n",
  });
  const r = checkLayers(src);
  expect(r.status).toBe(1);
  expect(r.out).toContain(
    "jobs <-> status: src/jobs/monitor/index.ts imports '../../status/page.js', and src/status/page.ts imports '../jobs/settings.js'",
  );
  expect(r.out).toContain("agent <-> config: src/agent/run.ts imports '../config.js', and src/config.ts imports './agent/protocol.js'");
  expect(r.out).not.toContain('cli <-> util');
  expect(r.out).toContain('2 pair(s)');
});

it('the check names a loop of three parts, where no two import each other directly', async () => {
  const src = await tree({
    'agent/run.ts': "import { Env } from '../config.js';\nexport const a: Env = '';\n",
    'config.ts': "import { KEY } from './catalog/layout.js';\nexport type Env = string;\nexport const k = KEY;\n",
    'catalog/layout.ts': "import type { A } from '../agent/run.js';\nexport const KEY = 'k';\nexport type B = A;\n",
  });
  const r = checkLayers(src);
  expect(r.status).toBe(1);
  expect(r.out).not.toContain('pair(s)');
  expect(r.out).toMatch(/agent -> config -> catalog -> agent|config -> catalog -> agent -> config|catalog -> agent -> config -> catalog/);
  expect(r.out).toContain("src/catalog/layout.ts imports '../agent/run.js'");
});
