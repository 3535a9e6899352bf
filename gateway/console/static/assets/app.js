// The console's start: log in (the key is checked by the admin API, then kept in this tab's sessionStorage),
// log out, and show one page at a time from the URL's #fragment (#health, #config, #keys, #usage, #cost).

import {call, session, whenUnauthorized} from './api.js';
import {announce, byId} from './dom.js';
import * as config from './config.js';
import * as cost from './cost.js';
import * as health from './health.js';
import * as keys from './keys.js';
import * as usage from './usage.js';

const PAGES = {health, config, keys, usage, cost};
const DEFAULT_PAGE = 'health';
let current = null;

function pageName() {
  const name = window.location.hash.replace(/^#/, '');
  return Object.hasOwn(PAGES, name) ? name : DEFAULT_PAGE;
}

function show(name, {focus = true} = {}) {
  if (current && current !== name) PAGES[current].hide();
  for (const link of document.querySelectorAll('nav.pages a')) {
    if (link.dataset.page === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  for (const key of Object.keys(PAGES)) byId(`page-${key}`).hidden = key !== name;
  current = name;
  document.title = `${byId(`${name}-title`).textContent} · llm-gateway console`;
  PAGES[name].show();
  if (focus) byId(`${name}-title`).focus();
}

function enter() {
  byId('login').hidden = true;
  byId('console').hidden = false;
  byId('session').hidden = false;
  show(pageName(), {focus: false});
  byId('main').focus();
}

function leave(message) {
  session.clear();
  if (current) PAGES[current].hide();
  current = null;
  for (const page of Object.values(PAGES)) page.reset();
  byId('console').hidden = true;
  byId('session').hidden = true;
  byId('login').hidden = false;
  byId('login-error').textContent = message || '';
  byId('login-key').value = '';
  byId('login-key').focus();
}

async function logIn(event) {
  event.preventDefault();
  const input = byId('login-key');
  const key = input.value.trim();
  const error = byId('login-error');
  const button = byId('login-submit');
  error.textContent = '';
  if (!key) {
    error.textContent = 'Enter the admin or master key.';
    input.focus();
    return;
  }
  button.disabled = true;
  try {
    await call('admin/deployments', {key}); // any admin call checks the key; this one is cheap
    session.save(key);
    input.value = '';
    announce('Logged in.');
    enter();
  } catch (e) {
    error.textContent = e.message; // the API's own message: "Invalid admin key.", "The admin API is disabled…"
    input.select();
  } finally {
    button.disabled = false;
  }
}

function start() {
  byId('login-form').addEventListener('submit', logIn);
  byId('logout').addEventListener('click', () => {
    leave('Logged out.');
    announce('Logged out.');
  });
  whenUnauthorized((error) => leave(`Logged out: ${error.message}`));
  window.addEventListener('hashchange', () => {
    if (session.key()) show(pageName());
  });
  for (const page of Object.values(PAGES)) page.mount();
  if (session.key()) enter();
  else leave('');
}

start();
