/** Stream pieces shared by the jobs: hashing on the fly, fan-out to several sinks, decompression. */
import { spawn } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import { Duplex, PassThrough, Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import type { Compression } from '../agent/protocol.js';
import { TcabError } from '../errors.js';

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
  await pipeline(source, h, async function* (chunks) {
    for await (const _ of chunks) {
      /* drain */
    }
  }, { signal });
  return { sha256: h.digest(), bytes: h.bytes };
}

/**
 * Copies `source` into every sink at the pace of the slowest one (memory stays bounded). A sink that fails
 * is dropped and reported through `onSinkError`; the others go on. A source error destroys every sink with
 * that error, so no consumer can mistake a truncated stream for a complete one.
 */
export async function fanOut(
  source: Readable,
  sinks: Writable[],
  onSinkError: (index: number, err: Error) => void,
  /** Runs after the last byte, before the sinks are ended: an error here fails every sink instead. */
  beforeEnd?: () => Error | undefined,
): Promise<void> {
  const alive = new Set(sinks.map((_, i) => i));
  const failures = sinks.map((sink, i) => {
    const listener = (err: Error) => {
      if (alive.delete(i)) onSinkError(i, err);
    };
    sink.on('error', listener);
    return listener;
  });
  try {
    for await (const chunk of source) {
      if (alive.size === 0) break;
      const waits: Promise<void>[] = [];
      for (const i of alive) {
        const sink = sinks[i]!;
        if (!sink.write(chunk)) waits.push(waitDrain(sink));
      }
      if (waits.length) await Promise.all(waits);
    }
  } catch (err) {
    for (const i of alive) sinks[i]!.destroy(err as Error);
    throw err;
  }
  if (alive.size === 0) {
    source.destroy();
    return;
  }
  const veto = beforeEnd?.();
  if (veto) {
    for (const i of alive) sinks[i]!.destroy(veto);
    throw veto;
  }
  for (const i of alive) sinks[i]!.end();
  sinks.forEach((sink, i) => sink.off('error', failures[i]!));
}

function waitDrain(sink: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      sink.off('drain', done);
      sink.off('close', done);
      sink.off('error', done);
      resolve();
    };
    sink.on('drain', done);
    sink.on('close', done);
    sink.on('error', done);
  });
}

type ZlibWithZstd = typeof zlib & { createZstdDecompress?: () => Transform };

/**
 * A transform that undoes the artifact's compression: node:zlib, or the zstd CLI where Node lacks zstd
 * (`runtimeZstd: false` takes that path on any runtime, so tests cover both).
 */
export function decompressor(compression: Compression, options: { runtimeZstd?: boolean; zstdCommand?: string } = {}): Duplex {
  switch (compression) {
    case 'none':
      return new PassThrough();
    case 'gzip':
      return zlib.createGunzip();
    case 'zstd': {
      const z = zlib as ZlibWithZstd;
      if (options.runtimeZstd !== false && typeof z.createZstdDecompress === 'function') return z.createZstdDecompress();
      return spawnFilter(options.zstdCommand ?? 'zstd', ['-d', '-c', '-q'], 'install the zstd package (apt-get install zstd) or run on Node 24');
    }
  }
}

/**
 * A child process as a Duplex filter (stdin -> stdout). Its exit status decides how the stream ends: a
 * non-zero exit becomes a stream error carrying the tool's own message (a broken pipe on stdin is only the
 * symptom of that exit, so it is not reported instead of it). Errors carry `code: 'FILTER_FAILED'`.
 */
export function spawnFilter(command: string, args: string[], missingHint: string): Duplex {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 2000) stderr += d;
  });
  let pendingWrite: ((err?: Error | null) => void) | undefined;
  const duplex = new Duplex({
    write(chunk: Buffer, _enc, cb) {
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
    duplex.destroy(err.code === 'ENOENT' ? new TcabError(`"${command}" was not found on PATH`, { hint: missingHint, cause: err, code: 'FILTER_FAILED' }) : err);
  });
  child.on('close', (code, signal) => {
    if (code === 0) {
      duplex.push(null);
      return;
    }
    const err = new TcabError(`${command} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim().slice(0, 500)}`, { code: 'FILTER_FAILED' });
    pendingWrite?.(err);
    duplex.destroy(err);
  });
  return duplex;
}
