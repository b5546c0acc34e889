/**
 * Format-2 case: an hour of snapshots every 5 minutes, format 2 against format 1, on the same database states
 * in the same run. Between two snapshots the backend's write load is replayed at its rate (15 runs and their
 * reviews, one transaction each, 20 s of simulated time apart: 5 minutes), then `tcab-backup snapshot
 * --format 2` and `--format 1` run one after the other (which goes first alternates) as their own processes,
 * each format against an agent process of its own (so each agent's peak memory is its format's alone), each
 * to its own file target. Nothing waits in real time. Every process runs with the Node options production
 * sets (src/node-flags.ts).
 *
 * Measured against issue 13's targets: bytes a format-2 snapshot after the first adds to its target (chunks,
 * chunk list and manifest: the growth of the target folder) against the database's bytes; the format-2 target
 * folder after the 12 against one format-1 snapshot's artifact; the median snapshot time of snapshots 2..12,
 * format 2 against format 1; the restore time of the newest snapshot of each (`tcab-backup restore --latest`);
 * peak RSS of each format's agent and of the clients.
 *
 * Opt-in (`--case format2`): 24 snapshots and 6 restores take about 100 s at 100 MB and 8 minutes at the
 * default 1 GB on the 2-core test machine, more than the rest of the default run together.
 */
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { manifestKey } from '../src/catalog/layout.js';
import { TcabError } from '../src/errors.js';
import { NODE_FLAGS } from '../src/node-flags.js';
import { startAgentProcess, type AgentProcess } from './agent-process.js';
import { atMost, holds, type BenchCase, type CaseContext, type CaseResult, type Check } from './case.js';
import { prepareDatabase } from './database.js';
import { publishRuns } from './dedup-measure.js';
import { canWatchMemory, peakByName, type TreePeaks } from './memory.js';
import type { BenchOptions } from './options.js';
import { cliArgs, describeExit, runWatched, type Finished } from './processes.js';
import { formatMb, formatPercent, formatSeconds, median, round } from './stats.js';

export const FORMAT2_TARGETS = {
  /** Bytes a snapshot after the first adds to its target, against the database's bytes. */
  uploadShare: 0.02,
  /** The format-2 target after all snapshots, against one format-1 artifact. */
  storedRatio: 1.5,
  /** Median format-2 snapshot time (snapshots 2..n) against format 1's. */
  timeRatio: 1.25,
  /** Restore of the newest format-2 snapshot against the newest format-1 one. */
  restoreRatio: 1,
  peakRssBytes: 200e6,
} as const;

/** 12 snapshots 5 minutes apart: an hour. */
const SNAPSHOTS = 12;
/** Runs published between two snapshots: TCAB's rate of a few a minute, one every 20 s for 5 minutes. */
const RUNS_BETWEEN = 15;
const DATABASE = 'tcab';
const FORMATS = [1, 2] as const;
type Format = (typeof FORMATS)[number];

interface SnapshotSample {
  format: Format;
  index: number;
  wallMs: number;
  jobMs: number;
  id: string;
  snapshotBytes: number;
  snapshotSha256: string;
  tables: Record<string, number>;
  /** Format 1: the artifact's bytes. */
  artifactBytes?: number;
  /** Format 2: chunk bytes the client reports as written. */
  uploadedChunkBytes?: number;
  chunks?: number;
  /** Bytes the target folder grew by: everything this snapshot wrote. */
  addedBytes: number;
  folderBytes: number;
  clientHwmBytes: number;
}

interface RestoreSample {
  format: Format;
  wallMs: number;
  durationMs: number;
  id: string;
  bytes: number;
  tables: Record<string, number>;
  clientHwmBytes: number;
}

/** Bytes of every file under `root`. */
async function folderBytes(root: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await stat(join(entry.parentPath, entry.name))).size;
  }
  return total;
}

