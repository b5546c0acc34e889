/**
 * Where a format-2 chunk lives on a target, relative to the target's prefix:
 *
 *   chunks/<database>/<first two hex digits of the sha256>/<sha256>.zst
 *
 * Why this shape:
 *   - The key is a function of the content (the sha256 of the plain bytes) and the database only, with no
 *     snapshot id or date in it: the same chunk produced by any snapshot of the database has the same key, so
 *     it is stored once, and "does the target have it?" is one lookup. That is the deduplication.
 *   - Per database, not per target-wide pool: prune of one database needs only that database's manifests to
 *     know which chunks are referenced, and deleting a database's backups is deleting two prefixes.
 *   - Beside snapshots/, not inside it: v1 code lists snapshots/<database>/ for manifests and artifacts and
 *     never meets a chunk; a chunk listing never meets a manifest.
 *   - The two-hex-digit folder splits the chunks into 256 prefixes of statistically equal size: an index
 *     rebuild lists them 256 ways in parallel (or resumes after one failed listing); object stores that shard
 *     by key prefix spread the load; a file target keeps folders at about 1/256 of the chunk count (a 1 GB
 *     database is about 65,000 chunks: some 250 files a folder) instead of one huge directory.
 *   - `.zst` says what the bytes are, for the person restoring by hand.
 * The sha256 is of the plain bytes, not of the stored frame: the manifest's list of hashes is directly the
 * list of keys, the same chunk compressed at another level is still the same chunk, and a download is
 * checked against the plain hash after decompression (chunk-codec.ts).
 */

const SHA256_RE = /^[0-9a-f]{64}$/;
/** A database name, as src/agent/protocol.ts's DATABASE_NAME_RE has it (src/format imports neither agent nor catalog). */
const DATABASE_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const CHUNK_KEY_RE = /^chunks\/([a-z0-9][a-z0-9_-]{0,62})\/([0-9a-f]{2})\/([0-9a-f]{64})\.zst$/;

function checkDatabase(database: string): void {
  if (!DATABASE_NAME_RE.test(database)) throw new Error(`database name "${database}" must be lower-case letters, digits, '_' and '-'`);
}

/** The prefix under which all chunks of a database live (list it to rebuild a target's chunk index). */
export function chunksPrefix(database: string): string {
  checkDatabase(database);
  return `chunks/${database}/`;
}

/** The key of the chunk whose plain bytes hash to `sha256` (lower-case hex). */
export function chunkKey(database: string, sha256: string): string {
  if (!SHA256_RE.test(sha256)) throw new Error(`"${sha256}" is not a lower-case hex sha256, so it names no chunk`);
  return `${chunksPrefix(database)}${sha256.slice(0, 2)}/${sha256}.zst`;
}

/** The database and hash of a chunk key, or null when the key is not a well-formed chunk key. */
export function parseChunkKey(key: string): { database: string; sha256: string } | null {
  const m = CHUNK_KEY_RE.exec(key);
  if (!m || m[3]!.slice(0, 2) !== m[2]) return null;
  return { database: m[1]!, sha256: m[3]! };
}
