/**
 * The format-2 fault matrix at the wire: restore, replicate (to and from the cloud), verify, prune's chunk
 * sweep, the snapshot job (the real agent into a folder and the cloud) and the drill, of two real snapshots
 * stored as chunks (several dozen each), through a proxy that fails request N of a kind in front of Azurite,
 * and in front of s3rver behind the R2 rules (test/support/r2-proxy.ts: create-only PUTs honoured, as R2
 * does). Faults: the 7th chunk GET or PUT answered 503 once, reset, cut short, or every one from the 7th on
 * answered 500 or cut short; a chunk stored and its answer lost (the create-only retry meets a 412); the chunk list and
 * the manifest stored and their answers lost; the first listing answered 503, or every one from the 2nd on
 * answered 500 (the snapshot's check after its manifest); the 7th chunk delete and every one after answered
 * 500. After each case: the job settled, failed naming the cloud target (and the chunk) or succeeded as the
 * fault allows; the source still restores to its exact files; every manifest the destination shows restores
 * to its exact file; a failed restore left its destination as it was; verify recorded no intact copy as
 * failed; the snapshot reached the folder whatever the cloud did, and a second run completes on both; a drill
 * is recorded as it went and leaves no scratch file.
 */
import { createHash } from 'node:crypto';
import { cp, mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listCatalog } from '../../src/catalog/catalog.js';
import { createSampleDatabase } from '../../src/dev/sample-db.js';
import { runPrune } from '../../src/jobs/prune/index.js';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import { runSnapshot } from '../../src/jobs/snapshot/index.js';
import { runDrill } from '../../src/jobs/drill/index.js';
import { readRecentDrills } from '../../src/catalog/drill-record.js';
import { silentLogger } from '../../src/log.js';
import type { AgentClient } from '../../src/agent/client.js';
import { startAgentPool, type AgentPool } from '../support/agent-pool.js';
import { vacuumInto } from '../support/v2-fixtures.js';
import { copyState, readVerifyRecord } from '../../src/catalog/verify-record.js';
import { loadChunkGrace } from '../../src/jobs/settings.js';
import { loadRetentionConfig } from '../../src/retention/settings.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { fullMessage, MATRIX_RETRY, settleWithin } from '../support/fault-matrix.js';
import { DB, makeFixtureV2, type FixtureV2 } from '../support/fault-matrix-v2.js';
import { startWireFaultProxy, type WireFaultProxy, type WireRule } from '../support/fault-proxy.js';
import { startR2Proxy, type R2Proxy } from '../support/r2-proxy.js';
import { storeFileAsV2 } from '../support/store-v2.js';
import { BUCKET, CONTAINER, testWorld } from '../support/world.js';

const world = testWorld();
const HOUR = 3600_000;
const DAY = 24 * HOUR;
const CHUNK_PATH = /\/chunks\/tcab\/[0-9a-f]{2}\/[0-9a-f]{64}\.zst$/;
let fx: FixtureV2;
let r2: R2Proxy;
/** Agents for the snapshot cases, one per case that may run at once (vitest's maxConcurrency, 5). */
let pool: AgentPool;
/** The file every snapshot of the agents' database is. */
let agentSha: string;
const TIMING = { graceMs: 7 * 86_400_000, jobTimeoutMs: 25 * 60_000 };

beforeAll(async () => {
  const work = await world.tempDir('wire-v2');
  fx = await makeFixtureV2(work);
  expect(fx.counts.union).toBeGreaterThanOrEqual(30);
  pool = await startAgentPool(5, { runs: 900, seed: 11 }, 'auto');
  agentSha = await sha256(vacuumInto(pool.database, join(work, 'agent.sqlite')));
  r2 = await startR2Proxy({
    upstream: world.clouds.s3.endpoint,
    accessKeyId: world.clouds.s3.accessKeyId,
    secretAccessKey: world.clouds.s3.secretAccessKey,
  });
}, 90_000);
afterAll(async () => {
  await r2?.stop();
  await pool?.close();
});

let prefixes = 0;

