// Admin pages (users, API keys, webhooks), the user's own phones, and the
// duplicates review. Each is a list from the API and a small form.

import {api, session} from './api.js';
import {clear, h, problemText, toast, when} from './dom.js';

function formError() {
  return h('p', {class: 'form-error', 'aria-live': 'polite'});
}

/** Runs `action`, showing a problem in `out` (or a toast). */
async function attempt(action, out) {
  if (out) out.textContent = '';
  try {
    return await action();
  } catch (e) {
    const fields = Object.entries(e.fields || {}).map(([f, m]) => `${f}: ${m}`).join('; ');
    const text = fields || problemText(e);
    if (out) out.textContent = text;
    else toast(text);
    return undefined;
  }
}

function tabs(active) {
  const links = [['users', 'Users'], ['keys', 'API keys'], ['webhooks', 'Webhooks']];
  return h('nav', {class: 'tabs', 'aria-label': 'Admin'}, links.map(([path, label]) =>
    h('a', {href: '#/admin/' + path, 'aria-current': path === active ? 'page' : null}, label)));
}

export function adminPage(main, section, go) {
  if (!session.me || session.me.role !== 'admin') {
    clear(main, h('p', {class: 'error'}, 'Admins only'));
    return;
  }
  if (section === 'keys') return keysPage(main);
  if (section === 'webhooks') return webhooksPage(main, go);
  return usersPage(main);
}

// --- users -------------------------------------------------------------------
function usersPage(main) {
  const rows = h('tbody', {});
  const error = formError();
  const form = h('form', {class: 'inline-form', 'aria-label': 'New user'},
    field('u-name', 'Name', h('input', {id: 'u-name', name: 'name'})),
    field('u-email', 'Email', h('input', {id: 'u-email', name: 'email', type: 'email', required: true})),
    field('u-password', 'Password', h('input', {id: 'u-password', name: 'password', type: 'password', required: true, minlength: 12, autocomplete: 'new-password'})),
    field('u-role', 'Role', roleSelect('u-role', 'agent')),
    field('u-team', 'Team', h('input', {id: 'u-team', name: 'team'})),
    h('button', {type: 'submit'}, 'Create user'), error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = (n) => form.elements[n].value.trim();
    const created = await attempt(() => api('/v1/users', {method: 'POST', body: {
      name: v('name'), email: v('email'), password: form.elements.password.value, role: v('role'), team: v('team') || null,
    }}), error);
    if (created) {
      form.reset();
      toast('User created');
      load();
    }
  });
  clear(main, h('section', {class: 'card wide', 'aria-labelledby': 'users-title'},
    tabs('users'), h('h1', {id: 'users-title'}, 'Users'), form,
    h('table', {}, h('thead', {}, h('tr', {}, ['Name', 'Email', 'Role', 'Team', 'Active', ''].map((t) => h('th', {scope: 'col'}, t)))), rows)));

  async function load() {
    const page = await attempt(() => api('/v1/users?limit=500'));
    if (!page) return;
    clear(rows, page.items.map(userRow));
  }

  function userRow(u) {
    const role = roleSelect('role-' + u.id, u.role);
    role.setAttribute('aria-label', `Role of ${u.email}`);
    role.addEventListener('change', () => patch(u, {role: role.value}));
    const team = h('input', {value: u.team || '', 'aria-label': `Team of ${u.email}`, size: 10});
    team.addEventListener('change', () => patch(u, {team: team.value.trim()}));
    return h('tr', {dataset: {email: u.email}},
      h('td', {}, u.name), h('td', {}, u.email), h('td', {}, role), h('td', {}, team),
      h('td', {}, u.active ? 'yes' : 'no'),
      h('td', {}, u.active && u.id !== session.me.id
        ? h('button', {type: 'button', class: 'small deactivate', onclick: () => patch(u, {active: false})}, 'Deactivate')
        : !u.active ? h('button', {type: 'button', class: 'small', onclick: () => patch(u, {active: true})}, 'Reactivate') : null));
  }

  async function patch(u, body) {
    const done = await attempt(() => api('/v1/users/' + u.id, {method: 'PATCH', body}));
    if (done) toast(`${u.email} updated`);
    load();
  }

  load();
}

function roleSelect(id, value) {
  return h('select', {id, name: 'role'}, ['agent', 'admin'].map((r) => h('option', {value: r, selected: r === value}, r)));
}

function field(id, label, control) {
  return h('div', {class: 'field'}, h('label', {for: id}, label), control);
}

