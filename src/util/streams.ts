/** Stream pieces shared by the jobs: hashing on the fly, fan-out to several sinks, decompression. */
import { spawn } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import { Duplex, finished, PassThrough, Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import { TcabError } from '../errors.js';

/**
 * The codecs decompressor() undoes, written out here so that util/ does not import the agent. The protocol's
 * Compression (src/agent/protocol.ts) must stay assignable to it: a codec added there fails the build at the
 * callers until it is handled here.
 */
export type Codec = 'gzip' | 'zstd' | 'none';

/** A pass-through that counts bytes and computes sha256 of everything that flows through it. */
export class HashingStream extends Transform {
  private readonly hash: Hash = createHash('sha256');
  bytes = 0;
  private hex: string | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }

  /** Valid once the stream has ended. */
  digest(): string {
    this.hex ??= this.hash.digest('hex');
    return this.hex;
  }
}

/** sha256 and length of a whole stream, without keeping it. */
export async function hashStream(source: Readable, signal?: AbortSignal): Promise<{ sha256: string; bytes: number }> {
  const h = new HashingStream();
  await pipeline(
    source,
    h,
    async (chunks: AsyncIterable<Buffer>) => {
      for await (const _ of chunks) {
        /* drain */
      }
    },
    { signal },
  );
  return { sha256: h.digest(), bytes: h.bytes };
}

/**
 * Copies `source` into every sink at the pace of the slowest one (memory stays bounded). A sink that fails
 * is dropped and reported through `onSinkError`, once; the others go on. A sink fails when it errors, or
 * when it is destroyed or closed before it has taken the whole stream, whenever that happens: before the
 * first byte (even before this call), while a write waits for room, or after the last byte while its
 * consumer still reads. A failure after this function has returned is still reported. A source error
 * destroys every sink with that error, so no consumer can mistake a truncated stream for a complete one.
 */
export async function fanOut(
  source: Readable,
  sinks: Writable[],
  onSinkError: (index: number, err: Error) => void,
  options: {
    /** Runs after the last byte, before the sinks are ended: an error here fails every sink instead. */
    beforeEnd?: () => Error | undefined;
    /** Aborting destroys every sink with the abort and rejects, even while a slow sink holds the copy. */
    signal?: AbortSignal;
  } = {},
): Promise<void> {
  const { beforeEnd, signal } = options;
  const alive = new Set(sinks.map((_, i) => i));
  let copied = 0;
  const drop = (i: number, err: Error) => {
    if (alive.delete(i)) onSinkError(i, err);
  };
  // A destroyed sink answers write() with false and emits neither 'drain' nor 'error': only its state and
  // its 'close' tell. finished() sees both, including a close that came before it was called.
  sinks.forEach((sink, i) => {
    finished(sink, (err) => {
      if (err) drop(i, sinkFailure(err, copied));
    });
  });
  /** Stops feeding the sinks still alive: they are destroyed with `err`, which is not reported as theirs. */
  const destroyAlive = (err: Error) => {
    const doomed = [...alive];
    alive.clear();
    for (const i of doomed) sinks[i]!.destroy(err);
  };
  const usable = (i: number): boolean => {
    const sink = sinks[i]!;
    if (!sink.destroyed && !sink.writableEnded) return true;
    drop(i, sinkFailure(sink.errored ?? prematureClose(), copied));
    return false;
  };

  try {
    if (signal?.aborted) throw abortReason(signal);
    for await (const chunk of source) {
      const waits: Promise<void>[] = [];
      for (const i of alive) {
        if (!usable(i)) continue;
        const sink = sinks[i]!;
        if (!sink.write(chunk)) waits.push(room(sink, signal));
      }
      copied += (chunk as Buffer).length;
      if (waits.length) await Promise.all(waits);
      if (signal?.aborted) throw abortReason(signal);
      if (alive.size === 0) break;
    }
  } catch (err) {
    destroyAlive(err as Error);
    throw err;
  }
  if (alive.size === 0) {
    source.destroy();
    return;
  }
  const veto = beforeEnd?.();
  if (veto) {
    destroyAlive(veto);
    throw veto;
  }
  for (const i of alive) if (usable(i)) sinks[i]!.end();
}

