/**
 * Re-reading one stored artifact and checking it against its manifest (size and sha256), so that silent
 * corruption on a target is found while another copy still exists. index.ts (the verify job) decides which
 * snapshots each run reads.
 *
 * Two ways a check does not pass, kept apart because they call for opposite actions: 'damaged' (the bytes,
 * or the manifest, were read and are wrong or gone: replicate copies a good one over it) and 'unreadable'
 * (the target did not deliver them: the copy may be intact, so it is neither replaced nor counted as good,
 * and the next run reads it again).
 */
import { manifestArtifactKey, readManifest } from '../../catalog/catalog.js';
import { format2NotSupported } from '../../catalog/manifest.js';
import { NotFoundError, TargetError, TcabError, errorMessage } from '../../errors.js';
import type { Target } from '../../targets/target.js';
import { hashStream } from '../../util/streams.js';
import type { Verdict } from '../../catalog/verify-record.js';

export interface VerifyOutcome {
  target: string;
  id: string;
  /** True when the verdict is 'ok'. */
  ok: boolean;
  verdict: Verdict;
  bytes?: number;
  error?: string;
}

/**
 * A failure that says something about the stored copy (missing, invalid, pointing elsewhere) is damage;
 * anything else, a target error or a stream that broke off, only says the copy could not be read.
 */
function verdictOfFailure(e: unknown): Verdict {
  if (e instanceof NotFoundError) return 'damaged';
  return e instanceof TcabError && !(e instanceof TargetError) ? 'damaged' : 'unreadable';
}

/** Checks one stored snapshot; returns the outcome instead of throwing so one bad copy does not hide others. */
export async function verifyStoredSnapshot(target: Target, database: string, id: string, signal?: AbortSignal): Promise<VerifyOutcome> {
  const base = { target: target.name, id };
  let reading: { key: string; size: number } | undefined;
  try {
    const manifest = await readManifest(target, database, id, { signal });
    // Not a verdict on the copy: the snapshot is not re-read at all, and the message says why.
    if (manifest.formatVersion === 2) {
      return {
        ...base,
        ok: false,
        verdict: 'unreadable',
        error: format2NotSupported('verify', manifest, `target "${target.name}"`).message,
      };
    }
    const key = manifestArtifactKey(manifest);
    const { body, size } = await target.get(key, { signal });
    reading = { key, size };
    const got = await hashStream(body, signal);
    if (got.bytes < size) {
      // The target said how big the object is and sent less: the transfer broke, not the copy.
      return {
        ...base,
        ok: false,
        verdict: 'unreadable',
        bytes: got.bytes,
        error: `could not be read, so whether it matches is unknown: ${key} on target "${target.name}" is ${size} bytes but the answer ended after ${got.bytes}`,
      };
    }
    if (got.bytes !== manifest.artifact.bytes || got.sha256 !== manifest.artifact.sha256) {
      return {
        ...base,
        ok: false,
        verdict: 'damaged',
        bytes: got.bytes,
        error: `artifact is ${got.bytes} bytes with sha256 ${got.sha256}, the manifest says ${manifest.artifact.bytes} bytes with ${manifest.artifact.sha256}`,
      };
    }
    return { ...base, ok: true, verdict: 'ok', bytes: got.bytes };
  } catch (e) {
    if (signal?.aborted) throw e;
    const verdict = verdictOfFailure(e);
    if (verdict === 'damaged') return { ...base, ok: false, verdict, error: errorMessage(e) };
    // A stream that broke off says only "aborted" or "socket hang up": say what was being read, and where.
    const detail =
      reading && !(e instanceof TcabError)
        ? `reading ${reading.key} (${reading.size} bytes) from target "${target.name}" broke off: ${errorMessage(e).replace(/\.$/, '')}`
        : errorMessage(e);
    return { ...base, ok: false, verdict, error: `could not be read, so whether it matches is unknown: ${detail}` };
  }
}
