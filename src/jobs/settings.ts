/**
 * Settings of the jobs beyond the snapshot: the replicate and prune timers (read by the Functions host from
 * their timer bindings), format 2's chunk grace (shared by the jobs that write or collect chunks), and verify
 * rotation, restore drill and monitor, whose loaders are below. The
 * declarations here are the only place their defaults are written; the catalogue (src/settings.ts) takes them.
 * Every problem names its variable; all problems are reported together.
 */
import { tmpdir } from 'node:os';
import { isAbsolute } from 'node:path';
import { loadJobTimeoutMs } from '../config.js';
import { ConfigError } from '../errors.js';
import type { AgeThreshold, MonitorThresholds } from '../status/document.js';
import { formatDuration } from '../util/duration.js';
import { longestGapMs } from '../util/schedule-gap.js';
import { booleanSetting, defineSettings, durationMs, Problems, settingsReader, type Env } from '../util/settings.js';

/**
 * The replicate and prune timers, read only by the Functions host (the timer bindings of
 * src/functions/replicate.ts and prune.ts), and the chunk grace, read by loadChunkGrace.
 */
export const REPLICATE_PRUNE_SETTINGS = defineSettings([
  {
    name: 'TCAB_BACKUP_REPLICATE_SCHEDULE',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    default: '0 20 * * * *',
    description:
      'NCRONTAB (six fields, UTC) of the timer-triggered replicate: copies every snapshot a target lacks from a target that has it. Default hourly, 20 minutes past.',
  },
  {
    name: 'TCAB_BACKUP_PRUNE_SCHEDULE',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    default: '0 45 * * * *',
    description:
      "NCRONTAB (six fields, UTC) of the timer-triggered prune: applies each target's retention policy behind the safety rails and removes garbage. Default hourly, 45 minutes past.",
  },
  {
    name: 'TCAB_BACKUP_CHUNK_GRACE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '7d',
    description:
      'Format 2 (docs/format-2.md): prune deletes a chunk no manifest references only once it is older than this, and the snapshot and replicate jobs reuse a stored chunk only while it is younger than half of it (an older one is written again). Must exceed 4 x TCAB_BACKUP_JOB_TIMEOUT: the margin that keeps a chunk a job is committing safe from a concurrent prune.',
  },
]);

const pruneReader = settingsReader(REPLICATE_PRUNE_SETTINGS);

/** G and J of docs/format-2.md, "Writing": the chunk grace and the longest a job runs. */
export interface ChunkGrace {
  /** TCAB_BACKUP_CHUNK_GRACE. */
  graceMs: number;
  /** TCAB_BACKUP_JOB_TIMEOUT. */
  jobTimeoutMs: number;
}

/**
 * TCAB_BACKUP_CHUNK_GRACE (G) with TCAB_BACKUP_JOB_TIMEOUT (J), for every job that writes or collects format-2
 * chunks: snapshot and replicate reuse a chunk younger than G/2, prune deletes an unreferenced chunk older than
 * G. Refuses a G not greater than 4 J, naming both: the proof of docs/format-2.md needs that margin.
 */
