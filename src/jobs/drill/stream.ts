/**
 * A drill that does not fit on disk: the artifact is downloaded, hashed, decompressed and hashed again as it
 * streams, and the bytes are dropped. Nothing is written, so it needs no room at all (a Flex Consumption
 * instance has 0.8 GB of temporary disk and no persisted disk).
 *
 * What it proves: the stored copy is the artifact the agent made (its sha256), and it decompresses to exactly
 * the snapshot file the agent made (that sha256 too). The agent ran PRAGMA integrity_check and counted the
 * rows of that very file before it answered, and the manifest records both; equal bytes inherit them. What it
 * does not do is open the file with SQLite here: that needs a folder with room (TCAB_BACKUP_DRILL_WORK_DIR).
 *
 * Format 2 (chunked): the chunk list is read and checked against the manifest (its bytes, sha256 and totals)
 * before a chunk is fetched; the chunks are fetched in order, a few at once (restore's IN_FLIGHT), each
 * decompressed and checked against its stored length, plain length and sha256, and the whole file's bytes and
 * sha256 against the manifest. Memory is a few chunks; nothing is written either.
 */
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { manifestArtifactKey } from '../../catalog/catalog.js';
import type { ManifestV1 } from '../../catalog/manifest.js';
import type { ManifestV2 } from '../../catalog/manifest-v2.js';
import { IntegrityError, TcabError, errorMessage } from '../../errors.js';
import type { Target } from '../../targets/target.js';
import { HashingStream, decompressor } from '../../util/streams.js';
import { readCheckedChunks, type ReadChunksOptions } from '../restore/chunks.js';

/** A snapshot the agent did not find intact is not drilled: its bytes would prove nothing. */
function checkAgentIntegrity(manifest: ManifestV1 | ManifestV2): void {
  if (manifest.integrity !== 'ok') {
    throw new IntegrityError(`the agent's integrity_check of this snapshot reported "${manifest.integrity.slice(0, 300)}"`);
  }
}

/**
 * Format 2: resolves once the chunk list, every chunk and the whole file match the manifest; throws naming the
 * chunk (its key and line of the chunk list) or what else differs. Nothing is written.
 */
export async function verifyChunksByStreaming(
  target: Target,
  manifest: ManifestV2,
  signal?: AbortSignal,
  options: Omit<ReadChunksOptions, 'signal'> = {},
): Promise<{ durationMs: number; chunks: number; storedBytes: number }> {
  checkAgentIntegrity(manifest);
  const started = Date.now();
  let chunks = 0;
  let storedBytes = 0;
  for await (const chunk of readCheckedChunks(target, manifest, { ...options, ...(signal ? { signal } : {}) })) {
    chunks++;
    storedBytes += chunk.stored.length;
  }
  return { durationMs: Date.now() - started, chunks, storedBytes };
}

/**
 * Resolves once the bytes match the manifest; throws naming what differs. Messages leave out the target and
 * the snapshot, and what to do next: the drill's own error names them.
 */
export async function verifyByStreaming(target: Target, manifest: ManifestV1, signal?: AbortSignal): Promise<{ durationMs: number }> {
  checkAgentIntegrity(manifest);
  const started = Date.now();
  const key = manifestArtifactKey(manifest);
  const { body } = await target.get(key, { signal });
  const artifact = new HashingStream();
  const plain = new HashingStream();
  const inflate = decompressor(manifest.artifact.compression);
  let decompressFailed = false;
  let bodyError: Error | undefined;
  body.once('error', (err) => (bodyError ??= err));
  // Only an error of the decompressor's own says the bytes are damaged; a body that broke off reaches it too.
  inflate.once('error', (err: NodeJS.ErrnoException) => {
    if (err !== bodyError && err.code !== 'ERR_STREAM_PREMATURE_CLOSE') decompressFailed = true;
  });
  const discard = new Writable({ write: (_chunk, _enc, done) => done() });
  try {
    await pipeline(body, artifact, inflate, plain, discard, { signal });
  } catch (e) {
    if (signal?.aborted) throw e;
    // A damaged artifact usually fails decompression first; its hash names the real cause.
    if (artifact.bytes === manifest.artifact.bytes && artifact.digest() !== manifest.artifact.sha256) {
      throw new IntegrityError(`artifact sha256 ${artifact.digest()} does not match the manifest's ${manifest.artifact.sha256}`, {
        cause: e,
      });
    }
    if (decompressFailed) {
      throw new IntegrityError(`the ${manifest.artifact.compression} artifact does not decompress (${errorMessage(e)})`, { cause: e });
    }
    throw e instanceof TcabError
      ? e
      : new TcabError(
          `reading the artifact ${key} broke off after ${artifact.bytes} of ${manifest.artifact.bytes} bytes: ${errorMessage(e)}`,
          {
            hint: 'check that the target is reachable and run the drill again',
            cause: e,
          },
        );
  }
  if (artifact.bytes !== manifest.artifact.bytes || artifact.digest() !== manifest.artifact.sha256) {
    throw new IntegrityError(
      `artifact is ${artifact.bytes} bytes with sha256 ${artifact.digest()}, the manifest says ${manifest.artifact.bytes} bytes with ${manifest.artifact.sha256}`,
    );
  }
  if (plain.bytes !== manifest.snapshot.bytes || plain.digest() !== manifest.snapshot.sha256) {
    throw new IntegrityError(
      `decompressed, it is ${plain.bytes} bytes with sha256 ${plain.digest()}, the manifest says ${manifest.snapshot.bytes} bytes with ${manifest.snapshot.sha256}`,
    );
  }
  return { durationMs: Date.now() - started };
}
