/**
 * Replication case: `tcab-backup replicate --json` copying N real snapshots from Azurite to s3rver, and back
 * from copies on s3rver to Azurite, against `rclone copy` of the same objects between the same emulators,
 * alternating (rclone, ours, ...), each run into a fresh, empty prefix. Both are separate processes, timed and memory-watched alike.
 * Both sides are bound by the emulators' own speed, so the ratio says more than the absolute times.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { readManifest } from '../src/catalog/catalog.js';
import { TcabError, errorMessage } from '../src/errors.js';
import type { Target } from '../src/targets/target.js';
import { hashStream } from '../src/util/streams.js';
import { atMost, holds, type BenchCase, type CaseContext, type CaseResult, type Check } from './case.js';
import { prepareDatabase } from './database.js';
import { canWatchMemory, type TreePeaks } from './memory.js';
import type { BenchOptions } from './options.js';
import { cliArgs, describeExit, runWatched } from './processes.js';
import { BUCKET, CONTAINER, prepareReplicationSource, type ReplicationSource } from './replication-source.js';
import { formatMb, formatSeconds, median, round } from './stats.js';

/**
 * The replication targets: no slower than rclone copy between the same two servers, and memory flat: the
 * replicate process may grow by at most a bounded amount over the same CLI at rest (`list`, which loads the
 * same SDKs), whatever the size of what it copies.
 */
export const REPLICATION_TARGETS = { timeRatio: 1.0, rssGrowthBytes: 128 * 2 ** 20 } as const;
/** Copies in flight: ours copies two at a time by default, so rclone is given the same. */
const TRANSFERS = 2;
/** Parts in flight per upload: R2 allows few concurrent uploads, and our r2:// targets keep to 2. */
const UPLOAD_CONCURRENCY = 2;
/** Our Blob uploads: 8 MiB blocks, 4 at once; rclone is given the same. */
const AZURE_UPLOAD_CONCURRENCY = 4;
const AZURE_BLOCK_MIB = 8;
/** Where on s3rver the way back starts from. */
const BACK_SOURCE = 'back-source';

function rcloneEnv(source: ReplicationSource, workDir: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    // A config file that does not exist: an operator's own rclone.conf must not change what is measured.
    RCLONE_CONFIG: join(workDir, 'rclone.conf'),
    RCLONE_CONFIG_AZ_TYPE: 'azureblob',
    RCLONE_CONFIG_AZ_USE_EMULATOR: 'true',
    RCLONE_CONFIG_AZ_ENDPOINT: source.azurite.endpoint,
    RCLONE_CONFIG_R2_TYPE: 's3',
    RCLONE_CONFIG_R2_PROVIDER: 'Other',
    RCLONE_CONFIG_R2_ENDPOINT: source.s3.endpoint,
    RCLONE_CONFIG_R2_ACCESS_KEY_ID: source.s3.accessKeyId,
    RCLONE_CONFIG_R2_SECRET_ACCESS_KEY: source.s3.secretAccessKey,
    RCLONE_CONFIG_R2_FORCE_PATH_STYLE: 'true',
  };
}

/** rclone for bookkeeping outside the timed runs (sizes, clean-up). */
function rcloneQuiet(args: string[], env: NodeJS.ProcessEnv): string {
  const r = spawnSync('rclone', args, { env, encoding: 'utf8', timeout: 300_000 });
  if (r.error || r.status !== 0) {
    throw new TcabError(`rclone ${args.join(' ')} failed: ${r.error?.message ?? r.stderr.trim().split('\n').slice(-3).join(' ')}`, {
      hint: 'that rclone is installed (apt-get install rclone) and the emulators are running',
      code: 'BENCH_RCLONE_FAILED',
    });
  }
  return r.stdout;
}

function size(remote: string, env: NodeJS.ProcessEnv): { count: number; bytes: number } {
  return JSON.parse(rcloneQuiet(['size', '--json', remote], env)) as { count: number; bytes: number };
}

interface Run {
  wallMs: number;
  memory: TreePeaks;
  /** Objects and bytes found at the destination afterwards. */
  count: number;
  bytes: number;
}

/** One way of copying: where the snapshots are, where each run copies them, and how each side is told. */
interface Direction {
  /** e.g. "Azurite -> s3rver". */
  name: string;
  /** rclone's source, holding exactly the snapshots. */
  rcloneSource: string;
  /** rclone's (and, for sizes and clean-up, our) destination folder for a run's prefix. */
  rcloneDestination(prefix: string): string;
  rcloneFlags: string[];
  ourEnv(prefix: string): NodeJS.ProcessEnv;
  ourDestination(prefix: string): Target;
}

