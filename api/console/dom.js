// Small DOM helpers. Text always goes in as text, never as HTML.

/** h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? '' : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const ICONS = {
  call: 'M6.6 10.8a15 15 0 006.6 6.6l2.2-2.2a1 1 0 011-.25 11.4 11.4 0 003.6.57 1 1 0 011 1V20a1 1 0 01-1 1A17 17 0 013 4a1 1 0 011-1h3.5a1 1 0 011 1c0 1.25.2 2.45.57 3.57a1 1 0 01-.25 1z',
  sms: 'M4 4h16a2 2 0 012 2v10a2 2 0 01-2 2H8l-4 4V6a2 2 0 012-2zm3 6v2h2v-2zm4 0v2h2v-2zm4 0v2h2v-2z',
  whatsapp: 'M12 2a10 10 0 00-8.6 15.1L2 22l5-1.3A10 10 0 1012 2zm5 14c-.2.6-1.2 1.1-1.7 1.2-.4 0-1 .1-3.2-.8a11 11 0 01-4.3-3.8c-.3-.4-1-1.4-1-2.6s.6-1.8.9-2.1c.2-.2.5-.3.7-.3h.5c.2 0 .4 0 .6.5l.8 2c.1.1.1.3 0 .5l-.3.5-.4.4c-.1.2-.3.3-.1.6.2.3.8 1.3 1.7 2.1 1.2 1 2.1 1.3 2.4 1.5.3.1.5.1.6-.1l.9-1c.2-.3.4-.2.6-.1l1.9.9c.3.1.5.2.5.3.1.2.1.7-.1 1.3z',
  email: 'M3 5h18a1 1 0 011 1v12a1 1 0 01-1 1H3a1 1 0 01-1-1V6a1 1 0 011-1zm1 2v.5l8 5 8-5V7l-8 5z',
  web: 'M12 2a10 10 0 100 20 10 10 0 000-20zm6.9 6h-3a15 15 0 00-1.3-3.9A8 8 0 0118.9 8zM12 4c.8 1.2 1.5 2.5 1.9 4h-3.8c.4-1.5 1.1-2.8 1.9-4zM4.3 14a8 8 0 010-4h3.4a16 16 0 000 4zm.8 2h3a15 15 0 001.3 3.9A8 8 0 015.1 16zm3-8h-3a8 8 0 014.3-3.9A15 15 0 008.1 8zM12 20c-.8-1.2-1.5-2.5-1.9-4h3.8c-.4 1.5-1.1 2.8-1.9 4zm2.3-6H9.7a14 14 0 010-4h4.6a14 14 0 010 4zm.3 5.9a15 15 0 001.3-3.9h3a8 8 0 01-4.3 3.9zm1.7-5.9a16 16 0 000-4h3.4a8 8 0 010 4z',
};

/** A channel's icon, labelled for screen readers. */
export function channelIcon(channel) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', 'icon icon-' + channel);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', channel);
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', ICONS[channel] || ICONS.web);
  svg.append(path);
  return svg;
}

const timeFormat = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'short'});

/** A <time> with the local date and time. */
export function when(iso) {
  if (!iso) return '';
  return h('time', {datetime: iso}, timeFormat.format(new Date(iso)));
}

/** A short line for an engagement or a brief: "inbound · hello". */
export function describe(e) {
  const bits = [];
  if (e.direction) bits.push(e.direction);
  if (e.preview !== undefined) bits.push(e.preview);
  else if (e.channel === 'sms') bits.push(e.body);
  else if (e.channel === 'email') bits.push(e.subject);
  else if (e.channel === 'call') bits.push(`${e.status}, ${e.duration_s} s`);
  else if (e.channel === 'whatsapp') bits.push(e.payload_type === 'text' ? e.payload : e.payload_type);
  else if (e.channel === 'web') bits.push(e.view_desc || e.view || e.url);
  return bits.filter(Boolean).join(' · ');
}

let toastTimer = null;
/** A short message in the status line. */
export function toast(text) {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.classList.add('shown');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove('shown'), 5000);
}

/** The problem's per-field errors as {field: message}, and its detail. */
export function problemText(error) {
  return (error && error.problem && error.problem.detail) || (error && error.message) || 'Something went wrong';
}