interface Backend {
  name: 'azurite' | 'r2 (s3rver)';
  upstream(): string;
  /** The cloud target "cloud" under `prefix`, through `proxy` when given. */
  open(prefix: string, proxy?: WireFaultProxy): Target;
}

const BACKENDS: Backend[] = [
  {
    name: 'azurite',
    upstream: () => world.clouds.azurite.endpoint,
    open(prefix, proxy) {
      const upstream = new URL(world.clouds.azurite.endpoint);
      const endpoint = proxy ? `${proxy.endpoint}${upstream.pathname}` : world.clouds.azurite.endpoint;
      const connectionString = world.clouds.azurite.connectionString.replace(/BlobEndpoint=[^;]+;/, `BlobEndpoint=${endpoint};`);
      const spec = parseTargetUrl('cloud', `azblob://${world.clouds.azurite.account}/${CONTAINER}/${prefix}?endpoint=${endpoint}`, {
        connectionString,
      });
      return openTarget(spec, { retry: MATRIX_RETRY });
    },
  },
  {
    name: 'r2 (s3rver)',
    upstream: () => r2.endpoint,
    open(prefix, proxy) {
      const endpoint = proxy?.endpoint ?? r2.endpoint;
      const spec = parseTargetUrl('cloud', `r2://${'0'.repeat(32)}/${BUCKET}/${prefix}?endpoint=${endpoint}&pathStyle=true`, {
        accessKeyId: world.clouds.s3.accessKeyId,
        secretAccessKey: world.clouds.s3.secretAccessKey,
      });
      return openTarget(spec, { retry: MATRIX_RETRY });
    },
  },
];

type Job = 'restore' | 'replicate to the cloud' | 'replicate from the cloud' | 'verify' | 'prune' | 'snapshot' | 'drill';

interface WireCase {
  name: string;
  jobs: Job[];
  rule: WireRule;
  expect: 'succeeds' | 'fails' | 'either';
  /** Per job, where it differs. */
  per?: Partial<Record<Job, WireCase['expect']>>;
}

const READS: Job[] = ['restore', 'replicate from the cloud', 'drill'];
const WRITES: Job[] = ['replicate to the cloud', 'snapshot'];

