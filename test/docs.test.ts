import { readFile } from 'node:fs/promises';
import { expect, it } from 'vitest';
import { SETTINGS } from '../src/config.js';
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
    const pattern = [...known].some((k) => k === name || (k.includes('<NAME>') && new RegExp(`^${k.replace('<NAME>', '[A-Z0-9_]+')}$`).test(name)));
    expect(pattern, `${name} is not in SETTINGS`).toBe(true);
    if (/KEY$|SECRET/.test(name)) expect(value).toMatch(/^</);
  }
});
