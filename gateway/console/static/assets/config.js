// Config: the running config's version and source, the config file's text (secrets masked) in an editor,
// Validate (POST /admin/config/validate: `llm-gateway check`'s line-numbered problems) and Apply (POST
// /admin/reload with the text: refused with the same problems while the old config serves on, or swapped
// in and written to the config file).

import {ApiError, json} from './api.js';
import {announce, byId, clear, fmt, h, setState} from './dom.js';

const YAML = 'application/yaml';
let loaded = false;

function section() {
  return byId('page-config');
}

function showResult(outcome, title, lines = [], extra = []) {
  const box = byId('config-result');
  box.dataset.outcome = outcome;
  clear(box).append(
    h('p', {class: `result-title result-${outcome}`}, h('strong', {}, title)),
    lines.length ? h('ul', {class: 'problems', 'data-testid': 'config-problems'}, lines.map((l) => h('li', {}, l))) : '',
    extra.length ? h('ul', {class: 'warnings', 'data-testid': 'config-warnings'}, extra.map((l) => h('li', {}, l))) : '');
}

function facts(body) {
  const last = body.last_reload || {};
  const items = [
    ['Version', String(body.version)],
    ['Source', body.source || '(none: started without --config)'],
    ['Last reload', `${last.ok ? 'applied' : 'refused'}, version ${last.version}, ${fmt.time(last.at)}`],
    ['Apply', body.writable ? 'writes the config file, then swaps it in' : `not possible here: ${body.read_only_reason}`],
  ];
  clear(byId('config-facts')).append(...items.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  byId('config-apply').disabled = !body.writable;
  byId('config-apply-note').textContent = body.writable
    ? 'Apply validates first; a refused config changes nothing and the running one keeps serving.'
    : `Apply is off: ${body.read_only_reason}.`;
}

async function load({keepText = false} = {}) {
  const page = section();
  setState(page, 'loading');
  try {
    const body = await json('admin/config');
    byId('config-error').textContent = '';
    facts(body);
    byId('config-running').textContent = JSON.stringify(body.config, null, 2);
    if (!keepText) byId('config-text').value = body.text || '';
    loaded = true;
    setState(page, 'ready');
  } catch (e) {
    byId('config-error').textContent = e.message;
    setState(page, 'error');
  }
}

function text() {
  return byId('config-text').value;
}

async function busy(work) {
  const buttons = ['config-validate', 'config-apply', 'config-reset'].map(byId);
  const was = buttons.map((b) => b.disabled);
  buttons.forEach((b) => { b.disabled = true; });
  byId('config-result').setAttribute('aria-busy', 'true');
  try {
    await work();
  } finally {
    buttons.forEach((b, i) => { b.disabled = was[i]; });
    byId('config-result').removeAttribute('aria-busy');
  }
}

async function validate() {
  if (!text().trim()) {
    showResult('error', 'Nothing to validate: the editor is empty.');
    return;
  }
  try {
    const body = await json('admin/config/validate', {method: 'POST', body: text(), type: YAML});
    if (body.ok) showResult('valid', 'Valid: no problems found.', [], body.warnings || []);
    else showResult('invalid', `${body.problems.length} problem(s):`, body.problems);
    announce(body.ok ? 'The config is valid.' : `The config has ${body.problems.length} problem(s).`);
  } catch (e) {
    showResult('error', e.message);
  }
}

async function apply() {
  if (!text().trim()) {
    showResult('error', 'Nothing to apply: the editor is empty.');
    return;
  }
  try {
    const body = await json('admin/reload', {method: 'POST', body: text(), type: YAML});
    const waiting = body.restart_needed ? [`Read at start-up, waiting for a restart: ${body.restart_needed.join(', ')}`] : [];
    showResult('applied', `Applied: version ${body.version} is serving, and the config file is written.`, [], waiting);
    announce(`Applied: version ${body.version}.`);
    await load();
  } catch (e) {
    if (e instanceof ApiError && e.status === 400 && e.body && Array.isArray(e.body.problems)) {
      showResult('refused', `Refused: version ${e.body.version} keeps serving. ${e.body.problems.length} problem(s):`,
        e.body.problems);
      announce('The config was refused; the running config keeps serving.');
      await load({keepText: true});
    } else {
      showResult('error', e.message);
    }
  }
}

export function mount() {
  byId('config-validate').addEventListener('click', () => busy(validate));
  byId('config-apply').addEventListener('click', () => busy(apply));
  byId('config-reset').addEventListener('click', () => busy(async () => {
    await load();
    showResult('none', 'The editor holds the config file as it is now.');
  }));
}

export function show() {
  if (!loaded) load();
}

export function hide() {}

export function reset() {
  loaded = false;
  byId('config-text').value = '';
  clear(byId('config-facts'));
  clear(byId('config-result')).dataset.outcome = 'none';
  byId('config-running').textContent = '';
  byId('config-error').textContent = '';
  const page = section();
  page.dataset.state = 'idle';
  page.dataset.loads = '0';
}
