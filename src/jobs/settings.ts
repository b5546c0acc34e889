/**
 * Settings of the jobs that prove the backups are healthy: verify rotation, restore drill and monitor.
 * Defaults come from the SETTINGS catalogue in src/config.ts, so the documentation and the code cannot drift.
 * Every problem names its variable; all problems are reported together.
 */
import { tmpdir } from 'node:os';
import { isAbsolute } from 'node:path';
import { Problems, SETTINGS, booleanSetting, durationMs, read, type Env } from '../config.js';
import { formatDuration } from '../util/duration.js';
import { longestGapMs } from '../util/schedule-gap.js';

export interface AgeThreshold {
  warnMs: number;
  criticalMs: number;
}

export interface MonitorThresholds {
  snapshot: AgeThreshold;
  drill: AgeThreshold;
  verify: AgeThreshold;
  pgCheck: AgeThreshold;
  pgDrill: AgeThreshold;
}

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

/** The catalogue's default, so that the documented value and the one used cannot differ. */
function fallback(name: string): string {
  const value = SETTINGS.find((s) => s.name === name)?.default;
  if (value === undefined) throw new Error(`${name} has no default in SETTINGS`);
  return value;
}

function duration(env: Env, problems: Problems, name: string): number | undefined {
  return read(env, problems, name, durationMs('a duration like 2h, 26h or 7d'), fallback(name));
}

function schedule(env: Env, problems: Problems, name: string): { text: string; gapMs: number | undefined } {
  const text = env[name]?.trim() || fallback(name);
  try {
    return { text, gapMs: longestGapMs(text) };
  } catch (e) {
    problems.add(name, `"${text}" is not an NCRONTAB schedule: ${(e as Error).message} (e.g. "0 0 5 * * *" for daily at 05:00 UTC)`);
    return { text, gapMs: undefined };
  }
}

function threshold(env: Env, problems: Problems, stem: string): AgeThreshold {
  const warnName = `TCAB_BACKUP_${stem}_WARN_AGE`;
  const criticalName = `TCAB_BACKUP_${stem}_CRITICAL_AGE`;
  const warnMs = duration(env, problems, warnName);
  const criticalMs = duration(env, problems, criticalName);
  if (warnMs !== undefined && criticalMs !== undefined && warnMs >= criticalMs) {
    problems.add(warnName, `${formatDuration(warnMs)} must be shorter than ${criticalName} (${formatDuration(criticalMs)}), or the warning never shows before the alert`);
  }
  return { warnMs: warnMs ?? 0, criticalMs: criticalMs ?? 0 };
}

export function loadVerifySettings(env: Env = process.env): VerifySettings {
  const problems = new Problems();
  const { text, gapMs } = schedule(env, problems, 'TCAB_BACKUP_VERIFY_SCHEDULE');
  const withinMs = duration(env, problems, 'TCAB_BACKUP_VERIFY_WITHIN');
  if (withinMs !== undefined && gapMs !== undefined && withinMs < gapMs) {
    problems.add('TCAB_BACKUP_VERIFY_WITHIN', `${formatDuration(withinMs)} is shorter than the longest gap between two verify runs of TCAB_BACKUP_VERIFY_SCHEDULE "${text}" (${formatDuration(gapMs)}): no rotation can meet it; lengthen it or run verify more often`);
  }
  problems.throwIfAny();
  return { schedule: text, withinMs: withinMs!, intervalMs: gapMs! };
}

export function loadDrillSettings(env: Env = process.env): DrillSettings {
  const problems = new Problems();
  const { text } = schedule(env, problems, 'TCAB_BACKUP_DRILL_SCHEDULE');
  const workDir = env.TCAB_BACKUP_DRILL_WORK_DIR?.trim() || tmpdir();
  if (!isAbsolute(workDir)) problems.add('TCAB_BACKUP_DRILL_WORK_DIR', `"${workDir}" must be an absolute path`);
  const method = (env.TCAB_BACKUP_DRILL_METHOD?.trim() || 'auto') as DrillMethodSetting;
  if (!['auto', 'restore', 'stream'].includes(method)) problems.add('TCAB_BACKUP_DRILL_METHOD', `"${method}" is not auto, restore or stream`);
  const app = read(env, problems, 'TCAB_BACKUP_DRILL_APP', booleanSetting, fallback('TCAB_BACKUP_DRILL_APP'));
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
