/**
 * Where things live on a target (docs/architecture.md, "On a target"), relative to the target's prefix:
 *
 *   snapshots/<database>/<YYYY>/<MM>/<DD>/<id>.sqlite.<gz|zst>   the artifact, exactly as the agent made it
 *   snapshots/<database>/<YYYY>/<MM>/<DD>/<id>.chunks            format 2: the chunk list (the snapshot's data object)
 *   snapshots/<database>/<YYYY>/<MM>/<DD>/<id>.json              the manifest: written last, deleted first
 *   chunks/<database>/<aa>/<sha256>.zst                          format 2: the chunks (src/format/chunk-key.ts)
 *   drills/<database>/<drill id>.json                            drill records
 *   status/<database>.json                                       the latest health summary
 *   status/<database>.verify.json                                when each snapshot was last re-read, and the result
 *   renewals/<database>/<time>-<id>-<rand>.json                  format 2: old chunks a writer renewed, checked by a later run
 *   sweeps/<database>/<time>-j<J ms>-<rand>.json                 format 2: a prune sweeping the chunks now (one at a time)
 *
 * The date folders come from the snapshot id (its creation time, UTC), so every key is derived from the id.
 */
import { randomBytes } from 'node:crypto';
import { COMPRESSION_EXT, DATABASE_NAME_RE, SNAPSHOT_ID_RE, type Compression } from '../agent/protocol.js';

export { DATABASE_NAME_RE };

function checkDatabase(database: string): void {
  if (!DATABASE_NAME_RE.test(database)) throw new Error(`database name "${database}" must be lower-case letters, digits, '_' and '-'`);
}

function checkId(id: string): void {
  if (!SNAPSHOT_ID_RE.test(id)) throw new Error(`"${id}" is not a snapshot id (expected like 20261124T161300Z-3f9a1c2e)`);
}

export function snapshotsPrefix(database: string): string {
  checkDatabase(database);
  return `snapshots/${database}/`;
}

function snapshotFolder(database: string, id: string): string {
  checkId(id);
  return `${snapshotsPrefix(database)}${id.slice(0, 4)}/${id.slice(4, 6)}/${id.slice(6, 8)}/`;
}

export function artifactKey(database: string, id: string, compression: Compression): string {
  return `${snapshotFolder(database, id)}${id}.sqlite${COMPRESSION_EXT[compression]}`;
}

/** Format 2: the snapshot's chunk list (docs/format-2.md, "A snapshot"), its data object as the artifact is in format 1. */
export function chunkListKey(database: string, id: string): string {
  return `${snapshotFolder(database, id)}${id}.chunks`;
}

export function manifestKey(database: string, id: string): string {
  return `${snapshotFolder(database, id)}${id}.json`;
}

export function drillKey(database: string, drillId: string): string {
  checkDatabase(database);
  if (!/^[A-Za-z0-9_.-]{1,128}$/.test(drillId) || drillId.includes('..')) throw new Error(`"${drillId}" is not a drill id`);
  return `drills/${database}/${drillId}.json`;
}

export function drillsPrefix(database: string): string {
  checkDatabase(database);
  return `drills/${database}/`;
}

export function statusKey(database: string): string {
  checkDatabase(database);
  return `status/${database}.json`;
}

/**
 * The verify record of a database on one target: when each snapshot was last re-read and whether it matched.
 * The '.' cannot occur in a database name, so this key never collides with another database's status.
 */
export function verifyRecordKey(database: string): string {
  checkDatabase(database);
  return `status/${database}.verify.json`;
}

/** Format 2: where the renewal records of a database live (docs/format-2.md, "Writing", step 4). */
export function renewalsPrefix(database: string): string {
  checkDatabase(database);
  return `renewals/${database}/`;
}

/**
 * One renewal record: the writer's time (UTC, millisecond precision), the snapshot it wrote and 8 random hex
 * digits, so two writers never name the same record (and each writes its own create-only).
 */
export function renewalRecordKey(database: string, writtenAt: Date, id: string): string {
  checkId(id);
  const stamp = writtenAt.toISOString().replace(/[-:]/g, '').replace('.', '');
  return `${renewalsPrefix(database)}${stamp}-${id}-${randomBytes(4).toString('hex')}.json`;
}

const RENEWAL_KEY_RE = /^renewals\/([a-z0-9][a-z0-9_-]*)\/(\d{8}T\d{9}Z)-([0-9]{8}T[0-9]{6}Z-[0-9a-f]{8})-[0-9a-f]{8}\.json$/;

/** The database and snapshot id of a renewal record's key, or null when the key is not one. */
export function parseRenewalRecordKey(key: string): { database: string; id: string } | null {
  const m = RENEWAL_KEY_RE.exec(key);
  return m ? { database: m[1]!, id: m[3]! } : null;
}

/** Format 2: where the markers of the prunes sweeping a database's chunks live (docs/format-2.md, "Collecting chunks (prune)"). */
export function sweepsPrefix(database: string): string {
  checkDatabase(database);
  return `sweeps/${database}/`;
}

