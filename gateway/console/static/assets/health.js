// Health, live: GET /admin/deployments every 2 s while the page is shown (and the tab visible): every route
// and deployment (health, breaker, in-flight, EWMA time to first token, error rate), the local engines'
// state and queues, and the last reload's result.

import {json} from './api.js';
import {byId, clear, fmt, h, keepingFocus, setState, table} from './dom.js';

const INTERVAL_MS = 2000;
let timer = null;
let running = false;
let paused = false;
let visible = false;
let previous = {}; // deployment -> healthy, to announce changes

function section() {
  return byId('page-health');
}

function errorRate(dep) {
  const total = (dep.successes || 0) + (dep.failures || 0);
  return total ? dep.failures / total : null;
}

function reloadView(last) {
  if (!last) return h('p', {class: 'empty'}, 'No reload yet.');
  const outcome = last.ok ? 'ok' : 'refused';
  return h('div', {class: `reload reload-${outcome}`, 'data-testid': 'reload-result', 'data-ok': String(last.ok)},
    h('p', {}, h('strong', {}, last.ok ? 'Applied' : 'Refused'),
      ` · version ${last.version} · ${fmt.time(last.at)}`,
      last.restart_needed ? ` · waiting for a restart: ${last.restart_needed.join(', ')}` : ''),
    last.problems && last.problems.length
      ? h('ul', {class: 'problems', 'data-testid': 'reload-problems'}, last.problems.map((p) => h('li', {}, p)))
      : null);
}

function routesView(routes) {
  const rows = Object.entries(routes).map(([name, r]) => ({
    attrs: {'data-testid': `route-row-${name}`, 'data-usable': String(r.usable_deployments)},
    cells: [name, r.deployments.join(' → ') || '–', `${r.usable_deployments} of ${r.deployments.length}`,
      r.strategy, r.aliases.join(', ') || '–'],
  }));
  return table({caption: 'Routes', captionHidden: true, testid: 'routes-table', empty: 'No routes in this config.', rows,
    columns: [{label: 'Route'}, {label: 'Deployments, in order'}, {label: 'Usable', numeric: true},
      {label: 'Strategy'}, {label: 'Aliases'}]});
}

function deploymentsView(deployments) {
  const rows = Object.entries(deployments).map(([name, d]) => {
    const state = d.healthy ? 'healthy' : 'unhealthy';
    return {
      attrs: {'data-testid': `deployment-row-${name}`, 'data-healthy': String(d.healthy),
        'data-breaker': d.breaker.state, class: d.healthy ? null : 'bad'},
      cells: [name, `${d.provider} (${d.kind})`, d.model,
        h('span', {class: `badge badge-${state}`}, state),
        h('span', {class: `badge badge-breaker-${d.breaker.state}`}, d.breaker.state),
        fmt.int(d.in_flight), d.ewma_ttft_ms === null ? '–' : fmt.num(d.ewma_ttft_ms, 1), fmt.pct(errorRate(d)),
        fmt.pct(d.breaker.recent_failure_rate), fmt.int(d.successes), fmt.int(d.failures), d.last_error || '–'],
    };
  });
  return table({caption: 'Deployments', captionHidden: true, testid: 'deployments-table', empty: 'No deployments in this config.', rows,
    columns: [{label: 'Deployment'}, {label: 'Provider'}, {label: 'Model'}, {label: 'Health'}, {label: 'Breaker'},
      {label: 'In flight', numeric: true}, {label: 'EWMA TTFT (ms)', numeric: true},
      {label: 'Error rate', numeric: true}, {label: 'Recent failures', numeric: true},
      {label: 'Successes', numeric: true}, {label: 'Failures', numeric: true}, {label: 'Last error'}]});
}

function enginesView(engines) {
  const rows = Object.entries(engines).map(([name, e]) => {
    const stats = e.stats || {};
    return {
      attrs: {'data-testid': `engine-row-${name}`, 'data-state': e.state, class: e.state === 'ready' ? null : 'bad'},
      cells: [name, h('span', {class: `badge badge-engine-${e.state}`}, e.state), e.required ? 'yes' : 'no',
        fmt.int(stats.instances), fmt.int(stats.queue_depth), fmt.int(stats.busy), fmt.int(e.restarts),
        e.safe_mode ? `yes${e.safe_mode_reason ? `: ${e.safe_mode_reason}` : ''}` : 'no', e.detail || '–'],
    };
  });
  return table({caption: 'Local engines', captionHidden: true, testid: 'engines-table', empty: 'No local models in this config.', rows,
    columns: [{label: 'Model'}, {label: 'State'}, {label: 'Required'}, {label: 'Instances', numeric: true},
      {label: 'Queued', numeric: true}, {label: 'Busy', numeric: true}, {label: 'Restarts', numeric: true},
      {label: 'Safe mode'}, {label: 'Detail'}]});
}

function changes(deployments) {
  const said = [];
  for (const [name, d] of Object.entries(deployments)) {
    if (name in previous && previous[name] !== d.healthy) said.push(`${name} is ${d.healthy ? 'healthy' : 'unhealthy'}`);
    previous[name] = d.healthy;
  }
  return said;
}

async function refresh() {
  timer = null;
  if (running) return; // the call in flight schedules the next one
  running = true;
  const page = section();
  if (page.dataset.state === 'idle') setState(page, 'loading');
  try {
    const body = await json('admin/deployments');
    byId('health-error').textContent = '';
    const said = changes(body.deployments);
    keepingFocus(() => {
      clear(byId('health-reload')).append(reloadView(body.last_reload));
      clear(byId('health-routes')).append(routesView(body.routes || {}));
      clear(byId('health-deployments')).append(deploymentsView(body.deployments));
      clear(byId('health-engines')).append(enginesView(body.engines || {}));
    });
    if (said.length) byId('announcer').textContent = said.join('; ');
    byId('health-updated').textContent = `Config version ${body.version} · updated ${new Date().toLocaleTimeString('en-GB')}`
      + (paused ? ' · live updates paused' : ' · live, every 2 s');
    setState(page, 'ready');
  } catch (e) {
    byId('health-error').textContent = e.message;
    setState(page, 'error');
  } finally {
    running = false;
  }
  schedule();
}

function schedule() {
  if (timer === null && visible && !paused && document.visibilityState === 'visible') {
    timer = window.setTimeout(refresh, INTERVAL_MS);
  }
}

function stop() {
  if (timer !== null) window.clearTimeout(timer);
  timer = null;
}

export function mount() {
  const pause = byId('health-pause');
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume live updates' : 'Pause live updates';
    if (paused) stop();
    else refresh();
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && visible && !paused) {
      stop();
      refresh();
    }
  });
}

export function show() {
  visible = true;
  stop();
  refresh();
}

export function hide() {
  visible = false;
  stop();
}

export function reset() {
  hide();
  previous = {};
  const page = section();
  page.dataset.state = 'idle';
  page.dataset.loads = '0';
  page.removeAttribute('aria-busy');
  for (const id of ['health-reload', 'health-routes', 'health-deployments', 'health-engines']) clear(byId(id));
  byId('health-error').textContent = '';
  byId('health-updated').textContent = '';
}
