/**
 * file:// targets: a local folder. Keys map to files under it.
 *
 * A put streams into a temporary file in the key's own folder, fsyncs it, then renames it over the key, so
 * a reader sees the old object or the whole new one, never a part. Conditional writes (ifMatch,
 * ifNoneMatch) and deletes take a per-key lock file created with O_EXCL, so two processes sharing the
 * folder cannot both win. Temporary and lock files start with ".tcab-" and are never listed.
 */
import { randomBytes } from 'node:crypto';
import { close as closeCallback, open as openCallback, read as readCallback } from 'node:fs';
import { promisify } from 'node:util';
import type { Stats, BigIntStats } from 'node:fs';
import { mkdir, open, readdir, rename, rm, rmdir, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { addAbortSignal, Readable } from 'node:stream';
import { isAbortError, NotFoundError, PreconditionFailedError, TargetError } from '../errors.js';
import type { FileTargetSpec } from './spec.js';
import type { DeleteOptions, GetOptions, GetResult, ObjectInfo, PutOptions, PutResult, Target } from './target.js';
import { abandonBody, abortError, bodyChunks, checkKey, compareKeys, sourceFailure, SourceError, type TargetIdentity } from './failure.js';
import { sleep } from './retry.js';

const fdOpen = promisify(openCallback);
const fdRead = promisify(readCallback);
const fdClose = promisify(closeCallback);

const INTERNAL_PREFIX = '.tcab-';
/** Objects up to this size are read in one read() rather than streamed: see get. */
const SMALL_OBJECT_BYTES = 1 << 20;
const PARTIAL_PREFIX = '.tcab-partial.';
const LOCK_PREFIX = '.tcab-lock.';
/** A lock is held for a stat and a rename; one this old was left by a process that died holding it. */
const LOCK_STALE_MS = 60_000;
/** How long a writer waits for another writer of the same key before giving up. */
const LOCK_WAIT_MS = 30_000;

export interface FileTargetOptions {
  /** Fsync files and folders before a put returns. Default true: a backup must survive a power cut. */
  fsync?: boolean;
}

type AnyStats = Stats | BigIntStats;

/** Changes on every write: a rename gives the key a new inode, and the write a new mtime. */
function etagOf(s: BigIntStats): string {
  return `${s.ino.toString(16)}-${s.mtimeNs.toString(16)}-${s.size.toString(16)}`;
}

export class FileTarget implements Target {
  readonly name: string;
  readonly url: string;
  private readonly root: string;
  private readonly id: TargetIdentity;
  private readonly fsync: boolean;

  constructor(spec: FileTargetSpec, options: FileTargetOptions = {}) {
    this.name = spec.name;
    this.url = spec.displayUrl;
    this.root = spec.path;
    this.id = { name: spec.name, url: spec.displayUrl, secrets: [] };
    this.fsync = options.fsync ?? true;
  }

  private pathOf(operation: string, key: string): string {
    checkKey(this.id, operation, key);
    if (key.split('/').some((s) => s.startsWith(INTERNAL_PREFIX))) {
      throw new TargetError({
        target: this.name,
        url: this.url,
        operation,
        key,
        code: 'INVALID_KEY',
        detail: `invalid key: segments starting with "${INTERNAL_PREFIX}" are reserved for temporary and lock files`,
      });
    }
    return join(this.root, ...key.split('/'));
  }

  private fail(operation: string, key: string | undefined, err: unknown): Error {
    if (isAbortError(err) || err instanceof TargetError || err instanceof NotFoundError || err instanceof PreconditionFailedError) {
      return err as Error;
    }
    if (err instanceof SourceError) return sourceFailure(this.id, operation, key, err);
    const code = (err as NodeJS.ErrnoException).code;
    const hint =
      code === 'ENOSPC'
        ? `free space on the file system of ${this.root}`
        : code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
          ? `that ${this.root} is writable by the user running tcab-backup`
          : `that ${this.root} exists, is mounted and is writable`;
    return new TargetError({
      target: this.name,
      url: this.url,
      operation,
      ...(key !== undefined ? { key } : {}),
      detail: (err as Error)?.message ?? String(err),
      hint,
      cause: err,
      // A busy or interrupted file system may recover; a missing, full or read-only one will not by waiting.
      transient: code === 'EBUSY' || code === 'EAGAIN' || code === 'EINTR',
    });
  }

  private notFound(key: string, cause?: unknown): NotFoundError {
    return new NotFoundError(`${key} on target "${this.name}" (${this.url})`, { cause });
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<PutResult> {
    const path = this.pathOf('put', key);
    const { signal } = options;
    const source = Buffer.isBuffer(body) ? Readable.from([body]) : body;
    if (signal?.aborted) {
      source.destroy();
      throw abortError(signal);
    }
    const dir = dirname(path);
    const temp = join(dir, `${PARTIAL_PREFIX}${randomBytes(6).toString('hex')}.${basename(path)}`);
    let handle: FileHandle | undefined;
    try {
      handle = await this.createTemp(dir, temp);
      await writeAll(handle, source, signal);
      if (this.fsync) await handle.sync();
      const written = await handle.stat({ bigint: true });
      await handle.close();
      handle = undefined;
      await this.withLock(key, path, signal, async () => {
        await this.checkCondition(key, path, options);
        await rename(temp, path);
      });
      if (this.fsync) await syncFolder(dir);
      return { etag: etagOf(written), size: Number(written.size) };
    } catch (err) {
      const failure = signal?.aborted ? abortError(signal) : this.fail('put', key, err);
      abandonBody(source, failure);
      await handle?.close().catch(() => {});
      await rm(temp, { force: true }).catch(() => {});
      throw failure;
    }
  }

  /** Creates the temporary file, recreating its folder when a concurrent delete just removed it as empty. */
  private async createTemp(dir: string, temp: string): Promise<FileHandle> {
    for (let attempt = 0; ; attempt++) {
      await mkdir(dir, { recursive: true });
      try {
        return await open(temp, 'wx', 0o640);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 5) throw err;
      }
    }
  }

  private async checkCondition(key: string, path: string, options: PutOptions): Promise<void> {
    if (!options.ifMatch && !options.ifNoneMatch) return;
    const current = await stat(path, { bigint: true }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (options.ifNoneMatch === '*' && current) throw new PreconditionFailedError(`${key} on target "${this.name}" (it exists)`);
    if (options.ifMatch && (!current || etagOf(current) !== options.ifMatch)) {
      throw new PreconditionFailedError(`${key} on target "${this.name}" (its etag is not ${options.ifMatch})`);
    }
  }

  /**
   * Runs `fn` holding the key's lock file. Every writer and deleter of the key takes it, so a check and the
   * rename that depends on it are atomic with respect to other processes using this folder.
   */
  private async withLock<T>(key: string, path: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    const lock = join(dirname(path), `${LOCK_PREFIX}${basename(path)}`);
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      try {
        const h = await open(lock, 'wx', 0o640);
        await h.writeFile(`${process.pid}\n`);
        await h.close();
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const held = await stat(lock).catch(() => undefined);
        // A stale lock can only come from a crash; the window in which two waiters both judge the same
        // lock stale and one removes the other's fresh lock needs a crash first and is accepted.
        if (held && Date.now() - held.mtimeMs > LOCK_STALE_MS) {
          await rm(lock, { force: true });
          continue;
        }
        if (Date.now() > deadline) {
          throw new TargetError({
            target: this.name,
            url: this.url,
            operation: 'lock',
            key,
            detail: `another writer has held ${lock} for more than ${LOCK_WAIT_MS / 1000}s`,
            hint: 'whether another tcab-backup process is writing the same key; a lock file older than a minute is removed automatically',
            transient: true,
          });
        }
        await sleep(5 + Math.random() * 20, signal);
      }
    }
    try {
      return await fn();
    } finally {
      await rm(lock, { force: true });
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    const path = this.pathOf('get', key);
    const { signal, range } = options;
    if (signal?.aborted) throw abortError(signal);
    let handle: FileHandle | undefined;
    try {
      handle = await open(path, 'r');
      const s = await handle.stat({ bigint: true });
      if (!s.isFile()) throw this.notFound(key);
      const size = Number(s.size);
      let start = 0;
      let end = size - 1;
      if (range) {
        start = range.start;
        end = Math.min(range.end ?? size - 1, size - 1);
        if (!Number.isInteger(start) || start < 0 || (start >= size && size > 0) || end < start - 1) {
          throw new TargetError({
            target: this.name,
            url: this.url,
            operation: 'get',
            key,
            code: 'INVALID_RANGE',
            detail: `range ${range.start}-${range.end ?? ''} is outside the object (${size} bytes)`,
          });
        }
      }
      let body: Readable;
      if (end < start) {
        await handle.close();
        body = Readable.from([]);
      } else if (!range && size <= SMALL_OBJECT_BYTES) {
        // A small object (a format-2 chunk, a manifest) in one read: a restore gets thousands of chunks, and a
        // read stream per object cost about twice the CPU of this (docs/benchmarks.md, "Restore of format 2").
        const whole = Buffer.allocUnsafe(size);
        let got = 0;
        for (let n = 1; got < size && n > 0; got += n) ({ bytesRead: n } = await handle.read(whole, got, size - got, got));
        await handle.close();
        const bytes = got < size ? whole.subarray(0, got) : whole;
        body = new Readable({
          read() {
            this.push(bytes);
            this.push(null);
          },
        });
      } else {
        // 1 MiB reads: reading a copy back to hash it takes half the time it does with the default 64 KiB.
        body = handle.createReadStream({ start, end, autoClose: true, highWaterMark: 1 << 20 });
      }
      handle = undefined;
      if (signal) addAbortSignal(signal, body);
      return { body, size, etag: etagOf(s) };
    } catch (err) {
      await handle?.close().catch(() => {});
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') throw this.notFound(key, err);
      throw this.fail('get', key, err);
    }
  }

  /**
   * Target.readSmall: open, read up to maxBytes + 1 bytes, close, on a file descriptor (no FileHandle, no
   * stat, no stream). On 12,800 chunk files of 21 KB, 32 at a time, this took a third of the CPU of get and
   * reading its stream (235 to 418 ms against 617 to 1,379 ms).
   */
  async readSmall(key: string, maxBytes: number, options: { signal?: AbortSignal } = {}): Promise<Buffer> {
    const path = this.pathOf('get', key);
    if (options.signal?.aborted) throw abortError(options.signal);
    let fd: number | undefined;
    try {
      fd = await fdOpen(path, 'r');
      const buffer = Buffer.allocUnsafe(maxBytes + 1);
      let got = 0;
      for (;;) {
        const { bytesRead } = await fdRead(fd, buffer, got, buffer.length - got, got);
        if (bytesRead === 0) break;
        got += bytesRead;
        if (got === buffer.length) break;
      }
      return got < buffer.length ? buffer.subarray(0, got) : buffer;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') throw this.notFound(key, err);
      throw this.fail('get', key, err);
    } finally {
      if (fd !== undefined) await fdClose(fd).catch(() => {});
    }
  }

  async head(key: string, options: { signal?: AbortSignal } = {}): Promise<ObjectInfo> {
    const path = this.pathOf('head', key);
    if (options.signal?.aborted) throw abortError(options.signal);
    try {
      const s = await stat(path, { bigint: true });
      if (!s.isFile()) throw this.notFound(key);
      return { key, size: Number(s.size), lastModified: new Date(Number(s.mtimeMs)), etag: etagOf(s) };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw this.notFound(key, err);
      throw this.fail('head', key, err);
    }
  }

  /** One rm per call (after waiting for the key's lock); retries are retry.ts's, which `once` switches off. */
  async delete(key: string, options: DeleteOptions = {}): Promise<void> {
    const path = this.pathOf('delete', key);
    const { signal } = options;
    if (signal?.aborted) throw abortError(signal);
    const dir = dirname(path);
    try {
      await this.withLock(key, path, signal, () => rm(path, { force: true }));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // No folder means no object: deleting it again is a success.
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw this.fail('delete', key, err);
    }
    await this.removeEmptyFolders(dir);
  }

  /** Date folders empty after a delete go too, so retention does not leave thousands of them behind. */
  private async removeEmptyFolders(from: string): Promise<void> {
    for (let dir = from; dir !== this.root && dir.startsWith(this.root + '/'); dir = dirname(dir)) {
      try {
        await rmdir(dir);
      } catch {
        return; // not empty (or already gone, or not ours to remove): stop climbing
      }
    }
  }

  list(prefix: string, options: { signal?: AbortSignal } = {}): AsyncIterable<ObjectInfo> {
    checkKey(this.id, 'list', prefix, 'prefix');
    const folder = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    return this.walk(join(this.root, ...folder.split('/').filter(Boolean)), folder, prefix, options.signal);
  }

  private async *walk(dir: string, keyBase: string, prefix: string, signal: AbortSignal | undefined): AsyncGenerator<ObjectInfo> {
    if (signal?.aborted) throw abortError(signal);
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw this.fail('list', prefix, err);
    }
    // Sorting "name/" for folders gives the order of full keys: "a-b" < "a/c" because '-' < '/'.
    const items = entries
      .filter((e) => !e.name.startsWith(INTERNAL_PREFIX) && (e.isFile() || e.isDirectory()))
      .map((e) => ({ name: e.name, folder: e.isDirectory(), order: e.isDirectory() ? `${e.name}/` : e.name }))
      .sort((a, b) => compareKeys(a.order, b.order));
    for (const item of items) {
      const key = keyBase + item.name;
      if (item.folder) {
        const sub = `${key}/`;
        if (sub.startsWith(prefix) || prefix.startsWith(sub)) yield* this.walk(join(dir, item.name), sub, prefix, signal);
      } else if (key.startsWith(prefix)) {
        let s: BigIntStats;
        try {
          s = await stat(join(dir, item.name), { bigint: true });
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // deleted while listing
          throw this.fail('list', prefix, err);
        }
        yield { key, size: Number(s.size), lastModified: new Date(Number(s.mtimeMs)), etag: etagOf(s) };
      }
    }
  }

  /** Removes temporary files older than `olderThan`: what puts of crashed processes left behind. */
  async abortStaleUploads(olderThan: Date, options: { signal?: AbortSignal } = {}): Promise<number> {
    let removed = 0;
    const visit = async (dir: string): Promise<void> => {
      if (options.signal?.aborted) throw abortError(options.signal);
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw err;
      }
      for (const e of entries) {
        const path = join(dir, e.name);
        if (e.isDirectory()) await visit(path);
        else if (e.name.startsWith(PARTIAL_PREFIX) || e.name.startsWith(LOCK_PREFIX)) {
          const s: AnyStats | undefined = await stat(path).catch(() => undefined);
          if (s && s.mtimeMs < olderThan.getTime()) {
            await rm(path, { force: true });
            if (e.name.startsWith(PARTIAL_PREFIX)) removed++;
          }
        }
      }
    };
    try {
      await visit(this.root);
    } catch (err) {
      throw this.fail('abort stale uploads', undefined, err);
    }
    return removed;
  }
}

