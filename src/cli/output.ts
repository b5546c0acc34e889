/** Human output helpers for the CLI: tables, progress on a TTY (sizes: src/util/format.ts). */
import { formatBytes } from '../util/format.js';

export function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')).join('\n');
}

/** A progress line on stderr when it is a terminal; silent otherwise (scripts, CI, --json). */
export function progressReporter(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
): ((done: number, total: number) => void) & { finish(): void } {
  const started = Date.now();
  const enabled = Boolean(stream.isTTY);
  const report = (done: number, total: number) => {
    if (!enabled) return;
    const secs = Math.max((Date.now() - started) / 1000, 0.001);
    const pct = total > 0 ? ` ${((done / total) * 100).toFixed(0).padStart(3)}%` : '';
    stream.write(`\r${label}${pct}  ${formatBytes(done)} / ${formatBytes(total)}  ${formatBytes(done / secs)}/s   `);
  };
  return Object.assign(report, {
    finish() {
      if (enabled) stream.write('\n');
    },
  });
}
