/**
 * The status page's charts, as inline SVG (no scripts, no external assets). Each chart carries a title and
 * a description for screen readers, and states are marked with words and patterns as well as colour.
 */
import { formatBytes } from '../util/format.js';
import type { AgeThreshold, DrillSummary, TargetStatus } from './document.js';
import { formatDuration } from '../util/duration.js';
import { esc, niceBytesStep, niceStep, px, shortMs, utcDay, utcMinute } from './svg.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** The timeline shows at most this far back; older snapshots are counted in the caption. */
export const TIMELINE_SPAN_MS = 14 * DAY;

export const COLOURS = {
  ok: '#1a7f37',
  warn: '#9a6700',
  critical: '#cf222e',
  okBg: '#dafbe1',
  warnBg: '#fff8c5',
  criticalBg: '#ffebe9',
  bar: '#0969da',
  barNewest: '#0a3069',
  axis: '#57606a',
  grid: '#d0d7de',
  text: '#1f2328',
};

/** Patterns shared by every chart on the page; defined once in a hidden SVG. */
export function patternDefs(): string {
  return `<svg width="0" height="0" aria-hidden="true" focusable="false" style="position:absolute"><defs>
<pattern id="hatch-critical" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="${COLOURS.criticalBg}"/><line x1="0" y1="0" x2="0" y2="6" stroke="${COLOURS.critical}" stroke-width="2.5"/></pattern>
<pattern id="dots-warn" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="${COLOURS.warnBg}"/><circle cx="3" cy="3" r="1.1" fill="${COLOURS.warn}"/></pattern>
</defs></svg>`;
}

function svgOpen(id: string, width: number, height: number, title: string, desc: string): string {
  return (
    `<svg class="chart" role="img" aria-labelledby="${id}-t ${id}-d" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" xmlns="http://www.w3.org/2000/svg">` +
    `<title id="${id}-t">${esc(title)}</title><desc id="${id}-d">${esc(desc)}</desc>`
  );
}

