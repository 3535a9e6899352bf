// DOM helpers: elements are built with textContent and attributes only (never innerHTML), so nothing the
// API returns is ever parsed as markup, and nothing here needs an inline style or handler (the page's CSP).

const SVG_NS = 'http://www.w3.org/2000/svg';

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'text') el.textContent = String(value);
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An HTML element: h('td', {class: 'num'}, '12'). */
export function h(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention. */
export function s(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function byId(id) {
  return document.getElementById(id);
}

/**
 * Run `render` (which replaces elements) and give the focus back to the element with the same id, if the
 * focus was on one it replaced: a live page's refresh must not throw a keyboard user back to the top.
 */
export function keepingFocus(render) {
  const id = document.activeElement && document.activeElement.id;
  render();
  if (id && !document.activeElement?.id) {
    const again = byId(id);
    if (again) again.focus({preventScroll: true});
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Say something to screen readers (the page's polite live region). */
export function announce(text) {
  const region = byId('announcer');
  region.textContent = '';
  window.setTimeout(() => { region.textContent = text; }, 50);
}

/**
 * A page's loading marker, for people (aria-busy) and for tests: data-state is idle, loading, ready,
 * empty or error; data-loads counts the loads finished (a live page's count keeps rising).
 */
export function setState(section, state) {
  section.dataset.state = state;
  if (state === 'loading') section.setAttribute('aria-busy', 'true');
  else {
    section.removeAttribute('aria-busy');
    section.dataset.loads = String(Number(section.dataset.loads || '0') + 1);
  }
}

/**
 * A data table: columns [{label, numeric}], rows [{cells: [...], attrs: {...}}]. With no rows it is the
 * `empty` sentence instead (an honest empty state, never an empty grid).
 */
export function table({caption, columns, rows, empty, testid, captionHidden = false}) {
  if (!rows.length) return h('p', {class: 'empty', 'data-testid': testid ? `${testid}-empty` : null}, empty);
  return h('div', {class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption,
    id: testid ? `${testid}-region` : null},
    h('table', {'data-testid': testid},
      h('caption', {class: captionHidden ? 'visually-hidden' : null}, caption),
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', {scope: 'col', class: c.numeric ? 'num' : null}, c.label)))),
      h('tbody', {}, rows.map((row) => h('tr', row.attrs || {},
        row.cells.map((cell, i) => (i === 0
          ? h('th', {scope: 'row'}, cell)
          : h('td', {class: columns[i].numeric ? 'num' : null}, cell))))))));
}

export const fmt = {
  int: (n) => (n === null || n === undefined ? '–' : Math.round(n).toLocaleString('en-US')),
  num: (n, digits = 2) => (n === null || n === undefined ? '–'
    : n.toLocaleString('en-US', {maximumFractionDigits: digits})),
  usd: (n) => {
    if (n === null || n === undefined) return '–';
    if (n === 0) return '$0';
    if (Math.abs(n) >= 100) return `$${n.toLocaleString('en-US', {maximumFractionDigits: 0})}`;
    if (Math.abs(n) >= 1) return `$${n.toLocaleString('en-US', {minimumFractionDigits: 2, maximumFractionDigits: 2})}`;
    return `$${n.toPrecision(3)}`;
  },
  pct: (x) => (x === null || x === undefined ? '–' : `${(x * 100).toFixed(1)}%`),
  time: (unix) => (unix ? new Date(unix * 1000).toLocaleString('sv-SE') : '–'), // 2026-05-01 14:03:09, local time
};
