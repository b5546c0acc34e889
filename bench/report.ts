/**
 * The benchmark's output: a short table of every checked figure against its target, each case's notes, and
 * one line per missed target saying which and by how much; or the same as one JSON document (--json).
 */
import { table } from '../src/cli/output.js';
import type { BenchCase, CaseResult } from './case.js';
import { machineLine, type MachineFacts } from './machine.js';
import type { BenchOptions } from './options.js';

export interface CaseOutcome {
  case: BenchCase;
  result?: CaseResult;
  /** Set when the case could not finish; its figures are then missing, and the run fails. */
  error?: string;
  durationMs: number;
}

export interface BenchReport {
  startedAt: string;
  machine: MachineFacts;
  options: BenchOptions;
  outcomes: CaseOutcome[];
}

/** One line per missed target or failed case; empty when everything met its target. */
export function failureLines(report: BenchReport): string[] {
  const lines: string[] = [];
  for (const o of report.outcomes) {
    if (o.error !== undefined) lines.push(`FAILED ${o.case.name}: the case did not finish: ${o.error}`);
    for (const c of o.result?.checks ?? [])
      if (!c.ok) lines.push(`MISSED ${o.case.name}: ${c.measure}: ${c.miss ?? `${c.shown}, target ${c.target}`}`);
  }
  return lines;
}

export function renderText(report: BenchReport): string {
  const { options } = report;
  const out: string[] = [
    `tcab-backup benchmark, ${report.startedAt}, database ${options.sizeLabel} (seed ${options.seed}), ${options.samples} sample pair(s)`,
    `machine: ${machineLine(report.machine)}`,
    '',
  ];
  const rows = [['CASE', 'MEASURE', 'VALUE', 'TARGET', 'RESULT']];
  for (const o of report.outcomes) {
    if (o.error !== undefined) rows.push([o.case.name, 'case did not finish', '-', '-', 'FAILED']);
    for (const c of o.result?.checks ?? []) rows.push([o.case.name, c.measure, c.shown, c.target, c.ok ? 'ok' : 'MISSED']);
  }
  out.push(table(rows), '');
  for (const o of report.outcomes) {
    out.push(`${o.case.name}: ${o.case.title} (${(o.durationMs / 1000).toFixed(0)} s)`);
    for (const note of o.result?.notes ?? []) out.push(`  ${note}`);
    if (o.error !== undefined) out.push(`  error: ${o.error}`);
  }
  const failures = failureLines(report);
  out.push('', ...(failures.length ? failures : ['every target met']));
  return out.join('\n') + '\n';
}

export function renderJson(report: BenchReport): string {
  const failures = failureLines(report);
  return (
    JSON.stringify(
      {
        ok: failures.length === 0,
        startedAt: report.startedAt,
        machine: report.machine,
        options: report.options,
        cases: report.outcomes.map((o) => ({
          name: o.case.name,
          title: o.case.title,
          ok: o.error === undefined && (o.result?.checks.every((c) => c.ok) ?? false),
          durationMs: Math.round(o.durationMs),
          ...(o.error !== undefined ? { error: o.error } : {}),
          checks: o.result?.checks ?? [],
          notes: o.result?.notes ?? [],
          details: o.result?.details ?? {},
        })),
        failures,
      },
      null,
      2,
    ) + '\n'
  );
}