/**
 * One sweep marker: the prune's time (UTC, millisecond precision), its J in milliseconds (how long its sweep may
 * delete, so another prune knows when the marker is stale without reading it) and 8 random hex digits, so two
 * prunes never name the same marker (each writes its own create-only).
 */
export function sweepMarkerKey(database: string, startedAt: Date, jobTimeoutMs: number): string {
  if (!Number.isSafeInteger(jobTimeoutMs) || jobTimeoutMs <= 0)
    throw new Error(`a sweep marker's J must be a positive whole number of ms, not ${jobTimeoutMs}`);
  const stamp = startedAt.toISOString().replace(/[-:]/g, '').replace('.', '');
  return `${sweepsPrefix(database)}${stamp}-j${jobTimeoutMs}-${randomBytes(4).toString('hex')}.json`;
}

/** A marker's name: its time, then (since markers carry it) `j<J ms>`, then its random part. */
const SWEEP_KEY_RE = /^sweeps\/([a-z0-9][a-z0-9_-]*)\/\d{8}T\d{9}Z-(?:j([1-9]\d{0,11})-)?[0-9a-f]{8}\.json$/;
/** Anything named like a marker (its time first) that the form above does not describe: a marker whose J is unknown. */
const SWEEP_LIKE_RE = /^sweeps\/([a-z0-9][a-z0-9_-]*)\/\d{8}T\d{9}Z-[^/]*\.json$/;

/**
 * The database and J of a sweep marker's key, or null when the key is not one. `jobTimeoutMs` is undefined for
 * a marker written before markers carried J (its J is taken as the reader's own), and `unknown` is set for a
 * key named like a marker whose J cannot be read (a later form): such a marker is never taken as stale.
 */
export function parseSweepMarkerKey(key: string): { database: string; jobTimeoutMs?: number; unknown?: true } | null {
  const m = SWEEP_KEY_RE.exec(key);
  if (m) return m[2] ? { database: m[1]!, jobTimeoutMs: Number(m[2]) } : { database: m[1]! };
  const like = SWEEP_LIKE_RE.exec(key);
  return like ? { database: like[1]!, unknown: true } : null;
}

const MANIFEST_KEY_RE = /^snapshots\/([a-z0-9][a-z0-9_-]*)\/(\d{4})\/(\d{2})\/(\d{2})\/([0-9]{8}T[0-9]{6}Z-[0-9a-f]{8})\.json$/;
const ARTIFACT_KEY_RE =
  /^snapshots\/([a-z0-9][a-z0-9_-]*)\/(\d{4})\/(\d{2})\/(\d{2})\/([0-9]{8}T[0-9]{6}Z-[0-9a-f]{8})\.sqlite(\.gz|\.zst)?$/;

/** The snapshot id of a manifest key, or null when the key is not a manifest. */
export function parseManifestKey(key: string): { database: string; id: string } | null {
  const m = MANIFEST_KEY_RE.exec(key);
  if (!m || m[5]!.slice(0, 8) !== `${m[2]}${m[3]}${m[4]}`) return null;
  return { database: m[1]!, id: m[5]! };
}

/** The snapshot id of an artifact key, or null when the key is not an artifact. */
export function parseArtifactKey(key: string): { database: string; id: string } | null {
  const m = ARTIFACT_KEY_RE.exec(key);
  if (!m || m[5]!.slice(0, 8) !== `${m[2]}${m[3]}${m[4]}`) return null;
  return { database: m[1]!, id: m[5]! };
}

const CHUNK_LIST_KEY_RE = /^snapshots\/([a-z0-9][a-z0-9_-]*)\/(\d{4})\/(\d{2})\/(\d{2})\/([0-9]{8}T[0-9]{6}Z-[0-9a-f]{8})\.chunks$/;

/** The snapshot id of a format-2 chunk list key, or null when the key is not one. */
export function parseChunkListKey(key: string): { database: string; id: string } | null {
  const m = CHUNK_LIST_KEY_RE.exec(key);
  if (!m || m[5]!.slice(0, 8) !== `${m[2]}${m[3]}${m[4]}`) return null;
  return { database: m[1]!, id: m[5]! };
}

/** The snapshot id of a data object key of either format (artifact or chunk list), or null. */
export function parseDataKey(key: string): { database: string; id: string } | null {
  return parseArtifactKey(key) ?? parseChunkListKey(key);
}

/** The creation time encoded in a snapshot id (second precision, UTC). */
export function idTime(id: string): Date {
  checkId(id);
  const iso = `${id.slice(0, 4)}-${id.slice(4, 6)}-${id.slice(6, 8)}T${id.slice(9, 11)}:${id.slice(11, 13)}:${id.slice(13, 15)}Z`;
  return new Date(iso);
}

/** A drill id: the request time (UTC, second precision) and 8 random hex digits, the form of snapshot ids. */
export function newDrillId(now: Date): string {
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}Z$/, 'Z');
  return `${stamp}-${randomBytes(4).toString('hex')}`;
}
