/**
 * Replicate's part in the renewal records (docs/format-2.md, "Renewal records"): on every listed target, the
 * records due by the run's listing of that target's chunks are checked; a recorded chunk gone there is copied
 * again from another target that holds it, at any stored size (read, checked to decompress to its length
 * and sha256, stored create-only), then the target is listed again; a record is deleted only once all its
 * chunks are there (or named by no manifest any longer).
 */
import { checkChunks, frameTooLong, putChunk, readStoredChunk, type StoredChunk } from '../../catalog/chunk-store.js';
import { listRenewalRecords, type RenewedChunk } from '../../catalog/renewals.js';
import { errorMessage } from '../../errors.js';
import { decompressChunk } from '../../format/chunk-codec.js';
import { chunkKey } from '../../format/chunk-key.js';
import type { Logger } from '../../log.js';
import { emptyRenewalOutcome, scanRenewals, settleRenewals, type RenewalOutcome } from '../renewals.js';
import type { DestinationChunks } from './copy-v2.js';

/**
 * Checks the due renewal records on `destination`. `others` are the run's other listed targets, in the order
 * they are tried as sources. Never throws for the target's sake: problems are in the outcome (the run fails on
 * them after its copies).
 */
export async function checkRenewalsOn(
  destination: DestinationChunks,
  others: DestinationChunks[],
  jobTimeoutMs: number,
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<RenewalOutcome> {
  const outcome = emptyRenewalOutcome();
  const { target, database } = destination;
  const signalOption = signal ? { signal } : {};
  try {
    // Most runs find none, and then the chunk folder is not listed for their sake.
    outcome.records = (await listRenewalRecords(target, database, signalOption)).length;
    if (outcome.records === 0) return outcome;
    const held = await destination.held();
    const scan = await scanRenewals(target, database, held, { listedAt: destination.listedAt, jobTimeoutMs, ...signalOption });
    outcome.records = scan.records;
    outcome.pending = scan.pending;
    const missing = new Map<string, RenewedChunk>();
    for (const d of scan.due) for (const c of d.missing) missing.set(c.sha256, c);
    const restored = new Set<string>();
    if (missing.size) {
      const copied = new Map<string, number>();
      for (const c of missing.values()) {
        const bytes = await copyFromAnother(c, destination, others, log, signal);
        if (bytes !== undefined) copied.set(c.sha256, bytes);
      }
      if (copied.size) {
        const still = new Set((await checkChunks(target, database, copied, signalOption)).map((m) => m.sha256));
        for (const sha256 of copied.keys()) if (!still.has(sha256)) restored.add(sha256);
      }
      outcome.rewritten = restored.size;
    }
    await settleRenewals(target, database, scan.due, restored, outcome, signal);
  } catch (e) {
    if (signal?.aborted) throw e;
    outcome.error = errorMessage(e);
  }
  if (outcome.records || outcome.error) {
    log[outcome.lost.length || outcome.error ? 'error' : 'info']('replicate.renewals_checked', {
      target: target.name,
      records: outcome.records,
      pending: outcome.pending,
      settled: outcome.settled,
      rewritten: outcome.rewritten,
      lost: outcome.lost.map((l) => l.key),
      ...(outcome.error ? { error: outcome.error } : {}),
    });
  }
  return outcome;
}

/**
 * Copies one chunk from the first other target holding it, at whatever stored size (its content is checked:
 * readStoredChunk); the stored size written, or undefined.
 */
async function copyFromAnother(
  chunk: RenewedChunk,
  destination: DestinationChunks,
  others: DestinationChunks[],
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<number | undefined> {
  const { database } = destination;
  const key = chunkKey(database, chunk.sha256);
  for (const source of others) {
    let held: Map<string, StoredChunk>;
    try {
      held = await source.held();
    } catch {
      continue; // that target cannot be listed this run: the next one may serve
    }
    const size = held.get(chunk.sha256)?.bytes;
    if (size === undefined) continue;
    try {
      const frame = await readStoredChunk(source.target, database, [chunk.sha256, chunk.plainBytes, size], signal ? { signal } : {});
      if (frameTooLong(frame, chunk.plainBytes))
        throw new Error(`it is longer there than any zstd frame of a ${chunk.plainBytes}-byte chunk can be`);
      await decompressChunk(frame, { sha256: chunk.sha256, bytes: chunk.plainBytes }, `${key} on target "${source.target.name}"`);
      await putChunk(destination.target, database, chunk.sha256, frame, signal ? { signal } : {});
      destination.written.add(chunk.sha256);
      log.warn('replicate.renewed_chunk_restored', { chunk: key, from: source.target.name, to: destination.target.name });
      return frame.length;
    } catch (e) {
      if (signal?.aborted) throw e;
      log.warn('replicate.renewed_chunk_copy_failed', {
        chunk: key,
        from: source.target.name,
        to: destination.target.name,
        error: errorMessage(e),
      });
    }
  }
  return undefined;
}