function clientEnv(root: string, agent?: { url: string; keyId: string; key: string }): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    TCAB_BACKUP_TARGETS: `target=file://${root}`,
    TCAB_BACKUP_DATABASE: DATABASE,
    ...(agent ? { TCAB_BACKUP_AGENT_URL: agent.url, TCAB_BACKUP_AGENT_KEY_ID: agent.keyId, TCAB_BACKUP_AGENT_KEY: agent.key } : {}),
    TCAB_LOG_LEVEL: 'warn',
  };
}

function parseAnswer<T>(finished: Finished, what: string, where: string): T {
  let answer: (T & { ok?: boolean }) | undefined;
  try {
    answer = JSON.parse(finished.stdout) as T & { ok?: boolean };
  } catch {
    // no JSON: the failure below says what the client printed
  }
  if (finished.code !== 0 || !answer || answer.ok === false) {
    throw new TcabError(`${what} ${describeExit(finished)}: ${finished.stderrTail || finished.stdout.slice(0, 1000) || '(no output)'}`, {
      hint: `the target folder ${where}, and the agent process's log`,
      code: 'BENCH_FORMAT2_FAILED',
    });
  }
  return answer;
}

interface SnapshotAnswer {
  manifest: {
    id: string;
    snapshot: { bytes: number; sha256: string };
    database: { tables: Record<string, number> };
    artifact?: { bytes: number };
    chunkList?: { count: number };
  };
  targets: Array<{ uploadedBytes?: number }>;
  totalMs: number;
}

async function snapshot(
  format: Format,
  index: number,
  root: string,
  agent: { url: string; keyId: string; key: string },
  before: number,
): Promise<SnapshotSample> {
  const finished = await runWatched(process.execPath, cliArgs('snapshot', '--format', String(format), '--reason', 'benchmark', '--json'), {
    env: clientEnv(root, agent),
  });
  const answer = parseAnswer<SnapshotAnswer>(finished, `tcab-backup snapshot --format ${format} (snapshot ${index})`, root);
  const m = answer.manifest;
  // The manifest is the commit marker: a snapshot the client reported is one the target holds.
  await stat(join(root, ...manifestKey(DATABASE, m.id).split('/')));
  const after = await folderBytes(root);
  return {
    format,
    index,
    wallMs: finished.wallMs,
    jobMs: answer.totalMs,
    id: m.id,
    snapshotBytes: m.snapshot.bytes,
    snapshotSha256: m.snapshot.sha256,
    tables: m.database.tables,
    ...(m.artifact ? { artifactBytes: m.artifact.bytes } : {}),
    ...(format === 2 ? { uploadedChunkBytes: answer.targets[0]?.uploadedBytes ?? 0, chunks: m.chunkList?.count } : {}),
    addedBytes: after - before,
    folderBytes: after,
    clientHwmBytes: finished.memory.root?.peakHwmBytes ?? Number.NaN,
  };
}

async function restore(format: Format, root: string, out: string): Promise<RestoreSample> {
  await rm(out, { force: true });
  const finished = await runWatched(process.execPath, cliArgs('restore', '--latest', '-o', out, '--json'), { env: clientEnv(root) });
  const r = parseAnswer<{ id: string; bytes: number; durationMs: number; tables: Record<string, number> }>(
    finished,
    `tcab-backup restore --latest (format ${format})`,
    root,
  );
  await rm(out, { force: true });
  return {
    format,
    wallMs: finished.wallMs,
    durationMs: r.durationMs,
    id: r.id,
    bytes: r.bytes,
    tables: r.tables,
    clientHwmBytes: finished.memory.root?.peakHwmBytes ?? Number.NaN,
  };
}

/** Same tables with the same row counts; a missing count never matches. */
const sameTables = (a: Record<string, number> | undefined, b: Record<string, number> | undefined) =>
  a !== undefined && b !== undefined && Object.keys(a).length > 0 && JSON.stringify(a) === JSON.stringify(b);