export function loadChunkGrace(env: Env = process.env): ChunkGrace {
  const problems = new Problems();
  const graceMs = pruneReader.read(env, problems, 'TCAB_BACKUP_CHUNK_GRACE', durationMs('a duration like 7d'));
  let jobTimeoutMs: number | undefined;
  try {
    jobTimeoutMs = loadJobTimeoutMs(env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems.list.push(...e.problems);
  }
  if (graceMs !== undefined && jobTimeoutMs !== undefined && graceMs <= 4 * jobTimeoutMs) {
    problems.add(
      'TCAB_BACKUP_CHUNK_GRACE',
      `${formatDuration(graceMs)} must exceed 4 x TCAB_BACKUP_JOB_TIMEOUT (4 x ${formatDuration(jobTimeoutMs)} = ${formatDuration(4 * jobTimeoutMs)}), or a prune could delete a chunk a snapshot or replicate job is still committing; lengthen TCAB_BACKUP_CHUNK_GRACE or shorten TCAB_BACKUP_JOB_TIMEOUT`,
    );
  }
  problems.throwIfAny();
  return { graceMs: graceMs!, jobTimeoutMs: jobTimeoutMs! };
}

export const CHECK_JOB_SETTINGS = defineSettings([
  {
    name: 'TCAB_BACKUP_VERIFY_SCHEDULE',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    default: '0 0 5 * * *',
    description:
      'NCRONTAB (six fields, UTC) of the timer-triggered verify. Default daily at 05:00. Each run re-reads the least recently verified snapshots, enough that every stored snapshot is re-read within TCAB_BACKUP_VERIFY_WITHIN given the longest gap between two runs of this schedule.',
  },
  {
    name: 'TCAB_BACKUP_VERIFY_WITHIN',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '7d',
    description:
      'Every stored snapshot is re-read and its sha256 checked at least this often (counted from when it was stored or last verified). Must be at least the longest gap between two verify runs.',
  },
  {
    name: 'TCAB_BACKUP_DRILL_SCHEDULE',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    default: '0 0 4 * * *',
    description:
      'NCRONTAB (six fields, UTC) of the restore drill: the newest snapshot of every target is restored to a scratch file and checked. Default daily at 04:00.',
  },
  {
    name: 'TCAB_BACKUP_DRILL_WORK_DIR',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    description:
      'Folder the restore drill restores into (deleted afterwards), e.g. the mount path of an Azure Files share (the template mounts one at /mounts/drill and sets this). A full restore needs free space for the uncompressed database; with less, the drill verifies by streaming (see TCAB_BACKUP_DRILL_METHOD). Default: the system temporary folder.',
  },
  {
    name: 'TCAB_BACKUP_DRILL_METHOD',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'auto',
    description:
      "How the drill proves a snapshot: restore (write it to TCAB_BACKUP_DRILL_WORK_DIR, check both sha256 sums, PRAGMA integrity_check and row counts; fails when the folder lacks room), stream (decompress it as it downloads and check both sha256 sums without writing it: the database sha256 equal to the manifest's proves these are the bytes the agent checked with integrity_check and counted), or auto (restore when the folder has room, else stream). The drill record says which checks ran.",
  },
  {
    name: 'TCAB_BACKUP_DRILL_APP',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'false',
    description:
      "true: after a target's snapshot passes the file checks, the drill also streams its artifact to the agent (POST /v1/drills), which restores it on the VM, starts the backend on the copy (the agent's TCAB_AGENT_DRILL_BACKEND_COMMAND) and checks /healthz and /runs against the file. A failed application drill, or an agent that cannot be asked, fails that target's drill; the recovery time then includes the backend's start to serving the runs. \"tcab-backup drill --app\" runs it once.",
  },
  {
    name: 'TCAB_BACKUP_MONITOR_SCHEDULE',
    side: 'backup',
    requiredInAzure: true,
    secret: false,
    default: '0 */5 * * * *',
    description:
      'NCRONTAB (six fields, UTC) of the monitor that checks snapshot, drill and verify ages on every target, writes status/<database>.json and fails when the state is critical. Default every 5 minutes.',
  },
  {
    name: 'TCAB_BACKUP_SNAPSHOT_WARN_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '30m',
    description:
      'The monitor warns when the newest snapshot on a target is older than this: 6 missed runs of the default 5-minute schedule. Raise it (and the critical age) with a slower TCAB_BACKUP_SNAPSHOT_SCHEDULE, e.g. 2h and 4h for an hourly one; the Azure template sets both from snapshotIntervalMinutes (at least 2 and 4 intervals).',
  },
  {
    name: 'TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '1h',
    description:
      'The monitor is critical (and fails, so the alert fires) when the newest snapshot on a target is older than this: 12 missed runs of the default 5-minute schedule.',
  },
  {
    name: 'TCAB_BACKUP_DRILL_WARN_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '26h',
    description:
      'The monitor warns when the newest successful restore drill of a target is older than this (or, before the first drill, when the target has held snapshots this long).',
  },
  {
    name: 'TCAB_BACKUP_DRILL_CRITICAL_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '50h',
    description: 'The monitor is critical when the newest successful restore drill of a target is older than this.',
  },
  {
    name: 'TCAB_BACKUP_VERIFY_WARN_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '26h',
    description: 'The monitor warns when the last verify run of a target that found no damage is older than this.',
  },
  {
    name: 'TCAB_BACKUP_VERIFY_CRITICAL_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '50h',
    description: 'The monitor is critical when the last verify run of a target that found no damage is older than this.',
  },
  {
    name: 'TCAB_BACKUP_PG_CHECK_WARN_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '2h',
    description: 'Postgres mode: the monitor warns when the last backup-policy check of a server is older than this.',
  },
  {
    name: 'TCAB_BACKUP_PG_CHECK_CRITICAL_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '4h',
    description: 'Postgres mode: the monitor is critical when the last backup-policy check of a server is older than this.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_WARN_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '8d',
    description: 'Postgres mode: the monitor warns when the last successful point-in-time restore drill of a server is older than this.',
  },
  {
    name: 'TCAB_BACKUP_PG_DRILL_CRITICAL_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '15d',
    description:
      'Postgres mode: the monitor is critical when the last successful point-in-time restore drill of a server is older than this.',
  },
]);

type CheckJobSetting = (typeof CHECK_JOB_SETTINGS)[number]['name'];
const { read, value } = settingsReader(CHECK_JOB_SETTINGS);

export interface VerifySettings {
  schedule: string;
  /** Every stored snapshot is re-read at least this often. */
  withinMs: number;
  /** The longest gap between two runs of the schedule. */
  intervalMs: number;
}

export interface DrillSettings {
  schedule: string;
  /** Where drills restore to; removed afterwards. */
  workDir: string;
  method: DrillMethodSetting;
  /** TCAB_BACKUP_DRILL_APP: also bring the backend up on each target's snapshot through the agent. */
  app: boolean;
}

export type DrillMethodSetting = 'auto' | 'restore' | 'stream';

export interface MonitorSettings {
  schedule: string;
  thresholds: MonitorThresholds;
}

function duration(env: Env, problems: Problems, name: CheckJobSetting): number | undefined {
  return read(env, problems, name, durationMs('a duration like 2h, 26h or 7d'));
}

function schedule(env: Env, problems: Problems, name: CheckJobSetting): { text: string; gapMs: number | undefined } {
  const text = value(env, name)!;
  try {
    return { text, gapMs: longestGapMs(text) };
  } catch (e) {
    problems.add(name, `"${text}" is not an NCRONTAB schedule: ${(e as Error).message} (e.g. "0 0 5 * * *" for daily at 05:00 UTC)`);
    return { text, gapMs: undefined };
  }
}

function threshold(env: Env, problems: Problems, stem: 'SNAPSHOT' | 'DRILL' | 'VERIFY' | 'PG_CHECK' | 'PG_DRILL'): AgeThreshold {
  const warnName = `TCAB_BACKUP_${stem}_WARN_AGE` as const;
  const criticalName = `TCAB_BACKUP_${stem}_CRITICAL_AGE` as const;
  const warnMs = duration(env, problems, warnName);
  const criticalMs = duration(env, problems, criticalName);
  if (warnMs !== undefined && criticalMs !== undefined && warnMs >= criticalMs) {
    problems.add(
      warnName,
      `${formatDuration(warnMs)} must be shorter than ${criticalName} (${formatDuration(criticalMs)}), or the warning never shows before the alert`,
    );
  }
  return { warnMs: warnMs ?? 0, criticalMs: criticalMs ?? 0 };
}

export function loadVerifySettings(env: Env = process.env): VerifySettings {
  const problems = new Problems();
  const { text, gapMs } = schedule(env, problems, 'TCAB_BACKUP_VERIFY_SCHEDULE');
  const withinMs = duration(env, problems, 'TCAB_BACKUP_VERIFY_WITHIN');
  if (withinMs !== undefined && gapMs !== undefined && withinMs < gapMs) {
    problems.add(
      'TCAB_BACKUP_VERIFY_WITHIN',
      `${formatDuration(withinMs)} is shorter than the longest gap between two verify runs of TCAB_BACKUP_VERIFY_SCHEDULE "${text}" (${formatDuration(gapMs)}): no rotation can meet it; lengthen it or run verify more often`,
    );
  }
  problems.throwIfAny();
  return { schedule: text, withinMs: withinMs!, intervalMs: gapMs! };
}

export function loadDrillSettings(env: Env = process.env): DrillSettings {
  const problems = new Problems();
  const { text } = schedule(env, problems, 'TCAB_BACKUP_DRILL_SCHEDULE');
  const workDir = value(env, 'TCAB_BACKUP_DRILL_WORK_DIR') || tmpdir();
  if (!isAbsolute(workDir)) problems.add('TCAB_BACKUP_DRILL_WORK_DIR', `"${workDir}" must be an absolute path`);
  const method = value(env, 'TCAB_BACKUP_DRILL_METHOD') as DrillMethodSetting;
  if (!['auto', 'restore', 'stream'].includes(method))
    problems.add('TCAB_BACKUP_DRILL_METHOD', `"${method}" is not auto, restore or stream`);
  const app = read(env, problems, 'TCAB_BACKUP_DRILL_APP', booleanSetting);
  problems.throwIfAny();
  return { schedule: text, workDir, method, app: app! };
}

export function loadMonitorSettings(env: Env = process.env): MonitorSettings {
  const problems = new Problems();
  const { text } = schedule(env, problems, 'TCAB_BACKUP_MONITOR_SCHEDULE');
  const thresholds: MonitorThresholds = {
    snapshot: threshold(env, problems, 'SNAPSHOT'),
    drill: threshold(env, problems, 'DRILL'),
    verify: threshold(env, problems, 'VERIFY'),
    pgCheck: threshold(env, problems, 'PG_CHECK'),
    pgDrill: threshold(env, problems, 'PG_DRILL'),
  };
  problems.throwIfAny();
  return { schedule: text, thresholds };
}
