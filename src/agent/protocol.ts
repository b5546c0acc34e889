/**
 * The snapshot agent protocol, version 1 (docs/agent-protocol.md): the pieces both the agent and
 * its client must agree on byte for byte. Nothing here does I/O.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { ChunkingDescriptionSchema } from '../format/params.js';

export const AUTH_SCHEME = 'TCAB-HMAC-SHA256';
/** Accepted clock skew between client and agent, in seconds, either way. */
export const AUTH_WINDOW_SECONDS = 300;
export const MAX_BODY_BYTES = 16 * 1024;
/** The body of POST /v1/snapshots/{id}/chunk-data: newline-separated hashes, about 15,000 of them. */
export const MAX_CHUNK_REQUEST_BYTES = 1024 * 1024;
export const SNAPSHOT_ID_RE = /^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$/;
/** A database name as both sides write it in storage keys and snapshot descriptions. */
export const DATABASE_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const NONCE_RE = /^[A-Za-z0-9_-]{16,64}$/;
export const EMPTY_SHA256 = createHash('sha256').update('').digest('hex');

export const CompressionSchema = z.enum(['gzip', 'zstd', 'none']);
export type Compression = z.infer<typeof CompressionSchema>;

/** File name extension of an artifact for each compression. */
export const COMPRESSION_EXT: Record<Compression, string> = { gzip: '.gz', zstd: '.zst', none: '' };

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a lower-case hex sha256');

/**
 * A format-1 snapshot as the agent describes it: one compressed artifact. The catalog's manifest extends it, so
 * it stays this object; its JSON is the same as before format 2 existed (no `format` field).
 */
export const SnapshotDescriptionSchema = z.object({
  id: z.string().regex(SNAPSHOT_ID_RE, 'an agent snapshot id like 20261124T161300Z-3f9a1c2e'),
  createdAt: z.string().datetime({ offset: true }),
  database: z.object({
    name: z.string().min(1),
    sqliteVersion: z.string(),
    pageSize: z.number().int().positive(),
    pageCount: z.number().int().nonnegative(),
    journalMode: z.string(),
    userVersion: z.number().int(),
    tables: z.record(z.string(), z.number().int().nonnegative()),
  }),
  integrity: z.string(),
  snapshot: z.object({ bytes: z.number().int().nonnegative(), sha256: Sha256Hex }),
  artifact: z.object({ bytes: z.number().int().nonnegative(), sha256: Sha256Hex, compression: CompressionSchema }),
  timings: z.record(z.string(), z.number().nonnegative()),
});
export type SnapshotDescription = z.infer<typeof SnapshotDescriptionSchema>;

/**
 * A format-2 snapshot: the plain file stays staged, cut into chunks (GET /v1/snapshots/{id}/chunks lists them,
 * POST /v1/snapshots/{id}/chunk-data sends them as zstd frames). No artifact; `chunks` describes the list as
 * GET .../chunks sends it: its lines, its bytes and their sha256.
 */
export const SnapshotDescriptionV2Schema = SnapshotDescriptionSchema.omit({ artifact: true }).extend({
  format: z.literal(2),
  chunking: ChunkingDescriptionSchema,
  chunks: z.object({ count: z.number().int().nonnegative(), listSha256: Sha256Hex, listBytes: z.number().int().nonnegative() }),
});
export type SnapshotDescriptionV2 = z.infer<typeof SnapshotDescriptionV2Schema>;

/** What POST /v1/snapshots answers: a format-1 description (no `format` field) or a format-2 one. */
export const AnySnapshotDescriptionSchema = z.union([SnapshotDescriptionV2Schema, SnapshotDescriptionSchema]);
export type AnySnapshotDescription = SnapshotDescription | SnapshotDescriptionV2;

export function isFormat2(d: AnySnapshotDescription): d is SnapshotDescriptionV2 {
  return 'format' in d && d.format === 2;
}

export const SnapshotFormatSchema = z.union([z.literal(1), z.literal(2)]);
export type SnapshotFormat = z.infer<typeof SnapshotFormatSchema>;

export const AgentStatusSchema = z.object({
  database: z.object({
    name: z.string(),
    bytes: z.number().int().nonnegative(),
    pageSize: z.number().int().positive(),
    journalMode: z.string(),
    tables: z.record(z.string(), z.number().int().nonnegative()),
    /** Newest `published_at` of runs (ISO time), or null when there are none. */
    newestPublishedAt: z.string().nullable(),
  }),
  staging: z.object({ freeBytes: z.number().int().nonnegative(), snapshots: z.number().int().nonnegative() }),
  agent: z.object({ version: z.string(), compressions: z.array(CompressionSchema) }),
});
export type AgentStatus = z.infer<typeof AgentStatusSchema>;

/** The steps of an application drill (POST /v1/drills), in the order the agent runs them. */
export const DRILL_STEPS = ['receive', 'snapshot-sha256', 'integrity', 'start', 'healthz', 'runs', 'stop'] as const;
export const DrillStepSchema = z.enum(DRILL_STEPS);
export type DrillStep = z.infer<typeof DrillStepSchema>;

