/** Small helpers the status page's inline SVG charts share: escaping, number formatting, tick choice. */
export function esc(text: string | number): string {
  return String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

/** Coordinates rounded to a tenth of a pixel keep the page small and stable across runs. */
export function px(n: number): string {
  return String(Math.round(n * 10) / 10);
}

export function utcMinute(iso: string | number | Date): string {
  return new Date(iso).toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
}

export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(5, 10);
}

/** A "nice" step (1, 2 or 5 times a power of ten) giving about `count` ticks up to `max`. */
export function niceStep(max: number, count: number): number {
  const raw = Math.max(max, 1e-9) / Math.max(count, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}

/** Short seconds for chart labels: 850 ms, 4.2 s, 3m10s. */
export function shortMs(ms: number): string {
  if (ms === 0) return '0';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

/** A tick step for byte axes in whole KiB, MiB or GiB (100 MiB, not 190.7 MiB). */
export function niceBytesStep(max: number, count: number): number {
  let unit = 1;
  while (unit * 1024 <= max) unit *= 1024;
  return niceStep(max / unit, count) * unit;
}
