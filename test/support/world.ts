/**
 * What a test stands on, in one place: temporary folders, log capture, and the emulators (Azurite for Azure
 * Blob, s3rver for S3/R2) with fresh targets on them under a unique prefix. `testWorld()` ties these to one
 * test file: the emulators start before its tests and everything it handed out is removed after them.
 * Helpers of one area (snapshot histories, the status fixture, the agent's signed requests) stay in their
 * area and build on these.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll } from 'vitest';
import { startAzurite, startS3Server, type Azurite, type S3Server } from '../../src/dev/emulators.js';
import { createLogger, type Fields, type Level, type Logger } from '../../src/log.js';
import { openTarget, type OpenTargetOptions } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import type { FaultProxy } from './fault-proxy.js';

/** Retries fast enough for tests, as many as production. */
export const FAST_RETRY: OpenTargetOptions['retry'] = { retries: 5, baseDelayMs: 5, maxDelayMs: 40 };

// ---- temporary folders ----

export interface TempDir {
  dir: string;
  remove(): Promise<void>;
}

/** A new empty folder `tcab-<label>-XXXXXX` under the system's temporary folder. */
export async function tempDir(label: string): Promise<TempDir> {
  const dir = await mkdtemp(join(tmpdir(), `tcab-${label}-`));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

export interface FolderTarget extends TempDir {
  target: Target;
  /** Every file under the folder, as text (to look for what must never be stored). */
  allText(): Promise<string>;
}

/** A file:// target named `name` in a new temporary folder; `retry` defaults to production's. */
export async function folderTarget(name: string, options: { retry?: OpenTargetOptions['retry'] } = {}): Promise<FolderTarget> {
  const { dir, remove } = await tempDir(name);
  const target = openTarget(parseTargetUrl(name, `file://${dir}`), options.retry ? { retry: options.retry } : {});
  return {
    target,
    dir,
    remove,
    async allText() {
      const files = (await readdir(dir, { recursive: true, withFileTypes: true })).filter((d) => d.isFile());
      const texts = await Promise.all(files.map((f) => readFile(join(f.parentPath, f.name), 'utf8')));
      return texts.join('\n');
    },
  };
}

// ---- log capture ----

export interface CapturedLog {
  logger: Logger;
  /** Every line as written (JSON), to look for what must never be logged. */
  lines: string[];
  /** Every record as the logger handed it to its sink, in order. */
  records: Fields[];
  /** The lines of one event, parsed back from JSON (what a reader of the log gets). */
  events(name: string): Fields[];
}

/** A logger (at `debug` unless told) whose every line and record is kept. */
export function captureLog(level: Level = 'debug'): CapturedLog {
  const lines: string[] = [];
  const records: Fields[] = [];
  const logger = createLogger({
    level,
    sink: (_level, line, record) => {
      lines.push(line);
      records.push(record);
    },
  });
  return { logger, lines, records, events: (name) => lines.map((l) => JSON.parse(l) as Fields).filter((r) => r.event === name) };
}

// ---- emulators ----

/** The container (Azurite) and bucket (s3rver) every emulator target lives in, each under its own prefix. */
export const CONTAINER = 'tcab';
export const BUCKET = 'tcab';

export interface Clouds {
  azurite: Azurite;
  s3: S3Server;
  stop(): Promise<void>;
}

/** Azurite with container `CONTAINER` and s3rver with bucket `BUCKET`. */
export async function startClouds(): Promise<Clouds> {
  const [azurite, s3] = await Promise.all([startEmulatedBlob([CONTAINER]), startS3Server({ buckets: [BUCKET] })]);
  return { azurite, s3, stop: async () => void (await Promise.all([azurite.stop(), s3.stop()])) };
}

/** Azurite alone, with `containers` created. */
export async function startEmulatedBlob(containers: string[] = [CONTAINER]): Promise<Azurite> {
  const azurite = await startAzurite();
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  for (const c of containers) await service.getContainerClient(c).createIfNotExists();
  return azurite;
}

let prefixes = 0;
/** A prefix no other target of this run uses. */
export function freshPrefix(): string {
  return `t${process.pid}-${Date.now().toString(36)}-${prefixes++}`;
}

export interface EmulatorTargetOptions {
  /** Objects per listing page. */
  pageSize?: number;
  /** Send requests through this proxy instead of straight to the emulator. */
  proxy?: FaultProxy;
  /** Container (Azurite) or bucket (s3rver); `CONTAINER` / `BUCKET` unless told. */
  container?: string;
  /** Prefix inside it; a fresh one unless told. */
  prefix?: string;
  retry?: OpenTargetOptions['retry'];
}

function tuning(options: EmulatorTargetOptions): OpenTargetOptions {
  return { retry: options.retry ?? FAST_RETRY, tuning: { ...(options.pageSize ? { pageSize: options.pageSize } : {}) } };
}

/** A fresh, empty Azure Blob target on Azurite (under its own prefix). */
export function blobTarget(clouds: { azurite: Azurite }, name: string, options: EmulatorTargetOptions = {}): Target {
  const azurite = clouds.azurite;
  const upstream = new URL(azurite.endpoint);
  const endpoint = options.proxy ? `${options.proxy.endpoint}${upstream.pathname}` : azurite.endpoint;
  const connectionString = azurite.connectionString.replace(/BlobEndpoint=[^;]+;/, `BlobEndpoint=${endpoint};`);
  const url = `azblob://${azurite.account}/${options.container ?? CONTAINER}/${options.prefix ?? freshPrefix()}?endpoint=${endpoint}`;
  return openTarget(parseTargetUrl(name, url, { connectionString }), tuning(options));
}

/** A fresh, empty S3 target on s3rver (under its own prefix). */
export function s3Target(clouds: { s3: S3Server }, name: string, options: EmulatorTargetOptions = {}): Target {
  const endpoint = options.proxy?.endpoint ?? clouds.s3.endpoint;
  const spec = parseTargetUrl(name, `s3://${options.container ?? BUCKET}/${options.prefix ?? freshPrefix()}?endpoint=${endpoint}`, {
    accessKeyId: clouds.s3.accessKeyId,
    secretAccessKey: clouds.s3.secretAccessKey,
  });
  return openTarget(spec, tuning(options));
}

// ---- one test file's world ----

export interface TestWorld {
  /** The emulators; only while this file's tests run, and not with `clouds: false`. */
  readonly clouds: Clouds;
  /** A fresh folder target (fast retries), removed after this file's tests. */
  folder(name?: string): Promise<{ target: Target; dir: string }>;
  /** A new temporary folder, removed after this file's tests. */
  tempDir(label: string): Promise<string>;
  /** Runs `fn` after this file's tests (proxies and the like). */
  cleanup(fn: () => Promise<void>): void;
}

/**
 * The emulators and temporary folders of one test file: the emulators start before its tests (unless
 * `clouds: false`), and everything is removed after them.
 */
export function testWorld(options: { clouds?: boolean } = {}): TestWorld {
  let clouds: Clouds | undefined;
  const cleanups: Array<() => Promise<void>> = [];
  if (options.clouds !== false) {
    beforeAll(async () => {
      clouds = await startClouds();
    });
  }
  afterAll(async () => {
    for (const c of cleanups) await c().catch(() => undefined);
    await clouds?.stop();
  });
  return {
    get clouds(): Clouds {
      if (!clouds) throw new Error('the emulators are not running: testWorld() was called with clouds: false, or beforeAll failed');
      return clouds;
    },
    async folder(name = 'local') {
      const f = await folderTarget(name, { retry: FAST_RETRY });
      cleanups.push(f.remove);
      return { target: f.target, dir: f.dir };
    },
    async tempDir(label) {
      const t = await tempDir(label);
      cleanups.push(t.remove);
      return t.dir;
    },
    cleanup(fn) {
      cleanups.push(fn);
    },
  };
}
