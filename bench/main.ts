/**
 * `npm run bench`: measures tcab-backup against its stated targets on this machine and exits non-zero when
 * one is missed. See docs/benchmarks.md for the cases, how to read the figures, and the latest results.
 */
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { errorMessage } from '../src/errors.js';
import { redact } from '../src/log.js';
import { CASES } from './cases.js';
import { describeMachine } from './machine.js';
import { BenchUsageError, parseBenchArgs, USAGE, type BenchOptions } from './options.js';
import { failureLines, renderJson, renderText, type BenchReport, type CaseOutcome } from './report.js';

const progress = (line: string) => process.stderr.write(`bench: ${line}\n`);

async function run(options: BenchOptions): Promise<number> {
  const workDir = await mkdtemp(join(tmpdir(), 'tcab-bench-'));
  // An interrupted run still removes its children (killOnExit) and, unless --keep, its gigabytes of files.
  const interrupted = (signal: NodeJS.Signals) => {
    progress(`interrupted by ${signal}${options.keep ? `; work folder kept: ${workDir}` : ''}`);
    if (!options.keep) rmSync(workDir, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);

  const report: BenchReport = { startedAt: new Date().toISOString(), machine: describeMachine(), options, outcomes: [] };
  try {
    for (const benchCase of CASES.filter((c) => (options.cases ? options.cases.includes(c.name) : !c.optIn))) {
      const caseDir = join(workDir, benchCase.name);
      await mkdir(caseDir, { recursive: true });
      progress(`case ${benchCase.name}: ${benchCase.title}`);
      const t0 = performance.now();
      const outcome: CaseOutcome = { case: benchCase, durationMs: 0 };
      try {
        outcome.result = await benchCase.run(options, { workDir: caseDir, progress: (line) => progress(`${benchCase.name}: ${line}`) });
      } catch (e) {
        outcome.error = redact(errorMessage(e));
      }
      outcome.durationMs = performance.now() - t0;
      report.outcomes.push(outcome);
    }
  } finally {
    if (options.keep) progress(`work folder kept: ${workDir}`);
    else await rm(workDir, { recursive: true, force: true });
  }
  process.stdout.write(options.json ? renderJson(report) : renderText(report));
  return failureLines(report).length ? 1 : 0;
}

async function main(argv: string[]): Promise<number> {
  let options: BenchOptions | undefined;
  try {
    options = parseBenchArgs(
      argv,
      CASES.map((c) => c.name),
    );
  } catch (e) {
    if (!(e instanceof BenchUsageError)) throw e;
    process.stderr.write(`bench: ${e.message}\n\n${USAGE}\n`);
    return 2;
  }
  if (!options) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  return run(options);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench failed: ${redact(errorMessage(e))}\n`);
    process.exitCode = 1;
  },
);
