/**
 * The yardstick: what an operator could do by hand with standard tools, doing the same work as our snapshot
 * job with two targets. One bash script, timed as a whole:
 *   VACUUM INTO a new file (sqlite3 CLI, with a busy timeout as the agent has, since a writer is running),
 *   compress it with the same program and level as the agent's artifact (zstd -1, or gzip -1),
 *   sha256sum of the raw and of the compressed file,
 *   copy the compressed file into two folders (the two targets).
 * It does NOT run integrity_check or count rows, fsync the copies, read them back, or write manifests; our
 * side does all of that, and the comparison is reported with this list so nobody reads more into it.
 */
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { TcabError } from '../src/errors.js';
import { describeExit, runWatched, type Finished } from './processes.js';

export type RecipeCompression = 'zstd' | 'gzip' | 'none';

/** Matches the agent's own compressor settings (src/agent/compression.ts: level 1 for both). */
const COMPRESS: Record<RecipeCompression, string> = {
  zstd: 'zstd -1 -q "$RAW" -o "$PACKED"',
  gzip: 'gzip -1 -c "$RAW" > "$PACKED"',
  none: 'cp "$RAW" "$PACKED"',
};

export const RECIPE_STEPS = ['vacuum', 'compress', 'sha256sum', 'copies'] as const;
export type RecipeStep = (typeof RECIPE_STEPS)[number];

function recipeCommands(compression: RecipeCompression): string[][] {
  return [
    [`sqlite3 -cmd '.timeout 10000' "$DB" "VACUUM INTO '$RAW'"`],
    [COMPRESS[compression]],
    ['sha256sum "$RAW" "$PACKED" > "$SUMS"'],
    ['cp "$PACKED" "$TARGET_A/"', 'cp "$PACKED" "$TARGET_B/"'],
  ];
}

/**
 * The script that runs. Between steps it notes bash's EPOCHREALTIME (a builtin variable: no process, no
 * measurable cost) so the report can say where the recipe's time goes.
 */
export function recipeScript(compression: RecipeCompression): string {
  const lines = ['set -euo pipefail', 'marks=("$EPOCHREALTIME")'];
  for (const step of recipeCommands(compression)) lines.push(...step, 'marks+=("$EPOCHREALTIME")');
  // biome-ignore lint/suspicious/noTemplateCurlyInString: shell syntax, expanded by bash
  lines.push('echo "${marks[@]}" > "$TIMES"');
  return lines.join('\n');
}

/** The recipe as an operator would read it, for the report. */
export function recipeDescription(compression: RecipeCompression): string {
  return recipeCommands(compression).flat().join(' && ');
}

export interface RecipeRun {
  wallMs: number;
  /** Time of each step, from the marks the script notes between them. */
  stepsMs: Record<RecipeStep, number>;
  rawBytes: number;
  packedBytes: number;
  memory: Finished['memory'];
}

/** Runs the recipe once in `folder` (emptied before and after), returning its wall time. */
export async function runRecipe(dbPath: string, folder: string, compression: RecipeCompression): Promise<RecipeRun> {
  await rm(folder, { recursive: true, force: true });
  const targetA = join(folder, 'target-a');
  const targetB = join(folder, 'target-b');
  await mkdir(targetA, { recursive: true });
  await mkdir(targetB, { recursive: true });
  const raw = join(folder, 'snapshot.sqlite');
  const packed = `${raw}${compression === 'zstd' ? '.zst' : compression === 'gzip' ? '.gz' : '.copy'}`;
  const sums = join(folder, 'SHA256SUMS');
  const times = join(folder, 'TIMES');
  const env = {
    PATH: process.env.PATH,
    DB: dbPath,
    RAW: raw,
    PACKED: packed,
    SUMS: sums,
    TIMES: times,
    TARGET_A: targetA,
    TARGET_B: targetB,
  };
  const finished = await runWatched('bash', ['-c', recipeScript(compression)], { env });
  if (finished.code !== 0) {
    throw new TcabError(`The shell recipe ${describeExit(finished)}: ${finished.stderrTail || '(no output)'}`, {
      hint: 'that sqlite3, zstd, gzip and sha256sum are installed (apt-get install sqlite3 zstd) and the disk has room',
      code: 'BENCH_RECIPE_FAILED',
    });
  }
  const [rawStat, packedStat, sumText, timesText] = await Promise.all([
    stat(raw),
    stat(join(targetB, basename(packed))),
    readFile(sums, 'utf8'),
    readFile(times, 'utf8'),
  ]);
  if (sumText.trim().split('\n').length !== 2)
    throw new TcabError(`The shell recipe wrote no sha256 for both files in ${sums}`, { code: 'BENCH_RECIPE_FAILED' });
  const marks = timesText.trim().split(/\s+/).map(Number);
  if (marks.length !== RECIPE_STEPS.length + 1 || marks.some((m) => !Number.isFinite(m))) {
    throw new TcabError(`The shell recipe's step times in ${times} are unreadable: "${timesText.trim()}"`, {
      hint: 'bash 5 or later (EPOCHREALTIME)',
      code: 'BENCH_RECIPE_FAILED',
    });
  }
  const stepsMs = Object.fromEntries(RECIPE_STEPS.map((step, i) => [step, (marks[i + 1]! - marks[i]!) * 1000])) as Record<
    RecipeStep,
    number
  >;
  const run = { wallMs: finished.wallMs, stepsMs, rawBytes: rawStat.size, packedBytes: packedStat.size, memory: finished.memory };
  await rm(folder, { recursive: true, force: true });
  return run;
}
