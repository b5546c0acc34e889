/**
 * Copies one snapshot from one target to another, streaming, and checking size and sha256 against the
 * manifest while the bytes pass. A mismatch fails the body stream before its end, so the destination's put
 * fails and, by the Target contract, commits nothing: a corrupt source is never spread, and no partial copy
 * becomes visible. Only after the data is stored is the manifest written, and then the data is looked at
 * once more (see settle in prune/delete.ts for the other half of that handshake).
 */
import { finished, Transform, type TransformCallback } from 'node:stream';
import { createHash, type Hash } from 'node:crypto';
import { manifestArtifactKey, writeManifest } from '../../catalog/catalog.js';
import { manifestKey } from '../../catalog/layout.js';
import type { ManifestV1 as Manifest } from '../../catalog/manifest.js';
import { IntegrityError, NotFoundError, TcabError, errorMessage } from '../../errors.js';
import type { Target } from '../../targets/target.js';

/** Which side of a copy failed: the fix differs (another source, or the destination's health). */
export class CopyError extends TcabError {
  readonly side: 'source' | 'destination';
  readonly integrity: boolean;
  /** A download that broke off mid-way: starting the copy again may well succeed. */
  readonly brokeOff: boolean;
  constructor(side: 'source' | 'destination', message: string, options: { cause?: unknown; integrity?: boolean; brokeOff?: boolean } = {}) {
    super(message, { code: options.integrity ? 'INTEGRITY' : 'COPY_FAILED', cause: options.cause });
    this.name = 'CopyError';
    this.side = side;
    this.integrity = options.integrity ?? false;
    this.brokeOff = options.brokeOff ?? false;
  }
}

/** Passes bytes through, and fails the stream instead of ending it when they are not what the manifest promised. */
export class VerifyingStream extends Transform {
  private readonly hash: Hash = createHash('sha256');
  bytes = 0;
  mismatch: IntegrityError | undefined;

  constructor(
    private readonly expected: { bytes: number; sha256: string },
    private readonly describe: string,
  ) {
    super({ highWaterMark: 1 << 20 });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.expected.bytes) {
      this.mismatch = new IntegrityError(`${this.describe} has more than the ${this.expected.bytes} bytes its manifest gives`);
      return cb(this.mismatch);
    }
    this.hash.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    const sha256 = this.hash.digest('hex');
    if (this.bytes !== this.expected.bytes || sha256 !== this.expected.sha256) {
      this.mismatch = new IntegrityError(
        `${this.describe} is ${this.bytes} bytes with sha256 ${sha256}, its manifest says ${this.expected.bytes} bytes with sha256 ${this.expected.sha256}`,
      );
      return cb(this.mismatch);
    }
    cb();
  }
}

export interface CopyResult {
  bytes: number;
  ms: number;
}

/**
 * Streams `manifest`'s artifact from `source` to `destination`, then writes the manifest there with
 * `replicatedFrom`. Throws CopyError naming the side that failed.
 */
