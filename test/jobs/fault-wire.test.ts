/**
 * The fault matrix at the wire: snapshot, replicate and restore of multi-part artifacts through a proxy in
 * front of Azurite and s3rver that fails request N of a kind (the 2nd UploadPart or Put Block, the
 * CreateMultipartUpload, the CompleteMultipartUpload or Put Block List, the manifest's PutObject), resets a
 * connection after the service carried the request out (the answer lost), or cuts a GET body mid-way. The
 * artifacts are 5.5 MiB: two S3 parts (their least size is 5 MiB), six Blob blocks of 1 MiB. After
 * each case: the job settled, failed naming the cloud target or succeeded as the fault allows, and no
 * target shows a snapshot without its whole data.
 */
import { cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentClient } from '../../src/agent/client.js';
import { listCatalog, writeManifest } from '../../src/catalog/catalog.js';
import type { ManifestV1 as Manifest } from '../../src/catalog/manifest.js';
import { runReplicate } from '../../src/jobs/replicate/index.js';
import { runRestore } from '../../src/jobs/restore/index.js';
import { runSnapshot } from '../../src/jobs/snapshot/index.js';
import { openTarget } from '../../src/targets/index.js';
import { parseTargetUrl } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { startAgentPool, type AgentPool } from '../support/agent-pool.js';
import { fullMessage, MATRIX_RETRY, settleWithin } from '../support/fault-matrix.js';
import { startWireFaultProxy, type WireFaultProxy, type WireRule } from '../support/fault-proxy.js';
import { goodIds, visibleProblems } from '../support/matrix-world.js';
import { DATABASE, HOUR, makeSnapshot, storeSnapshot } from '../support/stored-snapshots.js';
import { BUCKET, CONTAINER, testWorld } from '../support/world.js';

const MiB = 1024 * 1024;
/** Two S3 parts (their least size is 5 MiB), six Blob blocks of 1 MiB; more than the snapshot's fan-out buffers. */
const ARTIFACT_BYTES = 5.5 * MiB;
const world = testWorld();
let work: string;
let agents: AgentPool;
/** A real snapshot of the artifact size, made once, for the restore cases. */
let template: { dir: string; manifest: Manifest };

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'tcab-wire-'));
  agents = await startAgentPool(2, { targetBytes: ARTIFACT_BYTES }, 'none');
  const dir = join(work, 'template');
  const store = openTarget(parseTargetUrl('template', `file://${dir}`));
  const { manifest } = await agents.with((client) =>
    runSnapshot({ agent: client, targets: [store], database: DATABASE }, { trigger: { kind: 'cli' } }),
  );
  template = { dir, manifest };
  expect(manifest.artifact.bytes).toBeGreaterThan(5 * MiB);
});

afterAll(async () => {
  await agents?.close();
  await rm(work, { recursive: true, force: true });
});

let prefixes = 0;

interface Backend {
  name: 'azurite' | 's3rver';
  upstream(): string;
  /** The cloud target under `prefix`, through `proxy` when given, with multi-part uploads of small parts. */
  open(prefix: string, proxy?: WireFaultProxy): Target;
}

const TUNING = { singlePutMaxBytes: MiB, concurrency: 2 };

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
      return openTarget(spec, { retry: MATRIX_RETRY, tuning: { ...TUNING, partSize: MiB } });
    },
  },
  {
    name: 's3rver',
    upstream: () => world.clouds.s3.endpoint,
    open(prefix, proxy) {
      const endpoint = proxy?.endpoint ?? world.clouds.s3.endpoint;
      const spec = parseTargetUrl('cloud', `s3://${BUCKET}/${prefix}?endpoint=${endpoint}`, {
        accessKeyId: world.clouds.s3.accessKeyId,
        secretAccessKey: world.clouds.s3.secretAccessKey,
      });
      return openTarget(spec, { retry: MATRIX_RETRY, tuning: { ...TUNING, partSize: 5 * MiB } });
    },
  },
];

type Job = 'snapshot' | 'replicate to the cloud' | 'replicate from the cloud' | 'restore';

interface WireCase {
  name: string;
  jobs: Job[];
  /** Undefined when the service has no such request (Blob has no CreateMultipartUpload). */
  rule(backend: Backend): WireRule | undefined;
  expect: 'succeeds' | 'fails' | 'either';
}

