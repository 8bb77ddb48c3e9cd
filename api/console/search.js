// The search box: results while typing, at most one request in flight.
//
// Keys: `/` anywhere focuses the box; ArrowDown/ArrowUp move through the
// results; Enter opens the chosen (or first) customer; Escape closes.

import {api} from './api.js';
import {channelIcon, clear, describe, h, when} from './dom.js';

const DEBOUNCE_MS = 80;
const LIMIT = 8;

export function mountSearch(container, open) {
  const input = h('input', {
    id: 'search-input', type: 'search', autocomplete: 'off', spellcheck: 'false',
    role: 'combobox', 'aria-expanded': 'false', 'aria-controls': 'search-results',
    'aria-autocomplete': 'list', placeholder: 'Search name, phone or email  ( / )',
  });
  const label = h('label', {for: 'search-input', class: 'visually-hidden'}, 'Search customers');
  const list = h('ul', {id: 'search-results', role: 'listbox', 'aria-label': 'Customers found', hidden: true});
  clear(container, label, input, list);

  let timer = null;
  let inFlight = false;
  let wanted = '';   // what the box holds now
  let shown = null;  // the query whose results are shown
  let hits = [];
  let active = -1;

  function schedule() {
    wanted = input.value.trim();
    clearTimeout(timer);
    timer = setTimeout(fetchLatest, DEBOUNCE_MS);
  }

  async function fetchLatest() {
    if (inFlight) return; // the answer in flight asks again for what is wanted then
    const q = wanted;
    if (q === shown) return;
    if (q.length === 0) {
      shown = q;
      render(q, [], null);
      return;
    }
    inFlight = true;
    let answer = null;
    let error = null;
    try {
      answer = await api('/v1/search?' + new URLSearchParams({q, limit: LIMIT}));
    } catch (e) {
      error = e;
    }
    inFlight = false;
    if (q === wanted) {
      shown = q;
      render(q, answer ? answer.items : [], error);
    } else {
      fetchLatest();
    }
  }

  function render(q, items, error) {
    hits = items;
    active = items.length ? 0 : -1;
    list.dataset.query = q;
    clear(list);
    if (!q) {
      close();
      return;
    }
    if (error) {
      list.append(h('li', {class: 'empty', role: 'option', 'aria-disabled': 'true'},
        error.status === 503 ? 'Search is starting up; try again in a moment' : error.message));
    } else if (items.length === 0) {
      list.append(h('li', {class: 'empty', role: 'option', 'aria-disabled': 'true'}, `No customer matches “${q}”`));
      list.append(h('li', {class: 'empty', role: 'option', 'aria-disabled': 'true'},
        h('a', {href: '#/new?' + new URLSearchParams({q})}, 'Create a customer')));
    }
    items.forEach((hit, i) => list.append(row(hit, i)));
    list.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    highlight();
  }

  function row(hit, i) {
    const last = hit.last_engagement;
    return h('li', {
      id: 'hit-' + i, role: 'option', class: 'hit', 'aria-selected': 'false', dataset: {id: hit.id},
      onmousedown: (e) => { e.preventDefault(); choose(i); },
    },
    h('span', {class: 'hit-name'}, hit.name || '(no name)'),
    h('span', {class: 'hit-phone'}, hit.phones[0] || ''),
    h('span', {class: 'hit-email'}, hit.emails[0] || ''),
    h('span', {class: 'hit-last'}, last ? [channelIcon(last.channel), ' ', describe(last), ' · ', when(last.occurred_at)] : 'no engagement yet'),
    h('span', {class: 'hit-matched'}, 'matched ' + hit.matched_on + (hit.partial ? ' (partly)' : '')));
  }

  function highlight() {
    [...list.querySelectorAll('.hit')].forEach((el, i) => el.setAttribute('aria-selected', String(i === active)));
    if (active >= 0) input.setAttribute('aria-activedescendant', 'hit-' + active);
    else input.removeAttribute('aria-activedescendant');
  }

  function choose(i) {
    const hit = hits[i];
    if (!hit) return;
    close();
    input.blur();
    open(hit.id);
  }

  function close() {
    list.hidden = true;
    input.setAttribute('aria-expanded', 'false');
  }

  input.addEventListener('input', schedule);
  input.addEventListener('focus', () => { if (shown && input.value.trim()) list.hidden = false; });
  input.addEventListener('blur', close);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown' && hits.length) {
      e.preventDefault();
      list.hidden = false;
      active = (active + 1) % hits.length;
      highlight();
    } else if (e.key === 'ArrowUp' && hits.length) {
      e.preventDefault();
      active = (active - 1 + hits.length) % hits.length;
      highlight();
    } else if (e.key === 'Enter') {
      e.preventDefault();
      if (shown === input.value.trim()) choose(Math.max(active, 0));
    } else if (e.key === 'Escape') {
      close();
    }
  });
  document.addEventListener('keydown', (e) => {
    const typing = e.target.closest && e.target.closest('input, textarea, select, [contenteditable]');
    if (e.key === '/' && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      input.focus();
      input.select();
    }
  });
}
