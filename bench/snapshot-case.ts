/**
 * Snapshot case: our snapshot (agent process + client process, two file targets) against the shell recipe,
 * on one database, in one run, alternating sides (shell, ours, shell, ours, ...) so that both meet the same
 * page cache and the same machine load. A writer inserts into the database throughout both sides, as the
 * backend would; during ours it must see no error at all.
 */
import { join } from 'node:path';
import { startWriter, type WriterResult } from '../src/dev/writer.js';
import { TcabError } from '../src/errors.js';
import { startAgentProcess, type AgentProcess } from './agent-process.js';
import { atMost, holds, type BenchCase, type CaseContext, type CaseResult, type Check } from './case.js';
import { prepareDatabase } from './database.js';
import { canWatchMemory, peakByName, type ProcessPeak, type TreePeaks } from './memory.js';
import type { BenchOptions } from './options.js';
import { runOurSnapshot, type OurRun } from './our-snapshot.js';
import { cliArgs, runWatched } from './processes.js';
import { RECIPE_STEPS, recipeDescription, runRecipe, type RecipeCompression, type RecipeRun, type RecipeStep } from './shell-recipe.js';
import { formatMb, formatPercent, formatSeconds, mb, median, round } from './stats.js';

export const TARGETS = { timeRatio: 1.25, storedShare: 0.3, peakRssBytes: 200e6 } as const;
/** The writer's pace: an insert of about 3 KB every 5 ms, busier than the backend ever is. */
const WRITER = { intervalMs: 5, recordBytes: 3000 };

/** Runs `work` while the writer inserts into the database; returns what both did. */
async function withWriter<T>(dbPath: string, work: () => Promise<T>): Promise<{ result: T; writer: WriterResult }> {
  const writer = startWriter(dbPath, WRITER);
  let result: T;
  try {
    await writer.ready;
    result = await work();
  } catch (e) {
    // No writer process may outlive a failed sample; the sample's own failure is what gets reported.
    await writer.stop().catch(() => undefined);
    throw e;
  }
  return { result, writer: await writer.stop() };
}

/** Medians of where our side's time goes, each taken over the samples. */
function ourBreakdown(ours: readonly OurRun[]) {
  const of = (f: (o: OurRun) => number) => median(ours.map(f));
  const uploadMs = (o: OurRun) => Math.max(...o.targets.map((t) => t.uploadMs ?? 0));
  const verifyMs = (o: OurRun) => Math.max(...o.targets.map((t) => t.verifyMs ?? 0));
  // The integrity check and counts run while the artifact is compressed and hashed: the longer of the two counts.
  const agentMs = (o: OurRun) => o.timings.vacuumMs + Math.max(o.timings.checkMs, o.timings.compressMs);
  return {
    agentRequestMs: of((o) => o.agentRequestMs ?? Number.NaN),
    vacuumMs: of((o) => o.timings.vacuumMs),
    checkMs: of((o) => o.timings.checkMs),
    compressMs: of((o) => o.timings.compressMs),
    /** Worker start, staging checks, file removal and the HTTP exchange: the request minus the agent's own timings. */
    agentOtherMs: of((o) => (o.agentRequestMs ?? Number.NaN) - agentMs(o)),
    uploadMs: of(uploadMs),
    verifyMs: of(verifyMs),
    /** Manifests, DELETE of the staged file, settings: the job minus the parts above. */
    restMs: of((o) => o.jobMs - (o.agentRequestMs ?? Number.NaN) - uploadMs(o) - verifyMs(o)),
    jobMs: of((o) => o.jobMs),
    /** Node start, module loading, exit: the client's wall time outside the job. */
    processMs: of((o) => o.wallMs - o.jobMs),
  };
}

function peakOf(p: ProcessPeak | undefined): number {
  return p?.peakHwmBytes ?? Number.NaN;
}

function describeChildren(peaks: readonly ProcessPeak[]): string {
  const named = peakByName(peaks);
  return named.length
    ? named.map((c) => `${c.name} ${formatMb(c.peakHwmBytes)} (${c.processes} process${c.processes === 1 ? '' : 'es'})`).join(', ')
    : 'none seen';
}

