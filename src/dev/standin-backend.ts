// A stand-in for the TCAB backend in application drills (the tests and `npm run demo`): opens the SQLite file named by
// TCAB_BACKEND_DATABASE_URL (sqlite://<path>) with node:sqlite and serves GET /healthz and GET /runs as JSON on
// 127.0.0.1:$PORT. The command line must repeat the same URL and port (--database-url, --port), so the tests
// see that the agent fills in {database_url} and {port}.
//
// Knobs to misbehave, all from the environment:
//   STANDIN_PID_FILE=<path>      write this process's pid there once it runs
//   STANDIN_EXIT_AT_START=<code> print a message and exit with that status before listening
//   STANDIN_NO_HEALTH=1          accept connections to /healthz but never answer them
//   STANDIN_IGNORE_SIGTERM=1     ignore SIGTERM (only SIGKILL stops it)
//   STANDIN_DROP_RUNS=<n>        serve n runs fewer than the file holds
//   STANDIN_START_DELAY_MS=<ms>  wait this long before listening (a backend that is slow to start)
//
// Run as `node dist/src/dev/standin-backend.js` (built), or from the source with a Node that strips types.
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { DatabaseSync } from 'node:sqlite';

const env = process.env;
// Knobs may also come as STANDIN_X=value words on the command line.
for (const word of process.argv.slice(2)) {
  const m = /^(STANDIN_[A-Z_]+)=(.*)$/.exec(word);
  if (m) env[m[1]!] = m[2]!;
}
if (env.STANDIN_PID_FILE) writeFileSync(env.STANDIN_PID_FILE, String(process.pid));
const args = process.argv.slice(2);
const arg = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const url = env.TCAB_BACKEND_DATABASE_URL ?? '';
const port = Number(env.PORT);
console.log(`stand-in backend: database ${url}, port ${port}`);
if (arg('--database-url') !== url || arg('--port') !== env.PORT) {
  console.error(`stand-in backend: arguments ${JSON.stringify(args)} do not repeat TCAB_BACKEND_DATABASE_URL and PORT`);
  process.exit(4);
}
if (env.STANDIN_EXIT_AT_START) {
  console.error('stand-in backend: migration 0007 failed: no such column runs.record_v2');
  process.exit(Number(env.STANDIN_EXIT_AT_START));
}
if (!url.startsWith('sqlite://')) {
  console.error('stand-in backend: TCAB_BACKEND_DATABASE_URL is not sqlite://');
  process.exit(5);
}
if (env.STANDIN_IGNORE_SIGTERM) process.on('SIGTERM', () => console.log('stand-in backend: ignoring SIGTERM'));
else
  process.on('SIGTERM', () => {
    console.log('stand-in backend: stopping');
    server.close();
    db.close();
    process.exit(0);
  });

const db = new DatabaseSync(url.slice('sqlite://'.length));
db.exec('PRAGMA journal_mode = WAL');
const drop = Number(env.STANDIN_DROP_RUNS ?? 0);

const server = createServer((req, res) => {
  if (req.url === '/healthz') {
    if (env.STANDIN_NO_HEALTH) return;
    db.prepare('SELECT 1').get();
    res.writeHead(200, { 'Content-Type': 'application/json' });
    return res.end('{"status":"ok"}');
  }
  if (req.url === '/runs') {
    const runs = db.prepare('SELECT id, slug, title, published_at FROM runs ORDER BY id').all();
    res.writeHead(200, { 'Content-Type': 'application/json' });
    return res.end(JSON.stringify(runs.slice(0, Math.max(0, runs.length - drop))));
  }
  res.writeHead(404, { 'Content-Type': 'application/json' });
  res.end('{"error":"not found"}');
});
const listen = () => server.listen(port, '127.0.0.1', () => console.log(`stand-in backend: listening on 127.0.0.1:${port}`));
const delay = Number(env.STANDIN_START_DELAY_MS ?? 0);
if (delay > 0) {
  console.log(`stand-in backend: starting in ${delay} ms`);
  setTimeout(listen, delay);
} else listen();
