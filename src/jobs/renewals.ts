/**
 * The later half of a renewal's check (docs/format-2.md, "Renewal records"): a snapshot or replicate run lists
 * a target's chunks anyway; every renewal record there that is due (J after it was written, as of the start of
 * that listing) is checked against the listing. A record whose chunks are all there is deleted. A missing
 * chunk is written again by the caller when it has the bytes (the agent's snapshot, a replicate source); one
 * it cannot write again is reported with the snapshots whose manifests name it, and its record stays. A chunk
 * that no manifest names any longer protects nothing: its record goes too.
 */
import { manifestChunkListKey } from '../catalog/catalog.js';
import type { StoredChunk } from '../catalog/chunk-store.js';
import type { ManifestV2 } from '../catalog/manifest-v2.js';
import {
  deleteRenewalRecord,
  listRenewalRecords,
  readRenewalRecord,
  recordChunks,
  renewalCheckDue,
  type RenewalRecord,
  type RenewedChunk,
} from '../catalog/renewals.js';
import { readTargetCatalog } from '../catalog/target-catalog.js';
import { NotFoundError, TcabError, errorMessage } from '../errors.js';
import { chunkKey } from '../format/chunk-key.js';
import { readChunkList } from '../format/chunk-list.js';
import type { Target } from '../targets/target.js';
import { forEachLimit } from '../util/pool.js';

export interface DueRenewal {
  key: string;
  record: RenewalRecord;
  /** Recorded chunks the listing does not show. */
  missing: RenewedChunk[];
}

export interface RenewalScan {
  /** Records on the target. */
  records: number;
  /** Not due yet (written less than 2J before the listing, J for an older record): left for a later run. */
  pending: number;
  due: DueRenewal[];
}

/** What the check of one target's due records came to (the job's result and log carry it). */
export interface RenewalOutcome {
  /** Records on the target when the run listed them. */
  records: number;
  /** Left for a later run: not due yet, or a missing chunk could not be written again. */
  pending: number;
  /** Records whose check passed, deleted. */
  settled: number;
  /** Chunks found missing and written again by this run. */
  rewritten: number;
  /** Missing chunks this run could not write again, each with the snapshots whose manifests name it. */
  lost: Array<{ key: string; snapshots: string[] }>;
  /** Why the records could not be checked (listing or reading them failed). */
  error?: string;
}

export function emptyRenewalOutcome(): RenewalOutcome {
  return { records: 0, pending: 0, settled: 0, rewritten: 0, lost: [] };
}

/**
 * The records of `database` on the target and, for each one due by `listedAt` (when the listing `held` began),
 * the recorded chunks that listing lacks. Throws (naming the target) when the records cannot be listed or read.
 */
export async function scanRenewals(
  target: Target,
  database: string,
  held: ReadonlyMap<string, StoredChunk>,
  options: { listedAt: number; jobTimeoutMs: number; signal?: AbortSignal },
): Promise<RenewalScan> {
  const listed = await listRenewalRecords(target, database, options.signal ? { signal: options.signal } : {});
  const scan: RenewalScan = { records: listed.length, pending: 0, due: [] };
  for (const r of listed) {
    let record: RenewalRecord | undefined;
    try {
      record = await readRenewalRecord(target, r.key, options.signal);
    } catch (e) {
      if (options.signal?.aborted) throw e;
      throw new TcabError(`Reading the renewal record ${r.key} on target "${target.name}" (${target.url}) failed: ${errorMessage(e)}`, {
        hint: 'a damaged record cannot be checked: run "tcab-backup verify" on that target, and move the record away once every snapshot there verifies',
        cause: e,
      });
    }
    if (!record) continue; // another run settled it meanwhile
    if (renewalCheckDue(record, r.lastModified, options.jobTimeoutMs) > options.listedAt) {
      scan.pending++;
      continue;
    }
    // Gone, not resized: a prune deletes whole objects (a chunk at another size is damage, verify's business).
    const missing = recordChunks(record).filter((c) => !held.has(c.sha256));
    scan.due.push({ key: r.key, record, missing });
  }
  return scan;
}

/**
 * Deletes each due record whose missing chunks are all in `restored` (written again this run and found there by
 * a check after) or named by no manifest; reports the others' chunks with the snapshots that name them. Fills
 * `outcome` (records and pending are the caller's, from the scan).
 */
