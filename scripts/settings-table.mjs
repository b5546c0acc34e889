// Rewrites the README's configuration reference from the settings catalogue in src/settings.ts.
// Usage (after `npm run build`): node scripts/settings-table.mjs
import { readFileSync, writeFileSync } from 'node:fs';
import { withSettingsSection } from '../dist/src/settings-doc.js';

const path = new URL('../README.md', import.meta.url);
writeFileSync(path, withSettingsSection(readFileSync(path, 'utf8')));