/** Snapshot times along the last days, each a bar as tall as its stored size. */
export function snapshotTimelineSvg(id: string, target: TargetStatus, now: number): { svg: string; shown: number; spanMs: number } {
  const W = 1180;
  const H = 190;
  const m = { l: 92, r: 40, t: 16, b: 40 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const points = target.snapshots.timeline.map((s) => ({ ...s, ms: Date.parse(s.time) }));
  const oldest = points.length ? Math.min(...points.map((p) => p.ms)) : now;
  const span = Math.min(TIMELINE_SPAN_MS, Math.max(6 * HOUR, (now - oldest) * 1.02));
  const start = now - span;
  const shown = points.filter((p) => p.ms >= start);
  const barBytes = (p: (typeof shown)[number]) => p.artifactBytes ?? p.chunkListBytes ?? 0;
  const maxBytes = Math.max(1, ...shown.map(barBytes));
  const step = niceBytesStep(maxBytes, 3);
  const yMax = Math.ceil(maxBytes / step) * step;
  const x = (ms: number) => m.l + ((ms - start) / span) * pw;
  const y = (bytes: number) => m.t + ph - (bytes / yMax) * ph;
  const desc = shown.length
    ? `${shown.length} snapshot(s) from ${utcMinute(shown[shown.length - 1]!.ms)} to ${utcMinute(shown[0]!.ms)}; stored sizes from ${formatBytes(Math.min(...shown.map(barBytes)))} to ${formatBytes(maxBytes)}.`
    : 'No snapshot in this period.';
  const parts = [svgOpen(id, W, H, `Snapshot timeline of target ${target.name}`, desc)];
  for (let v = 0; v <= yMax + step / 2; v += step) {
    parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${px(y(v))}" y2="${px(y(v))}" stroke="${COLOURS.grid}"/>`);
    parts.push(`<text x="${m.l - 8}" y="${px(y(v) + 4)}" text-anchor="end" class="tick">${esc(formatBytes(v))}</text>`);
  }
  // Day boundaries for long spans, every few hours for short ones.
  const tickEvery = span > 3 * DAY ? DAY * Math.ceil(span / DAY / 8) : span > DAY ? 6 * HOUR : span > 12 * HOUR ? 3 * HOUR : HOUR;
  for (let t = Math.ceil(start / tickEvery) * tickEvery; t <= now; t += tickEvery) {
    parts.push(`<line x1="${px(x(t))}" x2="${px(x(t))}" y1="${m.t}" y2="${m.t + ph + 5}" stroke="${COLOURS.grid}"/>`);
    const label = tickEvery >= DAY ? utcDay(t) : new Date(t).toISOString().slice(11, 16);
    parts.push(`<text x="${px(x(t))}" y="${H - m.b + 20}" text-anchor="middle" class="tick">${label}</text>`);
  }
  const barW = Math.max(2, Math.min(12, (pw / Math.max(shown.length, 1)) * 0.6));
  shown.forEach((p, i) => {
    const cx = x(p.ms);
    const chunked = p.artifactBytes === null && p.chunkListBytes !== undefined;
    const size =
      p.artifactBytes !== null
        ? formatBytes(p.artifactBytes)
        : chunked
          ? `format 2: its chunk list ${formatBytes(p.chunkListBytes!)}, its chunks shared with other snapshots`
          : 'artifact missing';
    const label = `Snapshot ${p.id}, ${utcMinute(p.ms)}, ${size}`;
    if (chunked) {
      const top = y(p.chunkListBytes!);
      parts.push(
        `<rect x="${px(cx - barW / 2)}" y="${px(Math.min(top, m.t + ph - 3))}" width="${px(barW)}" height="${px(Math.max(3, m.t + ph - top))}" fill="${i === 0 ? COLOURS.barNewest : COLOURS.bar}"><title>${esc(label)}</title></rect>`,
      );
    } else if (p.artifactBytes === null) {
      parts.push(
        `<rect x="${px(cx - barW / 2)}" y="${m.t}" width="${px(barW)}" height="${ph}" fill="url(#hatch-critical)" stroke="${COLOURS.critical}"><title>${esc(label)}</title></rect>`,
      );
    } else {
      const top = y(p.artifactBytes);
      parts.push(
        `<rect x="${px(cx - barW / 2)}" y="${px(top)}" width="${px(barW)}" height="${px(Math.max(1, m.t + ph - top))}" fill="${i === 0 ? COLOURS.barNewest : COLOURS.bar}"><title>${esc(label)}</title></rect>`,
      );
    }
  });
  parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${m.t + ph}" y2="${m.t + ph}" stroke="${COLOURS.axis}"/>`);
  parts.push(`<line x1="${W - m.r}" x2="${W - m.r}" y1="${m.t}" y2="${m.t + ph}" stroke="${COLOURS.text}" stroke-dasharray="4 3"/>`);
  parts.push(`<text x="${W - m.r}" y="${m.t - 4}" text-anchor="middle" class="tick">now</text>`);
  parts.push(`<text x="${m.l}" y="${H - 4}" class="axis-label">time (UTC) →</text>`);
  parts.push(
    `<text x="12" y="${m.t + ph / 2}" class="axis-label" transform="rotate(-90 12 ${m.t + ph / 2})" text-anchor="middle">stored size</text>`,
  );
  if (!shown.length)
    parts.push(`<text x="${m.l + pw / 2}" y="${m.t + ph / 2}" text-anchor="middle" class="empty">no snapshot in this period</text>`);
  parts.push('</svg>');
  return { svg: parts.join(''), shown: shown.length, spanMs: span };
}

/** Recovery time of the recent drills, oldest on the left; failed drills are hatched and labelled. */
export function recoveryTimeSvg(id: string, targetName: string, recentNewestFirst: DrillSummary[]): string {
  const W = 580;
  const H = 210;
  const m = { l: 64, r: 12, t: 22, b: 40 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const drills = [...recentNewestFirst].reverse();
  const times = drills.filter((d) => d.ok && d.recoveryTimeMs !== null).map((d) => d.recoveryTimeMs!);
  const desc = drills.length
    ? `${drills.length} drill(s); ${drills.filter((d) => !d.ok).length} failed; recovery times ${times.length ? `from ${shortMs(Math.min(...times))} to ${shortMs(Math.max(...times))}, the newest ${drills[drills.length - 1]!.ok ? shortMs(drills[drills.length - 1]!.recoveryTimeMs ?? 0) : 'failed'}` : 'none measured'}.`
    : 'No drill recorded yet.';
  const parts = [svgOpen(id, W, H, `Recovery time of recent restore drills on target ${targetName}`, desc)];
  const maxMs = Math.max(1, ...times);
  const step = niceStep(maxMs, 3);
  const yMax = Math.ceil(maxMs / step) * step;
  const y = (ms: number) => m.t + ph - (ms / yMax) * ph;
  for (let v = 0; v <= yMax + step / 2; v += step) {
    parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${px(y(v))}" y2="${px(y(v))}" stroke="${COLOURS.grid}"/>`);
    parts.push(`<text x="${m.l - 8}" y="${px(y(v) + 4)}" text-anchor="end" class="tick">${esc(shortMs(v))}</text>`);
  }
  const slot = pw / Math.max(drills.length, 1);
  const barW = Math.min(36, slot * 0.6);
  // Daily drills are told apart by day; drills within a day or two (manual runs) by time of day.
  const spread = drills.length > 1 ? Date.parse(drills[drills.length - 1]!.finishedAt) - Date.parse(drills[0]!.finishedAt) : DAY;
  drills.forEach((d, i) => {
    const cx = m.l + slot * (i + 0.5);
    const day = spread >= 2 * DAY ? utcDay(Date.parse(d.finishedAt)) : d.finishedAt.slice(11, 16);
    const title = `Drill ${d.drillId} finished ${utcMinute(d.finishedAt)}: ${d.ok ? `${d.checks?.method === 'stream' ? 'verified streaming' : 'restored'} in ${shortMs(d.recoveryTimeMs ?? 0)}` : `failed: ${d.error ?? ''}`}`;
    if (!d.ok) {
      parts.push(
        `<rect x="${px(cx - barW / 2)}" y="${m.t}" width="${px(barW)}" height="${ph}" fill="url(#hatch-critical)" stroke="${COLOURS.critical}"><title>${esc(title)}</title></rect>`,
      );
      parts.push(`<text x="${px(cx)}" y="${m.t - 6}" text-anchor="middle" class="value critical">✕ failed</text>`);
    } else {
      const top = y(d.recoveryTimeMs ?? 0);
      const warned = d.warnings.length > 0;
      parts.push(
        `<rect x="${px(cx - barW / 2)}" y="${px(top)}" width="${px(barW)}" height="${px(Math.max(1, m.t + ph - top))}" fill="${warned ? 'url(#dots-warn)' : COLOURS.ok}" stroke="${warned ? COLOURS.warn : COLOURS.ok}"><title>${esc(title + (warned ? `; warnings: ${d.warnings.join('; ')}` : ''))}</title></rect>`,
      );
      parts.push(
        `<text x="${px(cx)}" y="${px(top - 6)}" text-anchor="middle" class="value">${esc(shortMs(d.recoveryTimeMs ?? 0))}${warned ? ' !' : ''}</text>`,
      );
    }
    if (drills.length <= 16 || i % 2 === drills.length % 2)
      parts.push(`<text x="${px(cx)}" y="${H - m.b + 18}" text-anchor="middle" class="tick">${day}</text>`);
  });
  parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${m.t + ph}" y2="${m.t + ph}" stroke="${COLOURS.axis}"/>`);
  parts.push(`<text x="${m.l}" y="${H - 4}" class="axis-label">drills, oldest to newest (bar: download to verified file)</text>`);
  if (!drills.length)
    parts.push(`<text x="${m.l + pw / 2}" y="${m.t + ph / 2}" text-anchor="middle" class="empty">no drill recorded yet</text>`);
  parts.push('</svg>');
  return parts.join('');
}

/** The newest snapshot's age against the warn and critical thresholds: how much a restore now would lose. */
export function recoveryPointGaugeSvg(id: string, targetName: string, ageMs: number | null, t: AgeThreshold): string {
  const W = 580;
  const H = 92;
  const m = { l: 12, r: 12, t: 30, b: 26 };
  const pw = W - m.l - m.r;
  const scale = Math.max(t.criticalMs * 1.5, (ageMs ?? 0) * 1.1);
  const x = (ms: number) => m.l + (Math.min(ms, scale) / scale) * pw;
  const desc =
    ageMs === null
      ? 'No snapshot: there is nothing to restore.'
      : `The newest snapshot is ${formatDuration(ageMs)} old; warning after ${formatDuration(t.warnMs)}, critical after ${formatDuration(t.criticalMs)}.`;
  const parts = [svgOpen(id, W, H, `Recovery point now on target ${targetName}`, desc)];
  const zones: Array<[number, number, string, string, string]> = [
    [0, t.warnMs, COLOURS.okBg, COLOURS.ok, 'ok'],
    [t.warnMs, t.criticalMs, 'url(#dots-warn)', COLOURS.warn, 'warn'],
    [t.criticalMs, scale, 'url(#hatch-critical)', COLOURS.critical, 'critical'],
  ];
  for (const [from, to, fill, ink, label] of zones) {
    parts.push(
      `<rect x="${px(x(from))}" y="${m.t}" width="${px(x(to) - x(from))}" height="${H - m.t - m.b}" fill="${fill}" stroke="${ink}" stroke-width="0.5"/>`,
    );
    parts.push(
      `<text x="${px((x(from) + x(to)) / 2)}" y="${H - 8}" text-anchor="middle" class="tick" fill="${ink}">${label}${from > 0 ? ` (from ${formatDuration(from)})` : ''}</text>`,
    );
  }
  if (ageMs !== null) {
    const ax = x(ageMs);
    parts.push(`<line x1="${px(ax)}" x2="${px(ax)}" y1="${m.t - 4}" y2="${H - m.b + 2}" stroke="${COLOURS.text}" stroke-width="3"/>`);
    parts.push(`<path d="M${px(ax - 6)} ${m.t - 14} L${px(ax + 6)} ${m.t - 14} L${px(ax)} ${m.t - 4} Z" fill="${COLOURS.text}"/>`);
    const anchor = ax > W - 120 ? 'end' : ax < 120 ? 'start' : 'middle';
    parts.push(
      `<text x="${px(ax + (anchor === 'start' ? 10 : anchor === 'end' ? -10 : 0))}" y="${m.t - 18}" text-anchor="${anchor}" class="value">${esc(formatDuration(ageMs))} old${ageMs > scale ? ' (off the scale)' : ''}</text>`,
    );
  } else {
    parts.push(`<text x="${W / 2}" y="${m.t - 10}" text-anchor="middle" class="value critical">✕ no snapshot</text>`);
  }
  parts.push('</svg>');
  return parts.join('');
}
