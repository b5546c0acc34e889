/**
 * The status page: the status document as one self-contained HTML page (inline CSS and SVG, no scripts, no
 * external assets), so it works from GET /api/status, from a file, and in a locked-down browser. Per target
 * it shows the state, the recovery point now, the snapshot timeline with sizes, and the recovery-time trend
 * of recent drills. Every state is spelled out in words and marked with a symbol, never by colour alone.
 */
import { formatBytes } from '../util/format.js';
import type { DrillSummary, MonitorThresholds, PostgresStatus, State, StatusDocument, TargetStatus } from './document.js';
import { provenText } from '../catalog/drill-record.js';
import { formatDuration } from '../util/duration.js';
import { COLOURS, patternDefs, recoveryPointGaugeSvg, recoveryTimeSvg, snapshotTimelineSvg } from './charts.js';
import { esc, shortMs, utcMinute } from './svg.js';

const LABEL: Record<State, string> = { ok: '✓ OK', warn: '! Warning', critical: '✕ Critical' };

function badge(state: State): string {
  return `<span class="badge badge-${state}" data-state="${state}">${LABEL[state]}</span>`;
}

function ago(ms: number | null): string {
  return ms === null ? 'never' : `${formatDuration(ms)} ago`;
}

const STYLE = `
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:${COLOURS.text};background:#f6f8fa}
main{max-width:1240px;margin:0 auto;padding:20px}
header.page{display:flex;flex-wrap:wrap;align-items:center;gap:12px 20px;margin-bottom:16px}
h1{font-size:24px;margin:0}
h2{font-size:20px;margin:0}
h3{font-size:15px;margin:0 0 6px}
.muted{color:#57606a}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff;white-space:nowrap}
.badge-ok{background:${COLOURS.ok}}.badge-warn{background:${COLOURS.warn}}.badge-critical{background:${COLOURS.critical}}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px;margin-bottom:16px}
.card[data-state=warn]{border-left:6px solid ${COLOURS.warn}}.card[data-state=critical]{border-left:6px solid ${COLOURS.critical}}.card[data-state=ok]{border-left:6px solid ${COLOURS.ok}}
.target-head{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 14px;margin-bottom:12px}
.facts{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-bottom:12px}
.fact{border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;background:#fff}
.fact .value{font-size:20px;font-weight:600}
.fact .label{font-size:13px;color:#57606a}
.fact .state{font-size:13px;font-weight:600}
.state-ok{color:${COLOURS.ok}}.state-warn{color:${COLOURS.warn}}.state-critical{color:${COLOURS.critical}}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:12px}
figure{margin:0 0 12px}
figcaption{font-size:13px;color:#57606a;margin-top:2px}
svg.chart{max-width:100%;height:auto;display:block;background:#fff}
svg .tick{font-size:12px;fill:#57606a}
svg .axis-label{font-size:12px;fill:#57606a}
svg .value{font-size:12px;font-weight:600;fill:${COLOURS.text}}
svg .value.critical,svg .empty{fill:${COLOURS.critical}}
svg .empty{font-size:14px}
ul.problems{margin:0;padding-left:0;list-style:none}
ul.problems li{margin:6px 0;padding-left:2px}
ul.problems .hint{display:block;color:#57606a;font-size:13px;margin-left:4px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #d0d7de;vertical-align:top}
th{font-weight:600;background:#f6f8fa}
code{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
h1 code,h2 code{font-size:0.95em}
@media (max-width:900px){.facts{grid-template-columns:1fr 1fr}.charts{grid-template-columns:1fr}}
`;

function fact(label: string, value: string, state: State | null, detail: string): string {
  return (
    `<div class="fact"><div class="label">${esc(label)}</div><div class="value">${esc(value)}</div>` +
    (state ? `<div class="state state-${state}">${LABEL[state]}</div>` : '') +
    `<div class="label">${esc(detail)}</div></div>`
  );
}

function drillText(d: DrillSummary | null): string {
  if (!d) return 'none yet';
  if (!d.ok) return d.app && !d.app.passed ? `failed: backend at step ${d.app.failedStep ?? 'unknown'}` : 'failed';
  const file =
    d.checks?.method === 'stream'
      ? `verified streaming in ${shortMs(d.recoveryTimeMs ?? 0)}`
      : `restored in ${shortMs(d.recoveryTimeMs ?? 0)}`;
  return d.app ? `${file}, backend served ${d.app.runsServed ?? 0} runs` : file;
}

