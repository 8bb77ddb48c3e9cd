// The customer page: profile (edited in place), identifiers, merge history
// with undo, merge with another customer, and the timeline, which loads
// more as it scrolls and shows new engagements as they are recorded.

import {api, ApiError, liveStream, session} from './api.js';
import {channelIcon, clear, describe, h, problemText, toast, when} from './dom.js';

const PAGE = 30;
const CHANNELS = ['call', 'sms', 'whatsapp', 'email', 'web'];
const LABELS = {call: 'Calls', sms: 'SMS', whatsapp: 'WhatsApp', email: 'Email', web: 'Web'};

export function customerPage(main, id, go) {
  const state = {customer: null, channel: '', cursor: null, loading: false, shown: new Set()};
  const isAdmin = session.me && session.me.role === 'admin';

  const profile = h('section', {class: 'card profile', 'aria-labelledby': 'customer-name'});
  const identifiers = h('section', {class: 'card', 'aria-labelledby': 'ids-title'});
  const history = h('section', {class: 'card', 'aria-labelledby': 'history-title'});
  const merge = h('section', {class: 'card', 'aria-labelledby': 'merge-title'});
  const timelineList = h('ol', {class: 'timeline', id: 'timeline', 'aria-label': 'Engagements, newest first'});
  const sentinel = h('div', {class: 'sentinel', 'aria-hidden': 'true'});
  const filters = h('div', {class: 'filters', role: 'group', 'aria-label': 'Show channel'});
  const timeline = h('section', {class: 'card timeline-card', 'aria-labelledby': 'timeline-title'},
    h('h2', {id: 'timeline-title'}, 'Timeline'), filters, timelineList, sentinel);

  clear(main, h('div', {class: 'customer'},
    h('div', {class: 'side'}, profile, identifiers, merge, history), timeline));

  // --- profile -----------------------------------------------------------
  async function loadProfile() {
    let customer;
    try {
      customer = await api(`/v1/customers/${id}`);
    } catch (e) {
      clear(profile, h('h1', {id: 'customer-name'}, 'Customer'), h('p', {class: 'error'}, problemText(e)));
      return;
    }
    if (customer.id !== id) {
      // Merged: reads follow to the survivor.
      go('#/customers/' + customer.id);
      return;
    }
    state.customer = customer;
    showProfile();
    showIdentifiers();
  }

  function showProfile() {
    const c = state.customer;
    const counts = c.counts || {};
    clear(profile,
      h('h1', {id: 'customer-name'}, c.name || '(no name)'),
      h('dl', {class: 'facts'},
        h('dt', {}, 'Phones'), h('dd', {class: 'phones'}, c.phones.join(', ') || '—'),
        h('dt', {}, 'Emails'), h('dd', {class: 'emails'}, c.emails.join(', ') || '—'),
        h('dt', {}, 'Status'), h('dd', {}, c.status),
        h('dt', {}, 'Last engagement'), h('dd', {}, c.last_engagement_at ? when(c.last_engagement_at) : '—'),
        h('dt', {}, 'Engagements'),
        h('dd', {class: 'counts'}, CHANNELS.map((ch) => h('span', {class: 'count'}, channelIcon(ch), ' ', counts[ch] || 0)))),
      h('button', {type: 'button', id: 'edit-profile', onclick: editProfile}, 'Edit profile'));
  }

  function editProfile() {
    const c = state.customer;
    const field = (name, label, value, multiline) => {
      const control = multiline
        ? h('textarea', {id: 'f-' + name, name, rows: 3, 'aria-describedby': 'e-' + name})
        : h('input', {id: 'f-' + name, name, 'aria-describedby': 'e-' + name});
      control.value = value;
      return h('div', {class: 'field'},
        h('label', {for: 'f-' + name}, label), control,
        h('p', {class: 'field-error', id: 'e-' + name, 'aria-live': 'polite'}));
    };
    const form = h('form', {class: 'edit', 'aria-label': 'Edit profile'},
      h('h1', {id: 'customer-name'}, 'Edit ' + (c.name || 'customer')),
      field('name', 'Name', c.name || '', false),
      field('phones', 'Phones (one per line)', c.phones.join('\n'), true),
      field('emails', 'Emails (one per line)', c.emails.join('\n'), true),
      h('p', {class: 'form-error', 'aria-live': 'polite'}),
      h('div', {class: 'buttons'},
        h('button', {type: 'submit'}, 'Save'),
        h('button', {type: 'button', onclick: showProfile}, 'Cancel')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      await saveProfile(form, false);
    });
    clear(profile, form);
    form.querySelector('input').focus();
  }

  async function saveProfile(form, confirmMerge) {
    const lines = (name) => form.elements[name].value.split('\n').map((s) => s.trim()).filter(Boolean);
    const body = {name: form.elements.name.value.trim() || null, phones: lines('phones'), emails: lines('emails')};
    if (confirmMerge) body.merge = true;
    form.querySelectorAll('.field-error, .form-error').forEach((el) => { el.textContent = ''; });
    form.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
    try {
      const saved = await api(`/v1/customers/${id}`, {method: 'PATCH', body, contentType: 'application/merge-patch+json'});
      // A patch answers with the profile only: the shared marks stay as read.
      state.customer = {...saved, shared_identifiers: state.customer.shared_identifiers || []};
      showProfile();
      showIdentifiers();
      toast('Profile saved');
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      for (const [field, message] of Object.entries(e.fields)) {
        const name = field.replace(/\[.*$/, '');
        const index = field.match(/\[(\d+)\]/);
        const out = form.querySelector('#e-' + name) || form.querySelector('.form-error');
        out.textContent += (index ? `line ${Number(index[1]) + 1}: ` : '') + message + ' ';
        const control = form.elements[name];
        if (control) control.setAttribute('aria-invalid', 'true');
      }
      const general = form.querySelector('.form-error');
      if (e.problem.code === 'identifier_taken') {
        general.append(problemText(e), ' ', h('button', {type: 'button', onclick: () => saveProfile(form, true)},
          'They are the same person: merge'));
      } else if (!e.problem.errors) {
        general.textContent = problemText(e);
      }
    }
  }

  // --- identifiers -------------------------------------------------------
  function showIdentifiers() {
    const c = state.customer;
    const ids = [...c.phones.map((p) => 'phone:' + p), ...c.emails.map((m) => 'email:' + m),
      ...Object.entries(c.social || {}).map(([k, v]) => `${k}:${v}`)];
    const shared = new Set(c.shared_identifiers || []);
    clear(identifiers, h('h2', {id: 'ids-title'}, 'Identifiers'),
      h('ul', {class: 'identifiers'}, ids.map((key) => h('li', {dataset: {identifier: key, shared: String(shared.has(key))}},
        h('code', {}, key),
        shared.has(key)
          ? [' ', h('span', {class: 'badge shared', title: 'Shared (a switchboard, a family phone): it links nobody'}, 'shared')]
          : null,
        isAdmin && (key.startsWith('phone:') || key.startsWith('email:'))
          ? h('button', {type: 'button', class: 'small toggle-shared', 'aria-pressed': String(shared.has(key)),
            onclick: () => markShared(key, !shared.has(key))}, shared.has(key) ? 'Unmark shared' : 'Mark shared')
          : null))));
  }

  async function markShared(key, on) {
    try {
      await api(`/v1/identities/${encodeURIComponent(key)}/shared`, {method: 'POST', body: {shared: on}});
      toast(on ? `${key} is shared now: it no longer links customers` : `${key} links customers again`);
      await loadProfile();
    } catch (e) {
      toast(problemText(e));
    }
  }

  // --- merge history -------------------------------------------------------
  async function loadHistory() {
    let page;
    try {
      page = await api(`/v1/customers/${id}/history`);
    } catch (e) {
      clear(history, h('h2', {id: 'history-title'}, 'Merges'), h('p', {class: 'error'}, problemText(e)));
      return;
    }
    const undone = new Set(page.items.filter((e) => e.action === 'undo').map((e) => e.merge_id));
    clear(history, h('h2', {id: 'history-title'}, 'Merges'),
      page.items.length === 0 ? h('p', {class: 'muted'}, 'No merges') : null,
      h('ul', {class: 'history'}, page.items.map((entry) => h('li', {},
        h('strong', {}, entry.action === 'undo' ? 'Undone' : 'Merged'), ' ', when(entry.at), ' by ',
        entry.by.kind === 'user' ? 'staff' : `linking (${entry.by.identifier})`, ': ',
        entry.merged_ids.map((m) => h('a', {href: '#/customers/' + m}, m.slice(0, 8))),
        entry.action === 'merge' && isAdmin && !undone.has(entry.merge_id)
          ? h('button', {type: 'button', class: 'small undo', onclick: () => undo(entry.merge_id)}, 'Undo')
          : null))));
  }

  async function undo(mergeId) {
    try {
      await api(`/v1/merges/${mergeId}/undo`, {method: 'POST', body: {}});
      toast('Merge undone');
      reloadAll();
    } catch (e) {
      toast(problemText(e));
    }
  }

  // --- merge with another customer ----------------------------------------
  function showMerge() {
    const input = h('input', {id: 'merge-query', type: 'search', autocomplete: 'off'});
    const results = h('ul', {class: 'merge-results', 'aria-live': 'polite'});
    const form = h('form', {role: 'search'},
      h('label', {for: 'merge-query'}, 'Find the other customer'), input,
      h('button', {type: 'submit'}, 'Find'));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const q = input.value.trim();
      if (!q) return;
      try {
        const found = await api('/v1/search?' + new URLSearchParams({q, limit: 5}));
        clear(results, found.items.filter((hit) => hit.id !== id).map((hit) => h('li', {},
          h('button', {type: 'button', class: 'link', onclick: () => preview(hit.id)},
            `${hit.name || '(no name)'} ${hit.phones[0] || ''} ${hit.emails[0] || ''}`))));
        if (!results.children.length) results.append(h('li', {class: 'muted'}, 'No other customer found'));
      } catch (err) {
        clear(results, h('li', {class: 'error'}, problemText(err)));
      }
    });
    clear(merge, h('h2', {id: 'merge-title'}, 'Merge with another customer'), form, results);
  }

  async function preview(otherId) {
    let other;
    try {
      other = await api(`/v1/customers/${otherId}`);
    } catch (e) {
      toast(problemText(e));
      return;
    }
    const counts = other.counts || {};
    const total = CHANNELS.reduce((sum, ch) => sum + (counts[ch] || 0), 0);
    const box = h('div', {class: 'preview', role: 'group', 'aria-label': 'What will move'},
      h('h3', {}, `Merge ${other.name || '(no name)'} into ${state.customer.name || 'this customer'}`),
      h('p', {}, 'These move to this customer:'),
      h('ul', {},
        other.phones.map((p) => h('li', {}, 'phone ', p)),
        other.emails.map((m) => h('li', {}, 'email ', m)),
        h('li', {}, `${total} engagements`)),
      h('p', {class: 'muted'}, 'This customer keeps its own name and values; empty fields are filled from the other.'),
      h('div', {class: 'buttons'},
        h('button', {type: 'button', id: 'confirm-merge', onclick: () => doMerge(otherId)}, 'Merge'),
        h('button', {type: 'button', onclick: showMerge}, 'Cancel')));
    clear(merge, h('h2', {id: 'merge-title'}, 'Merge with another customer'), box);
    box.querySelector('#confirm-merge').focus();
  }

  async function doMerge(otherId) {
    try {
      await api(`/v1/customers/${id}/merge`, {method: 'POST', body: {ids: [otherId]}});
      toast('Merged');
      reloadAll();
    } catch (e) {
      toast(problemText(e));
    }
  }

  // --- timeline ------------------------------------------------------------
  function showFilters() {
    const options = [['', 'All'], ...CHANNELS.map((c) => [c, LABELS[c]])];
    clear(filters, options.map(([value, label]) => h('button', {
      type: 'button', 'aria-pressed': String(state.channel === value), class: 'filter',
      onclick: () => {
        state.channel = value;
        showFilters();
        filters.querySelector('[aria-pressed=true]').focus();
        restartTimeline();
      },
    }, value ? channelIcon(value) : null, ' ', label)));
  }

  function engagementItem(e) {
    return h('li', {class: 'engagement channel-' + e.channel, dataset: {id: e.id}},
      channelIcon(e.channel),
      h('span', {class: 'what'}, describe(e)),
      when(e.occurred_at));
  }

  function timelineQuery(cursor) {
    const q = new URLSearchParams({limit: PAGE});
    if (state.channel) q.set('channel', state.channel);
    if (cursor) q.set('cursor', cursor);
    return `/v1/customers/${id}/engagements?${q}`;
  }

  async function loadMore() {
    if (state.loading || state.cursor === null) return;
    state.loading = true;
    try {
      const page = await api(timelineQuery(state.cursor || ''));
      for (const e of page.items) {
        if (state.shown.has(e.id)) continue;
        state.shown.add(e.id);
        timelineList.append(engagementItem(e));
      }
      state.cursor = page.next_cursor || null;
      if (state.cursor === null && state.shown.size === 0) {
        timelineList.append(h('li', {class: 'muted'}, 'No engagements'));
      }
    } catch (e) {
      timelineList.append(h('li', {class: 'error'}, problemText(e)));
      state.cursor = null;
    } finally {
      state.loading = false;
    }
    // Still on screen: the page is taller than what has loaded.
    if (state.cursor !== null && sentinelVisible()) loadMore();
  }

  function sentinelVisible() {
    const r = sentinel.getBoundingClientRect();
    return r.top < window.innerHeight + 200;
  }

  function restartTimeline() {
    state.cursor = '';
    state.shown = new Set();
    clear(timelineList);
    loadMore();
  }

  /** New engagements: the newest page again, those not shown yet on top. */
  async function loadNewest() {
    try {
      const page = await api(timelineQuery(''));
      const fresh = page.items.filter((e) => !state.shown.has(e.id));
      const empty = timelineList.querySelector('.muted');
      if (fresh.length && empty) empty.remove();
      for (const e of fresh.reverse()) {
        state.shown.add(e.id);
        const item = engagementItem(e);
        item.classList.add('new');
        timelineList.prepend(item);
      }
    } catch {
      // The next event or a reload tries again.
    }
  }

  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore();
  }, {rootMargin: '200px'});
  observer.observe(sentinel);

  function reloadAll() {
    loadProfile();
    loadHistory();
    showMerge();
    restartTimeline();
  }

  const stream = liveStream(
    {customer: id, types: 'engagement.recorded,customer.updated,customers.merged,customers.unmerged'},
    {
      'engagement.recorded': () => { loadNewest(); loadProfile(); },
      'customer.updated': () => loadProfile(),
      'customers.merged': () => { loadProfile(); loadHistory(); restartTimeline(); },
      'customers.unmerged': () => { loadProfile(); loadHistory(); restartTimeline(); },
      open: () => { timeline.dataset.live = 'true'; },
      reset: () => reloadAll(),
    });

  showFilters();
  reloadAll();
  return () => {
    stream.close();
    observer.disconnect();
  };
}

