/**
 * `published_at` as an ISO time. Stored text is usually ISO already; SQLite's own "YYYY-MM-DD HH:MM:SS" form is
 * UTC by SQLite's convention (JavaScript would read it as local time); numbers are unix seconds or milliseconds.
 * Anything else is passed through as stored, so the operator still sees it.
 */
export function toIsoTime(value: string | number | null): string | null {
  if (value === null) return null;
  if (typeof value === 'number') return new Date(value < 1e11 ? value * 1000 : value).toISOString();
  const sqliteForm = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(value);
  const ms = Date.parse(sqliteForm ? `${value.replace(' ', 'T')}Z` : value);
  const hasZone = sqliteForm || /(Z|[+-]\d{2}:?\d{2})$/i.test(value);
  return Number.isNaN(ms) || !hasZone ? value : new Date(ms).toISOString();
}