function targetSection(t: TargetStatus, thresholds: MonitorThresholds, now: number, index: number): string {
  const slug = `t${index}`;
  const head = `<div class="target-head"><h2>Target <code>${esc(t.name)}</code></h2>${badge(t.state)}<span class="muted">${esc(t.url)}</span></div>`;
  if (!t.reachable) {
    return (
      `<section class="card target" id="target-${esc(t.name)}" data-target="${esc(t.name)}" data-state="${t.state}" aria-labelledby="${slug}-h">` +
      head.replace('<h2>', `<h2 id="${slug}-h">`) +
      `<p class="state-critical"><strong>✕ Unreachable:</strong> ${esc(t.error ?? '')}</p></section>`
    );
  }
  const newest = t.snapshots.newest;
  const lastDrill = t.drill.recent[0] ?? null;
  const facts = [
    fact(
      'Recovery point now',
      t.recoveryPointNowMs === null ? 'no snapshot' : formatDuration(t.recoveryPointNowMs),
      t.snapshots.state,
      newest ? `newest snapshot ${newest.id}, ${utcMinute(newest.createdAt)}` : 'nothing to restore',
    ),
    fact(
      'Snapshots',
      String(t.snapshots.count),
      null,
      `${storedText(t)}${newest?.artifactBytes != null ? `; newest ${formatBytes(newest.artifactBytes)}${newest.bytes != null ? ` (${formatBytes(newest.bytes)} restored)` : ''}` : ''}`,
    ),
    fact(
      'Last restore drill',
      drillText(lastDrill),
      t.drill.state,
      t.drill.lastSucceeded
        ? `last success ${ago(t.drill.ageMs)}${t.drill.lastSucceeded.runsSince !== null ? `; ${t.drill.lastSucceeded.runsSince} run(s) published after its snapshot` : ''}; proved: ${provenText(t.drill.lastSucceeded.checks)}${t.drill.lastSucceeded.app ? `; ${t.drill.lastSucceeded.app.text}` : ''}`
        : 'no successful drill yet',
    ),
    fact(
      'Verification',
      verificationText(t),
      t.verify.state,
      `last clean run ${ago(t.verify.ageMs)}; ${t.verify.reread} of ${t.snapshots.count} re-read`,
    ),
  ].join('');
  const timeline = snapshotTimelineSvg(`${slug}-timeline`, t, now);
  const hidden = t.snapshots.count - timeline.shown;
  const failing = t.verify.failing.length
    ? `<h3 class="state-critical">✕ Snapshots that failed verification</h3><table><thead><tr><th>snapshot</th><th>checked</th><th>failing since</th><th>what was found</th></tr></thead><tbody>` +
      t.verify.failing
        .map(
          (f) =>
            `<tr><td><code>${esc(f.id)}</code></td><td>${esc(utcMinute(f.checkedAt))}</td><td>${f.failingSince ? esc(utcMinute(f.failingSince)) : ''}</td><td>${esc(f.error)}</td></tr>`,
        )
        .join('') +
      '</tbody></table>'
    : '';
  const unreadable = t.verify.unreadable?.length
    ? `<h3 class="state-warn">! Snapshots that verify could not read (not proven damaged)</h3><table><thead><tr><th>snapshot</th><th>checked</th><th>unreadable since</th><th>what happened</th></tr></thead><tbody>` +
      t.verify.unreadable
        .map(
          (f) =>
            `<tr><td><code>${esc(f.id)}</code></td><td>${esc(utcMinute(f.checkedAt))}</td><td>${f.failingSince ? esc(utcMinute(f.failingSince)) : ''}</td><td>${esc(f.error)}</td></tr>`,
        )
        .join('') +
      '</tbody></table>'
    : '';
  const lastFailed =
    t.drill.lastFailed && (!t.drill.lastSucceeded || t.drill.lastFailed.finishedAt > t.drill.lastSucceeded.finishedAt)
      ? `<p class="state-critical"><strong>✕ Last drill failed</strong> (${esc(utcMinute(t.drill.lastFailed.finishedAt))}): ${esc(t.drill.lastFailed.error ?? '')}</p>`
      : '';
  return (
    `<section class="card target" id="target-${esc(t.name)}" data-target="${esc(t.name)}" data-state="${t.state}" aria-labelledby="${slug}-h">` +
    head.replace('<h2>', `<h2 id="${slug}-h">`) +
    `<div class="facts">${facts}</div>` +
    lastFailed +
    `<figure class="timeline">${timeline.svg}<figcaption>Snapshot timeline: one bar per snapshot, as tall as its stored (compressed) size; the darkest bar is the newest. ` +
    `${timeline.shown} shown from the last ${formatDuration(timeline.spanMs)}` +
    `${hidden > 0 ? `; ${hidden} older snapshot(s) not shown (oldest ${esc(t.snapshots.oldest!.id)})` : ''}.</figcaption></figure>` +
    `<div class="charts"><figure>${recoveryPointGaugeSvg(`${slug}-rp`, t.name, t.recoveryPointNowMs, thresholds.snapshot)}` +
    `<figcaption>Recovery point now: the newest snapshot's age, i.e. at least how much a restore from this target would lose.</figcaption></figure>` +
    `<figure>${recoveryTimeSvg(`${slug}-rt`, t.name, t.drill.recent)}<figcaption>Recovery time trend: download to verified file (or verified bytes, for a drill that streamed), plus the backend's start to serving the runs where the application drill ran, per drill. Hatched bars failed; dotted bars and "!" had warnings.</figcaption></figure></div>` +
    failing +
    unreadable +
    '</section>'
  );
}

