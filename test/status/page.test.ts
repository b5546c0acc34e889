import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runDrill } from '../../src/jobs/drill/index.js';
import type { DrillRecord } from '../../src/catalog/drill-record.js';
import { loadMonitorSettings } from '../../src/jobs/settings.js';
import { runMonitor } from '../../src/jobs/monitor/index.js';
import { buildStatusDocument, type StatusDocument, type TargetFacts } from '../../src/status/document.js';
import { runVerifyRotation } from '../../src/jobs/verify/index.js';
import type { VerifyRecord } from '../../src/catalog/verify-record.js';
import { renderStatusPage } from '../../src/status/page.js';
import { dumpDom, findChromium, screenshot } from './chromium.js';
import { DATABASE, startFixture, type Fixture } from './fixture.js';
import { decodePng } from './png.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const thresholds = loadMonitorSettings({}).thresholds;
let fx: Fixture;
let out: string;
let browser: string;
let realDoc: StatusDocument;

const hex = (n: number) => n.toString(16).padStart(8, '0');
const idAt = (ms: number, n: number) =>
  new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}Z$/, 'Z') +
  '-' +
  hex(n);

/** Twenty days of hourly snapshots and daily drills, one target in trouble, one unreachable, and a Postgres server. */
function longHistory(now: number): StatusDocument {
  const snapshots = Array.from({ length: 20 * 24 }, (_, i) => ({
    id: idAt(now - (i + 1) * HOUR + 120_000, i),
    time: new Date(Math.floor((now - (i + 1) * HOUR + 120_000) / 1000) * 1000),
    artifactBytes: Math.round(280e6 + i * 90_000 + (i % 24) * 1e6),
  }));
  const drill = (day: number, ok: boolean, ms: number, warnings: string[] = []): DrillRecord => ({
    formatVersion: 1,
    kind: 'sqlite-drill',
    drillId: idAt(now - day * DAY, 1000 + day),
    database: DATABASE,
    target: 'blob',
    startedAt: new Date(now - day * DAY - ms - 5000).toISOString(),
    finishedAt: new Date(now - day * DAY).toISOString(),
    ok,
    snapshot: {
      id: snapshots[day * 24 + 3]!.id,
      createdAt: snapshots[day * 24 + 3]!.time.toISOString(),
      artifactBytes: 282_968_738,
      bytes: 1_265_516_544,
      compression: 'zstd',
    },
    recoveryTimeMs: ok ? ms : null,
    recoveryPoint: ok
      ? {
          snapshotAgeMs: 52 * 60_000,
          runsSince: 4 + day,
          newestPublishedAt: { snapshot: new Date(now - day * DAY - HOUR).toISOString(), live: new Date(now - day * DAY).toISOString() },
          publishedGapMs: HOUR,
        }
      : null,
    tables: { runs: { snapshot: 148467, live: 148471, difference: 4 } },
    live: { available: warnings.length === 0, ...(warnings.length ? { error: 'agent down' } : {}) },
    warnings,
    ...(ok
      ? {}
      : {
          error: `target "blob" (azblob://stbak/tcab) snapshot ${snapshots[day * 24 + 3]!.id}: artifact sha256 does not match the manifest`,
        }),
  });
  const drills = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11].map((d) =>
    drill(d, d !== 0 && d !== 5, 14_000 + d * 900 + (d % 3) * 2500, d === 2 ? ['live comparison unavailable: agent down'] : []),
  );
  const verify: VerifyRecord = {
    formatVersion: 1,
    kind: 'verify-record',
    database: DATABASE,
    target: 'blob',
    updatedAt: new Date(now - 5 * HOUR).toISOString(),
    snapshots: Object.fromEntries(
      snapshots.slice(0, 60).map((s, i) => [
        s.id,
        i === 30
          ? {
              checkedAt: new Date(now - 5 * HOUR).toISOString(),
              ok: false,
              error: 'artifact is 282968738 bytes with sha256 1f2e…, the manifest says 9a8b…',
              failingSince: new Date(now - 29 * HOUR).toISOString(),
            }
          : { checkedAt: new Date(now - 5 * HOUR).toISOString(), ok: true, bytes: 280e6 },
      ]),
    ),
    lastRun: {
      startedAt: new Date(now - 5.1 * HOUR).toISOString(),
      finishedAt: new Date(now - 5 * HOUR).toISOString(),
      all: false,
      snapshots: 336,
      checked: 48,
      failed: 1,
      bytes: 13e9,
      durationMs: 360_000,
      failures: [],
    },
    lastCleanRun: {
      startedAt: new Date(now - 29.1 * HOUR).toISOString(),
      finishedAt: new Date(now - 29 * HOUR).toISOString(),
      all: false,
      snapshots: 336,
      checked: 48,
      failed: 0,
      bytes: 13e9,
      durationMs: 350_000,
      failures: [],
    },
  };
  const facts: TargetFacts[] = [
    { name: 'blob', url: 'azblob://stbak/tcab', snapshots, drills: drills.map((r) => ({ drillId: r.drillId, record: r })), verify },
    {
      name: 'r2',
      url: 'r2://0123456789abcdef0123456789abcdef/tcab',
      error: 'Target "r2": list snapshots/tcab/ failed: connect ECONNREFUSED',
      snapshots: [],
      drills: [],
    },
  ];
  return buildStatusDocument({
    database: DATABASE,
    now: new Date(now),
    thresholds,
    targets: facts,
    postgres: {
      recordsTarget: 'blob',
      servers: [
        {
          server: 'tcab-pg',
          serverId: '/subscriptions/x/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/tcab-pg',
          check: { checkedAt: new Date(now - 40 * 60_000).toISOString(), ok: true, violations: [] },
          drill: null,
          lastFinishedDrill: null,
          lastSucceededDrill: null,
        },
      ],
    },
  });
}