// --- API keys ------------------------------------------------------------------
function keysPage(main) {
  const rows = h('tbody', {});
  const error = formError();
  const secret = h('div', {class: 'secret', 'aria-live': 'polite'});
  const scopes = ['track', 'engagements', 'customers:write', 'events:read'];
  const form = h('form', {class: 'inline-form', 'aria-label': 'New API key'},
    field('k-name', 'What it is for', h('input', {id: 'k-name', name: 'name', required: true})),
    h('fieldset', {}, h('legend', {}, 'Scopes'), scopes.map((s) => h('label', {class: 'check'},
      h('input', {type: 'checkbox', name: 'scope', value: s, checked: s === 'track' || s === 'engagements'}), ' ', s))),
    h('button', {type: 'submit'}, 'Create key'), error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const chosen = [...form.querySelectorAll('input[name=scope]:checked')].map((c) => c.value);
    const created = await attempt(() => api('/v1/api-keys', {method: 'POST', body: {name: form.elements.name.value.trim(), scopes: chosen}}), error);
    if (created) {
      form.reset();
      showOnce(secret, 'The key, shown only now:', created.key);
      load();
    }
  });
  clear(main, h('section', {class: 'card wide', 'aria-labelledby': 'keys-title'},
    tabs('keys'), h('h1', {id: 'keys-title'}, 'API keys'), form, secret,
    h('table', {}, h('thead', {}, h('tr', {}, ['Name', 'Prefix', 'Scopes', 'Created', 'Revoked', ''].map((t) => h('th', {scope: 'col'}, t)))), rows)));

  async function load() {
    const page = await attempt(() => api('/v1/api-keys'));
    if (!page) return;
    clear(rows, page.items.map((k) => h('tr', {},
      h('td', {}, k.name), h('td', {}, h('code', {}, k.prefix)), h('td', {}, k.scopes.join(', ')),
      h('td', {}, when(k.created_at)), h('td', {}, k.revoked_at ? when(k.revoked_at) : '—'),
      h('td', {}, k.revoked_at ? null : h('button', {type: 'button', class: 'small', onclick: async () => {
        if (await attempt(() => api('/v1/api-keys/' + k.id, {method: 'DELETE'})) !== undefined) load();
      }}, 'Revoke')))));
  }
  load();
}

function showOnce(container, label, value) {
  clear(container, h('p', {}, label), h('code', {class: 'once', tabindex: 0}, value),
    h('p', {class: 'muted'}, 'Copy it now: it is not kept anywhere and cannot be shown again.'));
}

// --- webhooks --------------------------------------------------------------------
function webhooksPage(main) {
  const rows = h('tbody', {});
  const deliveries = h('section', {class: 'deliveries', 'aria-live': 'polite'});
  const error = formError();
  const secret = h('div', {class: 'secret', 'aria-live': 'polite'});
  const form = h('form', {class: 'inline-form', 'aria-label': 'New webhook'},
    field('w-url', 'URL', h('input', {id: 'w-url', name: 'url', type: 'url', required: true, size: 40})),
    field('w-types', 'Event types (comma-separated, empty: all)', h('input', {id: 'w-types', name: 'types'})),
    h('button', {type: 'submit'}, 'Add webhook'), error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const types = form.elements.types.value.split(',').map((s) => s.trim()).filter(Boolean);
    const created = await attempt(() => api('/v1/webhooks', {method: 'POST', body: {url: form.elements.url.value.trim(), types}}), error);
    if (created) {
      form.reset();
      showOnce(secret, 'The signing secret, shown only now:', created.secret);
      load();
    }
  });
  clear(main, h('section', {class: 'card wide', 'aria-labelledby': 'hooks-title'},
    tabs('webhooks'), h('h1', {id: 'hooks-title'}, 'Webhooks'), form, secret,
    h('table', {}, h('thead', {}, h('tr', {}, ['URL', 'Types', 'Enabled', ''].map((t) => h('th', {scope: 'col'}, t)))), rows),
    deliveries));

  async function load() {
    const page = await attempt(() => api('/v1/webhooks'));
    if (!page) return;
    clear(rows, page.items.map((w) => h('tr', {},
      h('td', {}, w.url), h('td', {}, w.types.join(', ') || 'all'),
      h('td', {}, w.enabled ? 'yes' : `no${w.disabled_reason ? ' (' + w.disabled_reason + ')' : ''}`),
      h('td', {},
        h('button', {type: 'button', class: 'small', onclick: () => showDeliveries(w)}, 'Deliveries'),
        h('button', {type: 'button', class: 'small', onclick: async () => {
          if (await attempt(() => api('/v1/webhooks/' + w.id, {method: 'PATCH', body: {enabled: !w.enabled}}))) load();
        }}, w.enabled ? 'Disable' : 'Enable')))));
  }

  async function showDeliveries(w) {
    const page = await attempt(() => api(`/v1/webhooks/${w.id}/deliveries`));
    if (!page) return;
    clear(deliveries, h('h2', {}, 'Deliveries to ' + w.url),
      page.items.length === 0 ? h('p', {class: 'muted'}, 'None yet') : null,
      h('table', {}, h('thead', {}, h('tr', {}, ['Event', 'Status', 'Attempts', 'Last answer', ''].map((t) => h('th', {scope: 'col'}, t)))),
        h('tbody', {}, page.items.map((d) => h('tr', {},
          h('td', {}, d.event_type), h('td', {}, d.status), h('td', {}, d.attempts),
          h('td', {}, d.last_status_code || d.last_error || '—'),
          h('td', {}, d.status === 'delivered' ? null : h('button', {type: 'button', class: 'small', onclick: async () => {
            if (await attempt(() => api(`/v1/webhooks/${w.id}/deliveries/${d.id}/retry`, {method: 'POST', body: {}}))) {
              toast('Delivery queued again');
              showDeliveries(w);
            }
          }}, 'Retry')))))));
  }
  load();
}