/** A new customer, from the search box's "Create" (a number or email prefilled). */
export function newCustomerPage(main, query, go) {
  const q = (query.get('q') || '').trim();
  const looksPhone = /^[+\d][\d\s().-]{4,}$/.test(q);
  const looksEmail = q.includes('@');
  const input = (name, label, value) => h('div', {class: 'field'},
    h('label', {for: 'n-' + name}, label),
    h('input', {id: 'n-' + name, name, value}),
    h('p', {class: 'field-error', id: 'ne-' + name, 'aria-live': 'polite'}));
  const form = h('form', {class: 'card edit', 'aria-labelledby': 'new-title'},
    h('h1', {id: 'new-title'}, 'New customer'),
    input('name', 'Name', looksPhone || looksEmail ? '' : q),
    input('phones', 'Phone', looksPhone ? q : ''),
    input('emails', 'Email', looksEmail ? q : ''),
    h('p', {class: 'form-error', 'aria-live': 'polite'}),
    h('button', {type: 'submit'}, 'Create'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    form.querySelectorAll('.field-error, .form-error').forEach((el) => { el.textContent = ''; });
    const value = (name) => form.elements[name].value.trim();
    const body = {name: value('name') || undefined,
      phones: value('phones') ? [value('phones')] : [], emails: value('emails') ? [value('emails')] : []};
    try {
      const created = await api('/v1/customers', {method: 'POST', body});
      go('#/customers/' + created.id);
    } catch (err) {
      for (const [field, message] of Object.entries(err.fields || {})) {
        const out = form.querySelector('#ne-' + field.replace(/\[.*$/, '')) || form.querySelector('.form-error');
        out.textContent += message + ' ';
      }
      if (!err.problem || !err.problem.errors) form.querySelector('.form-error').textContent = problemText(err);
    }
  });
  clear(main, form);
  form.querySelector('input').focus();
}
