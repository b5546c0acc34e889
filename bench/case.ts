/**
 * What a benchmark case is and what it hands back. A case measures, checks its figures against stated
 * targets, and returns both; main.ts only runs cases and reports. A new case is one module exporting a
 * BenchCase, listed in cases.ts.
 */
import type { BenchOptions } from './options.js';

/** One figure held against a target, e.g. "ours/shell time ratio 1.12 <= 1.25". */
export interface Check {
  /** What is measured, in the operator's words. */
  measure: string;
  value: number;
  /** How the value is shown, e.g. "1.12", "23.4%", "143.2 MB". */
  shown: string;
  /** The target as shown, e.g. "<= 1.25". */
  target: string;
  ok: boolean;
  /** When missed: by how much, in words (e.g. "0.16 over, 13% above the target"). */
  miss?: string;
}

/** Services a case may use: a work folder it owns, and a progress line on stderr. */
export interface CaseContext {
  /** A fresh folder for this case under the run's work folder; removed at the end unless --keep. */
  workDir: string;
  progress(line: string): void;
}

export interface CaseResult {
  checks: Check[];
  /** Human lines printed under the summary table (what was measured, samples, breakdowns). */
  notes: string[];
  /** Everything measured, for --json. */
  details: Record<string, unknown>;
}

export interface BenchCase {
  name: string;
  /** One line: what the case compares. */
  title: string;
  /** Run only when named with --case (it takes too long for the default run at the default size). */
  optIn?: boolean;
  run(options: BenchOptions, ctx: CaseContext): Promise<CaseResult>;
}

/** A check that the value stays at or below the limit; the miss says by how much. */
export function atMost(measure: string, value: number, limit: number, show: (v: number) => string): Check {
  const ok = value <= limit;
  const check: Check = { measure, value, shown: show(value), target: `<= ${show(limit)}`, ok };
  if (!ok)
    check.miss = `${show(value)} is ${show(value - limit)} over the target of ${show(limit)} (${((value / limit - 1) * 100).toFixed(0)}% above)`;
  return check;
}

/** A check that something that must hold did hold; `detail` explains a failure. */
export function holds(measure: string, ok: boolean, shown: string, detail: string): Check {
  return { measure, value: ok ? 1 : 0, shown, target: 'must hold', ok, ...(ok ? {} : { miss: detail }) };
}
