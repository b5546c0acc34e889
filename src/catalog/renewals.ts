/**
 * Renewal records (docs/format-2.md, "Writing", step 2, and "Renewal records"): a writer about to renew chunks
 * which were older than G - 2J when it listed them records them on the target first, before any of those
 * renewals (and so before the chunk list and the manifest that rely on them); a later snapshot or replicate run
 * to that target, starting at least 2J after the record, checks that every recorded chunk is still there and
 * only then deletes the record.
 *
 *   renewals/<database>/<writer's time>-<snapshot id>-<8 random hex>.json
 *
 * Under their own prefix: the catalog, prune, verify and restore list snapshots/ and chunks/ only, so they never
 * meet a record; prune never deletes one. Each record is written once, create-only, under a key no other writer
 * makes (its own time and random part), so two writers recording at once never overwrite each other, on every
 * target kind (a folder, Azure Blob, S3 and R2 all honour If-None-Match: *).
 */
import { z } from 'zod';
import { NotFoundError, TcabError, errorMessage } from '../errors.js';
import type { Target } from '../targets/target.js';
import { parseRenewalRecordKey, renewalRecordKey, renewalsPrefix } from './layout.js';
import { readRecord, writeRecord } from './records.js';

/** A record names at most one snapshot's chunks (about 90 bytes each): 32 MiB is some 370,000 chunks (a 20 GB database). */
export const MAX_RENEWAL_RECORD_BYTES = 32 * 1024 * 1024;

const ChunkLine = z.string().regex(/^[0-9a-f]{64} \d+ \d+$/, 'expected "<sha256> <plain bytes> <stored bytes>"');

export const RenewalRecordSchema = z.object({
  kind: z.literal('tcab-backup.renewals'),
  version: z.literal(1),
  database: z.string(),
  /** The snapshot whose chunk list and manifest the writer was about to write. */
  snapshot: z.string(),
  writer: z.enum(['snapshot', 'replicate']),
  /** The writer's clock when it wrote the record. */
  writtenAt: z.string().datetime(),
  /** J as the writer knew it: the record is checked no sooner than this long (twice, see renewalsFollow) after writtenAt. */
  jobTimeoutMs: z.number().int().positive(),
  /**
   * True on every record written now: it was written before the renewals it names, which the writer then made
   * within its J, so the record is due 2J after writtenAt. Absent on records written after their renewals (as
   * the first version of this code did), which are due J after.
   */
  renewalsFollow: z.literal(true).optional(),
  /** The renewed chunks, as chunk-list lines: "<sha256> <plain bytes> <stored bytes>". */
  chunks: z.array(ChunkLine).min(1),
});
export type RenewalRecord = z.infer<typeof RenewalRecordSchema>;

export interface RenewedChunk {
  sha256: string;
  plainBytes: number;
  storedBytes: number;
}

export function recordChunks(record: RenewalRecord): RenewedChunk[] {
  return record.chunks.map((line) => {
    const [sha256, plain, stored] = line.split(' ');
    return { sha256: sha256!, plainBytes: Number(plain), storedBytes: Number(stored) };
  });
}

/**
 * Writes a renewal record create-only and returns its key. Throws a TcabError naming the target: the caller
 * must then not write the manifest that relies on the renewals (docs/format-2.md, "Renewal records").
 */
export async function writeRenewalRecord(
  target: Target,
  record: Omit<RenewalRecord, 'kind' | 'version' | 'chunks' | 'writtenAt' | 'renewalsFollow'> & { chunks: Iterable<RenewedChunk> },
  options: { signal?: AbortSignal; now?: () => Date } = {},
): Promise<string> {
  const writtenAt = (options.now ?? (() => new Date()))();
  const key = renewalRecordKey(record.database, writtenAt, record.snapshot);
  const value: RenewalRecord = {
    kind: 'tcab-backup.renewals',
    version: 1,
    database: record.database,
    snapshot: record.snapshot,
    writer: record.writer,
    writtenAt: writtenAt.toISOString(),
    jobTimeoutMs: record.jobTimeoutMs,
    renewalsFollow: true,
    chunks: [...record.chunks].map((c) => `${c.sha256} ${c.plainBytes} ${c.storedBytes}`),
  };
  try {
    await writeRecord(target, key, value, { ifNoneMatch: '*' }, options.signal);
  } catch (e) {
    if (options.signal?.aborted) throw e;
    throw new TcabError(
      `Recording ${value.chunks.length} renewed chunk(s) of snapshot ${record.snapshot} (${key}) on target "${target.name}" (${target.url}) failed: ${errorMessage(e)}`,
      {
        hint: 'check that the target is reachable and writable; nothing was renewed or committed there (the renewals wait for their record), and the next run tries again',
        cause: e,
      },
    );
  }
  return key;
}

export interface ListedRenewalRecord {
  key: string;
  snapshot: string;
  lastModified: Date;
}

/** Every renewal record of `database` on the target (one complete listing; a failed page throws). */
export async function listRenewalRecords(
  target: Target,
  database: string,
  options: { signal?: AbortSignal } = {},
): Promise<ListedRenewalRecord[]> {
  const out: ListedRenewalRecord[] = [];
  const prefix = renewalsPrefix(database);
  try {
    for await (const info of target.list(prefix, options)) {
      const parsed = parseRenewalRecordKey(info.key);
      if (parsed && parsed.database === database) out.push({ key: info.key, snapshot: parsed.id, lastModified: info.lastModified });
    }
  } catch (e) {
    if (options.signal?.aborted) throw e;
    throw new TcabError(
      `Listing the renewal records of "${database}" (${prefix}) on target "${target.name}" (${target.url}) failed: ${errorMessage(e)}`,
      { hint: 'check that the target is reachable and the credentials may list; the records stay for the next run', cause: e },
    );
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** One record, checked against its schema; undefined when it is gone (another run settled it). A damaged one throws. */
export async function readRenewalRecord(target: Target, key: string, signal?: AbortSignal): Promise<RenewalRecord | undefined> {
  return (await readRecord(target, key, RenewalRecordSchema, signal, MAX_RENEWAL_RECORD_BYTES))?.value;
}

/** Deletes a record whose check passed; one already gone (another run settled it) counts as deleted. */
export async function deleteRenewalRecord(target: Target, key: string, signal?: AbortSignal): Promise<void> {
  try {
    await target.delete(key, signal ? { signal } : {});
  } catch (e) {
    if (e instanceof NotFoundError) return;
    throw e;
  }
}

/**
 * When a record may be checked: 2J after the later of the writer's time and the storage's (J for a record written
 * after its renewals), J being the longer of the writer's and the checker's (a clock running ahead on either side
 * only delays the check). The renewals follow the record within the writer's J, and a prune that listed a
 * renewed chunk's old object before its renewal deletes within its J of that listing: 2J covers both.
 */
export function renewalCheckDue(record: RenewalRecord, lastModified: Date, jobTimeoutMs: number): number {
  const j = Math.max(record.jobTimeoutMs, jobTimeoutMs);
  return Math.max(Date.parse(record.writtenAt), lastModified.getTime()) + (record.renewalsFollow ? 2 * j : j);
}
