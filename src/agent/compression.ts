/**
 * Compressors for snapshot artifacts. gzip comes from node:zlib. zstd comes from the `zstd` program when the
 * machine has it: it reads the snapshot file itself on two threads, while the agent hashes on the other core
 * (node:zlib's zstd runs on one thread, and its multi-threaded mode fails in Node 24.21). Without the program,
 * node:zlib's zstd (Node 24 has it) makes the same format. Level 1 for both: an
 * hourly snapshot on a 2-core VM gains more from speed than from the last few per cent of size (measured:
 * zstd -1 and -3 differ by 4 %, gzip -1 is 3.5x slower than zstd -1).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { Duplex, type Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import type { Compression } from './protocol.js';

type ZstdFactory = (options?: { params?: Record<number, number>; chunkSize?: number }) => Duplex;
const zlibZstd = (zlib as unknown as { createZstdCompress?: ZstdFactory }).createZstdCompress;
const ZSTD_LEVEL_PARAM = (zlib.constants as unknown as Record<string, number | undefined>).ZSTD_c_compressionLevel;

const CHUNK = 256 * 1024;

export interface CompressionSupport {
  /** What this agent can make, best first. 'none' is always there. */
  available: Compression[];
  /** Where zstd comes from, when it is available. */
  zstdSource: 'zlib' | 'command' | undefined;
  zstdCommand: string;
}

export interface DetectOptions {
  /** The zstd program, preferred when it runs; default `zstd` from PATH. A missing one leaves node:zlib's zstd. */
  zstdCommand?: string;
  /** false: leave node:zlib's zstd aside, as a runtime without it would (so both paths can be tested on one). */
  runtimeZstd?: boolean;
}

/** Whether this runtime's node:zlib compresses zstd. */
export function runtimeHasZstd(): boolean {
  return typeof zlibZstd === 'function' && ZSTD_LEVEL_PARAM !== undefined;
}

/** Looks once (at start) for what this runtime and machine can compress with. */
export function detectCompressions(options: DetectOptions = {}): CompressionSupport {
  const zstdCommand = options.zstdCommand ?? 'zstd';
  let zstdSource: CompressionSupport['zstdSource'];
  if (spawnSync(zstdCommand, ['--version'], { stdio: 'ignore', timeout: 10_000 }).status === 0) zstdSource = 'command';
  else if (options.runtimeZstd !== false && runtimeHasZstd()) zstdSource = 'zlib';
  return { available: zstdSource ? ['zstd', 'gzip', 'none'] : ['gzip', 'none'], zstdSource, zstdCommand };
}

/** The compression a request gets: the asked one, else the configured default, where 'auto' is the best available. */
export function chooseCompression(
  asked: Compression | undefined,
  configured: Compression | 'auto',
  support: CompressionSupport,
): { ok: true; compression: Compression } | { ok: false; reason: string } {
  const wanted = asked ?? (configured === 'auto' ? support.available[0]! : configured);
  if (support.available.includes(wanted)) return { ok: true, compression: wanted };
  return { ok: false, reason: `this agent cannot make ${wanted} artifacts (it can make: ${support.available.join(', ')})` };
}

export interface Compressor {
  stream: Duplex;
  /** Settles when the compressor itself has finished: for the zstd command, when it exited with status 0. */
  done: Promise<void>;
  /** Stops the compressor after a failure elsewhere in the pipeline. */
  abort(): void;
}

export function createCompressor(kind: Exclude<Compression, 'none'>, support: CompressionSupport): Compressor {
  if (kind === 'gzip') return settled(zlib.createGzip({ level: 1, chunkSize: CHUNK }));
  if (support.zstdSource === 'zlib') {
    return settled(zlibZstd!({ params: { [ZSTD_LEVEL_PARAM!]: 1 }, chunkSize: CHUNK }));
  }
  if (support.zstdSource === 'command') return zstdCommand(support.zstdCommand);
  throw new Error('zstd is not available on this agent');
}

function settled(stream: Duplex): Compressor {
  return { stream, done: Promise.resolve(), abort: () => stream.destroy() };
}

/**
 * zstd's arguments: level 1 (4.5x smaller on TCAB data, as fast as a copy), two worker threads. The output is
 * the same bytes as single-threaded zstd -1 writes; the two threads finish a 100 MB snapshot in 0.19 s
 * instead of 0.26 s. On the VM the agent's unit runs at Nice=10 and CPUWeight=50, so the backend comes
 * first when the cores are busy.
 */
const ZSTD_ARGS = ['-1', '-T2', '-c', '-q'];

/**
 * zstd reading the plain file itself (`zstd -1 -T2 -c FILE`): no copy through this process, so the agent can
 * hash the plain file at the same time. The returned stream is the compressed output only.
 */
export function zstdFileCompressor(command: string, path: string): Omit<Compressor, 'stream'> & { output: Readable } {
  const child = spawn(command, [...ZSTD_ARGS, path], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = exitOf(child, command, child.stdout);
  return { output: child.stdout, done, abort: () => child.kill('SIGKILL') };
}

/** Settles when the child exits: resolved on status 0, else rejected with its stderr; `stream` is failed too. */
function exitOf(child: ChildProcess, command: string, stream: Readable | Duplex): Promise<void> {
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (text: string) => {
    if (stderr.length < 2000) stderr += text;
  });
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (err) => {
      stream.destroy(err);
      reject(err);
    });
    child.on('close', (code, signal) => {
      if (code === 0) return resolve();
      const err = new Error(`${command} exited with ${signal ?? `status ${code}`}${stderr ? `: ${stderr.trim()}` : ''}`);
      stream.destroy(err);
      reject(err);
    });
  });
  // The pipeline reports the failure; this only keeps an unawaited rejection from crashing the agent.
  done.catch(() => {});
  return done;
}

function zstdCommand(command: string): Compressor {
  const child = spawn(command, ZSTD_ARGS, { stdio: ['pipe', 'pipe', 'pipe'] });
  const stream = Duplex.from({ writable: child.stdin, readable: child.stdout });
  return { stream, done: exitOf(child, command, stream), abort: () => child.kill('SIGKILL') };
}

export const ARTIFACT_CONTENT_TYPE: Record<Compression, string> = {
  gzip: 'application/gzip',
  zstd: 'application/zstd',
  none: 'application/vnd.sqlite3',
};
