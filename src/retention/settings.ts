/**
 * Retention settings: declares and reads each target's policy (TCAB_BACKUP_RETENTION_<NAME>) and the rails'
 * settings shared by all targets; a target without a policy gets DEFAULT_RETENTION_POLICY. Every problem
 * names its variable. The syntax: docs/architecture.md, "Retention".
 */
import { ConfigError } from '../errors.js';
import { parseDurationMs } from '../util/duration.js';
import { defineSettings, settingsReader, type Env } from '../util/settings.js';
import { formatCalendarDuration, isZeroDuration, parseCalendarDuration } from './duration.js';
import { COUNT_RULES, WITHIN_RULES, isEmptyPolicy, policyProblems, type RetentionPolicy } from './policy.js';
import type { RetentionRailSettings } from './rails.js';

/**
 * The default policy, for the default snapshot every 5 minutes: the last 24 snapshots (two hours at 5 minutes:
 * a mistake noticed soon is undone to the 5 minutes), then two days of hours (an incident found the next
 * working day can still be undone to the hour), two weeks of days, two months of weeks, a year of months, and
 * one snapshot of every year for good (the runs database is a system of record, and one file a year costs next
 * to nothing). About 100 snapshots per target once a year has passed, 24 more than the hourly rules alone.
 */
export const RETENTION_SETTINGS = defineSettings([
  {
    name: 'TCAB_BACKUP_RETENTION_<NAME>',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: 'last=24,hourly=48,daily=14,weekly=8,monthly=12,yearly=-1',
    description:
      'Retention policy of one target (restic forget semantics, UTC), comma-separated rules: last, hourly, daily, weekly (ISO weeks), monthly, yearly = a count or -1 (unlimited); within, withinHourly, withinDaily, withinWeekly, withinMonthly, withinYearly = a duration in y, m (months), d, h like 1y2m3d4h, measured back from the newest snapshot; tags = tag lists separated by ";", tags of one list joined by "+" (pinned;release+v1 keeps snapshots tagged pinned, or tagged both release and v1). E.g. last=3,hourly=24,daily=14,weekly=8,monthly=12,yearly=-1.',
  },
  {
    name: 'TCAB_BACKUP_RETENTION_MIN_KEEP',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '3',
    description: 'Safety rail: prune always keeps at least this many of the newest snapshots of each target, whatever the policy says.',
  },
  {
    name: 'TCAB_BACKUP_RETENTION_MIN_AGE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '1h',
    description: 'Safety rail: prune never deletes a snapshot younger than this (e.g. 1h, 1d).',
  },
  {
    name: 'TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE',
    side: 'backup',
    requiredInAzure: false,
    secret: false,
    default: '0.5',
    description:
      "Safety rail: a prune run that would delete more than this share (0 to 1) of a target's snapshots is refused unless forced (tcab-backup prune --force).",
  },
]);

const { fallback } = settingsReader(RETENTION_SETTINGS);

export const DEFAULT_RETENTION_POLICY_TEXT = fallback('TCAB_BACKUP_RETENTION_<NAME>');
export const DEFAULT_MIN_KEEP = Number(fallback('TCAB_BACKUP_RETENTION_MIN_KEEP'));
export const DEFAULT_MIN_AGE = fallback('TCAB_BACKUP_RETENTION_MIN_AGE');
export const DEFAULT_MAX_DELETE_SHARE = Number(fallback('TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE'));

export const MIN_KEEP_VARIABLE = 'TCAB_BACKUP_RETENTION_MIN_KEEP';
export const MIN_AGE_VARIABLE = 'TCAB_BACKUP_RETENTION_MIN_AGE';
export const MAX_DELETE_SHARE_VARIABLE = 'TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE';
const RAIL_VARIABLES = [MIN_KEEP_VARIABLE, MIN_AGE_VARIABLE, MAX_DELETE_SHARE_VARIABLE];

const RULE_NAMES: readonly string[] = [...COUNT_RULES, ...WITHIN_RULES, 'tags'];
const RULE_BY_LOWER = new Map(RULE_NAMES.map((r) => [r.toLowerCase(), r]));
const COUNT_EXPECTED = 'a whole number from 0, or -1 (or "unlimited") for no limit';

function parseCount(rule: string, value: string): number {
  if (value.toLowerCase() === 'unlimited') return -1;
  if (!/^(-1|\d{1,9})$/.test(value)) throw new Error(`${rule}: "${value}" is not a count: expected ${COUNT_EXPECTED}`);
  return Number(value);
}

function parseTagLists(value: string): string[][] {
  return value.split(';').map((list, i) => {
    const tags = list.split('+').map((t) => t.trim());
    if (tags.some((t) => !t))
      throw new Error(
        `tags: list ${i + 1} ("${list}") has an empty tag: expected lists separated by ";", tags within a list joined by "+", e.g. pinned;release+v1`,
      );
    return tags;
  });
}

/** Parses a policy setting; the error message names the rule that is wrong and what it expects. */
export function parseRetentionPolicy(text: string): RetentionPolicy {
  const policy: RetentionPolicy = {};
  const given = new Set<string>();
  for (const raw of text.split(',')) {
    const entry = raw.trim();
    if (!entry) continue;
    const eq = entry.indexOf('=');
    const name = (eq < 0 ? entry : entry.slice(0, eq)).trim();
    const rule = RULE_BY_LOWER.get(name.toLowerCase());
    if (!rule) throw new Error(`unknown rule "${name}": expected rule=value with rules ${RULE_NAMES.join(', ')}`);
    if (eq < 0) throw new Error(`${rule}: has no value: expected ${rule}=<value>`);
    if (given.has(rule)) throw new Error(`${rule}: is given twice`);
    given.add(rule);
    const value = entry.slice(eq + 1).trim();
    if ((COUNT_RULES as readonly string[]).includes(rule)) policy[rule as (typeof COUNT_RULES)[number]] = parseCount(rule, value);
    else if (rule === 'tags') policy.tags = parseTagLists(value);
    else {
      try {
        policy[rule as (typeof WITHIN_RULES)[number]] = parseCalendarDuration(value);
      } catch (e) {
        throw new Error(`${rule}: ${(e as Error).message}`);
      }
    }
  }
  const problems = policyProblems(policy);
  if (problems.length) throw new Error(problems.join('; '));
  if (isEmptyPolicy(policy)) {
    throw new Error(
      `sets no rule that keeps anything, and an empty policy would never remove a snapshot: give at least one rule (e.g. ${DEFAULT_RETENTION_POLICY_TEXT}), or last=-1 to keep everything`,
    );
  }
  return policy;
}

