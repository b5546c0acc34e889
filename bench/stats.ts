/** Small numeric helpers for reporting: medians of samples and units an operator reads at a glance. */

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Megabytes in the decimal sense (1 MB = 1,000,000 bytes), the unit the targets are stated in. */
export function mb(bytes: number): number {
  return bytes / 1e6;
}

export function formatMb(bytes: number): string {
  return `${mb(bytes).toFixed(bytes < 10e6 ? 2 : 1)} MB`;
}

export function formatSeconds(ms: number): string {
  return ms < 1000 ? `${ms.toFixed(ms < 10 ? 2 : 0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function formatPercent(share: number): string {
  return `${(share * 100).toFixed(1)}%`;
}

export function round(value: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
