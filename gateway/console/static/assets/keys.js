// Keys: list, create (the secret shown once, with a copy button), change limits, budgets and allowed routes,
// revoke; through /admin/keys, with its own rules and error messages.

import {json} from './api.js';
import {announce, byId, clear, fmt, h, setState, table} from './dom.js';

const FIELDS = {
  alias: {id: 'key-alias', kind: 'text'},
  owner: {id: 'key-owner', kind: 'text'},
  models: {id: 'key-models', kind: 'list'},
  rpm: {id: 'key-rpm', kind: 'int'},
  tpm: {id: 'key-tpm', kind: 'int'},
  budget_usd: {id: 'key-budget', kind: 'number'},
  budget_period: {id: 'key-period', kind: 'choice'},
  tier: {id: 'key-tier', kind: 'text'},
  priority: {id: 'key-priority', kind: 'choice'},
  max_concurrent_requests: {id: 'key-concurrency', kind: 'int'},
};
let editing = null; // the key being changed (its record), or null: the form creates
let records = [];

function section() {
  return byId('page-keys');
}

function status(k) {
  if (k.revoked) return 'revoked';
  if (k.expires_at && k.expires_at * 1000 <= Date.now()) return 'expired';
  return 'active';
}

function read(kind, raw) {
  const value = raw.trim();
  if (value === '') return null;
  if (kind === 'int') return Number.parseInt(value, 10);
  if (kind === 'number') return Number(value);
  if (kind === 'list') return value.split(',').map((v) => v.trim()).filter(Boolean);
  return value;
}

/** The form's fields as /admin/keys takes them: creating, only what is filled; editing, what changed. */
function fields() {
  const out = {};
  for (const [name, f] of Object.entries(FIELDS)) {
    const value = read(f.kind, byId(f.id).value);
    if (editing === null) {
      if (value !== null) out[name] = value;
    } else if (JSON.stringify(value) !== JSON.stringify(editing[name] ?? null)) {
      out[name] = value; // null clears it
    }
  }
  const expires = byId('key-expires').value.trim();
  if (expires !== '') out.expires_in_s = Number(expires) > 0 ? Number(expires) * 86400 : null;
  return out;
}

function fillForm(record) {
  for (const [name, f] of Object.entries(FIELDS)) {
    const value = record ? record[name] : null;
    byId(f.id).value = value === null || value === undefined ? '' : (Array.isArray(value) ? value.join(', ') : String(value));
  }
  byId('key-expires').value = '';
}

function startEditing(record) {
  editing = record;
  fillForm(record);
  byId('key-form-title').textContent = `Change key ${record.alias} (${record.id})`;
  byId('key-submit').textContent = 'Save changes';
  byId('key-cancel').hidden = false;
  byId('key-alias').focus();
}

function stopEditing() {
  editing = null;
  fillForm(null);
  byId('key-form-title').textContent = 'Create a key';
  byId('key-submit').textContent = 'Create key';
  byId('key-cancel').hidden = true;
}

function limits(k) {
  const parts = [];
  if (k.rpm) parts.push(`${fmt.int(k.rpm)} req/min`);
  if (k.tpm) parts.push(`${fmt.int(k.tpm)} tok/min`);
  if (k.max_concurrent_requests) parts.push(`${k.max_concurrent_requests} at once`);
  return parts.join(', ') || '–';
}