function verificationText(t: TargetStatus): string {
  // Documents written before unreadable copies were told apart have no such list.
  const unreadable = t.verify.unreadable?.length ?? 0;
  const parts = [
    ...(t.verify.failing.length ? [`${t.verify.failing.length} damaged`] : []),
    ...(unreadable ? [`${unreadable} unreadable`] : []),
  ];
  return parts.length ? parts.join(', ') : t.verify.lastCleanRunAt ? 'intact' : 'not run yet';
}

function postgresSection(p: PostgresStatus): string {
  const rows = p.servers
    .map(
      (s) =>
        `<tr data-server="${esc(s.server)}"><td><code>${esc(s.server)}</code></td><td>${badge(s.state)}</td>` +
        `<td>${s.check ? `${esc(utcMinute(s.check.checkedAt))} (${ago(s.checkAgeMs)}): ${s.check.ok ? 'policy met' : `<span class="state-critical">✕ ${esc(s.check.violations.join('; '))}</span>`}` : 'none yet'}</td>` +
        `<td>${s.lastSucceededDrill ? `${esc(utcMinute(s.lastSucceededDrill.finishedAt))} (${ago(s.drillAgeMs)})${s.lastSucceededDrill.recoveryTimeMs !== undefined ? `, restored in ${formatDuration(s.lastSucceededDrill.recoveryTimeMs)}` : ''}` : 'none yet'}</td>` +
        `<td>${s.drill ? `${esc(s.drill.state)}${s.drill.failure ? `: ${esc(s.drill.failure)}` : ''}` : 'none'}</td></tr>`,
    )
    .join('');
  return (
    `<section class="card postgres" id="postgres" data-state="${p.state}" aria-labelledby="pg-h"><div class="target-head"><h2 id="pg-h">PostgreSQL servers</h2>${badge(p.state)}` +
    `<span class="muted">records on target ${esc(p.recordsTarget ?? 'unknown')}</span></div>` +
    (p.error ? `<p class="state-critical"><strong>✕ Cannot be read:</strong> ${esc(p.error)}</p>` : '') +
    (p.servers.length
      ? `<table><thead><tr><th>server</th><th>state</th><th>backup-policy check</th><th>last successful PITR drill</th><th>current drill</th></tr></thead><tbody>${rows}</tbody></table>`
      : '') +
    '</section>'
  );
}

/** What the target stores for the snapshots, and, with format-2 chunks, how that was counted. */
export function storedText(t: TargetStatus): string {
  const { storedBytes, chunks, chunksError } = t.snapshots;
  if (chunks && chunks.count > 0) {
    return `${formatBytes(storedBytes)} stored (${formatBytes(chunks.bytes)} of it in ${chunks.count} chunk(s), each counted once however many snapshots share it)`;
  }
  if (chunksError) return `${formatBytes(storedBytes)} stored in artifacts and chunk lists (format-2 chunks not counted: ${chunksError})`;
  return `${formatBytes(storedBytes)} stored`;
}

export function renderStatusPage(doc: StatusDocument): string {
  const now = Date.parse(doc.generatedAt);
  const thresholds = Object.fromEntries(
    Object.entries(doc.thresholds).map(([k, v]) => [k, { warnMs: v.warnMs, criticalMs: v.criticalMs }]),
  ) as unknown as MonitorThresholds;
  const problems = doc.problems.length
    ? `<section class="card" id="problems" aria-labelledby="problems-h"><h2 id="problems-h">What needs attention (${doc.problems.length})</h2><ul class="problems">` +
      doc.problems
        .map((p) => `<li data-state="${p.state}">${badge(p.state)} ${esc(p.message)}<span class="hint">Check: ${esc(p.hint)}</span></li>`)
        .join('') +
      '</ul></section>'
    : `<section class="card" id="problems" data-state="ok"><p class="state-ok"><strong>✓ Nothing needs attention.</strong> Every target has a fresh snapshot, a recent successful restore drill and a recent clean verification.</p></section>`;
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(LABEL[doc.state])}: tcab-backup status of ${esc(doc.database)}</title>
<style>${STYLE}</style></head>
<body>${patternDefs()}<main>
<header class="page"><h1>Backups of <code>${esc(doc.database)}</code></h1><span id="overall">${badge(doc.state)}</span>
<span class="muted">as of ${esc(utcMinute(doc.generatedAt))}; thresholds: snapshot ${esc(doc.thresholds.snapshot.warn)}/${esc(doc.thresholds.snapshot.critical)}, drill ${esc(doc.thresholds.drill.warn)}/${esc(doc.thresholds.drill.critical)}, verify ${esc(doc.thresholds.verify.warn)}/${esc(doc.thresholds.verify.critical)} (warn/critical)</span></header>
${problems}
${doc.targets.map((t, i) => targetSection(t, thresholds, now, i)).join('\n')}
${doc.postgres ? postgresSection(doc.postgres) : ''}
</main></body></html>
`;
}
