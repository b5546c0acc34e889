/**
 * Reading settings: environment variables (Function App settings, `local.settings.json` locally, the agent's
 * environment file on the VM) validated with zod. Each part declares its settings (defineSettings) next to its
 * loader and reads them through settingsReader, which takes every default from the declaration, so a default
 * is written exactly once. src/settings.ts assembles the declarations into the catalogue the README documents.
 * A missing or invalid setting is a problem naming its variable; a loader reports all of them at once.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { isLoopbackHost } from './net.js';
import { parseDurationMs } from './duration.js';

export type Env = Record<string, string | undefined>;

/** One setting as the catalogue documents it. */
export interface SettingDoc {
  name: string;
  /** Who reads it: the function app / CLI ('backup') or the snapshot agent on the VM ('agent'). */
  side: 'backup' | 'agent';
  /** Must be set for the Function App to start (infra/ must set it). */
  requiredInAzure: boolean;
  secret: boolean;
  default?: string;
  description: string;
}

/** A part's settings, with their names kept as literal types so that a reader only accepts those names. */
export function defineSettings<const T extends readonly SettingDoc[]>(list: T): T {
  return list;
}

/** Collects every problem instead of stopping at the first, so one run shows all that is wrong. */
export class Problems {
  readonly list: string[] = [];
  add(name: string, message: string): void {
    this.list.push(`${name}: ${message}`);
  }
  throwIfAny(): void {
    if (this.list.length) throw new ConfigError(this.list);
  }
}

export interface SettingsReader<N extends string> {
  /**
   * Reads one variable through a zod schema, the declared default standing in for an unset or blank value;
   * a problem names the variable and never shows a secret's value.
   */
  read<T>(env: Env, problems: Problems, name: N, schema: z.ZodType<T>): T | undefined;
  /** The trimmed value, or the declared default when unset or blank (for settings parsed by hand). */
  value(env: Env, name: N): string | undefined;
  /** The declared default; throws when the setting has none. */
  fallback(name: N): string;
  entry(name: N): SettingDoc;
}

/** A reader over a part's declared settings. */
export function settingsReader<const L extends readonly SettingDoc[]>(list: L): SettingsReader<L[number]['name']> {
  const byName = new Map<string, SettingDoc>(list.map((s) => [s.name, s]));
  const entry = (name: string): SettingDoc => {
    const doc = byName.get(name);
    if (!doc) throw new Error(`${name} is not declared among ${list.map((s) => s.name).join(', ')}`);
    return doc;
  };
  const value = (env: Env, name: string) => env[name]?.trim() || entry(name).default;
  return {
    entry,
    value,
    fallback(name) {
      const d = entry(name).default;
      if (d === undefined) throw new Error(`${name} has no default in its declaration`);
      return d;
    },
    read(env, problems, name, schema) {
      const doc = entry(name);
      const raw = value(env, name);
      const result = schema.safeParse(raw);
      if (result.success) return result.data;
      const issue = result.error.issues[0];
      const shown = doc.secret || /KEY|SECRET|CONNECTION/.test(name) ? '***' : raw;
      const what = raw === undefined ? 'is not set' : `"${shown}" is invalid`;
      problems.add(name, `${what}: ${issue?.message ?? 'invalid'}`);
      return undefined;
    },
  };
}

/** A positive duration like 90s, 15m, 1h30m, 7d, in milliseconds. */
export const durationMs = (what: string) =>
  z.string({ message: `expected ${what}` }).transform((s, ctx) => {
    try {
      const ms = parseDurationMs(s);
      if (ms <= 0) throw new Error('must be longer than zero');
      return ms;
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
  });

export const booleanSetting = z.enum(['true', 'false'], { message: 'expected true or false' }).transform((s) => s === 'true');

export const NCRONTAB = z
  .string({ message: 'expected an NCRONTAB expression with six fields (second minute hour day month weekday)' })
  .refine((s) => s.trim().split(/\s+/).length === 6, 'expected six fields: second minute hour day month weekday (e.g. "0 0 * * * *")');

export function httpUrl(requireTlsOffLoopback: boolean) {
  return z.string({ message: 'expected an http(s) URL' }).transform((s, ctx) => {
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      ctx.addIssue({ code: 'custom', message: 'expected an http(s) URL like https://10.0.1.4:8787' });
      return z.NEVER;
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') {
      ctx.addIssue({ code: 'custom', message: `expected http or https, got ${u.protocol}` });
      return z.NEVER;
    }
    if (requireTlsOffLoopback && u.protocol === 'http:' && !isLoopbackHost(u.hostname)) {
      ctx.addIssue({ code: 'custom', message: 'plain http is only allowed to a loopback agent; use https' });
      return z.NEVER;
    }
    if (u.username || u.password) {
      ctx.addIssue({ code: 'custom', message: 'credentials may not be written in the URL' });
      return z.NEVER;
    }
    return u;
  });
}

/** The shortest HMAC secret accepted, on both sides. */
export const MIN_SECRET_CHARS = 32;

export const secretString = z
  .string({ message: 'is required' })
  .min(MIN_SECRET_CHARS, `must be at least ${MIN_SECRET_CHARS} characters (generate 64 hex characters)`);

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const guid = (what: string) =>
  z
    .string({ message: `is required: ${what}` })
    .regex(GUID_RE, `expected ${what}, a GUID like 72f988bf-86f1-41af-91ab-2d7cd011db47`)
    .transform((s) => s.toLowerCase());

/** A comma-separated list whose every entry passes `entry`; empty entries are dropped, at least one must remain. */
export function commaList<T>(what: string, entry: z.ZodType<T>) {
  return z.string({ message: `is required: ${what}` }).transform((s, ctx) => {
    const out: T[] = [];
    for (const item of s
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean)) {
      const r = entry.safeParse(item);
      if (!r.success) {
        ctx.addIssue({ code: 'custom', message: `"${item}": ${r.error.issues[0]?.message ?? 'invalid'}` });
        return z.NEVER;
      }
      out.push(r.data);
    }
    if (out.length === 0) {
      ctx.addIssue({ code: 'custom', message: `expected ${what}` });
      return z.NEVER;
    }
    return out;
  });
}

/** A PEM given inline, or the path of a PEM file. */
export function pemSetting(env: Env, problems: Problems, name: string): string | undefined {
  const raw = env[name]?.trim();
  if (!raw) return undefined;
  if (raw.includes('-----BEGIN')) return raw;
  try {
    const text = readFileSync(raw, 'utf8');
    if (text.includes('-----BEGIN')) return text;
    problems.add(name, `"${raw}" is not a PEM file (expected -----BEGIN CERTIFICATE-----)`);
  } catch (e) {
    problems.add(name, `cannot read "${raw}": ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return undefined;
}