const UPLOADS: Job[] = ['snapshot', 'replicate to the cloud'];
const READS: Job[] = ['snapshot', 'replicate from the cloud', 'restore'];

const WIRE_CASES: WireCase[] = [
  {
    name: 'the 2nd part answered 503 once',
    jobs: UPLOADS,
    expect: 'succeeds',
    rule: () => ({ kind: 'UploadPart', nth: 2, fault: { status: 503, code: 'SlowDown' } }),
  },
  {
    name: 'the 2nd part and every one after answered 500',
    jobs: UPLOADS,
    expect: 'fails',
    rule: () => ({ kind: 'UploadPart', nth: 2, times: Infinity, fault: { status: 500, code: 'InternalError' } }),
  },
  {
    name: 'the 2nd part reset before the service has it',
    jobs: UPLOADS,
    expect: 'succeeds',
    rule: () => ({ kind: 'UploadPart', nth: 2, fault: 'reset' }),
  },
  {
    name: 'the 2nd part stored, its answer lost',
    jobs: UPLOADS,
    expect: 'succeeds',
    rule: () => ({ kind: 'UploadPart', nth: 2, fault: 'answer-lost' }),
  },
  {
    name: 'CreateMultipartUpload answered 503 once',
    jobs: UPLOADS,
    expect: 'succeeds',
    rule: (b) => (b.name === 's3rver' ? { kind: 'CreateUpload', nth: 1, fault: { status: 503, code: 'SlowDown' } } : undefined),
  },
  {
    name: 'the commit (CompleteMultipartUpload, Put Block List) answered 503 once',
    jobs: UPLOADS,
    expect: 'succeeds',
    rule: () => ({ kind: 'CompleteUpload', nth: 1, fault: { status: 503, code: 'ServerBusy' } }),
  },
  {
    name: 'the commit carried out, its answer lost',
    jobs: UPLOADS,
    expect: 'either',
    rule: () => ({ kind: 'CompleteUpload', nth: 1, fault: 'answer-lost' }),
  },
  {
    name: 'the manifest stored, its answer lost',
    jobs: UPLOADS,
    expect: 'succeeds',
    rule: () => ({ kind: 'PutObject', nth: 1, path: /\.json$/, fault: 'answer-lost' }),
  },
  {
    name: 'the artifact GET cut off after 3 MiB',
    jobs: READS,
    expect: 'either',
    rule: () => ({ kind: 'GetObject', nth: 1, path: /\.sqlite$/, fault: { cutAfterBytes: 3 * MiB } }),
  },
  {
    name: 'the artifact GET reset once',
    jobs: ['restore'],
    expect: 'succeeds',
    rule: () => ({ kind: 'GetObject', nth: 1, path: /\.sqlite$/, fault: 'reset' }),
  },
];

/** A replicate that copies from the cloud retries a copy that broke off: a cut body must not fail it. */
function expected(c: WireCase, job: Job): WireCase['expect'] {
  return job === 'replicate from the cloud' && c.expect === 'either' ? 'succeeds' : c.expect;
}

const ROWS = BACKENDS.flatMap((backend) =>
  WIRE_CASES.flatMap((c) =>
    c.jobs.filter(() => c.rule(backend) !== undefined).map((job) => ({ backend, c, job, title: `${backend.name} | ${job} | ${c.name}` })),
  ),
);

