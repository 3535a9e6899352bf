// The cost break-even: GET /admin/cost (the numbers `llm-gateway cost` prints) as a table, and its chart,
// GET /admin/cost/chart.svg, fetched with the key and shown as an image from a blob: URL (an <img> runs no
// script an SVG might hold, and the page's CSP allows blob: images only).

import {call, json} from './api.js';
import {byId, clear, fmt, h, setState, table} from './dom.js';

let chartUrl = null;

function section() {
  return byId('page-cost');
}

function days() {
  return Number(byId('cost-window').value);
}

function dropChart() {
  if (chartUrl) URL.revokeObjectURL(chartUrl);
  chartUrl = null;
  clear(byId('cost-chart-body'));
}

async function loadChart(n, report) {
  const figure = byId('cost-figure');
  figure.dataset.state = 'loading';
  figure.setAttribute('aria-busy', 'true');
  dropChart();
  try {
    const response = await call(`admin/cost/chart.svg?days=${n}`, {accept: 'image/svg+xml'});
    const blob = await response.blob();
    chartUrl = URL.createObjectURL(new Blob([blob], {type: 'image/svg+xml'}));
    const rpd = report.total.served_requests_per_day;
    byId('cost-chart-body').append(h('img', {src: chartUrl, class: 'cost-chart', 'data-testid': 'cost-chart-img',
      alt: `Break-even chart over the last ${n} day(s): ${fmt.num(rpd, 1)} requests per day served now. `
        + `${report.recommendation}`}));
    figure.dataset.state = 'ready';
  } catch (e) {
    byId('cost-chart-body').append(h('p', {class: 'empty', 'data-testid': 'cost-chart-missing'},
      `The chart is not available: ${e.message}`));
    figure.dataset.state = 'error';
  } finally {
    figure.removeAttribute('aria-busy');
  }
}

function optionsTable(report) {
  const t = report.total;
  const rows = [{attrs: {'data-option': 'now'}, cells: ['Measured spend now', fmt.usd(t.spend_per_month_usd), '–']}];
  for (const api of t.apis) {
    rows.push({attrs: {'data-option': `api:${api.card}`},
      cells: [`${api.card} via its API`, fmt.usd(api.monthly_usd), api.cost_per_request_usd === null ? '–'
        : `${fmt.usd(api.cost_per_request_usd)} per request`]});
  }
  for (const host of report.self_hosting) {
    rows.push({attrs: {'data-option': `self:${host.name}`},
      cells: [`Self-hosting on ${host.name} (${host.instances} × ${fmt.usd(host.instance_price_per_hour)}/h + `
        + `${fmt.usd(host.monthly_ops_cost)}/month operations)`, fmt.usd(host.monthly_usd), 'fixed']});
  }
  return table({caption: 'Monthly cost of each option at the measured volume', testid: 'cost-options', rows,
    empty: 'No options.', columns: [{label: 'Option'}, {label: 'Per month', numeric: true}, {label: 'Per request'}]});
}

function breakEvenTable(report) {
  const rows = report.total.break_even.map((b) => ({
    attrs: {'data-api': b.api, 'data-self-hosting': b.self_hosting},
    cells: [`${b.api} vs ${b.self_hosting}`, b.requests_per_day === null ? 'never (no API cost yet)' : fmt.num(b.requests_per_day, 0)],
  }));
  return table({caption: 'Break-even volumes', testid: 'cost-break-even', rows,
    empty: 'No break-even to show: configure cost.compare_with (priced provider cards) and cost.self_hosting.',
    columns: [{label: 'API against self-hosting'}, {label: 'Requests per day', numeric: true}]});
}

function volumeTable(report) {
  const t = report.total;
  return table({caption: 'Measured volume', testid: 'cost-volume', empty: '', columns: [{label: 'Measure'},
    {label: 'Value', numeric: true}], rows: [
    {cells: ['Requests per day (served by a model)', fmt.num(t.served_requests_per_day, 1)]},
    {cells: ['Requests per day (from the cache)', fmt.num(t.cached_requests_per_day, 1)]},
    {cells: ['Prompt tokens per request', fmt.num(t.prompt_tokens_per_request, 1)]},
    {cells: ['Completion tokens per request', fmt.num(t.completion_tokens_per_request, 1)]},
    {cells: ['Days with traffic', `${report.days_with_traffic} of ${report.days}`]},
  ]});
}

async function load() {
  const page = section();
  const n = days();
  setState(page, 'loading');
  try {
    const report = await json(`admin/cost?days=${n}`);
    byId('cost-error').textContent = '';
    byId('cost-recommendation').textContent = report.recommendation;
    clear(byId('cost-table')).append(volumeTable(report), optionsTable(report), breakEvenTable(report));
    clear(byId('cost-notes')).append(...report.notes.map((note) => h('li', {}, note)));
    await loadChart(n, report);
    setState(page, report.total.requests ? 'ready' : 'empty');
  } catch (e) {
    byId('cost-error').textContent = e.message;
    setState(page, 'error');
  }
}

export function mount() {
  byId('cost-window').addEventListener('change', load);
  byId('cost-controls').addEventListener('submit', (e) => e.preventDefault());
}

export function show() {
  load();
}

export function hide() {}

export function reset() {
  dropChart();
  byId('cost-figure').dataset.state = 'idle';
  byId('cost-recommendation').textContent = '';
  clear(byId('cost-table'));
  clear(byId('cost-notes'));
  byId('cost-error').textContent = '';
  const page = section();
  page.dataset.state = 'idle';
  page.dataset.loads = '0';
}