function listView() {
  const rows = records.map((k) => ({
    attrs: {'data-testid': `key-row-${k.id}`, 'data-key-id': k.id, 'data-status': status(k),
      class: status(k) === 'active' ? null : 'muted'},
    cells: [k.alias, h('code', {}, k.id), h('code', {}, k.display || '–'), k.owner || '–',
      k.models ? k.models.join(', ') : 'all', limits(k),
      k.budget_usd === null ? '–' : `${fmt.usd(k.budget_usd)} ${k.budget_period}`,
      k.expires_at ? fmt.time(k.expires_at) : 'never',
      h('span', {class: `badge badge-key-${status(k)}`}, status(k)),
      h('span', {class: 'row-actions'},
        h('button', {type: 'button', 'data-testid': `key-edit-${k.id}`, 'aria-label': `Change key ${k.alias}`,
          onclick: () => startEditing(k)}, 'Change'),
        k.revoked ? null : h('button', {type: 'button', class: 'danger', 'data-testid': `key-revoke-${k.id}`,
          'aria-label': `Revoke key ${k.alias}`, onclick: () => revoke(k)}, 'Revoke'))],
  }));
  return table({caption: 'Keys', captionHidden: true, testid: 'keys-table', rows, empty: 'No keys yet. Create one below.',
    columns: [{label: 'Alias'}, {label: 'ID'}, {label: 'Key'}, {label: 'Owner'}, {label: 'Routes'},
      {label: 'Limits'}, {label: 'Budget'}, {label: 'Expires'}, {label: 'Status'}, {label: 'Actions'}]});
}

async function load() {
  const page = section();
  setState(page, 'loading');
  try {
    records = (await json('admin/keys')).data;
    records.sort((a, b) => b.created_at - a.created_at);
    clear(byId('keys-list')).append(listView());
    byId('keys-error').textContent = '';
    setState(page, records.length ? 'ready' : 'empty');
  } catch (e) {
    byId('keys-error').textContent = e.message;
    setState(page, 'error');
  }
}

function showSecret(secret, alias) {
  byId('new-key-secret').textContent = secret;
  byId('new-key-copied').textContent = '';
  byId('new-key').hidden = false;
  byId('new-key-title').textContent = `New key ${alias}`;
  byId('new-key-title').focus();
}

function hideSecret() {
  byId('new-key-secret').textContent = '';
  byId('new-key-copied').textContent = '';
  byId('new-key').hidden = true;
}

async function copySecret() {
  const secret = byId('new-key-secret').textContent;
  try {
    await navigator.clipboard.writeText(secret);
    byId('new-key-copied').textContent = 'Copied to the clipboard.';
  } catch (e) {
    const range = document.createRange();
    range.selectNodeContents(byId('new-key-secret'));
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    byId('new-key-copied').textContent = 'The clipboard is not available here: the key is selected, copy it with Ctrl+C.';
  }
}

async function submit(event) {
  event.preventDefault();
  const button = byId('key-submit');
  button.disabled = true;
  byId('keys-error').textContent = '';
  try {
    if (editing === null) {
      const created = await json('admin/keys', {method: 'POST', data: fields()});
      fillForm(null);
      showSecret(created.key, created.alias);
      announce(`Key ${created.alias} created. Copy it now: it is shown once.`);
    } else {
      const changes = fields();
      const alias = editing.alias;
      if (Object.keys(changes).length) await json(`admin/keys/${encodeURIComponent(editing.id)}`, {method: 'PATCH', data: changes});
      stopEditing();
      announce(`Key ${alias} saved.`);
    }
    await load();
  } catch (e) {
    byId('keys-error').textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

async function revoke(record) {
  byId('keys-error').textContent = '';
  try {
    await json(`admin/keys/${encodeURIComponent(record.id)}`, {method: 'DELETE'});
    announce(`Key ${record.alias} revoked.`);
    if (editing && editing.id === record.id) stopEditing();
    await load();
  } catch (e) {
    byId('keys-error').textContent = e.message;
  }
}

export function mount() {
  byId('key-form').addEventListener('submit', submit);
  byId('key-cancel').addEventListener('click', stopEditing);
  byId('new-key-copy').addEventListener('click', copySecret);
  byId('new-key-done').addEventListener('click', hideSecret);
}

export function show() {
  load(); // every time: another admin (or the CLI) may have changed the keys meanwhile
}

export function hide() {
  hideSecret(); // a secret is shown once: leaving the page takes it away
}

export function reset() {
  records = [];
  hideSecret();
  stopEditing();
  clear(byId('keys-list'));
  byId('keys-error').textContent = '';
  const page = section();
  page.dataset.state = 'idle';
  page.dataset.loads = '0';
}
