// Incoming calls: when one of the user's phones asks caller-ID, the server
// pushes `call.incoming` on the user's stream; a popup shows the caller, or
// for a number nobody has, offers to create the customer with that number.

import {liveStream, session} from './api.js';
import {channelIcon, describe, h, when} from './dom.js';

const MAX_POPUPS = 3;

export function watchCalls(container, go) {
  return liveStream({types: 'call.incoming'}, {
    open: () => { container.dataset.live = 'true'; },
    'call.incoming': (envelope) => {
      const data = envelope.data || {};
      // Admins hear every phone: a popup is for the phone's owner only.
      if (!session.me || data.user_id !== session.me.id) return;
      show(container, data, go);
    },
  });
}

function show(container, data, go) {
  const customer = data.customer;
  const titleId = 'call-' + data.signal_id;
  const dismiss = () => popup.remove();
  const openCustomer = () => {
    dismiss();
    go('#/customers/' + customer.id);
  };
  // The new-customer form, with the number the phone asked about.
  const createCustomer = () => {
    dismiss();
    go('#/new' + (data.number ? '?' + new URLSearchParams({q: data.number}) : ''));
  };
  const body = customer
    ? [
      h('p', {class: 'caller'}, customer.name || '(no name)'),
      h('p', {class: 'caller-number'}, [customer.main_phone, customer.main_email].filter(Boolean).join(' · ')),
      h('ul', {class: 'briefs'}, customer.last_engagements.slice(0, 3).map((e) =>
        h('li', {}, channelIcon(e.channel), ' ', describe(e), ' · ', when(e.occurred_at)))),
      customer.last_engagements.length === 0 ? h('p', {class: 'muted'}, 'No engagement yet') : null,
      h('div', {class: 'buttons'},
        h('button', {type: 'button', class: 'primary open-caller', onclick: openCustomer}, 'Open customer'),
        h('button', {type: 'button', onclick: dismiss}, 'Dismiss')),
    ]
    : [
      h('p', {class: 'caller'}, 'Unknown caller'),
      data.number ? h('p', {class: 'caller-number'}, data.number) : null,
      h('div', {class: 'buttons'},
        h('button', {type: 'button', class: 'primary create-caller', onclick: createCustomer}, 'Create customer'),
        h('button', {type: 'button', onclick: dismiss}, 'Dismiss')),
    ];
  const popup = h('section', {class: 'call', role: 'alertdialog', 'aria-labelledby': titleId, dataset: {customer: data.customer_id || '', signal: data.signal_id}},
    h('h2', {id: titleId}, 'Incoming call'), body);
  popup.addEventListener('keydown', (e) => { if (e.key === 'Escape') dismiss(); });
  container.prepend(popup);
  while (container.children.length > MAX_POPUPS) container.lastElementChild.remove();
}