async function measure(options: BenchOptions, ctx: CaseContext): Promise<CaseResult> {
  const db = await prepareDatabase(options, ctx.workDir, ctx.progress);
  ctx.progress(
    `database: ${formatMb(db.facts.bytes)}, ${db.facts.runs} runs, ${db.facts.reviews} reviews (${db.cacheHit ? 'cached' : 'generated'}: ${db.cachePath}); working copy made in ${formatSeconds(db.copyMs)}`,
  );

  const agent: AgentProcess = await startAgentProcess({ dbPath: db.path, stagingDir: join(ctx.workDir, 'staging') });
  ctx.progress(
    `agent process ${agent.pid} listening on ${agent.url}, can make ${agent.compressions.join(', ')} (zstd from ${agent.zstdSource})`,
  );
  const compression = (agent.compressions[0] ?? 'gzip') as RecipeCompression;
  // What the processes hold before any snapshot: loading modules, not the database, sets this part.
  const agentAtStart = peakOf(agent.memory().root);
  let clientAtStart = Number.NaN;

  const shell: Array<RecipeRun & { writer: WriterResult }> = [];
  const ours: Array<OurRun & { writer: WriterResult }> = [];
  const agentAfterSample: number[] = [];
  let agentPeaks: TreePeaks;
  try {
    clientAtStart = peakOf((await runWatched(process.execPath, cliArgs('--help'), { env: { PATH: process.env.PATH } })).memory.root);
    for (let i = 1; i <= options.samples; i++) {
      const s = await withWriter(db.path, () => runRecipe(db.path, join(ctx.workDir, 'shell'), compression));
      shell.push({ ...s.result, writer: s.writer });
      ctx.progress(`sample ${i}/${options.samples}: shell recipe ${formatSeconds(s.result.wallMs)}`);
      const o = await withWriter(db.path, () => runOurSnapshot(agent, join(ctx.workDir, `ours-${i}`), options.keep));
      ours.push({ ...o.result, writer: o.writer });
      // Read after every sample: a peak that keeps climbing from sample to sample would be a leak, not a peak.
      agentAfterSample.push(peakOf(agent.memory().root));
      ctx.progress(
        `sample ${i}/${options.samples}: tcab-backup snapshot ${formatSeconds(o.result.wallMs)} (writer: ${o.writer.inserts} inserts, ${o.writer.errors.length} errors; agent peak so far ${formatMb(agentAfterSample.at(-1)!)})`,
      );
    }
  } finally {
    agentPeaks = await agent.stop();
  }

  const shellMs = median(shell.map((s) => s.wallMs));
  const oursMs = median(ours.map((o) => o.wallMs));
  const ratio = oursMs / shellMs;
  const storedShare = median(ours.map((o) => o.artifactBytes / o.snapshotBytes));
  const clientPeak = Math.max(...ours.map((o) => peakOf(o.memory.root)));
  const clientRssPeak = Math.max(...ours.map((o) => o.memory.root?.peakRssBytes ?? Number.NaN));
  const agentPeak = peakOf(agentPeaks.root);
  const writerErrors = ours.flatMap((o) => o.writer.errors);
  const writerInserts = ours.reduce((n, o) => n + o.writer.inserts, 0);
  const copies = ours.flatMap((o) => o.targets.map((t) => ({ ...t, id: o.id })));
  const badCopies = copies.filter((c) => !c.ok);
  const mixed = ours.filter((o) => o.compression !== compression);

  const checks: Check[] = [
    atMost('snapshot time, ours / shell recipe (medians)', ratio, TARGETS.timeRatio, (v) => v.toFixed(2)),
    atMost('bytes stored / raw snapshot bytes', storedShare, TARGETS.storedShare, formatPercent),
    atMost('agent process peak RSS (VmHWM)', agentPeak, TARGETS.peakRssBytes, formatMb),
    atMost('client process peak RSS (VmHWM)', clientPeak, TARGETS.peakRssBytes, formatMb),
    holds(
      'backend writer errors during our snapshots',
      writerErrors.length === 0,
      `${writerErrors.length} errors in ${writerInserts} inserts`,
      `the writer saw ${writerErrors.length} failed inserts during our snapshots, e.g. ${writerErrors.slice(0, 3).join(' | ')}`,
    ),
    holds(
      'each stored artifact sha256 = its manifest',
      badCopies.length === 0,
      `${copies.length - badCopies.length} of ${copies.length} copies`,
      badCopies.map((c) => `snapshot ${c.id} on target "${c.target}": ${c.detail}`).join('; '),
    ),
    holds(
      "our artifact compression = the recipe's",
      mixed.length === 0,
      compression,
      `the agent made ${mixed.map((o) => o.compression).join(', ')} but the recipe used ${compression}: the times do not compare`,
    ),
  ];

  const breakdown = ourBreakdown(ours);
  const shellSteps = Object.fromEntries(RECIPE_STEPS.map((step) => [step, median(shell.map((r) => r.stepsMs[step]))])) as Record<
    RecipeStep,
    number
  >;
  const shellWriter = shell.reduce((acc, s) => ({ inserts: acc.inserts + s.writer.inserts, errors: acc.errors + s.writer.errors.length }), {
    inserts: 0,
    errors: 0,
  });
  const last = ours.at(-1)!;
  const notes = [
    `database: ${formatMb(db.facts.bytes)} (${db.facts.runs} runs, ${db.facts.reviews} reviews, WAL mode, seed ${db.facts.seed}); raw snapshot ${formatMb(last.snapshotBytes)} -> ${formatMb(last.artifactBytes)} ${last.compression}`,
    `shell recipe (one bash script, timed whole): ${recipeDescription(compression)}`,
    '  not in the recipe, done by ours: integrity_check and row counts, fsync of each copy, reading each copy back to check its sha256, manifests',
    'ours: node dist/src/cli/main.js snapshot --json (its own process) -> agent process (node dist/src/cli/main.js agent, 127.0.0.1, HMAC) -> two file:// targets',
    `samples (alternating, shell first): shell ${shell.map((s) => formatSeconds(s.wallMs)).join(', ')} | ours ${ours.map((o) => formatSeconds(o.wallMs)).join(', ')}`,
    `medians: shell ${formatSeconds(shellMs)}, ours ${formatSeconds(oursMs)}; ours per pair / shell: ${ours.map((o, i) => (o.wallMs / shell[i]!.wallMs).toFixed(2)).join(', ')}`,
    `ours, where the time goes (medians): agent request ${formatSeconds(breakdown.agentRequestMs)} = VACUUM INTO ${formatSeconds(breakdown.vacuumMs)} + ` +
      `hash, ${compression} and hash ${formatSeconds(breakdown.compressMs)} (integrity_check and counts ${formatSeconds(breakdown.checkMs)} at the same time) + the rest ${formatSeconds(breakdown.agentOtherMs)}; ` +
      `download to both targets ${formatSeconds(breakdown.uploadMs)}; read-back verify ${formatSeconds(breakdown.verifyMs)}; manifests and clean-up ${formatSeconds(breakdown.restMs)}; ` +
      `client process start and exit ${formatSeconds(breakdown.processMs)}`,
    `shell, where the time goes (medians): VACUUM INTO ${formatSeconds(shellSteps.vacuum)}, ${compression} ${formatSeconds(shellSteps.compress)}, ` +
      `sha256sum ${formatSeconds(shellSteps.sha256sum)}, two cp ${formatSeconds(shellSteps.copies)}`,
    `memory: agent ${formatMb(agentPeak)} (VmRSS peak ${formatMb(agentPeaks.root?.peakRssBytes ?? Number.NaN)}; ${formatMb(agentAtStart)} once started, after each sample ${agentAfterSample.map((b) => mb(b).toFixed(0)).join(', ')} MB), ` +
      `its children: ${describeChildren(agentPeaks.descendants)}; client ${formatMb(clientPeak)} (VmRSS peak ${formatMb(clientRssPeak)}; \`tcab-backup --help\` alone: ${formatMb(clientAtStart)}); ` +
      `shell recipe programs: ${describeChildren(shell.flatMap((s) => s.memory.descendants))}`,
    `backend writer (an insert of ~${WRITER.recordBytes} B every ${WRITER.intervalMs} ms, busy_timeout 5 s): during ours ${writerInserts} inserts, ${writerErrors.length} errors; during the recipe ${shellWriter.inserts} inserts, ${shellWriter.errors} errors`,
  ];
  return {
    checks,
    notes,
    details: {
      database: { ...db.facts, cachePath: db.cachePath, cacheHit: db.cacheHit, copyMs: Math.round(db.copyMs) },
      recipe: recipeDescription(compression),
      compression,
      samples: {
        shell: shell.map((s) => ({
          wallMs: Math.round(s.wallMs),
          stepsMs: s.stepsMs,
          rawBytes: s.rawBytes,
          packedBytes: s.packedBytes,
          writer: { inserts: s.writer.inserts, errors: s.writer.errors },
          programs: peakByName(s.memory.descendants),
        })),
        ours: ours.map((o) => ({
          wallMs: Math.round(o.wallMs),
          jobMs: o.jobMs,
          agentRequestMs: o.agentRequestMs,
          id: o.id,
          snapshotBytes: o.snapshotBytes,
          artifactBytes: o.artifactBytes,
          compression: o.compression,
          timings: o.timings,
          targets: o.targets,
          clientPeakHwmBytes: peakOf(o.memory.root),
          clientPeakRssBytes: o.memory.root?.peakRssBytes,
          writer: { inserts: o.writer.inserts, errors: o.writer.errors },
        })),
      },
      medians: {
        shellMs: Math.round(shellMs),
        oursMs: Math.round(oursMs),
        ratio: round(ratio),
        storedShare: round(storedShare, 4),
        ours: breakdown,
        shellSteps,
      },
      memory: {
        agent: {
          peakHwmBytes: agentPeak,
          peakRssBytes: agentPeaks.root?.peakRssBytes,
          atStartHwmBytes: agentAtStart,
          afterEachSampleHwmBytes: agentAfterSample,
          polls: agentPeaks.polls,
        },
        agentChildren: peakByName(agentPeaks.descendants),
        client: { peakHwmBytes: clientPeak, peakRssBytes: clientRssPeak, helpOnlyHwmBytes: clientAtStart },
      },
    },
  };
}

export const snapshotCase: BenchCase = {
  name: 'snapshot',
  title: 'tcab-backup snapshot (agent + client processes, two targets) vs the shell recipe, same database',
  run: async (options, ctx) => {
    if (!canWatchMemory()) {
      throw new TcabError(
        'The snapshot case reads peak memory from /proc/<pid>/status and /proc/<pid>/task/<tid>/children, which this system lacks',
        {
          hint: 'run the benchmark on Linux (the VM, or a Linux container)',
          code: 'BENCH_NO_PROC',
        },
      );
    }
    return measure(options, ctx);
  },
};
