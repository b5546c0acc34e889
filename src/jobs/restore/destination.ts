/**
 * Writing the restored file: failures of the local disk are the destination's, not the target's. Every
 * target would meet them, so the restore stops at once instead of downloading the snapshot again from the
 * next target, and the error names the file and the folder to look at rather than calling a copy damaged.
 */
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Writable } from 'node:stream';
import { TcabError, errorMessage } from '../../errors.js';

/**
 * A problem with the destination rather than with a target: every target would meet it, so the restore
 * stops at once instead of downloading the snapshot again from the next one.
 */
export class DestinationError extends TcabError {}

/** The error for a write or flush of the restore's temporary file `path` that the file system refused. */
export function writeFailed(path: string, what: string, e: unknown): DestinationError {
  const code = (e as NodeJS.ErrnoException).code;
  const room = code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG';
  return new DestinationError(`Restore could not ${what} its temporary file ${path} (${errorMessage(e)})`, {
    hint:
      `${room ? `${dirname(path)} has no room for the database: free space there (df -h) or restore to another -o path` : `check the disk under ${dirname(path)} (dmesg) and that it is writable`}; ` +
      'the stored copy was not at fault, the partial file has been removed and nothing else was changed',
    cause: e,
  });
}

/** Writes `bytes` bytes of `buffers` to `file` at `at`; a short write (a full disk answers with what fitted) goes on. */
export async function writeAllAt(file: FileHandle, path: string, buffers: Buffer[], bytes: number, at: number): Promise<void> {
  let done = 0;
  while (done < bytes) {
    const rest: Buffer[] = [];
    let skip = done;
    for (const b of buffers) {
      if (skip >= b.length) skip -= b.length;
      else {
        rest.push(skip ? b.subarray(skip) : b);
        skip = 0;
      }
    }
    let written: number;
    try {
      ({ bytesWritten: written } = await file.writev(rest, at + done));
    } catch (e) {
      throw writeFailed(path, `write ${bytes - done} bytes at byte ${at + done} of`, e);
    }
    if (written === 0) throw writeFailed(path, `write at byte ${at + done} of`, new Error('the write stored nothing'));
    done += written;
  }
}

/** Flushes `file` to disk, so that the rename that publishes it publishes durable bytes. */
export async function syncFile(file: FileHandle, path: string): Promise<void> {
  try {
    await file.sync();
  } catch (e) {
    throw writeFailed(path, 'flush to disk', e);
  }
}

/**
 * A stream that writes into `file` (empty, just created) from its start and flushes it to disk when it ends.
 * Its own failures are DestinationErrors, and the first is kept in `failure`: a pipeline destroys every
 * stream with the first error, so only this tells the disk's failure from the source's.
 */
export class FileSink extends Writable {
  failure: DestinationError | undefined;
  private position = 0;

  constructor(
    private readonly file: FileHandle,
    private readonly path: string,
  ) {
    super();
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    const buffers = chunks.map((c) => c.chunk);
    const bytes = buffers.reduce((n, b) => n + b.length, 0);
    writeAllAt(this.file, this.path, buffers, bytes, this.position).then(
      () => {
        this.position += bytes;
        callback();
      },
      (e: DestinationError) => callback((this.failure ??= e)),
    );
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this._writev([{ chunk }], callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    syncFile(this.file, this.path).then(
      () => callback(),
      (e: DestinationError) => callback((this.failure ??= e)),
    );
  }
}