beforeAll(async () => {
  browser = await findChromium();
  out = await mkdtemp(join(tmpdir(), 'tcab-page-'));
  fx = await startFixture({ runs: 120, azurite: true });
  for (let i = 0; i < 3; i++) {
    await fx.snapshot();
    fx.publishRuns(7);
    await runDrill({ targets: fx.targets, database: DATABASE, live: fx.client, workDir: out });
  }
  await runVerifyRotation({ targets: fx.targets, database: DATABASE }, { withinMs: 7 * DAY, intervalMs: DAY, all: true });
  realDoc = await runMonitor({ targets: fx.targets, database: DATABASE, thresholds }, { write: false, throwOnCritical: false });
});

afterAll(async () => {
  await fx?.stop();
  if (out) await rm(out, { recursive: true, force: true });
});

async function render(doc: StatusDocument, name: string): Promise<{ html: string; url: string; png: string }> {
  const html = renderStatusPage(doc);
  const file = join(out, `${name}.html`);
  await writeFile(file, html);
  return { html, url: pathToFileURL(file).href, png: join(out, `${name}.png`) };
}

function colourCount(png: Buffer, rgb: [number, number, number]): { matches: number; distinct: number } {
  const img = decodePng(png);
  const seen = new Set<number>();
  let matches = 0;
  for (let y = 0; y < img.height; y += 2) {
    for (let x = 0; x < img.width; x += 2) {
      const [r, g, b] = img.rgb(x, y);
      seen.add((r << 16) | (g << 8) | b);
      if (Math.abs(r - rgb[0]) + Math.abs(g - rgb[1]) + Math.abs(b - rgb[2]) <= 6) matches++;
    }
  }
  return { matches, distinct: seen.size };
}

