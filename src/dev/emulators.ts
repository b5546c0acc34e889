/**
 * Local stand-ins for the clouds, for tests and `npm run demo`: Azurite (Azure Blob) and s3rver (S3).
 *
 * Both run as child processes. Azurite's package root cannot be imported, and s3rver needs the legacy
 * OpenSSL provider (it encrypts list continuation tokens with DES); a child process with that flag keeps
 * the rest of this process unaffected. Each listens on 127.0.0.1, on a random port unless one is given,
 * and logs nothing unless it fails to start.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { TcabError } from '../errors.js';

const require = createRequire(import.meta.url);
const START_TIMEOUT_MS = 30_000;

/** Azurite's well-known development account: public, documented, accepted by nothing but Azurite. */
export const AZURITE_ACCOUNT = 'devstoreaccount1';
const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
/** s3rver's fixed credentials. */
const S3RVER_ACCESS_KEY_ID = 'S3RVER';
const S3RVER_SECRET = 'S3RVER';

export interface Emulator {
  endpoint: string;
  stop(): Promise<void>;
}

function packageFile(pkg: string, relative: string): string {
  return join(dirname(require.resolve(`${pkg}/package.json`)), relative);
}

/**
 * Starts `script` under node and resolves with the first match of `ready` in its output. Output is kept
 * only to explain a failure to start.
 */
function startChild(what: string, args: string[], ready: RegExp): Promise<{ child: ChildProcess; match: RegExpMatchArray }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } });
    let output = '';
    const timer = setTimeout(() => fail(new Error(`no ready message within ${START_TIMEOUT_MS / 1000}s`)), START_TIMEOUT_MS);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = output.match(ready);
      if (match) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        child.stderr!.off('data', onData);
        child.off('exit', onExit);
        // Keep draining so a chatty child never blocks on a full pipe.
        child.stdout!.resume();
        child.stderr!.resume();
        resolve({ child, match });
      }
    };
    const onExit = (code: number | null) => fail(new Error(`exited with code ${code}`));
    function fail(err: Error) {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new TcabError(`Starting ${what} failed: ${err.message}`, { hint: `its output:\n${output.slice(-2000)}`, cause: err }));
    }
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', onExit);
    child.once('error', fail);
  });
}

/** Stops a child and waits for it, forcibly when it does not go within a few seconds. */
function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.once('exit', () => {
      clearTimeout(force);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** A child must not outlive this process, even when a test run is interrupted. */
function killOnExit(child: ChildProcess): () => void {
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  return () => process.off('exit', kill);
}

export interface Azurite extends Emulator {
  connectionString: string;
  account: string;
}

export async function startAzurite(options: { port?: number } = {}): Promise<Azurite> {
  const { child, match } = await startChild(
    'Azurite',
    [
      packageFile('azurite', 'dist/src/blob/main.js'),
      '--blobHost',
      '127.0.0.1',
      '--blobPort',
      String(options.port ?? 0),
      '--inMemoryPersistence',
      '--skipApiVersionCheck',
      '--disableTelemetry',
      '--silent',
    ],
    /successfully listens on (https?:\/\/[^\s]+)/,
  );
  const forget = killOnExit(child);
  const port = new URL(match[1]!).port;
  const endpoint = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
  return {
    endpoint,
    account: AZURITE_ACCOUNT,
    connectionString: `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=${endpoint};`,
    async stop() {
      forget();
      await stopChild(child);
    },
  };
}

export interface S3Server extends Emulator {
  accessKeyId: string;
  secretAccessKey: string;
}

/**
 * s3rver, started from this script rather than its command line for one change. Its PutObject writes the
 * object's file as the body arrives, so a body cut off mid-way leaves a partial object readable under the
 * key, and an upload in progress is readable while it runs. S3 and R2 never show either: an object appears
 * whole, or not at all. Here a PutObject's body is spooled beside the store first and handed on only once it
 * has all arrived; an aborted request stores nothing. Arguments: directory, address, port, buckets (JSON).
 */
const S3RVER_MAIN = String.raw`
'use strict';
const { createReadStream, createWriteStream, promises: fs } = require('node:fs');
const { join } = require('node:path');
const { randomBytes } = require('node:crypto');
const { pipeline } = require('node:stream/promises');
const [s3rverPath, directory, address, port, buckets] = process.argv.slice(1);
const S3rver = require(s3rverPath);
const server = new S3rver({
  directory, address, port: Number(port), silent: true, vhostBuckets: false,
  configureBuckets: JSON.parse(buckets).map((name) => ({ name, configs: [] })),
});
const store = server.store;
const putObject = store.putObject.bind(store);
store.putObject = async (object) => {
  if (Buffer.isBuffer(object.content)) return putObject(object);
  const spool = join(directory, '.spool-' + randomBytes(8).toString('hex'));
  try {
    await pipeline(object.content, createWriteStream(spool));
    object.content = createReadStream(spool);
    return await putObject(object);
  } finally {
    await fs.rm(spool, { force: true });
  }
};
server.run().then(({ address, port }) => console.log('S3rver listening on %s:%d', address, port), (err) => {
  console.error(err);
  process.exit(1);
});
`;

export async function startS3Server(options: { port?: number; buckets?: string[] } = {}): Promise<S3Server> {
  const directory = await mkdtemp(join(tmpdir(), 'tcab-s3rver-'));
  const buckets = options.buckets ?? [];
  let child: ChildProcess;
  let match: RegExpMatchArray;
  try {
    ({ child, match } = await startChild(
      's3rver',
      [
        '--openssl-legacy-provider',
        '-e',
        S3RVER_MAIN,
        dirname(packageFile('s3rver', 'package.json')),
        directory,
        '127.0.0.1',
        String(options.port ?? 0),
        JSON.stringify(buckets),
      ],
      /listening on [^\s:]+:(\d+)/,
    ));
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  const forget = killOnExit(child);
  return {
    endpoint: `http://127.0.0.1:${match[1]}`,
    accessKeyId: S3RVER_ACCESS_KEY_ID,
    secretAccessKey: S3RVER_SECRET,
    async stop() {
      forget();
      await stopChild(child);
      await rm(directory, { recursive: true, force: true });
    },
  };
}
