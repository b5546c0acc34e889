// Prints the configuration reference (Markdown) from the settings catalogue in src/config.ts.
// Run after `npm run build`: node scripts/settings-table.mjs
import { SETTINGS } from '../dist/src/config.js';

const esc = (s) => s.replace(/\|/g, '\\|');
for (const side of ['backup', 'agent']) {
  console.log(side === 'backup' ? '\n### Function app and CLI\n' : '\n### Snapshot agent (on the VM)\n');
  console.log('| setting | default | description |');
  console.log('|---|---|---|');
  for (const s of SETTINGS.filter((x) => x.side === side)) {
    const flags = [s.requiredInAzure ? 'required' : '', s.secret ? 'secret' : ''].filter(Boolean).join(', ');
    console.log(`| \`${s.name}\`${flags ? ` (${flags})` : ''} | ${s.default ? `\`${esc(s.default)}\`` : ''} | ${esc(s.description)} |`);
  }
}