describe('status page in headless Chromium', () => {
  it('is self-contained: no scripts, no external assets', async () => {
    const { html } = await render(realDoc, 'self-contained');
    expect(html).not.toMatch(/<script/i);
    expect(html).not.toMatch(/\b(src|href)\s*=\s*["']?(https?:)?\/\//i);
    expect(html).not.toMatch(/@import|url\((?!#)/i);
    expect(html).not.toContain(fx.key);
  });

  it('renders a section per target with its state, the recovery point, the snapshot timeline and the recovery-time trend', async () => {
    const page = await render(realDoc, 'real');
    const dom = await dumpDom(browser, page.url);
    expect(realDoc.state).toBe('ok');
    for (const name of ['local', 'blob']) {
      const section = new RegExp(
        `<section[^>]*id="target-${name}"[^>]*data-target="${name}"[^>]*data-state="ok"[^>]*>([\\s\\S]*?)</section>`,
      ).exec(dom);
      expect(section, `section of target ${name}`).not.toBeNull();
      const body = section![1]!;
      expect(body).toContain(`Target <code>${name}</code>`);
      expect(body).toContain('✓ OK');
      expect(body.match(/<svg class="chart" role="img"/g)).toHaveLength(3);
      expect(body).toContain(`<title id="t${name === 'local' ? 0 : 1}-timeline-t">Snapshot timeline of target ${name}</title>`);
      expect(body).toMatch(/Recovery point now on target/);
      expect(body).toMatch(/Recovery time of recent restore drills on target/);
      // Three snapshots in the timeline and three drills in the trend, each with a readable title.
      expect(body.match(/<rect [^>]*><title>Snapshot \d{8}T\d{6}Z-[0-9a-f]{8}, /g)).toHaveLength(3);
      expect(body.match(/<rect [^>]*><title>Drill \S+ finished [^<]*: restored in /g)).toHaveLength(3);
    }
    expect(dom).toContain('Nothing needs attention');
    await screenshot(browser, page.url, page.png);
    const png = await readFile(page.png);
    expect((await stat(page.png)).size).toBeGreaterThan(20_000);
    const img = decodePng(png);
    expect([img.width, img.height]).toEqual([1280, 1600]);
    const ok = colourCount(png, [0x1a, 0x7f, 0x37]);
    expect(ok.matches).toBeGreaterThan(50);
    expect(ok.distinct).toBeGreaterThan(50);
  });

  it('shows trouble in words and symbols as well as colour: failing drills and copies, an unreachable target, Postgres', async () => {
    const doc = longHistory(Date.UTC(2026, 10, 25, 9, 30));
    expect(doc.state).toBe('critical');
    const page = await render(doc, 'long-history');
    const dom = await dumpDom(browser, page.url);
    expect(dom).toMatch(/<span id="overall"><span class="badge badge-critical" data-state="critical">✕ Critical<\/span>/);
    expect(dom).toMatch(/<section[^>]*id="target-blob"[^>]*data-state="critical"/);
    expect(dom).toMatch(
      /<section[^>]*id="target-r2"[^>]*data-state="critical"[^>]*>[\s\S]*?✕ Unreachable:<\/strong> Target "r2": list snapshots\/tcab\/ failed/,
    );
    expect(dom).toContain('✕ Last drill failed');
    expect(dom).toContain('✕ Snapshots that failed verification');
    expect(dom).toMatch(
      /<section[^>]*id="postgres"[^>]*data-state="warn"[\s\S]*?<tr data-server="tcab-pg"><td><code>tcab-pg<\/code><\/td><td><span class="badge badge-warn" data-state="warn">! Warning<\/span>/,
    );
    expect(dom).toMatch(
      /<li data-state="critical"><span class="badge badge-critical" data-state="critical">✕ Critical<\/span> target "blob": the last restore drill \S+ failed/,
    );
    expect(dom).toMatch(/\d+ older snapshot\(s\) not shown/);
    expect(dom.match(/✕ failed<\/text>/g)).toHaveLength(2);
    await screenshot(browser, page.url, page.png, '1280,2400');
    const png = await readFile(page.png);
    const critical = colourCount(png, [0xcf, 0x22, 0x2e]);
    expect(critical.matches).toBeGreaterThan(100);
    expect(critical.distinct).toBeGreaterThan(50);
    if (process.env.TCAB_KEEP_SCREENSHOTS) await writeFile(join(process.env.TCAB_KEEP_SCREENSHOTS, 'status-long-history.png'), png);
    if (process.env.TCAB_KEEP_SCREENSHOTS)
      await writeFile(join(process.env.TCAB_KEEP_SCREENSHOTS, 'status-real.png'), await readFile(join(out, 'real.png')));
  });
});

describe('status page of a target holding format-2 snapshots', () => {
  const now = Date.parse('2026-12-03T12:00:00Z');
  const facts = (extra: Partial<TargetFacts>): TargetFacts => ({
    name: 'local',
    url: 'file:///backups',
    snapshots: [
      { id: idAt(now - 5 * 60_000, 2), time: new Date(now - 5 * 60_000), artifactBytes: undefined, chunkListBytes: 90_000 },
      { id: idAt(now - 10 * 60_000, 1), time: new Date(now - 10 * 60_000), artifactBytes: undefined, chunkListBytes: 89_000 },
      { id: idAt(now - HOUR, 0), time: new Date(now - HOUR), artifactBytes: 27_000_000 },
    ],
    drills: [],
    ...extra,
  });
  const doc = (f: TargetFacts) => buildStatusDocument({ database: DATABASE, now: new Date(now), thresholds, targets: [f] });

  it('counts the artifacts, the chunk lists and every chunk once, and draws a format-2 snapshot by its chunk list', () => {
    const d = doc(facts({ chunks: { count: 1300, bytes: 27_500_000 } }));
    expect(d.targets[0]!.snapshots.storedBytes).toBe(27_000_000 + 90_000 + 89_000 + 27_500_000);
    expect(d.targets[0]!.snapshots.chunks).toEqual({ count: 1300, bytes: 27_500_000 });
    const html = renderStatusPage(d);
    expect(html).toContain('in 1300 chunk(s), each counted once however many snapshots share it');
    expect(html).not.toContain('artifact missing');
    expect(html.match(/format 2: its chunk list [^,<]+, its chunks shared with other snapshots/g)).toHaveLength(2);
  });

  it('says the chunks were not counted when their listing failed, and a snapshot with no data object is missing', () => {
    const f = facts({ chunksError: 'list chunks/tcab/ failed: 503' });
    f.snapshots.push({ id: idAt(now - 2 * HOUR, 3), time: new Date(now - 2 * HOUR), artifactBytes: undefined });
    const d = doc(f);
    expect(d.targets[0]!.snapshots.storedBytes).toBe(27_000_000 + 90_000 + 89_000);
    const html = renderStatusPage(d);
    expect(html).toContain('(format-2 chunks not counted: list chunks/tcab/ failed: 503)');
    expect(html.match(/artifact missing/g)).toHaveLength(1);
  });
});