export async function copySnapshot(
  source: Target,
  destination: Target,
  manifest: Manifest,
  signal?: AbortSignal,
  onStreamed?: () => void,
): Promise<CopyResult> {
  const started = Date.now();
  const key = manifestArtifactKey(manifest);
  const what = `snapshot ${manifest.id} on target "${source.name}"`;
  const signalOption = { signal };
  let body;
  try {
    body = (await source.get(key, signalOption)).body;
  } catch (e) {
    throw new CopyError('source', `reading ${what} failed: ${errorMessage(e)}`, { cause: e });
  }
  const verifier = new VerifyingStream(manifest.artifact, `the artifact of ${what}`);
  let sourceError: unknown;
  // The put learns of a failure from the stream itself; this listener only keeps a failure that comes
  // before the destination has started reading from being an uncaught exception.
  verifier.on('error', () => undefined);
  // A download that errors, or closes before its end without one, fails the copy: the destination must not
  // wait for bytes that will never come.
  finished(body, (e) => {
    if (!e) return;
    const why =
      (e as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE'
        ? new Error(
            `the download was closed before its end, without an error, after about ${verifier.bytes} of ${manifest.artifact.bytes} bytes`,
            { cause: e },
          )
        : e;
    sourceError ??= why;
    verifier.destroy(why);
  });
  // Every byte has been read and matched the manifest: what remains (the last parts, completing the upload,
  // the manifest) no longer reads from the source, so the next copy may start reading.
  if (onStreamed) verifier.once('end', onStreamed);
  body.pipe(verifier);
  try {
    // The manifest's sha256 goes with the put: a service that checks it (S3, R2) refuses any other bytes.
    const put = await destination.put(key, verifier, {
      contentLength: manifest.artifact.bytes,
      sha256: manifest.artifact.sha256,
      contentType: 'application/octet-stream',
      ...signalOption,
    });
    if (put.size !== manifest.artifact.bytes) {
      throw new IntegrityError(
        `target "${destination.name}" stored ${put.size} bytes of ${key}, the manifest says ${manifest.artifact.bytes}`,
      );
    }
  } catch (e) {
    body.destroy();
    if (signal?.aborted) throw e;
    if (verifier.mismatch) throw new CopyError('source', verifier.mismatch.message, { cause: verifier.mismatch, integrity: true });
    if (sourceError !== undefined)
      throw new CopyError('source', `reading ${what} broke off (object ${key}): ${errorMessage(sourceError)}`, {
        cause: sourceError,
        brokeOff: true,
      });
    throw new CopyError('destination', `storing ${key} on target "${destination.name}" failed: ${errorMessage(e)}`, {
      cause: e,
      integrity: e instanceof IntegrityError,
    });
  }

  const stored: Manifest = { ...manifest, storedAt: new Date().toISOString(), replicatedFrom: source.name };
  try {
    await writeManifest(destination, stored, signalOption);
  } catch (e) {
    throw new CopyError(
      'destination',
      `writing the manifest of snapshot ${manifest.id} on target "${destination.name}" failed: ${errorMessage(e)}`,
      { cause: e },
    );
  }
  await confirmData(destination, manifest, key, signal);
  return { bytes: manifest.artifact.bytes, ms: Date.now() - started };
}

/**
 * A prune running at the same time may have deleted the data between our put and our manifest. Looking
 * after the manifest is written closes that gap: if the data is gone now, our manifest is withdrawn, so a
 * manifest never stays without its data (prune does the mirror check after its deletes).
 */
async function confirmData(destination: Target, manifest: Manifest, key: string, signal: AbortSignal | undefined): Promise<void> {
  const signalOption = { signal };
  let problem: string | undefined;
  try {
    const info = await destination.head(key, signalOption);
    if (info.size !== manifest.artifact.bytes) problem = `${key} is now ${info.size} bytes, not ${manifest.artifact.bytes}`;
  } catch (e) {
    if (!(e instanceof NotFoundError)) {
      // Unknown state: leave the manifest; the next run re-checks the listing and repairs it if needed.
      throw new CopyError(
        'destination',
        `checking ${key} on target "${destination.name}" after writing its manifest failed: ${errorMessage(e)}`,
        { cause: e },
      );
    }
    problem = `${key} disappeared right after it was stored`;
  }
  if (!problem) return;
  let withdrawn = 'its manifest was withdrawn';
  try {
    await destination.delete(manifestKey(manifest.databaseName, manifest.id), signalOption);
  } catch (e) {
    withdrawn = `withdrawing its manifest failed too (${errorMessage(e)}); the next replicate run repairs it`;
  }
  throw new CopyError(
    'destination',
    `copy of snapshot ${manifest.id} to target "${destination.name}" is not valid: ${problem} (a prune ran at the same time?); ${withdrawn}`,
  );
}