/** The agent's answer to an accepted POST /v1/drills, passed or not (docs/agent-protocol.md, "POST /v1/drills: the application drill"). */
export const AppDrillResultSchema = z.object({
  passed: z.boolean(),
  snapshotId: z.string().nullable(),
  failedStep: DrillStepSchema.nullable(),
  checks: z.array(z.object({ name: DrillStepSchema, ok: z.boolean(), ms: z.number().nonnegative(), detail: z.string() })),
  runs: z.object({ inFile: z.number().int().nullable(), served: z.number().int().nullable(), comparison: z.string().nullable() }),
  totalMs: z.number().nonnegative(),
  backendLog: z.array(z.string()).optional(),
});
export type AppDrillResult = z.infer<typeof AppDrillResultSchema>;

export const CreateSnapshotBodySchema = z
  .object({ compression: CompressionSchema.optional(), format: SnapshotFormatSchema.optional() })
  .strict();

/** One line of GET /v1/snapshots/{id}/chunks: `<sha256> <plain length>`, in file order. */
export function chunkListLine(sha256: string, length: number): string {
  return `${sha256} ${length}\n`;
}
export const CHUNK_LIST_LINE_RE = /^([0-9a-f]{64}) ([1-9][0-9]{0,15})$/;
/** The header of one record of POST /v1/snapshots/{id}/chunk-data: `<sha256> <stored length>`, then the frame. */
export const CHUNK_RECORD_HEADER_RE = /^([0-9a-f]{64}) ([1-9][0-9]{0,15})$/;
/** Longest record header: 64 hex digits, a space, 16 digits and the newline. */
export const CHUNK_RECORD_HEADER_MAX = 64 + 1 + 16 + 1;

export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function stringToSign(method: string, pathAndQuery: string, ts: number | string, nonce: string, bodySha256Hex: string): string {
  return [AUTH_SCHEME, method.toUpperCase(), pathAndQuery, String(ts), nonce, bodySha256Hex].join('\n');
}

export function computeSignature(secret: string, toSign: string): string {
  return createHmac('sha256', Buffer.from(secret, 'utf8')).update(toSign, 'utf8').digest('hex');
}

export function newNonce(): string {
  return randomBytes(24).toString('base64url');
}

/** The Authorization header value for one request. `body` is the exact bytes sent (empty for none). */
export function signRequest(args: {
  keyId: string;
  secret: string;
  method: string;
  pathAndQuery: string;
  body?: string | Buffer;
  /** A streamed body's sha256 (hex), known beforehand: the drill's artifact, whose manifest states it. */
  bodySha256?: string;
  ts?: number;
  nonce?: string;
}): string {
  const ts = args.ts ?? Math.floor(Date.now() / 1000);
  const nonce = args.nonce ?? newNonce();
  const bodyHash = args.bodySha256 ?? (args.body && args.body.length > 0 ? sha256Hex(args.body) : EMPTY_SHA256);
  const sig = computeSignature(args.secret, stringToSign(args.method, args.pathAndQuery, ts, nonce, bodyHash));
  return `${AUTH_SCHEME} keyId=${args.keyId},ts=${ts},nonce=${nonce},sig=${sig}`;
}

export interface ParsedAuthorization {
  keyId: string;
  ts: number;
  nonce: string;
  sig: string;
}

/** Parses the header; null when it is not a well-formed TCAB-HMAC-SHA256 header (the caller answers 401). */
export function parseAuthorization(header: string | undefined): ParsedAuthorization | null {
  if (!header?.startsWith(AUTH_SCHEME + ' ')) return null;
  const params = new Map<string, string>();
  for (const part of header.slice(AUTH_SCHEME.length + 1).split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) return null;
    const k = part.slice(0, eq).trim();
    if (params.has(k)) return null;
    params.set(k, part.slice(eq + 1).trim());
  }
  const keyId = params.get('keyId');
  const tsText = params.get('ts');
  const nonce = params.get('nonce');
  const sig = params.get('sig');
  if (!keyId || !tsText || !nonce || !sig || params.size !== 4) return null;
  if (!/^[0-9]{1,12}$/.test(tsText) || !NONCE_RE.test(nonce) || !/^[0-9a-f]{64}$/.test(sig)) return null;
  return { keyId, ts: Number(tsText), nonce, sig };
}

/** Constant-time comparison of two hex signatures. */
export function signaturesEqual(a: string, b: string): boolean {
  const ba = Buffer.from(a, 'hex');
  const bb = Buffer.from(b, 'hex');
  return ba.length === bb.length && ba.length > 0 && timingSafeEqual(ba, bb);
}

/** Parses `TCAB_AGENT_KEYS` style lists: `id=secret,id2=secret2`. Secrets may contain '=' but not ','. */
export function parseKeyList(text: string): Map<string, string> {
  const keys = new Map<string, string>();
  for (const entry of text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const eq = entry.indexOf('=');
    if (eq <= 0 || eq === entry.length - 1) throw new Error(`entry "${entry.slice(0, Math.max(eq, 0))}=…" is not id=secret`);
    keys.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  return keys;
}