/** A rename is durable only once its folder is synced. Some file systems refuse to fsync a folder. */
async function syncFolder(dir: string): Promise<void> {
  let h: FileHandle | undefined;
  try {
    h = await open(dir, 'r');
    await h.sync();
  } catch {
    // EINVAL/EISDIR on file systems without directory fsync: the rename is as durable as it can be made.
  } finally {
    await h?.close().catch(() => {});
  }
}

export function createFileTarget(spec: FileTargetSpec, options?: FileTargetOptions): Target {
  return new FileTarget(spec, options);
}

/**
 * Writes a stream into an open file. A write stream made from a FileHandle with autoClose off keeps a
 * reference that makes FileHandle.close() wait forever, so the handle is written directly; small chunks are
 * gathered into writes of about 1 MiB (one awaited write per 64 KiB chunk costs several times `cp`).
 */
async function writeAll(handle: FileHandle, source: Readable, signal: AbortSignal | undefined): Promise<void> {
  const onAbort = () => source.destroy(abortError(signal!));
  signal?.addEventListener('abort', onAbort, { once: true });
  const pending: Buffer[] = [];
  let pendingBytes = 0;
  const flush = async () => {
    const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
    pending.length = 0;
    pendingBytes = 0;
    let offset = 0;
    while (offset < buf.length) offset += (await handle.write(buf, offset, buf.length - offset)).bytesWritten;
  };
  try {
    for await (const buf of bodyChunks(source, signal)) {
      pending.push(buf);
      pendingBytes += buf.length;
      if (pendingBytes >= WRITE_BATCH_BYTES) await flush();
    }
    if (pendingBytes > 0) await flush();
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

const WRITE_BATCH_BYTES = 1 << 20;