// --- the user's phones -------------------------------------------------------------
export function devicesPage(main) {
  const rows = h('tbody', {});
  const error = formError();
  const token = h('div', {class: 'secret', 'aria-live': 'polite'});
  const form = h('form', {class: 'inline-form', 'aria-label': 'Enroll a phone'},
    field('d-name', 'Phone name', h('input', {id: 'd-name', name: 'name', required: true, placeholder: 'Pixel 8'})),
    field('d-region', 'Region of local numbers', h('input', {id: 'd-region', name: 'region', size: 4, placeholder: 'SG'})),
    h('button', {type: 'submit'}, 'Enroll'), error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const region = form.elements.region.value.trim();
    const body = {name: form.elements.name.value.trim()};
    if (region) body.default_region = region;
    const enrolled = await attempt(() => api('/v1/devices', {method: 'POST', body}), error);
    if (enrolled) {
      form.reset();
      showOnce(token, 'Enter this token in the phone app, now:', enrolled.token);
      load();
    }
  });
  clear(main, h('section', {class: 'card wide', 'aria-labelledby': 'devices-title'},
    h('h1', {id: 'devices-title'}, session.me.role === 'admin' ? 'Phones' : 'My phones'), form, token,
    h('table', {}, h('thead', {}, h('tr', {}, ['Name', 'Token', 'Enrolled', 'Last upload', 'Revoked', ''].map((t) => h('th', {scope: 'col'}, t)))), rows)));

  async function load() {
    const page = await attempt(() => api('/v1/devices'));
    if (!page) return;
    clear(rows, page.items.map((d) => h('tr', {},
      h('td', {}, d.name), h('td', {}, h('code', {}, d.token_prefix + '…')), h('td', {}, when(d.created_at)),
      h('td', {}, d.last_upload_at ? when(d.last_upload_at) : '—'), h('td', {}, d.revoked_at ? when(d.revoked_at) : '—'),
      h('td', {}, d.revoked_at ? null : h('button', {type: 'button', class: 'small', onclick: async () => {
        if (await attempt(() => api('/v1/devices/' + d.id, {method: 'DELETE'})) !== undefined) load();
      }}, 'Revoke')))));
  }
  load();
}

// --- duplicates ----------------------------------------------------------------------
export function duplicatesPage(main, go) {
  const list = h('div', {class: 'pairs'});
  clear(main, h('section', {class: 'card wide', 'aria-labelledby': 'dups-title'},
    h('h1', {id: 'dups-title'}, 'Possible duplicates'),
    h('p', {class: 'muted'}, 'Suggested pairs, most likely first. “Dismiss” says they are different people: the pair is not suggested again.'), list));

  async function load() {
    const page = await attempt(() => api('/v1/duplicates?limit=50'));
    if (!page) return;
    const items = page.items;
    clear(list, items.length === 0 ? h('p', {class: 'muted'}, 'No suggestions') : null);
    for (const item of items) list.append(await pair(item));
  }

  async function pair(item) {
    const customers = await Promise.all(item.customer_ids.map((id) => api('/v1/customers/' + id).catch(() => null)));
    const [keep, ...others] = item.customer_ids;
    const card = (c, id) => h('div', {class: 'side-by-side'}, c
      ? [h('a', {href: '#/customers/' + c.id}, h('strong', {}, c.name || '(no name)')),
        h('p', {}, c.phones.join(', ') || '—'), h('p', {}, c.emails.join(', ') || '—'),
        h('p', {class: 'muted'}, 'since ', when(c.created_at))]
      : h('p', {class: 'muted'}, id + ' is gone'));
    return h('article', {class: 'pair', 'aria-label': item.detail, dataset: {pair: item.customer_ids.join(',')}},
      h('p', {class: 'reason'}, `${item.reason.replaceAll('_', ' ')} · ${Math.round(item.score * 100)}% · ${item.detail}`),
      h('div', {class: 'cards'}, customers.map((c, i) => card(c, item.customer_ids[i]))),
      h('div', {class: 'buttons'},
        h('button', {type: 'button', onclick: async () => {
          const merged = await attempt(() => api(`/v1/customers/${keep}/merge`, {method: 'POST', body: {ids: others}}));
          if (merged) { toast('Merged'); go('#/customers/' + keep); }
        }}, 'Merge into the first'),
        h('button', {type: 'button', class: 'dismiss', onclick: async () => {
          const path = '/v1/duplicates/' + item.customer_ids.map(encodeURIComponent).join('/');
          if (await attempt(() => api(path, {method: 'DELETE'}).then(() => true))) {
            toast('Dismissed: not suggested again');
            load();
          }
        }}, 'Dismiss')));
  }
  load();
}
