// Charts as hand-written SVG: horizontal bars (a value per name) and columns (a value per day). Each is a
// <figure> whose SVG has role="img", a <title> and a <desc> that says the numbers in words; the page's
// table beside it holds the same data for anyone who does not read charts.

import {h, s} from './dom.js';

let ids = 0;
const WIDTH = 640;
const LABEL_CHARS = 26; // a bar's name, at most (see barChart's labelWidth)

function labelled(title, summary, body, height, testid) {
  ids += 1;
  const titleId = `chart-title-${ids}`;
  const descId = `chart-desc-${ids}`;
  return h('figure', {class: 'chart', 'data-testid': testid},
    h('figcaption', {}, title),
    s('svg', {viewBox: `0 0 ${WIDTH} ${height}`, role: 'img', 'aria-labelledby': `${titleId} ${descId}`,
      class: 'chart-svg', preserveAspectRatio: 'xMinYMin meet'},
    s('title', {id: titleId}, title), s('desc', {id: descId}, summary), body));
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

/** Bars: items [{label, value}], largest first (the first 12, the rest summed as "others"). */
export function barChart({title, items, format, testid}) {
  const sorted = [...items].sort((a, b) => b.value - a.value);
  const shown = sorted.slice(0, 12);
  const rest = sorted.slice(12).reduce((sum, it) => sum + it.value, 0);
  if (rest > 0) shown.push({label: `${sorted.length - 12} others`, value: rest});
  const rowHeight = 24;
  // Room for LABEL_CHARS characters at 12px in a wide font (DejaVu Sans: up to ~8 px a character): a key's
  // "alias (16-hex id)" is longer than that and is cut with an ellipsis, its full name in the desc and table.
  const labelWidth = 230;
  const valueWidth = 90;
  const height = Math.max(1, shown.length) * rowHeight + 8;
  const max = niceMax(Math.max(0, ...shown.map((it) => it.value)));
  const barSpace = WIDTH - labelWidth - valueWidth;
  const rows = shown.map((it, i) => {
    const y = 4 + i * rowHeight;
    const width = Math.max(it.value > 0 ? 1 : 0, (it.value / max) * barSpace);
    const label = it.label.length > LABEL_CHARS ? `${it.label.slice(0, LABEL_CHARS - 1)}…` : it.label;
    return s('g', {class: 'bar-row'},
      s('text', {x: labelWidth - 8, y: y + 16, class: 'chart-label', 'text-anchor': 'end'}, label),
      s('rect', {x: labelWidth, y: y + 3, width: width.toFixed(1), height: rowHeight - 8, class: `bar bar-${i % 6}`}),
      s('text', {x: labelWidth + width + 6, y: y + 16, class: 'chart-value'}, format(it.value)));
  });
  const summary = shown.map((it) => `${it.label}: ${format(it.value)}`).join('; ') || 'no data';
  return labelled(title, summary, rows, height, testid);
}

/**
 * The step between an axis's `intervals` ticks up to `value`: 1, 2, 2.5 or 5 times a power of ten, whole when
 * the values are (counts): 0, 1, 2, 3, 4 requests, never 0, 1.25, 2.5 shown rounded as 0, 1, 3.
 */
function tickStep(value, intervals, whole) {
  const raw = value / intervals;
  if (!(raw > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  const steps = [1, 2, 2.5, 5, 10].map((m) => m * power).filter((m) => !whole || Number.isInteger(m));
  const step = steps.find((m) => m >= raw * (1 - 1e-9));
  return whole ? Math.max(1, step) : step;
}

/** Columns: points [{label, value}] in order (oldest day first). */
export function columnChart({title, points, format, testid}) {
  const height = 220;
  const left = 70;
  const bottom = 28;
  const top = 12;
  const plotHeight = height - top - bottom;
  const intervals = 4;
  const step = tickStep(Math.max(0, ...points.map((p) => p.value)), intervals,
    points.every((p) => Number.isInteger(p.value)));
  const max = step * intervals;
  const slot = (WIDTH - left - 10) / Math.max(1, points.length);
  const ticks = Array.from({length: intervals + 1}, (_, i) => {
    const y = top + plotHeight * (1 - i / intervals);
    return s('g', {class: 'tick'},
      s('line', {x1: left, x2: WIDTH - 10, y1: y.toFixed(1), y2: y.toFixed(1), class: 'grid'}),
      s('text', {x: left - 6, y: (y + 4).toFixed(1), 'text-anchor': 'end', class: 'chart-axis'}, format(step * i)));
  });
  const every = Math.ceil(points.length / 10);
  const columns = points.map((p, i) => {
    const barHeight = (p.value / max) * plotHeight;
    const x = left + i * slot + slot * 0.15;
    return s('g', {class: 'column'},
      s('rect', {x: x.toFixed(1), y: (top + plotHeight - barHeight).toFixed(1), width: (slot * 0.7).toFixed(1),
        height: barHeight.toFixed(1), class: 'bar bar-0'}, s('title', {}, `${p.label}: ${format(p.value)}`)),
      i % every === 0 ? s('text', {x: (x + slot * 0.35).toFixed(1), y: height - 8, 'text-anchor': 'middle',
        class: 'chart-axis'}, p.label.slice(5)) : null);
  });
  const summary = points.map((p) => `${p.label}: ${format(p.value)}`).join('; ') || 'no data';
  return labelled(title, summary, [ticks, columns], height, testid);
}