const WIRE_CASES: WireCase[] = [
  {
    name: 'the 7th chunk GET answered 503 once',
    jobs: [...READS, 'verify'],
    expect: 'succeeds',
    rule: { kind: 'GetObject', nth: 7, path: CHUNK_PATH, fault: { status: 503, code: 'ServerBusy' } },
  },
  {
    name: 'the 7th chunk GET reset once',
    jobs: READS,
    expect: 'succeeds',
    rule: { kind: 'GetObject', nth: 7, path: CHUNK_PATH, fault: 'reset' },
  },
  {
    name: 'the 7th chunk GET cut off after 4 KiB',
    jobs: READS,
    // A copy that broke off is repeated, and so is a restore's read of a chunk (up to 3 reads).
    expect: 'succeeds',
    rule: { kind: 'GetObject', nth: 7, path: CHUNK_PATH, fault: { cutAfterBytes: 4096 } },
  },
  {
    name: 'the 7th chunk GET and every one after cut off after 4 KiB',
    jobs: ['restore'],
    // Every read of that chunk breaks off: the restore reads it 3 times, then fails naming it.
    expect: 'fails',
    rule: { kind: 'GetObject', nth: 7, times: Infinity, path: CHUNK_PATH, fault: { cutAfterBytes: 4096 } },
  },
  {
    name: 'the 7th chunk GET and every one after answered 500',
    jobs: [...READS, 'verify'],
    expect: 'fails',
    rule: { kind: 'GetObject', nth: 7, times: Infinity, path: CHUNK_PATH, fault: { status: 500, code: 'InternalError' } },
  },
  {
    name: 'the 7th chunk PUT answered 503 once',
    jobs: WRITES,
    expect: 'succeeds',
    rule: { kind: 'PutObject', nth: 7, path: CHUNK_PATH, fault: { status: 503, code: 'SlowDown' } },
  },
  {
    name: 'the 7th chunk stored, its answer lost (the create-only retry meets a 412)',
    jobs: WRITES,
    expect: 'succeeds',
    rule: { kind: 'PutObject', nth: 7, path: CHUNK_PATH, fault: 'answer-lost' },
  },
  {
    name: 'the 7th chunk PUT and every one after answered 500',
    jobs: WRITES,
    expect: 'fails',
    rule: { kind: 'PutObject', nth: 7, times: Infinity, path: CHUNK_PATH, fault: { status: 500, code: 'InternalError' } },
  },
  {
    name: 'the first chunk list stored, its answer lost',
    jobs: WRITES,
    expect: 'succeeds',
    rule: { kind: 'PutObject', nth: 1, path: /\.chunks$/, fault: 'answer-lost' },
  },
  {
    name: 'the first chunk list PUT answered 503 once',
    jobs: WRITES,
    expect: 'succeeds',
    rule: { kind: 'PutObject', nth: 1, path: /\.chunks$/, fault: { status: 503, code: 'SlowDown' } },
  },
  {
    name: 'the first manifest stored, its answer lost',
    jobs: WRITES,
    expect: 'succeeds',
    rule: { kind: 'PutObject', nth: 1, path: /\.json$/, fault: 'answer-lost' },
  },
  {
    name: 'the first listing answered 503 once',
    jobs: ['restore', 'replicate to the cloud', 'prune', 'snapshot', 'drill'],
    expect: 'succeeds',
    rule: { kind: 'List', nth: 1, fault: { status: 503, code: 'ServerBusy' } },
  },
  {
    name: 'every listing from the 2nd on (the check after the manifest) answered 500',
    jobs: ['snapshot'],
    // The manifest is written; the job cannot tell whether every chunk is there, and says so.
    expect: 'fails',
    rule: { kind: 'List', nth: 2, times: Infinity, fault: { status: 500, code: 'InternalError' } },
  },
  {
    name: 'the 7th chunk DELETE and every one after answered 500',
    jobs: ['prune'],
    // What the sweep could not delete is garbage it reports, for the next prune: nothing kept may go.
    expect: 'either',
    rule: { kind: 'DeleteObject', nth: 7, times: Infinity, path: CHUNK_PATH, fault: { status: 500, code: 'InternalError' } },
  },
];

const ROWS = BACKENDS.flatMap((backend) =>
  WIRE_CASES.flatMap((c) => c.jobs.map((job) => ({ backend, c, job, title: `${backend.name} | ${job} | ${c.name}` }))),
);

async function sha256(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

/** Restores each snapshot `target` shows and checks it is its exact file; returns the ids it shows. */
async function everyManifestRestores(target: Target, dir: string, expected: Record<string, string>): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const shown = (await listCatalog(target, DB)).snapshots.map((s) => s.id).sort();
  for (const id of shown) {
    expect(expected[id], `"${target.name}" shows a snapshot ${id} nobody stored`).toBeDefined();
    const path = join(dir, `${id}.sqlite`);
    await runRestore({ targets: [target], database: DB }, { selector: { id }, outPath: path, force: true });
    expect(await sha256(path), `snapshot ${id} on "${target.name}" does not restore to its file`).toBe(expected[id]);
  }
  return shown;
}

/** Snapshots of the agents' database that `target` shows, added to `expected` as the file they restore to. */
async function addAgentSnapshots(target: Target, expected: Record<string, string>): Promise<void> {
  for (const s of (await listCatalog(target, DB)).snapshots) expected[s.id] ??= agentSha;
}

const GRACE = loadChunkGrace({});
const PRUNE_RETENTION = loadRetentionConfig(
  {
    TCAB_BACKUP_RETENTION_MIN_KEEP: '0',
    TCAB_BACKUP_RETENTION_MIN_AGE: '0s',
    TCAB_BACKUP_RETENTION_MAX_DELETE_SHARE: '1',
    TCAB_BACKUP_RETENTION_CLOUD: 'last=2',
  },
  ['cloud'],
);

