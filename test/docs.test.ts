import { readdir, readFile, stat } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { SETTINGS } from '../src/settings.js';
import { withSettingsSection } from '../src/settings-doc.js';

it('the README configuration reference lists every setting exactly as the catalogue defines it', async () => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
  // On failure: npm run build && node scripts/settings-table.mjs
  expect(readme).toBe(withSettingsSection(readme));
  for (const s of SETTINGS) expect(readme).toContain(`\`${s.name}\``);
});

it('local.settings.example.json holds only known settings and no real secret', async () => {
  const example = JSON.parse(await readFile(new URL('../local.settings.example.json', import.meta.url), 'utf8'));
  const known = new Set(SETTINGS.map((s) => s.name));
  for (const [name, value] of Object.entries(example.Values as Record<string, string>)) {
    if (['FUNCTIONS_WORKER_RUNTIME', 'AzureWebJobsStorage'].includes(name)) continue;
    const pattern = [...known].some(
      (k) => k === name || (k.includes('<NAME>') && new RegExp(`^${k.replace('<NAME>', '[A-Z0-9_]+')}$`).test(name)),
    );
    expect(pattern, `${name} is not in SETTINGS`).toBe(true);
    if (/KEY$|SECRET/.test(name)) expect(value).toMatch(/^</);
  }
});

const repo = new URL('../', import.meta.url);

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as '-'. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}_\- ]/gu, '')
    .replace(/ /g, '-');
}

async function headings(file: string): Promise<string[]> {
  const text = await readFile(new URL(file, repo), 'utf8');
  return [...text.matchAll(/^#{1,6} +(.+?) *$/gm)].map((m) => m[1]!);
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(new URL(dir, repo), { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(relative(fileURLToPath(repo), e.parentPath), e.name));
}

/**
 * What a reference points at, or why it points at nothing. A Markdown file is named by its path from the
 * repository root (docs/architecture.md), optionally with `#anchor` or `, "Heading"` after it.
 */
async function brokenReference(path: string, anchor: string | undefined, section: string | undefined): Promise<string | undefined> {
  if (!(await stat(new URL(path, repo)).catch(() => undefined))) return `${path} does not exist`;
  const hs = await headings(path);
  if (anchor !== undefined && !hs.some((h) => slug(h) === anchor)) return `${path} has no heading with the anchor #${anchor}`;
  if (section !== undefined && !hs.some((h) => h.replace(/^\d+\.\s*/, '').startsWith(section)))
    return `${path} has no section "${section}"`;
  return undefined;
}

it('every Markdown file (and section) named in a comment of src, bench, infra or scripts exists', async () => {
  const files = (await Promise.all(['src', 'bench', 'infra', 'scripts'].map(filesUnder))).flat().filter((f) => !/\.(png|jpg|zip)$/.test(f));
  const broken: string[] = [];
  let checked = 0;
  for (const file of files) {
    const text = await readFile(new URL(file, repo), 'utf8');
    for (const m of text.matchAll(/((?:[\w.-]+\/)*[\w.-]+\.md)\b(?:#([\w-]+))?(?:,\s*"([^"]+)")?/g)) {
      // A relative path is the file's own (code reading ../README.md); an absolute one on the VM
      // (file:///opt/tcab-backup/docs/deploy.md) names the repository's docs/ too.
      const named = m[1]!;
      const path = named.startsWith('.')
        ? join(dirname(file), named)
        : named.includes('docs/')
          ? named.slice(named.lastIndexOf('docs/'))
          : named;
      checked++;
      const problem = /shared\/design/.test(named) ? 'points outside the repository' : await brokenReference(path, m[2], m[3]);
      if (problem) broken.push(`${file}: "${m[0]}": ${problem}`);
    }
  }
  expect(broken).toEqual([]);
  expect(checked).toBeGreaterThanOrEqual(8);
});

it('every link between the docs resolves to a file and a heading', async () => {
  const docs = (await readdir(new URL('docs/', repo))).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`);
  const broken: string[] = [];
  for (const doc of [...docs, 'README.md']) {
    const text = await readFile(new URL(doc, repo), 'utf8');
    for (const m of text.matchAll(/\]\(([^)\s]*?\.md)?(?:#([^)\s]+))?\)/g)) {
      if (m[1] === undefined && m[2] === undefined) continue;
      if (m[1] && /^[a-z]+:/.test(m[1])) continue;
      const target = m[1] ? relative(fileURLToPath(repo), join(dirname(fileURLToPath(new URL(doc, repo))), m[1])) : doc;
      const problem = await brokenReference(target, m[2], undefined);
      if (problem) broken.push(`${doc}: "${m[0]}": ${problem}`);
    }
  }
  expect(broken).toEqual([]);
});