async function runRclone(direction: Direction, prefix: string, env: NodeJS.ProcessEnv): Promise<Run> {
  // --fast-list: one recursive listing, as ours makes; without it rclone found nothing to copy from s3rver.
  const f = await runWatched(
    'rclone',
    [
      'copy',
      direction.rcloneSource,
      `${direction.rcloneDestination(prefix)}/snapshots`,
      '--transfers',
      String(TRANSFERS),
      '--fast-list',
      ...direction.rcloneFlags,
    ],
    { env },
  );
  if (f.code !== 0)
    throw new TcabError(`rclone copy ${describeExit(f)}: ${f.stderrTail}`, {
      hint: "the emulators, and rclone's message above",
      code: 'BENCH_RCLONE_FAILED',
    });
  return { wallMs: f.wallMs, memory: f.memory, ...size(direction.rcloneDestination(prefix), env) };
}

/** Ours, then a check of every copy by hand: the manifest is there and the artifact hashes to it. */
async function runOurs(
  source: ReplicationSource,
  direction: Direction,
  prefix: string,
  bookkeeping: NodeJS.ProcessEnv,
): Promise<Run & { jobMs: number; copied: number; problems: string[] }> {
  const f = await runWatched(process.execPath, cliArgs('replicate', '--json'), { env: direction.ourEnv(prefix) });
  let answer: { ok?: boolean; copied?: number; durationMs?: number } = {};
  try {
    answer = JSON.parse(f.stdout) as typeof answer;
  } catch {
    // no JSON: the failure below quotes stderr
  }
  if (f.code !== 0 || !answer.ok) {
    throw new TcabError(`tcab-backup replicate ${describeExit(f)}: ${f.stderrTail || f.stdout.slice(0, 1000)}`, {
      hint: "the emulators and the replicate job's message",
      code: 'BENCH_REPLICATE_FAILED',
    });
  }
  const destination = direction.ourDestination(prefix);
  const problems: string[] = [];
  for (const s of source.snapshots) {
    try {
      const manifest = await readManifest(destination, 'tcab', s.id);
      if (manifest.formatVersion !== 1) throw new Error(`${s.id} is format ${manifest.formatVersion}; this case copies format 1`);
      const got = await hashStream((await destination.get(manifest.key)).body);
      if (got.sha256 !== s.sha256 || manifest.artifact.sha256 !== s.sha256)
        problems.push(`${s.id}: copy hashes to ${got.sha256}, source manifest says ${s.sha256}`);
    } catch (e) {
      problems.push(`${s.id}: ${errorMessage(e)}`);
    }
  }
  return {
    wallMs: f.wallMs,
    jobMs: answer.durationMs ?? Number.NaN,
    memory: f.memory,
    copied: answer.copied ?? 0,
    problems,
    ...size(direction.rcloneDestination(prefix), bookkeeping),
  };
}

interface DirectionResult {
  direction: Direction;
  rclone: Run[];
  ours: Array<Awaited<ReturnType<typeof runOurs>>>;
}

/** Alternating samples, rclone first, each run into a fresh prefix that is purged afterwards. */
async function sampleDirection(
  source: ReplicationSource,
  direction: Direction,
  env: NodeJS.ProcessEnv,
  options: BenchOptions,
  ctx: CaseContext,
  tag: string,
): Promise<DirectionResult> {
  const result: DirectionResult = { direction, rclone: [], ours: [] };
  for (let i = 1; i <= options.samples; i++) {
    const r = await runRclone(direction, `${tag}rclone-${i}`, env);
    result.rclone.push(r);
    rcloneQuiet(['purge', direction.rcloneDestination(`${tag}rclone-${i}`)], env);
    ctx.progress(`${direction.name}, sample ${i}/${options.samples}: rclone copy ${formatSeconds(r.wallMs)}`);
    const o = await runOurs(source, direction, `${tag}ours-${i}`, env);
    result.ours.push(o);
    rcloneQuiet(['purge', direction.rcloneDestination(`${tag}ours-${i}`)], env);
    ctx.progress(`${direction.name}, sample ${i}/${options.samples}: tcab-backup replicate ${formatSeconds(o.wallMs)}`);
  }
  return result;
}