export async function settleRenewals(
  target: Target,
  database: string,
  due: DueRenewal[],
  restored: ReadonlySet<string>,
  outcome: RenewalOutcome,
  signal?: AbortSignal,
): Promise<void> {
  const unresolved = new Map<string, RenewedChunk[]>();
  for (const d of due) {
    const left = d.missing.filter((c) => !restored.has(c.sha256));
    if (left.length) unresolved.set(d.key, left);
  }
  const naming = unresolved.size
    ? await snapshotsNaming(target, database, new Set([...unresolved.values()].flat().map((c) => c.sha256)), signal)
    : new Map<string, string[]>();
  const lost = new Map<string, string[]>();
  for (const d of due) {
    const left = (unresolved.get(d.key) ?? []).filter((c) => naming.has(c.sha256));
    if (left.length) {
      outcome.pending++;
      for (const c of left) lost.set(c.sha256, naming.get(c.sha256)!);
      continue;
    }
    await deleteRenewalRecord(target, d.key, signal);
    outcome.settled++;
  }
  outcome.lost.push(...[...lost].map(([sha256, snapshots]) => ({ key: chunkKey(database, sha256), snapshots })));
}

/** For each of `hashes` that some format-2 manifest on the target names: those snapshots' ids. */
async function snapshotsNaming(
  target: Target,
  database: string,
  hashes: ReadonlySet<string>,
  signal: AbortSignal | undefined,
): Promise<Map<string, string[]>> {
  const catalog = await readTargetCatalog(target, database, signal ? { signal } : {});
  const unreadable = catalog.snapshots.find((s) => s.manifestError !== undefined);
  if (unreadable) {
    throw new TcabError(
      `Checking the renewal records on target "${target.name}": a recorded chunk is missing, and the manifest of snapshot ${unreadable.id} cannot be read (${unreadable.manifestError}), so which snapshots lack it is unknown`,
      { hint: 'repair the manifest (replicate rewrites it from another target), then run again; the record stays until its check passes' },
    );
  }
  const out = new Map<string, string[]>();
  const v2 = catalog.snapshots.filter((s) => s.manifest?.formatVersion === 2).map((s) => s.manifest as ManifestV2);
  await forEachLimit(v2, 8, async (manifest) => {
    const key = manifestChunkListKey(manifest);
    try {
      const { body } = await target.get(key, signal ? { signal } : {});
      for await (const [sha256] of readChunkList(body, manifest, `${key} on target "${target.name}"`)) {
        if (!hashes.has(sha256)) continue;
        const ids = out.get(sha256) ?? [];
        if (!ids.includes(manifest.id)) ids.push(manifest.id);
        out.set(sha256, ids);
      }
    } catch (e) {
      if (signal?.aborted) throw e;
      if (e instanceof NotFoundError) return; // removed meanwhile (a prune): it names nothing any more
      throw new TcabError(
        `Checking the renewal records on target "${target.name}": the chunk list ${key} of snapshot ${manifest.id} cannot be read (${errorMessage(e)})`,
        { hint: 'run "tcab-backup verify" on that target and repair what it finds; the record stays until its check passes', cause: e },
      );
    }
  });
  for (const ids of out.values()) ids.sort();
  return out;
}

/** The error a job ends with when recorded chunks are gone and it could not write them again. */
export function lostChunksMessage(targetName: string, lost: RenewalOutcome['lost']): string {
  const shown = lost
    .slice(0, 3)
    .map((l) => `${l.key} (named by snapshot${l.snapshots.length > 1 ? 's' : ''} ${l.snapshots.join(', ')})`)
    .join('; ');
  return `${lost.length} renewed chunk(s) are missing on target "${targetName}" and this run could not write them again: ${shown}${lost.length > 3 ? ` and ${lost.length - 3} more` : ''}; they were deleted after their renewal was recorded (by a prune that had listed them before it, or by hand or a lifecycle rule)`;
}

export const LOST_CHUNKS_HINT =
  'run "tcab-backup replicate" (it copies the chunks from another target that holds them), then "tcab-backup verify" on that target; if no target holds them, the snapshots named cannot be restored from that target: delete them there. The renewal record stays until its check passes';
