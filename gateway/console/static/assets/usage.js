// Usage and spend over 1, 7 or 30 days, per key, route or deployment (GET /admin/usage): charts of requests,
// tokens and cost drawn here as SVG, a table of the same numbers, and a CSV of the API's rows.

import {json} from './api.js';
import {barChart, columnChart} from './charts.js';
import {byId, clear, fmt, h, setState, table} from './dom.js';

let lastRows = [];
let lastQuery = null;
let aliases = {};

function section() {
  return byId('page-usage');
}

function query() {
  return {days: Number(byId('usage-window').value), group: byId('usage-group').value};
}

function groupOf(row, group) {
  if (group === 'deployment') return `${row.route} / ${row.deployment}`;
  if (group === 'route') return row.route;
  if (row.key_id === null) return '(no key)';
  return aliases[row.key_id] ? `${aliases[row.key_id]} (${row.key_id})` : row.key_id;
}

function sums(rows, keyOf) {
  const out = new Map();
  for (const r of rows) {
    const k = keyOf(r);
    const t = out.get(k) || {requests: 0, prompt_tokens: 0, completion_tokens: 0, cost_usd: 0};
    t.requests += r.requests;
    t.prompt_tokens += r.prompt_tokens;
    t.completion_tokens += r.completion_tokens;
    t.cost_usd += r.cost_usd;
    out.set(k, t);
  }
  return out;
}

async function loadAliases() {
  try {
    aliases = Object.fromEntries((await json('admin/keys')).data.map((k) => [k.id, k.alias]));
  } catch (e) {
    aliases = {}; // ids alone, then
  }
}

async function errorsByDeployment() {
  try {
    const body = await json('admin/deployments');
    return Object.entries(body.deployments).map(([name, d]) => ({label: name, value: d.failures || 0}));
  } catch (e) {
    return [];
  }
}

function render(body, q, errors) {
  const rows = body.rows;
  const byGroup = sums(rows, (r) => groupOf(r, q.group));
  const byDay = sums(rows, (r) => r.day);
  const days = [...body.days].reverse();
  const groupLabel = {key: 'key', route: 'route', deployment: 'deployment'}[q.group];
  const totals = body.totals;
  clear(byId('usage-summary')).append(h('p', {'data-testid': 'usage-totals'},
    `${fmt.int(totals.requests)} requests, ${fmt.int(totals.prompt_tokens + totals.completion_tokens)} tokens `
    + `(${fmt.int(totals.prompt_tokens)} prompt, ${fmt.int(totals.completion_tokens)} completion), `
    + `${fmt.usd(totals.cost_usd)} over ${body.days.length} day(s), ${body.days[body.days.length - 1]} to ${body.days[0]} (UTC).`));
  const charts = clear(byId('usage-charts'));
  const tableBox = clear(byId('usage-table'));
  if (!rows.length) {
    charts.append(h('p', {class: 'empty', 'data-testid': 'usage-empty'}, 'No usage yet in this window.'));
    return false;
  }
  const items = (field) => [...byGroup].map(([label, t]) => ({label, value: field(t)}));
  charts.append(
    columnChart({title: 'Requests per day', testid: 'chart-requests-per-day', format: fmt.int,
      points: days.map((d) => ({label: d, value: (byDay.get(d) || {requests: 0}).requests}))}),
    barChart({title: `Requests by ${groupLabel}`, testid: 'chart-requests', format: fmt.int, items: items((t) => t.requests)}),
    barChart({title: `Tokens by ${groupLabel}`, testid: 'chart-tokens', format: fmt.int,
      items: items((t) => t.prompt_tokens + t.completion_tokens)}),
    barChart({title: `Cost (USD) by ${groupLabel}`, testid: 'chart-cost', format: fmt.usd, items: items((t) => t.cost_usd)}),
    errors.length
      ? barChart({title: 'Failed attempts by deployment, since this gateway process started', testid: 'chart-errors',
        format: fmt.int, items: errors})
      : null);
  const name = groupLabel[0].toUpperCase() + groupLabel.slice(1);
  tableBox.append(table({caption: `Usage by ${groupLabel}`, testid: 'usage-by-group', empty: 'No usage yet in this window.',
    columns: [{label: name}, {label: 'Requests', numeric: true}, {label: 'Prompt tokens', numeric: true},
      {label: 'Completion tokens', numeric: true}, {label: 'Cost (USD)', numeric: true}],
    rows: [...byGroup].sort((a, b) => b[1].requests - a[1].requests).map(([label, t]) => ({
      attrs: {'data-group': label},
      cells: [label, fmt.int(t.requests), fmt.int(t.prompt_tokens), fmt.int(t.completion_tokens), fmt.usd(t.cost_usd)],
    }))}));
  return true;
}

async function load() {
  const page = section();
  const q = query();
  setState(page, 'loading');
  try {
    const params = new URLSearchParams({days: String(q.days)});
    if (q.group === 'deployment') params.set('group_by', 'deployment');
    const [body, errors] = await Promise.all([json(`admin/usage?${params}`), errorsByDeployment(),
      q.group === 'key' ? loadAliases() : null]);
    lastRows = body.rows;
    lastQuery = q;
    byId('usage-error').textContent = '';
    setState(page, render(body, q, errors) ? 'ready' : 'empty');
  } catch (e) {
    byId('usage-error').textContent = e.message;
    setState(page, 'error');
  }
}

/** A CSV cell: quoted when it must be, and never read as a formula by a spreadsheet. */
function cell(value) {
  let text = value === null || value === undefined ? '' : String(value);
  if (/^[=+\-@\t\r]/.test(text) && typeof value === 'string') text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function csv(rows, group) {
  const columns = group === 'deployment'
    ? ['day', 'route', 'deployment', 'requests', 'prompt_tokens', 'completion_tokens', 'cost_usd']
    : ['day', 'key_id', 'key_alias', 'route', 'requests', 'prompt_tokens', 'completion_tokens', 'cost_usd'];
  const lines = [columns.join(',')];
  for (const r of rows) {
    const row = {...r, key_alias: r.key_id ? aliases[r.key_id] || '' : ''};
    lines.push(columns.map((c) => cell(row[c])).join(','));
  }
  return `${lines.join('\r\n')}\r\n`;
}

function download() {
  if (!lastQuery) return;
  const blob = new Blob([csv(lastRows, lastQuery.group)], {type: 'text/csv'});
  const url = URL.createObjectURL(blob);
  const link = h('a', {href: url, download: `llm-gateway-usage-by-${lastQuery.group}-${lastQuery.days}d.csv`});
  document.body.append(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function mount() {
  byId('usage-window').addEventListener('change', load);
  byId('usage-group').addEventListener('change', load);
  byId('usage-csv').addEventListener('click', download);
  byId('usage-controls').addEventListener('submit', (e) => e.preventDefault());
}

export function show() {
  load();
}

export function hide() {}

export function reset() {
  lastRows = [];
  lastQuery = null;
  aliases = {};
  for (const id of ['usage-summary', 'usage-charts', 'usage-table']) clear(byId(id));
  byId('usage-error').textContent = '';
  const page = section();
  page.dataset.state = 'idle';
  page.dataset.loads = '0';
}
