/** Renders the configuration reference (Markdown) from the settings catalogue, for the README. */
import { SETTINGS, type SettingDoc } from './settings.js';

const esc = (s: string) => s.replace(/\|/g, '\\|');

export function settingsMarkdown(settings: readonly SettingDoc[] = SETTINGS): string {
  const out: string[] = [];
  for (const side of ['backup', 'agent'] as const) {
    out.push(side === 'backup' ? '### Function app and CLI' : '### Snapshot agent (on the VM)', '');
    out.push('| setting | default | description |', '|---|---|---|');
    for (const s of settings.filter((x) => x.side === side)) {
      const flags = [s.requiredInAzure ? 'required in Azure' : '', s.secret ? 'secret' : ''].filter(Boolean).join(', ');
      out.push(`| \`${s.name}\`${flags ? ` (${flags})` : ''} | ${s.default ? `\`${esc(s.default)}\`` : ''} | ${esc(s.description)} |`);
    }
    out.push('');
  }
  return out.join('\n');
}

export const SETTINGS_BEGIN = '<!-- settings:begin -->';
export const SETTINGS_END = '<!-- settings:end -->';

/** The README with its settings section replaced by the current catalogue. */
export function withSettingsSection(readme: string): string {
  const a = readme.indexOf(SETTINGS_BEGIN);
  const b = readme.indexOf(SETTINGS_END);
  if (a < 0 || b < a) throw new Error(`README.md lacks the ${SETTINGS_BEGIN} ... ${SETTINGS_END} markers`);
  return `${readme.slice(0, a + SETTINGS_BEGIN.length)}\n${settingsMarkdown()}${readme.slice(b)}`;
}