describe('format-2 fault matrix at the wire', () => {
  it('counts its cases', () => {
    console.log(`wire faults, format 2: ${ROWS.length} cases (${BACKENDS.length} services x jobs x faults)`);
    expect(ROWS.length).toBeGreaterThanOrEqual(30);
  });

  it.concurrent.each(ROWS.map((r) => [r.title, r] as const))('%s', async (_title, { backend, c, job }) => {
    const proxy = await startWireFaultProxy(backend.upstream());
    const local = await world.tempDir('wire-v2-case');
    try {
      const prefix = `wire-v2-${process.pid}-${prefixes++}`;
      const cloud = backend.open(prefix, proxy);
      const direct = backend.open(prefix);
      const folder = openTarget(parseTargetUrl('local', `file://${join(local, 'local')}`), { retry: MATRIX_RETRY });
      const expected: Record<string, string> = {};
      const dest = join(local, 'restored.sqlite');
      let before: string | undefined;
      if (job === 'replicate to the cloud' || job === 'snapshot') {
        await cp(fx.pair.dir, join(local, 'local'), { recursive: true });
        Object.assign(expected, { [fx.pair.a.id]: fx.sha.a, [fx.pair.b.id]: fx.sha.b });
      }
      if (job !== 'replicate to the cloud') {
        if (job === 'prune') {
          const o = await storeFileAsV2(direct, DB, fx.files.o, { createdAt: new Date(Date.now() - 3 * HOUR) });
          expected[o.manifest.id] = fx.sha.o;
        }
        const a = await storeFileAsV2(direct, DB, fx.files.a, { createdAt: new Date(Date.now() - 2 * HOUR) });
        const b = await storeFileAsV2(direct, DB, fx.files.b, { createdAt: new Date(Date.now() - HOUR) });
        Object.assign(expected, { [a.manifest.id]: fx.sha.a, [b.manifest.id]: fx.sha.b });
      }
      if (job === 'restore') {
        createSampleDatabase(dest, { runs: 3, seed: 7 });
        before = await sha256(dest);
      }

      proxy.inject(c.rule);
      const drillWork = join(local, 'drill-work');
      const controller = new AbortController();
      const snapshot = (signal?: AbortSignal) =>
        pool.with((client: AgentClient) =>
          runSnapshot(
            { agent: client, targets: [folder, cloud], database: DB, timing: TIMING },
            { trigger: { kind: 'cli', reason: c.name }, format: 2, ...(signal ? { signal } : {}) },
          ),
        );
      const settled = await settleWithin<unknown>(
        `${job} through ${backend.name} (${c.name})`,
        controller,
        [],
        (signal): Promise<unknown> => {
          switch (job) {
            case 'restore':
              return runRestore({ targets: [cloud], database: DB }, { selector: { latest: true }, outPath: dest, force: true, signal });
            case 'replicate to the cloud':
            case 'replicate from the cloud':
              return runReplicate(
                { targets: [folder, cloud], database: DB },
                { signal, retry: { retries: 2, baseDelayMs: 1, maxDelayMs: 4 } },
              );
            case 'verify':
              return runVerifyRotation({ targets: [cloud], database: DB }, { withinMs: 7 * DAY, intervalMs: DAY, all: true, signal });
            case 'snapshot':
              return snapshot(signal);
            case 'drill':
              return runDrill(
                {
                  targets: [cloud],
                  database: DB,
                  live: { unavailable: 'not asked at the wire' },
                  workDir: drillWork,
                  logger: silentLogger,
                },
                { signal },
              );
            case 'prune': {
              const future = new Date(Date.now() + GRACE.graceMs + DAY);
              return runPrune(
                { targets: [cloud], database: DB, retention: PRUNE_RETENTION, chunkGrace: GRACE, now: () => future },
                { signal },
              );
            }
          }
        },
      );
      const applied = proxy.applied();
      expect(
        applied,
        `the fault never reached the service: ${c.rule.kind} ${c.rule.path ?? ''}; requests: ${proxy.seen.map((s) => `${s.kind} ${s.request}`).join(', ')}`,
      ).not.toEqual([]);
      const message = settled.status === 'rejected' ? fullMessage(settled.error) : '';
      const want = c.per?.[job] ?? c.expect;
      if (want === 'succeeds')
        expect(settled.status === 'resolved' ? 'resolved' : `rejected: ${message}`, `retries should absorb ${applied.join('; ')}`).toBe(
          'resolved',
        );
      if (want === 'fails') expect(settled.status, `no retry absorbs ${applied.join('; ')}, yet the job succeeded`).toBe('rejected');
      if (settled.status === 'rejected') {
        expect(message, 'the failure does not name the cloud target').toContain('"cloud"');
        if (c.rule.path === CHUNK_PATH && job !== 'prune' && (job !== 'snapshot' || want === 'fails'))
          expect(message, 'the failure does not name the chunk').toMatch(/chunks\/tcab\/[0-9a-f]{2}\/[0-9a-f]{64}\.zst/);
      }

      // Whatever happened: the source restores exactly, and every manifest a target shows restores exactly.
      if (job === 'snapshot') for (const t of [direct, folder]) await addAgentSnapshots(t, expected);
      const cloudShows = await everyManifestRestores(direct, join(local, 'check-cloud'), expected);
      const localShows = await everyManifestRestores(folder, join(local, 'check-local'), expected);
      const kept = Object.keys(expected)
        .filter((id) => expected[id] !== fx.sha.o)
        .sort();
      if (job === 'replicate to the cloud') {
        expect(localShows).toEqual(kept);
        if (settled.status === 'resolved') expect(cloudShows).toEqual(kept);
      } else if (job === 'replicate from the cloud') {
        expect(cloudShows).toEqual(kept);
        if (settled.status === 'resolved') expect(localShows).toEqual(kept);
      } else if (job === 'verify') {
        // Verify only reads; a chunk it could not read is not a damaged copy: no intact snapshot is recorded as failed.
        expect(cloudShows).toEqual(kept);
        const record = await readVerifyRecord(direct, DB);
        for (const id of kept) expect(copyState(record, id).state, `intact snapshot ${id} recorded as failed verify`).not.toBe('failed');
        if (settled.status === 'resolved') for (const id of kept) expect(copyState(record, id).state).toBe('ok');
      } else if (job === 'snapshot') {
        // "local" (healthy) got the snapshot whatever the cloud did; the cloud kept A and B, and got it unless the job failed.
        expect(localShows).toHaveLength(3);
        for (const id of kept) expect([...localShows, ...cloudShows]).toContain(id);
        expect(cloudShows.length).toBeGreaterThanOrEqual(2);
        if (settled.status === 'resolved') expect(cloudShows).toHaveLength(3);
        // Without the fault, the next run completes on both and restores exactly.
        proxy.clear();
        const again = await snapshot();
        expect(again.targets.map((o) => o.ok)).toEqual([true, true]);
        for (const t of [direct, folder]) await addAgentSnapshots(t, expected);
        expect(await everyManifestRestores(direct, join(local, 'again-cloud'), expected)).toContain(again.manifest.id);
        expect(await everyManifestRestores(folder, join(local, 'again-local'), expected)).toContain(again.manifest.id);
      } else if (job === 'drill') {
        expect(cloudShows).toEqual(kept);
        expect(await readdir(drillWork).catch(() => []), 'the drill left scratch files').toEqual([]);
        const records = await readRecentDrills(direct, DB, 5);
        expect(
          records.map((r) => r.record?.ok),
          'the drill is not recorded as it went',
        ).toEqual([settled.status === 'resolved']);
        if (settled.status === 'rejected' && c.rule.path === CHUNK_PATH)
          expect(records[0]!.record!.error).toMatch(/chunks\/tcab\/[0-9a-f]{2}\/[0-9a-f]{64}\.zst/);
      } else if (job === 'prune') {
        for (const id of kept) expect(cloudShows).toContain(id);
        if (settled.status === 'resolved') expect(cloudShows).toEqual(kept);
      } else if (settled.status === 'resolved') {
        expect(await sha256(dest)).toBe(fx.sha.b);
      } else {
        expect(await sha256(dest), 'a restore that failed changed its destination').toBe(before);
      }
    } finally {
      await proxy.stop();
    }
  });
});