/** The policy in the setting syntax, rules in a fixed order; unset and zero rules left out. */
export function formatRetentionPolicy(policy: RetentionPolicy): string {
  const parts: string[] = [];
  for (const r of COUNT_RULES) if (policy[r]) parts.push(`${r}=${policy[r]}`);
  for (const r of WITHIN_RULES) if (!isZeroDuration(policy[r])) parts.push(`${r}=${formatCalendarDuration(policy[r]!)}`);
  if (policy.tags?.length) parts.push(`tags=${policy.tags.map((l) => l.join('+')).join(';')}`);
  return parts.join(',');
}

export const DEFAULT_RETENTION_POLICY: RetentionPolicy = parseRetentionPolicy(DEFAULT_RETENTION_POLICY_TEXT);

/** The policy variable of a target: blob -> TCAB_BACKUP_RETENTION_BLOB, r2-eu -> TCAB_BACKUP_RETENTION_R2_EU. */
export function retentionVariable(targetName: string): string {
  return `TCAB_BACKUP_RETENTION_${targetName.toUpperCase().replace(/-/g, '_')}`;
}

export interface TargetRetention {
  policy: RetentionPolicy;
  /** Where the policy came from: the target's variable, or the built-in default. */
  source: string;
}

export interface RetentionConfig {
  /** By target name. */
  policies: Map<string, TargetRetention>;
  rails: RetentionRailSettings;
}

function readRails(env: Env, problems: string[]): RetentionRailSettings {
  const rails: RetentionRailSettings = {
    minKeep: DEFAULT_MIN_KEEP,
    minAgeMs: parseDurationMs(DEFAULT_MIN_AGE),
    maxDeleteShare: DEFAULT_MAX_DELETE_SHARE,
  };
  const minKeep = env[MIN_KEEP_VARIABLE]?.trim();
  if (minKeep) {
    if (/^\d{1,6}$/.test(minKeep)) rails.minKeep = Number(minKeep);
    else problems.push(`${MIN_KEEP_VARIABLE}: "${minKeep}" is invalid: expected a whole number from 0 (the newest snapshots always kept)`);
  }
  const minAge = env[MIN_AGE_VARIABLE]?.trim();
  if (minAge) {
    try {
      rails.minAgeMs = parseDurationMs(minAge);
    } catch (e) {
      problems.push(`${MIN_AGE_VARIABLE}: ${(e as Error).message}`);
    }
  }
  const share = env[MAX_DELETE_SHARE_VARIABLE]?.trim();
  if (share) {
    const n = /^(0|1|0?\.\d+|1\.0*)$/.test(share) ? Number(share) : NaN;
    if (n >= 0 && n <= 1) rails.maxDeleteShare = n;
    else
      problems.push(
        `${MAX_DELETE_SHARE_VARIABLE}: "${share}" is invalid: expected a share from 0 to 1, like 0.5 (a run deleting more than this share of a target's snapshots is refused unless forced)`,
      );
  }
  return rails;
}

/**
 * The policy of each target and the shared rails, validated at once: a ConfigError lists every problem,
 * each naming its variable. A TCAB_BACKUP_RETENTION_ variable that matches no target is a problem too,
 * since a misspelt target name would silently leave that target on the default policy.
 */
export function loadRetentionConfig(env: Env, targetNames: readonly string[]): RetentionConfig {
  const problems: string[] = [];
  const rails = readRails(env, problems);
  const policies = new Map<string, TargetRetention>();
  const targetVariables = new Set<string>();
  for (const name of targetNames) {
    const variable = retentionVariable(name);
    targetVariables.add(variable);
    if (RAIL_VARIABLES.includes(variable)) {
      problems.push(
        `TCAB_BACKUP_TARGETS: the target name "${name}" makes its retention variable ${variable}, which is a safety-rail setting; give the target another name`,
      );
      continue;
    }
    const text = env[variable]?.trim();
    if (!text) {
      policies.set(name, { policy: DEFAULT_RETENTION_POLICY, source: `default (${DEFAULT_RETENTION_POLICY_TEXT})` });
      continue;
    }
    try {
      policies.set(name, { policy: parseRetentionPolicy(text), source: variable });
    } catch (e) {
      problems.push(`${variable}: "${text}" is invalid: ${(e as Error).message}`);
    }
  }
  const documented = new Set<string>(RETENTION_SETTINGS.map((s) => s.name));
  for (const variable of Object.keys(env)) {
    if (!variable.startsWith('TCAB_BACKUP_RETENTION_') || targetVariables.has(variable) || documented.has(variable)) continue;
    if (!env[variable]?.trim()) continue;
    problems.push(
      `${variable}: is set, but no target in TCAB_BACKUP_TARGETS has this name (targets: ${targetNames.join(', ') || 'none'}); check the spelling of the target name`,
    );
  }
  if (problems.length) throw new ConfigError(problems);
  return { policies, rails };
}
