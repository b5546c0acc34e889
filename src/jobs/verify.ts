/**
 * Re-reading one stored artifact and checking it against its manifest (size and sha256), so that silent
 * corruption on a target is found while another copy still exists. verify-rotation.ts decides which
 * snapshots each run reads.
 */
import { manifestArtifactKey, readManifest } from '../catalog/catalog.js';
import { errorMessage } from '../errors.js';
import type { Target } from '../targets/target.js';
import { hashStream } from '../util/streams.js';

export interface VerifyOutcome {
  target: string;
  id: string;
  ok: boolean;
  bytes?: number;
  error?: string;
}

/** Checks one stored snapshot; returns the outcome instead of throwing so one bad copy does not hide others. */
export async function verifyStoredSnapshot(target: Target, database: string, id: string, signal?: AbortSignal): Promise<VerifyOutcome> {
  try {
    const manifest = await readManifest(target, database, id, signal ? { signal } : {});
    const { body } = await target.get(manifestArtifactKey(manifest), signal ? { signal } : {});
    const got = await hashStream(body, signal);
    if (got.bytes !== manifest.artifact.bytes || got.sha256 !== manifest.artifact.sha256) {
      return { target: target.name, id, ok: false, bytes: got.bytes, error: `artifact is ${got.bytes} bytes with sha256 ${got.sha256}, the manifest says ${manifest.artifact.bytes} bytes with ${manifest.artifact.sha256}` };
    }
    return { target: target.name, id, ok: true, bytes: got.bytes };
  } catch (e) {
    if (signal?.aborted) throw e;
    return { target: target.name, id, ok: false, error: errorMessage(e) };
  }
}