async function sha256(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

describe('fault matrix at the wire', () => {
  it('counts its cases', () => {
    console.log(`wire faults: ${ROWS.length} cases (${BACKENDS.length} services x jobs x faults where the service has the request)`);
    expect(ROWS.length).toBeGreaterThan(30);
  });

  it.concurrent.each(ROWS.map((r) => [r.title, r] as const))('%s', async (_title, { backend, c, job }) => {
    // A snapshot case holds its agent for the whole case, so that waiting for one is not counted against the job.
    if (job === 'snapshot') await agents.with((client) => wireCase(backend, c, job, client));
    else await wireCase(backend, c, job);
  });
});

async function wireCase(backend: Backend, c: WireCase, job: Job, client?: AgentClient): Promise<void> {
  const proxy = await startWireFaultProxy(backend.upstream());
  const local = await mkdtemp(join(tmpdir(), 'tcab-wire-local-'));
  try {
    const prefix = `wire-${process.pid}-${prefixes++}`;
    const cloud = backend.open(prefix, proxy);
    const cloudDirect = backend.open(prefix);
    const healthy = openTarget(parseTargetUrl('healthy', `file://${join(local, 'healthy')}`), { retry: MATRIX_RETRY });
    const dest = join(local, 'restored.sqlite');
    let before: string | undefined;
    let seededId: string | undefined;
    if (job === 'replicate to the cloud') {
      const s = makeSnapshot({ time: new Date(Date.now() - HOUR), bytes: ARTIFACT_BYTES });
      await storeSnapshot(healthy, s);
      seededId = s.manifest.id;
    } else if (job === 'replicate from the cloud') {
      const s = makeSnapshot({ time: new Date(Date.now() - HOUR), bytes: ARTIFACT_BYTES });
      await storeSnapshot(cloudDirect, s);
      seededId = s.manifest.id;
    } else if (job === 'restore') {
      const store = openTarget(parseTargetUrl('template', `file://${template.dir}`));
      const { body } = await store.get(template.manifest.key);
      await cloudDirect.put(template.manifest.key, body, { contentLength: template.manifest.artifact.bytes });
      await writeManifest(cloudDirect, template.manifest);
      await mkdir(local, { recursive: true });
      await cp(agents.database, dest);
      before = await sha256(dest);
    }

    proxy.inject(c.rule(backend)!);
    const controller = new AbortController();
    const settled = await settleWithin<unknown>(
      `${job} through ${backend.name} (${c.name})`,
      controller,
      [],
      (signal): Promise<unknown> => {
        switch (job) {
          case 'snapshot':
            return runSnapshot({ agent: client!, targets: [healthy, cloud], database: DATABASE }, { trigger: { kind: 'cli' }, signal });
          case 'replicate to the cloud':
          case 'replicate from the cloud':
            return runReplicate(
              { targets: [healthy, cloud], database: DATABASE },
              { signal, retry: { retries: 2, baseDelayMs: 1, maxDelayMs: 4 } },
            );
          case 'restore':
            return runRestore({ targets: [cloud], database: DATABASE }, { selector: { latest: true }, outPath: dest, force: true, signal });
        }
      },
    );
    const applied = proxy.applied();
    expect(
      applied,
      `the fault never reached the service: ${JSON.stringify(c.rule(backend))}; requests: ${proxy.seen.map((s) => `${s.kind} ${s.request}`).join(', ')}`,
    ).not.toEqual([]);
    const message = settled.status === 'rejected' ? fullMessage(settled.error) : '';
    const want = expected(c, job);
    if (want === 'succeeds')
      expect(settled.status === 'resolved' ? 'resolved' : `rejected: ${message}`, `retries should absorb ${applied.join('; ')}`).toBe(
        'resolved',
      );
    if (want === 'fails') expect(settled.status, `no retry absorbs ${applied.join('; ')}, yet the job succeeded`).toBe('rejected');
    if (settled.status === 'rejected') expect(message, 'the failure does not name the cloud target').toContain('"cloud"');

    // Whatever happened, no target shows a snapshot without its whole data.
    expect([...(await visibleProblems(healthy, DATABASE)), ...(await visibleProblems(cloudDirect, DATABASE))]).toEqual([]);
    if (job === 'snapshot') {
      expect(await goodIds(healthy, DATABASE), 'the healthy target holds no verified snapshot').toHaveLength(1);
      if (settled.status === 'resolved') expect((await listCatalog(cloudDirect, DATABASE)).snapshots).toHaveLength(1);
    } else if (job.startsWith('replicate')) {
      expect(await goodIds(job === 'replicate to the cloud' ? healthy : cloudDirect, DATABASE)).toEqual([seededId]);
      if (settled.status === 'resolved') {
        expect(await goodIds(healthy, DATABASE)).toEqual([seededId]);
        expect(await goodIds(cloudDirect, DATABASE)).toEqual([seededId]);
      }
    } else if (settled.status === 'resolved') {
      expect(await sha256(dest)).toBe(template.manifest.snapshot.sha256);
    } else {
      expect(await sha256(dest), 'a restore that failed changed its destination').toBe(before);
    }
  } finally {
    await proxy.stop();
    await rm(local, { recursive: true, force: true });
  }
}
