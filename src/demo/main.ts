/**
 * `npm run demo`: the whole snapshot path on one machine, nothing to configure. It creates a sample TCAB
 * database, starts the snapshot agent on loopback with a fresh key, starts Azurite and an S3 server
 * in-process, and then runs the real CLI: snapshot to a file target, Azurite and S3; list; restore the
 * latest and verify it; verify every stored copy; drill every target, with the application drill: the agent
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

    say('4. tcab-backup snapshot --reason demo --pin');
    const snap = JSON.parse(await runCli(['snapshot', '--reason', 'demo', '--pin', '--json'], env));
    const m = snap.manifest;
    say(
      `   ${m.id}: ${(m.snapshot.bytes / 1e6).toFixed(1)} MB -> ${(m.artifact.bytes / 1e6).toFixed(1)} MB ${m.artifact.compression}, on ${snap.targets.map((t: { target: string }) => t.target).join(', ')} in ${snap.totalMs} ms`,
    );

    say('5. tcab-backup list');
    process.stdout.write((await runCli(['list'], env)).trimEnd().replace(/^/gm, '   ') + '\n');

    const restored = join(work, 'restored.sqlite');
    say(`6. tcab-backup restore --latest -o ${restored}`);
    const r = JSON.parse(await runCli(['restore', '--latest', '-o', restored, '--json'], env));
    const db = openDatabase(restored, { readOnly: true });
    const runs = firstValue<number>(db, 'SELECT count(*) FROM runs');
    db.close();
    if (runs !== sample.runs) throw new Error(`restored database has ${runs} runs, the sample has ${sample.runs}`);
    say(`   restored ${r.id} from "${r.target}" in ${r.durationMs} ms: sha256 ok, integrity_check ok, ${runs} runs as in the source`);

    say('7. tcab-backup verify');
    const v = JSON.parse(await runCli(['verify', '--json'], env));
    say(`   ${v.checked} stored copies re-read, ${v.failed} bad`);

    say("8. tcab-backup drill --app   (restore every target's copy, then the backend started on it by the agent)");
    const drilled = await runCli(['drill', '--app'], env);
    process.stdout.write(drilled.trimEnd().replace(/^/gm, '   ') + '\n');
    const served = drilled.match(/backend started and served \d+ runs/g) ?? [];
    if (served.length !== 3 || !served.every((line) => line === `backend started and served ${sample.runs} runs`)) {
      throw new Error(`the application drill did not show the backend serving all ${sample.runs} runs on every target:\n${drilled}`);
    }

    say('9. tcab-backup status');
    process.stdout.write((await runCli(['status'], env)).trimEnd().replace(/^/gm, '   ') + '\n');

    say('\nDemo passed: one snapshot on three targets, restored, verified and drilled, and the backend started on each copy.');
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
