/**
 * One run of our side: `node dist/src/cli/main.js snapshot --format 1 --json` as its own process, against the agent
 * process, storing on two file targets. Its wall time is the figure compared with the shell recipe. After
 * it, each target is checked by hand, independently of our code: the stored manifest parses, and the stored
 * artifact's sha256 and size, computed here, equal what that manifest says.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { manifestKey } from '../src/catalog/layout.js';
import { ManifestSchema, type ManifestV1 as Manifest } from '../src/catalog/manifest.js';
import { TcabError, errorMessage } from '../src/errors.js';
import type { AgentProcess } from './agent-process.js';
import type { TreePeaks } from './memory.js';
import { cliArgs, describeExit, runWatched } from './processes.js';

export const TARGET_NAMES = ['first', 'second'] as const;
const DATABASE = 'tcab';

export interface TargetCheck {
  target: string;
  ok: boolean;
  /** What was found, or what was wrong. */
  detail: string;
  artifactBytes?: number;
  uploadMs?: number;
  verifyMs?: number;
}

export interface OurRun {
  wallMs: number;
  /** The job's own total (the client's totalMs): wall time minus process start and module loading. */
  jobMs: number;
  /** POST /v1/snapshots as the client waited for it (from its agent.snapshot_created log line). */
  agentRequestMs: number | undefined;
  id: string;
  snapshotBytes: number;
  artifactBytes: number;
  compression: string;
  timings: Manifest['timings'];
  targets: TargetCheck[];
  memory: TreePeaks;
}

interface ClientAnswer {
  ok: boolean;
  manifest: Manifest;
  targets: Array<{ target: string; ok: boolean; key: string; bytes?: number; uploadMs?: number; verifyMs?: number; error?: string }>;
  totalMs: number;
}

async function sha256OfFile(path: string): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  await pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), async (chunks: AsyncIterable<Buffer>) => {
    for await (const chunk of chunks) {
      hash.update(chunk);
      bytes += chunk.length;
    }
  });
  return { sha256: hash.digest('hex'), bytes };
}

async function checkTarget(
  root: string,
  name: string,
  reported: Manifest,
  outcome: ClientAnswer['targets'][number] | undefined,
): Promise<TargetCheck> {
  const base = {
    target: name,
    ...(outcome?.uploadMs !== undefined ? { uploadMs: outcome.uploadMs } : {}),
    ...(outcome?.verifyMs !== undefined ? { verifyMs: outcome.verifyMs } : {}),
  };
  const manifestPath = join(root, ...manifestKey(DATABASE, reported.id).split('/'));
  try {
    const stored = ManifestSchema.parse(JSON.parse(await readFile(manifestPath, 'utf8')));
    const artifactPath = join(root, ...stored.key.split('/'));
    const got = await sha256OfFile(artifactPath);
    const problems: string[] = [];
    if (got.sha256 !== stored.artifact.sha256)
      problems.push(`the artifact hashes to ${got.sha256}, its manifest says ${stored.artifact.sha256}`);
    if (got.bytes !== stored.artifact.bytes)
      problems.push(`the artifact has ${got.bytes} bytes, its manifest says ${stored.artifact.bytes}`);
    if (stored.artifact.sha256 !== reported.artifact.sha256) problems.push(`the stored manifest differs from the one the client reported`);
    if (problems.length) return { ...base, ok: false, detail: `${artifactPath}: ${problems.join('; ')}` };
    return {
      ...base,
      ok: true,
      artifactBytes: got.bytes,
      detail: `sha256 ${got.sha256.slice(0, 12)}... of ${got.bytes} bytes matches the manifest`,
    };
  } catch (e) {
    return { ...base, ok: false, detail: `reading snapshot ${reported.id} back from ${root} failed: ${errorMessage(e)}` };
  }
}

/** The `ms` field of the first JSON log line with this event. */
function loggedMs(log: string, event: string): number | undefined {
  for (const line of log.split('\n')) {
    if (!line.includes(event)) continue;
    try {
      const record = JSON.parse(line) as { event?: string; ms?: unknown };
      if (record.event === event && typeof record.ms === 'number') return record.ms;
    } catch {
      // not a log record
    }
  }
  return undefined;
}

export async function runOurSnapshot(agent: AgentProcess, folder: string, keep: boolean): Promise<OurRun> {
  await rm(folder, { recursive: true, force: true });
  const roots = TARGET_NAMES.map((name) => join(folder, name));
  for (const root of roots) await mkdir(root, { recursive: true });
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    TCAB_BACKUP_TARGETS: TARGET_NAMES.map((name, i) => `${name}=file://${roots[i]}`).join(','),
    TCAB_BACKUP_DATABASE: DATABASE,
    TCAB_BACKUP_AGENT_URL: agent.url,
    TCAB_BACKUP_AGENT_KEY_ID: agent.keyId,
    TCAB_BACKUP_AGENT_KEY: agent.key,
    // info, for the agent.snapshot_created line that says how long the agent took as seen from the client.
    TCAB_LOG_LEVEL: 'info',
  };
  const finished = await runWatched(process.execPath, cliArgs('snapshot', '--format', '1', '--reason', 'benchmark', '--json'), { env });
  let answer: ClientAnswer | undefined;
  try {
    answer = JSON.parse(finished.stdout) as ClientAnswer;
  } catch {
    // no JSON: the failure below says what the client printed on stderr
  }
  if (finished.code !== 0 || !answer?.ok) {
    throw new TcabError(
      `tcab-backup snapshot ${describeExit(finished)}: ${finished.stderrTail || finished.stdout.slice(0, 1000) || '(no output)'}`,
      {
        hint: `the agent process (${agent.url}) and the target folders under ${folder}`,
        code: 'BENCH_SNAPSHOT_FAILED',
      },
    );
  }
  const reported = answer.manifest;
  const targets = await Promise.all(
    TARGET_NAMES.map((name, i) =>
      checkTarget(
        roots[i]!,
        name,
        reported,
        answer.targets.find((t) => t.target === name),
      ),
    ),
  );
  if (!keep) await rm(folder, { recursive: true, force: true });
  return {
    wallMs: finished.wallMs,
    jobMs: answer.totalMs,
    agentRequestMs: loggedMs(finished.stderr, 'agent.snapshot_created'),
    id: reported.id,
    snapshotBytes: reported.snapshot.bytes,
    artifactBytes: reported.artifact.bytes,
    compression: reported.artifact.compression,
    timings: reported.timings,
    targets,
    memory: finished.memory,
  };
}