/** Resolves when `sink` has room again, fails, closes, or `signal` aborts: whichever comes first. */
function room(sink: Writable, signal: AbortSignal | undefined): Promise<void> {
  if (sink.destroyed || !sink.writableNeedDrain || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      sink.off('drain', done);
      sink.off('close', done);
      sink.off('error', done);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    sink.on('drain', done);
    sink.on('close', done);
    sink.on('error', done);
    signal?.addEventListener('abort', done, { once: true });
  });
}

function prematureClose(): Error {
  return Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}

/** A sink's own error as it is; a bare close says what it means here. */
function sinkFailure(err: Error, copied: number): Error {
  if ((err as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE') return err;
  return new TcabError(
    `the upload stopped taking data after ${copied} bytes without giving a reason (its stream was closed before the end)`,
    { cause: err },
  );
}

function abortReason(signal: AbortSignal): Error {
  const reason = signal.reason as unknown;
  if (reason instanceof Error && reason.name === 'AbortError') return reason;
  return Object.assign(new Error('The operation was aborted', { cause: reason }), { name: 'AbortError' });
}

type ZlibWithZstd = typeof zlib & { createZstdDecompress?: () => Transform };

/**
 * A transform that undoes the artifact's compression: node:zlib, or the zstd CLI where Node lacks zstd
 * (`runtimeZstd: false` takes that path on any runtime, so tests cover both).
 */
export function decompressor(compression: Codec, options: { runtimeZstd?: boolean; zstdCommand?: string } = {}): Duplex {
  switch (compression) {
    case 'none':
      return new PassThrough();
    case 'gzip':
      return zlib.createGunzip();
    case 'zstd': {
      const z = zlib as ZlibWithZstd;
      if (options.runtimeZstd !== false && typeof z.createZstdDecompress === 'function') return z.createZstdDecompress();
      return spawnFilter(
        options.zstdCommand ?? 'zstd',
        ['-d', '-c', '-q'],
        'install the zstd package (apt-get install zstd) or run on Node 24',
      );
    }
  }
}

/**
 * A child process as a Duplex filter (stdin -> stdout). Its exit status decides how the stream ends: a
 * non-zero exit becomes a stream error carrying the tool's own message (a broken pipe on stdin is only the
 * symptom of that exit, so it is not reported instead of it). A tool that exits with status 0 before it has
 * read all of its input fails the stream too: the input it left was not processed, and a write waiting for
 * its stdin to drain would otherwise wait for good. Errors carry `code: 'FILTER_FAILED'`.
 */
export function spawnFilter(command: string, args: string[], missingHint: string): Duplex {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const what = [command, ...args].join(' ');
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 2000) stderr += d;
  });
  let pendingWrite: ((err?: Error | null) => void) | undefined;
  let exited = false;
  const leftInput = () => new TcabError(`${what} exited before reading all of its input`, { code: 'FILTER_FAILED' });
  const duplex = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      if (exited || child.stdin.destroyed) return cb(leftInput());
      if (child.stdin.write(chunk)) cb();
      else {
        pendingWrite = cb;
        child.stdin.once('drain', () => {
          pendingWrite = undefined;
          cb();
        });
      }
    },
    final(cb) {
      child.stdin.end();
      cb();
    },
    read() {
      child.stdout.resume();
    },
    destroy(err, cb) {
      if (child.exitCode === null && child.signalCode === null) child.kill();
      cb(err);
    },
  });
  child.stdout.on('data', (d: Buffer) => {
    if (!duplex.push(d)) child.stdout.pause();
  });
  child.stdin.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') duplex.destroy(err);
  });
  child.on('error', (err: NodeJS.ErrnoException) => {
    duplex.destroy(
      err.code === 'ENOENT'
        ? new TcabError(`"${command}" was not found on PATH`, { hint: missingHint, cause: err, code: 'FILTER_FAILED' })
        : err,
    );
  });
  child.on('close', (code, signal) => {
    exited = true;
    // A broken pipe on stdin means the tool stopped reading: with status 0 too, input was left over.
    const unread = pendingWrite !== undefined || (child.stdin.destroyed && !child.stdin.writableFinished);
    if (code === 0 && !unread) {
      duplex.push(null);
      return;
    }
    const err =
      code === 0
        ? leftInput()
        : new TcabError(`${what} failed (${signal ?? `exit ${code}`}): ${stderr.trim().slice(0, 500)}`, { code: 'FILTER_FAILED' });
    pendingWrite?.(err);
    pendingWrite = undefined;
    duplex.destroy(err);
  });
  return duplex;
}