async function measure(options: BenchOptions, ctx: CaseContext): Promise<CaseResult> {
  const probe = spawnSync('rclone', ['version'], { encoding: 'utf8' });
  if (probe.status !== 0)
    throw new TcabError('The replication case compares with rclone, which is not installed', {
      hint: 'apt-get install rclone, or leave the case out with --case snapshot,retention',
      code: 'BENCH_NO_RCLONE',
    });
  const rcloneVersion = probe.stdout.split('\n')[0]!.trim();
  const db = await prepareDatabase(options, ctx.workDir, ctx.progress);
  const source = await prepareReplicationSource(
    { dbPath: db.path, workDir: ctx.workDir, snapshots: options.replicateSnapshots },
    ctx.progress,
  );
  const results: DirectionResult[] = [];
  let sourceSize: { count: number; bytes: number };
  let restPeak = Number.NaN;
  try {
    const env = rcloneEnv(source, ctx.workDir);
    sourceSize = size(`az:${CONTAINER}/snapshots`, env);
    const rest = await runWatched(process.execPath, cliArgs('list', '--json'), { env: source.env('rest') as NodeJS.ProcessEnv });
    restPeak = rest.memory.root?.peakHwmBytes ?? Number.NaN;
    const there: Direction = {
      name: 'Azurite -> s3rver',
      rcloneSource: `az:${CONTAINER}/snapshots`,
      rcloneDestination: (prefix) => `r2:${BUCKET}/${prefix}`,
      rcloneFlags: ['--s3-upload-concurrency', String(UPLOAD_CONCURRENCY)],
      ourEnv: (prefix) => source.env(prefix) as NodeJS.ProcessEnv,
      ourDestination: (prefix) => source.destination(prefix),
    };
    results.push(await sampleDirection(source, there, env, options, ctx, ''));
    // The way back starts from copies on s3rver, as an R2 holding replicated snapshots would.
    rcloneQuiet(['copy', `az:${CONTAINER}/snapshots`, `r2:${BUCKET}/${BACK_SOURCE}/snapshots`], env);
    const back: Direction = {
      name: 's3rver -> Azurite',
      rcloneSource: `r2:${BUCKET}/${BACK_SOURCE}/snapshots`,
      rcloneDestination: (prefix) => `az:${CONTAINER}/${prefix}`,
      rcloneFlags: ['--azureblob-upload-concurrency', String(AZURE_UPLOAD_CONCURRENCY), '--azureblob-chunk-size', `${AZURE_BLOCK_MIB}M`],
      ourEnv: (prefix) => source.envBack(BACK_SOURCE, prefix) as NodeJS.ProcessEnv,
      ourDestination: (prefix) => source.destinationBack(BACK_SOURCE, prefix),
    };
    results.push(await sampleDirection(source, back, env, options, ctx, 'back-'));
  } finally {
    await source.stop();
  }

  const n = source.snapshots.length;
  const total = source.snapshots.reduce((b, s) => b + s.artifactBytes, 0);
  const checks: Check[] = [];
  const notes: string[] = [
    `${n} snapshots of the ${formatMb(db.facts.bytes)} sample database, cut down between them (artifacts of ${source.snapshots.map((s) => formatMb(s.artifactBytes)).join(', ')}: ` +
      `${formatMb(total)} in ${sourceSize.count} objects with manifests), made by the real agent and snapshot job, on Azurite; ` +
      'copied to an empty prefix on s3rver each run, and back from copies on s3rver to an empty folder on Azurite',
    `ours: node dist/src/cli/main.js replicate --json (${TRANSFERS} copies in flight; to the r2:// target one PutObject per copy signed with the manifest's sha256, ` +
      `to Blob one Put Blob per copy; sha256 checked against the manifest as bytes pass, manifest written after the data, then the data looked at again)`,
    `rclone: ${rcloneVersion}, rclone copy <source>/snapshots <destination>/<prefix>/snapshots --transfers ${TRANSFERS} --fast-list, ` +
      `with --s3-upload-concurrency ${UPLOAD_CONCURRENCY} to s3rver and --azureblob-upload-concurrency ${AZURE_UPLOAD_CONCURRENCY} --azureblob-chunk-size ${AZURE_BLOCK_MIB}M to Azurite (size check; no sha256 against our manifests)`,
  ];
  const medians: Record<string, unknown> = {};
  let oursRound = 0;
  let rcloneRound = 0;
  let oursPeak = 0;
  for (const { direction, rclone, ours } of results) {
    const rcloneMs = median(rclone.map((r) => r.wallMs));
    const oursMs = median(ours.map((o) => o.wallMs));
    oursRound += oursMs;
    rcloneRound += rcloneMs;
    oursPeak = Math.max(oursPeak, ...ours.map((o) => o.memory.root?.peakHwmBytes ?? Number.NaN));
    const rclonePeak = Math.max(...rclone.map((r) => r.memory.root?.peakHwmBytes ?? Number.NaN));
    const oursProblems = ours.flatMap((o, i) => [
      ...(o.copied === n ? [] : [`run ${i + 1} copied ${o.copied} of ${n}`]),
      ...o.problems.map((p) => `run ${i + 1}: ${p}`),
    ]);
    const rcloneShort = rclone.flatMap((r, i) =>
      r.count === sourceSize.count && r.bytes === sourceSize.bytes ? [] : [`run ${i + 1}: ${r.count} objects, ${r.bytes} bytes`],
    );
    checks.push(
      atMost(
        `replicate ${n} snapshots ${direction.name}, ours / rclone copy (medians)`,
        oursMs / rcloneMs,
        REPLICATION_TARGETS.timeRatio,
        (v) => v.toFixed(2),
      ),
      holds(
        `${direction.name}: every copy of ours has its manifest and matches its sha256`,
        oursProblems.length === 0,
        `${ours.length * n - oursProblems.length} of ${ours.length * n}`,
        oursProblems.join('; '),
      ),
      holds(
        `${direction.name}: rclone copied every object`,
        rcloneShort.length === 0,
        `${sourceSize.count} objects per run`,
        `the source has ${sourceSize.count} objects, ${sourceSize.bytes} bytes; ${rcloneShort.join('; ')}`,
      ),
    );
    notes.push(
      `${direction.name}: samples (alternating, rclone first): rclone ${rclone.map((r) => formatSeconds(r.wallMs)).join(', ')} | ours ${ours.map((o) => formatSeconds(o.wallMs)).join(', ')}`,
      `${direction.name}: medians: rclone ${formatSeconds(rcloneMs)} (${(total / 1e6 / (rcloneMs / 1000)).toFixed(0)} MB/s), ours ${formatSeconds(oursMs)} (${(total / 1e6 / (oursMs / 1000)).toFixed(0)} MB/s), ` +
        `of which the job ${formatSeconds(median(ours.map((o) => o.jobMs)))} and process start and exit ${formatSeconds(median(ours.map((o) => o.wallMs - o.jobMs)))}; ` +
        `peak RSS ours ${formatMb(Math.max(...ours.map((o) => o.memory.root?.peakHwmBytes ?? Number.NaN)))}, rclone ${formatMb(rclonePeak)}`,
    );
    medians[direction.name] = {
      rcloneMs: Math.round(rcloneMs),
      oursMs: Math.round(oursMs),
      ratio: round(oursMs / rcloneMs),
      samples: {
        rclone: rclone.map((r) => ({
          wallMs: Math.round(r.wallMs),
          peakHwmBytes: r.memory.root?.peakHwmBytes,
          count: r.count,
          bytes: r.bytes,
        })),
        ours: ours.map((o) => ({
          wallMs: Math.round(o.wallMs),
          jobMs: o.jobMs,
          peakHwmBytes: o.memory.root?.peakHwmBytes,
          copied: o.copied,
          count: o.count,
          bytes: o.bytes,
          problems: o.problems,
        })),
      },
    };
  }
  checks.push(
    atMost(`replicate there and back, ours / rclone copy (sums of medians)`, oursRound / rcloneRound, REPLICATION_TARGETS.timeRatio, (v) =>
      v.toFixed(2),
    ),
    atMost('replicate peak RSS above the CLI at rest (memory flat)', oursPeak - restPeak, REPLICATION_TARGETS.rssGrowthBytes, formatMb),
  );
  notes.push(`memory: ours ${formatMb(oursPeak)} peak in either direction (the CLI at rest, tcab-backup list: ${formatMb(restPeak)})`);
  return {
    checks,
    notes,
    details: {
      snapshots: source.snapshots,
      sourceObjects: sourceSize,
      rcloneVersion,
      transfers: TRANSFERS,
      directions: medians,
      roundTrip: { oursMs: Math.round(oursRound), rcloneMs: Math.round(rcloneRound), ratio: round(oursRound / rcloneRound) },
      memory: { oursPeakHwmBytes: oursPeak, restPeakHwmBytes: restPeak },
    },
  };
}

export const replicationCase: BenchCase = {
  name: 'replication',
  title: 'tcab-backup replicate (Azurite -> s3rver as R2, and back) vs rclone copy, same snapshots',
  run: async (options, ctx) => {
    if (!canWatchMemory())
      throw new TcabError('The replication case reads peak memory from /proc, which this system lacks', {
        hint: 'run the benchmark on Linux',
        code: 'BENCH_NO_PROC',
      });
    return measure(options, ctx);
  },
};
