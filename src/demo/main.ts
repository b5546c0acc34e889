/**
 * `npm run demo`: the whole snapshot path on one machine, nothing to configure. It creates a sample TCAB
 * database, starts the snapshot agent on loopback with a fresh key, starts Azurite and an S3 server
 * in-process, and then runs the real CLI: snapshot to a file target, Azurite and S3 in the default format
 * (2: deduplicated chunks), then again after runs are published, uploading only the chunks that changed; list;
 * restore the latest and verify it; verify every stored copy; drill every target, with the application drill: the agent
 * starts a stand-in backend (src/dev/standin-backend.ts, run built from dist) on each restored copy and checks
 * /healthz and /runs. Everything is removed at the end unless --keep is given.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { BlobServiceClient } from '@azure/storage-blob';
import { startAgent } from '../agent/run.js';
import type { ManifestV1 } from '../catalog/manifest.js';
import type { ManifestV2 } from '../catalog/manifest-v2.js';
import { main as cli } from '../cli/main.js';
import { createLogger } from '../log.js';
import { createSampleDatabase } from '../dev/sample-db.js';
import { startAzurite, startS3Server } from '../dev/emulators.js';
import { splitCommand } from '../util/command.js';
import { firstValue, openDatabase } from '../util/sqlite.js';

/** The stand-in backend, built next to this file; quoted, as TCAB_AGENT_DRILL_BACKEND_COMMAND would say it. */
const STANDIN = fileURLToPath(new URL('../dev/standin-backend.js', import.meta.url));
const BACKEND_COMMAND = `"${process.execPath}" "${STANDIN}" --database-url {database_url} --port {port}`;

const keep = process.argv.includes('--keep');
const say = (line: string) => process.stdout.write(line + '\n');

async function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const stdout = new PassThrough();
  let out = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await cli(args, { stdout, stderr: process.stderr, stdin: process.stdin, env });
  if (code !== 0) throw new Error(`tcab-backup ${args.join(' ')} exited with ${code}:\n${out}`);
  return out;
}

interface DemoTargetOutcome {
  target: string;
  ok: boolean;
  chunks?: { total: number; distinct: number; new: number; reused: number };
  uploadedBytes?: number;
}

/** What `tcab-backup snapshot --json` stored: its format, and per target the chunks (format 2) or the artifact (format 1). */
function sayUploads(snap: { manifest: ManifestV1 | ManifestV2; targets: DemoTargetOutcome[]; totalMs: number }, what: string): void {
  const m = snap.manifest;
  const mb = (bytes: number) => `${(bytes / 1e6).toFixed(2)} MB`;
  if (m.formatVersion !== 2) {
    say(
      `   ${m.id}: format ${m.formatVersion}, ${mb(m.snapshot.bytes)} -> ${mb(m.artifact.bytes)} ${m.artifact.compression} on each target, in ${snap.totalMs} ms`,
    );
    return;
  }
  say(
    `   ${m.id}: format 2, ${mb(m.snapshot.bytes)} in ${m.chunkList.count} chunks (${mb(m.stored.bytes)} zstd), in ${snap.totalMs} ms; uploaded (${what}):`,
  );
  for (const t of snap.targets) {
    say(`     ${t.target}: ${t.chunks?.new ?? 0} new chunks, ${mb(t.uploadedBytes ?? 0)}; ${t.chunks?.reused ?? 0} already there`);
  }
}

/** Publishes `count` runs on the live database, as the backend does between two snapshots. */
function publishRuns(dbPath: string, count: number): number {
  const db = openDatabase(dbPath, { mustExist: true });
  try {
    db.exec(
      `INSERT INTO runs (slug, title, published_at, record) SELECT slug || '-demo', title, published_at, record FROM runs ORDER BY id DESC LIMIT ${count}`,
    );
  } finally {
    db.close();
  }
  return count;
}