async function measure(options: BenchOptions, ctx: CaseContext): Promise<CaseResult> {
  const db = await prepareDatabase(options, ctx.workDir, ctx.progress);
  ctx.progress(`database: ${formatMb(db.facts.bytes)}, ${db.facts.runs} runs (${db.cacheHit ? 'cached' : 'generated'}: ${db.cachePath})`);
  const roots = { 1: join(ctx.workDir, 'target-v1'), 2: join(ctx.workDir, 'target-v2') } as const;
  for (const root of Object.values(roots)) await mkdir(root, { recursive: true });
  const batches = join(ctx.workDir, 'batches');
  await mkdir(batches, { recursive: true });

  // One agent process per format, on the same database: each peak is that format's alone.
  const agents: Partial<Record<Format, AgentProcess>> = {};
  const agentPeaks: Partial<Record<Format, TreePeaks>> = {};
  const samples: Record<Format, SnapshotSample[]> = { 1: [], 2: [] };
  const restores: RestoreSample[] = [];
  const published = { runs: 0, reviews: 0 };
  try {
    for (const format of FORMATS) {
      const agent = await startAgentProcess({ dbPath: db.path, stagingDir: join(ctx.workDir, `staging-v${format}`) });
      agents[format] = agent;
      ctx.progress(`format-${format} agent process ${agent.pid} on ${agent.url}`);
    }
    for (let i = 1; i <= SNAPSHOTS; i++) {
      if (i > 1) {
        const p = publishRuns(db.path, batches, RUNS_BETWEEN, options.seed + 100 * i);
        published.runs += p.runs;
        published.reviews += p.reviews;
      }
      // Which format goes first alternates, so neither always meets a warmer page cache.
      for (const format of i % 2 ? FORMATS : ([...FORMATS].reverse() as Format[])) {
        const list = samples[format];
        samples[format].push(await snapshot(format, i, roots[format], agents[format]!, list.at(-1)?.folderBytes ?? 0));
      }
      const [v1, v2] = [samples[1].at(-1)!, samples[2].at(-1)!];
      ctx.progress(
        `snapshot ${i}/${SNAPSHOTS}: v1 ${formatSeconds(v1.wallMs)} (+${formatMb(v1.addedBytes)}), v2 ${formatSeconds(v2.wallMs)} (+${formatMb(v2.addedBytes)}, ${v2.chunks} chunks)`,
      );
    }
    // The restores alternate too; each format's figure is the median of its samples.
    const pairs = Math.min(options.samples, 3);
    for (let i = 0; i < pairs; i++) {
      for (const format of i % 2 ? ([...FORMATS].reverse() as Format[]) : FORMATS)
        restores.push(await restore(format, roots[format], join(ctx.workDir, `restored-v${format}.sqlite`)));
    }
  } finally {
    for (const format of FORMATS) if (agents[format]) agentPeaks[format] = await agents[format].stop();
  }

  const later = (f: Format) => samples[f].slice(1);
  const v1Ms = median(later(1).map((s) => s.wallMs));
  const v2Ms = median(later(2).map((s) => s.wallMs));
  const uploadShares = later(2).map((s) => s.addedBytes / s.snapshotBytes);
  const worstUpload = Math.max(...uploadShares);
  const lastV1 = samples[1].at(-1)!;
  const lastV2 = samples[2].at(-1)!;
  const v1Artifact = lastV1.artifactBytes ?? lastV1.addedBytes;
  const storedRatio = lastV2.folderBytes / v1Artifact;
  const restoreOf = (f: Format) => restores.filter((r) => r.format === f);
  const restoreV1 = median(restoreOf(1).map((r) => r.wallMs));
  const restoreV2 = median(restoreOf(2).map((r) => r.wallMs));
  const agentPeak = (f: Format) => agentPeaks[f]?.root?.peakHwmBytes ?? Number.NaN;
  // The agents were started with the production Node options (bench/processes.ts cliArgs): their command lines say so.
  const flagsOf = (p: { command: string } | undefined) => NODE_FLAGS.every((flag) => p?.command.split(' ').includes(flag));
  const unflagged = FORMATS.filter((f) => !flagsOf(agentPeaks[f]?.root)).map(
    (f) => `format-${f} agent: ${agentPeaks[f]?.root?.command ?? 'not seen'}`,
  );
  const clientPeak = (f: Format) => Math.max(...samples[f].map((s) => s.clientHwmBytes), ...restoreOf(f).map((r) => r.clientHwmBytes));
  const mismatched = samples[2]
    .map((s, i) => ({ s, v1: samples[1][i]! }))
    .filter(({ s, v1 }) => !sameTables(s.tables, v1.tables))
    .map(({ s, v1 }) => `snapshot ${s.index}: v2 ${JSON.stringify(s.tables)}, v1 ${JSON.stringify(v1.tables)}`);
  const newest = { 1: lastV1, 2: lastV2 } as const;
  const badRestores = restores.filter((r) => r.id !== newest[r.format].id || !sameTables(r.tables, newest[r.format].tables));

  const checks: Check[] = [
    atMost(
      'v2 bytes added per snapshot after the first / database bytes (worst of 2..12)',
      worstUpload,
      FORMAT2_TARGETS.uploadShare,
      formatPercent,
    ),
    atMost(`v2 target after ${SNAPSHOTS} snapshots / one v1 artifact`, storedRatio, FORMAT2_TARGETS.storedRatio, (v) => v.toFixed(2)),
    atMost('snapshot time, v2 / v1 (medians of snapshots 2..12)', v2Ms / v1Ms, FORMAT2_TARGETS.timeRatio, (v) => v.toFixed(2)),
    atMost('restore time of the newest snapshot, v2 / v1 (medians)', restoreV2 / restoreV1, FORMAT2_TARGETS.restoreRatio, (v) =>
      v.toFixed(2),
    ),
    atMost('format-2 agent process peak RSS (VmHWM), its 12 snapshots', agentPeak(2), FORMAT2_TARGETS.peakRssBytes, formatMb),
    atMost('client process peak RSS (VmHWM), v2 snapshot and restore', clientPeak(2), FORMAT2_TARGETS.peakRssBytes, formatMb),
    holds(
      `agents ran with production's Node options (${NODE_FLAGS.join(' ')})`,
      unflagged.length === 0,
      `${FORMATS.length - unflagged.length} of ${FORMATS.length}`,
      unflagged.join('; '),
    ),
    holds(
      'v2 and v1 snapshots of each state have the same row counts',
      mismatched.length === 0,
      `${SNAPSHOTS - mismatched.length} of ${SNAPSHOTS}`,
      mismatched.join('; '),
    ),
    holds(
      'restores are the newest snapshot, verified, with its row counts',
      badRestores.length === 0,
      `${restores.length - badRestores.length} of ${restores.length}`,
      badRestores.map((r) => `format ${r.format} restored ${r.id} with ${JSON.stringify(r.tables)}`).join('; '),
    ),
  ];

  const first = samples[2][0]!;
  const notes = [
    `database: ${formatMb(db.facts.bytes)} at the start (${db.facts.runs} runs, seed ${db.facts.seed}), ${formatMb(lastV1.snapshotBytes)} at the end; ` +
      `between snapshots ${RUNS_BETWEEN} runs and their reviews, one transaction each, 20 s of simulated time apart (${published.runs} runs, ${published.reviews} reviews in all)`,
    `each snapshot: node ${NODE_FLAGS.join(' ')} dist/src/cli/main.js snapshot --format 2|1 --json (its own process, which format first alternates) -> that format's agent process -> that format's file:// target`,
    `v2 added per snapshot (target folder growth: chunks, chunk list, manifest): first ${formatMb(first.addedBytes)} (${first.chunks} chunks), then ${later(
      2,
    )
      .map((s) => formatMb(s.addedBytes))
      .join(', ')}; ` + `share of the database: median ${formatPercent(median(uploadShares))}, worst ${formatPercent(worstUpload)}`,
    `v2 chunk bytes uploaded (client's count), snapshots 2..12: ${later(2)
      .map((s) => formatMb(s.uploadedChunkBytes ?? 0))
      .join(', ')}`,
    `stored after ${SNAPSHOTS}: v2 target ${formatMb(lastV2.folderBytes)}; v1 target ${formatMb(lastV1.folderBytes)} (newest artifact ${formatMb(v1Artifact)})`,
    `snapshot times: v1 ${samples[1].map((s) => formatSeconds(s.wallMs)).join(', ')} | v2 ${samples[2].map((s) => formatSeconds(s.wallMs)).join(', ')}; ` +
      `medians of 2..12: v1 ${formatSeconds(v1Ms)}, v2 ${formatSeconds(v2Ms)}`,
    `restore --latest (wall, process included): v1 ${restoreOf(1)
      .map((r) => formatSeconds(r.wallMs))
      .join(', ')} | v2 ${restoreOf(2)
      .map((r) => formatSeconds(r.wallMs))
      .join(', ')}; medians v1 ${formatSeconds(restoreV1)}, v2 ${formatSeconds(restoreV2)}`,
    `memory: agents (each over its format's ${SNAPSHOTS} snapshots) v2 ${formatMb(agentPeak(2))}, v1 ${formatMb(agentPeak(1))} (v1's children: ${
      peakByName(agentPeaks[1]?.descendants ?? [])
        .map((c) => `${c.name} ${formatMb(c.peakHwmBytes)}`)
        .join(', ') || 'none seen'
    }); clients v2 ${formatMb(clientPeak(2))} (first snapshot ${formatMb(first.clientHwmBytes)}, later snapshots up to ${formatMb(
      Math.max(...later(2).map((s) => s.clientHwmBytes)),
    )}, restores up to ${formatMb(Math.max(...restoreOf(2).map((r) => r.clientHwmBytes)))}), v1 ${formatMb(clientPeak(1))}`,
  ];
  const sampleDetails = (f: Format) => samples[f].map((s) => ({ ...s, wallMs: Math.round(s.wallMs) }));
  return {
    checks,
    notes,
    details: {
      database: { ...db.facts, cachePath: db.cachePath, cacheHit: db.cacheHit },
      published,
      snapshots: { v1: sampleDetails(1), v2: sampleDetails(2) },
      restores: restores.map((r) => ({ ...r, wallMs: Math.round(r.wallMs) })),
      medians: {
        v1SnapshotMs: Math.round(v1Ms),
        v2SnapshotMs: Math.round(v2Ms),
        v1RestoreMs: Math.round(restoreV1),
        v2RestoreMs: Math.round(restoreV2),
        uploadShare: round(median(uploadShares), 5),
      },
      memory: {
        agents: Object.fromEntries(
          FORMATS.map((f) => [
            `v${f}`,
            {
              pid: agentPeaks[f]?.root?.pid,
              peakHwmBytes: agentPeak(f),
              peakRssBytes: agentPeaks[f]?.root?.peakRssBytes,
              polls: agentPeaks[f]?.polls,
              command: agentPeaks[f]?.root?.command,
              children: peakByName(agentPeaks[f]?.descendants ?? []),
            },
          ]),
        ),
        client: { v1PeakHwmBytes: clientPeak(1), v2PeakHwmBytes: clientPeak(2) },
      },
    },
  };
}

export const format2Case: BenchCase = {
  name: 'format2',
  title: `format 2 against format 1: ${SNAPSHOTS} snapshots 5 simulated minutes apart with runs published between, then restore`,
  optIn: true,
  run: async (options, ctx) => {
    if (!canWatchMemory()) {
      throw new TcabError('The format2 case reads peak memory from /proc, which this system lacks', {
        hint: 'run the benchmark on Linux (the VM, or a Linux container)',
        code: 'BENCH_NO_PROC',
      });
    }
    return measure(options, ctx);
  },
};
