/**
 * Verify: re-read stored artifacts and check them against their manifests (size and sha256), so that silent
 * corruption on a target is found while another copy still exists. A mismatch fails the run naming the
 * target and the snapshot.
 */
import { listCatalog, manifestArtifactKey, readManifest } from '../catalog/catalog.js';
import { TcabError, errorMessage } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { Target } from '../targets/target.js';
import { hashStream } from '../util/streams.js';

export interface VerifyOutcome {
  target: string;
  id: string;
  ok: boolean;
  bytes?: number;
  error?: string;
}

export interface VerifyResult {
  checked: number;
  failed: number;
  bytes: number;
  durationMs: number;
  outcomes: VerifyOutcome[];
}

export interface VerifyRequest {
  signal?: AbortSignal;
  /** Only these snapshot ids (default: every snapshot on every target). */
  ids?: Set<string>;
  /** Snapshots checked at once per target. */
  concurrency?: number;
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

export async function runVerify(deps: { targets: Target[]; database: string; logger?: Logger }, request: VerifyRequest = {}): Promise<VerifyResult> {
  const log = deps.logger ?? silentLogger;
  const started = Date.now();
  const outcomes: VerifyOutcome[] = [];
  await Promise.all(deps.targets.map(async (target) => {
    let ids: string[];
    try {
      ids = (await listCatalog(target, deps.database, request.signal ? { signal: request.signal } : {})).snapshots.map((s) => s.id).filter((id) => !request.ids || request.ids.has(id));
    } catch (e) {
      outcomes.push({ target: target.name, id: '*', ok: false, error: `listing failed: ${errorMessage(e)}` });
      return;
    }
    let next = 0;
    const worker = async () => {
      while (next < ids.length) {
        const id = ids[next++]!;
        const outcome = await verifyStoredSnapshot(target, deps.database, id, request.signal);
        outcomes.push(outcome);
        if (!outcome.ok) log.error('verify.mismatch', { target: target.name, id, error: outcome.error });
      }
    };
    await Promise.all(Array.from({ length: Math.min(request.concurrency ?? 2, Math.max(ids.length, 1)) }, worker));
  }));
  outcomes.sort((a, b) => a.target.localeCompare(b.target) || (a.id < b.id ? 1 : -1));
  const failed = outcomes.filter((o) => !o.ok);
  const result: VerifyResult = {
    checked: outcomes.length, failed: failed.length, bytes: outcomes.reduce((n, o) => n + (o.bytes ?? 0), 0), durationMs: Date.now() - started, outcomes,
  };
  if (failed.length) {
    const err = new TcabError(`Verify found ${failed.length} bad of ${outcomes.length} stored snapshot(s): ${failed.slice(0, 5).map((o) => `target "${o.target}" snapshot ${o.id}: ${o.error}`).join('; ')}${failed.length > 5 ? '; ...' : ''}`, {
      hint: 'restore from a target whose copy verifies; replicate re-copies good snapshots over damaged ones once the bad copy is deleted',
      code: 'VERIFY_FAILED',
    });
    (err as TcabError & { result?: VerifyResult }).result = result;
    throw err;
  }
  log.info('verify.completed', { database: deps.database, checked: result.checked, bytes: result.bytes, durationMs: result.durationMs });
  return result;
}