async function demo(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'tcab-demo-'));
  const stops: Array<() => Promise<void>> = [];
  try {
    say(`demo folder: ${work}`);
    const dbPath = join(work, 'tcab.sqlite');
    const sample = createSampleDatabase(dbPath, { runs: 4000 });
    say(`1. sample database: ${sample.runs} runs, ${sample.reviews} reviews, ${(sample.bytes / 1e6).toFixed(1)} MB (WAL mode)`);

    const key = randomBytes(32).toString('hex');
    const agent = await startAgent(
      {
        dbPath,
        stagingDir: join(work, 'staging'),
        host: '127.0.0.1',
        port: 0,
        keys: new Map([['demo', key]]),
        tls: undefined,
        databaseName: 'tcab',
        compression: 'auto',
        stagingTtlMs: 3_600_000,
        // TCAB_AGENT_DRILL_BACKEND_COMMAND, parsed as the agent parses the setting.
        drill: { command: splitCommand(BACKEND_COMMAND), healthTimeoutMs: 30_000, stopGraceMs: 5_000 },
      },
      { logger: createLogger({ level: 'warn' }) },
    );
    stops.push(() => agent.close());
    say(`2. snapshot agent listening on ${agent.url} (HMAC key generated for this run)`);
    say(`   TCAB_AGENT_DRILL_BACKEND_COMMAND=${BACKEND_COMMAND}`);

    const azurite = await startAzurite();
    stops.push(() => azurite.stop());
    await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('tcab').createIfNotExists();
    const s3 = await startS3Server({ buckets: ['tcab'] });
    stops.push(() => s3.stop());
    say(`3. Azurite at ${azurite.endpoint}, S3 server at ${s3.endpoint}`);

    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      TCAB_LOG_LEVEL: 'warn',
      TCAB_BACKUP_TARGETS: [
        `local=file://${join(work, 'backups')}`,
        `blob=azblob://${azurite.account}/tcab?endpoint=${azurite.endpoint}`,
        `s3=s3://tcab?endpoint=${s3.endpoint}`,
      ].join(','),
      TCAB_BACKUP_TARGET_BLOB_CONNECTION_STRING: azurite.connectionString,
      TCAB_BACKUP_TARGET_S3_ACCESS_KEY_ID: s3.accessKeyId,
      TCAB_BACKUP_TARGET_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
      TCAB_BACKUP_AGENT_URL: agent.url,
      TCAB_BACKUP_AGENT_KEY_ID: 'demo',
      TCAB_BACKUP_AGENT_KEY: key,
    };

    say('4. tcab-backup snapshot --reason demo --pin   (TCAB_BACKUP_FORMAT not set: format 2, the default)');
    sayUploads(JSON.parse(await runCli(['snapshot', '--reason', 'demo', '--pin', '--json'], env)), 'an empty target: every chunk');

    const published = publishRuns(dbPath, 15);
    const runsNow = sample.runs + published;
    say(`   ${published} runs published on the live database, then tcab-backup snapshot --reason "after ${published} runs"`);
    const second = JSON.parse(await runCli(['snapshot', '--reason', `after ${published} runs`, '--json'], env));
    sayUploads(second, 'only the chunks the targets lack');
    const perTarget = second.targets.map((t: DemoTargetOutcome) => t.chunks?.new ?? 0);
    if (perTarget.some((n: number) => n >= second.manifest.chunkList.count)) {
      throw new Error(
        `the second snapshot uploaded every chunk again (${perTarget.join(', ')} of ${second.manifest.chunkList.count}): nothing was deduplicated`,
      );
    }

    say('5. tcab-backup list');
    process.stdout.write((await runCli(['list'], env)).trimEnd().replace(/^/gm, '   ') + '\n');

    const restored = join(work, 'restored.sqlite');
    say(`6. tcab-backup restore --latest -o ${restored}`);
    const r = JSON.parse(await runCli(['restore', '--latest', '-o', restored, '--json'], env));
    const db = openDatabase(restored, { readOnly: true });
    const runs = firstValue<number>(db, 'SELECT count(*) FROM runs');
    db.close();
    if (runs !== runsNow) throw new Error(`restored database has ${runs} runs, the live database has ${runsNow}`);
    say(`   restored ${r.id} from "${r.target}" in ${r.durationMs} ms: sha256 ok, integrity_check ok, ${runs} runs as in the source`);

    say('7. tcab-backup verify');
    const v = JSON.parse(await runCli(['verify', '--json'], env));
    say(`   ${v.checked} stored copies re-read, ${v.failed} bad`);

    say("8. tcab-backup drill --app   (restore every target's copy, then the backend started on it by the agent)");
    const drilled = await runCli(['drill', '--app'], env);
    process.stdout.write(drilled.trimEnd().replace(/^/gm, '   ') + '\n');
    const served = drilled.match(/backend started and served \d+ runs/g) ?? [];
    if (served.length !== 3 || !served.every((line) => line === `backend started and served ${runsNow} runs`)) {
      throw new Error(`the application drill did not show the backend serving all ${runsNow} runs on every target:\n${drilled}`);
    }

    say('9. tcab-backup status');
    process.stdout.write((await runCli(['status'], env)).trimEnd().replace(/^/gm, '   ') + '\n');

    say(
      '\nDemo passed: two format-2 snapshots on three targets (the second uploading only what changed), restored, verified and drilled, and the backend started on each copy.',
    );
    if (keep) say(`Kept ${work} (the servers are stopped).`);
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    if (!keep) await rm(work, { recursive: true, force: true });
  }
}

demo().catch((e) => {
  process.stderr.write(`demo failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
