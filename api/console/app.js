// The console's entry: log in, then one page at a time by the URL's hash
// (`#/customers/<id>`, `#/board`, ...), with the search box and the
// incoming-call popups always there.

import {login, logout, onSessionEnd, resume, session} from './api.js';
import {adminPage, devicesPage, duplicatesPage} from './admin.js';
import {boardPage} from './board.js';
import {watchCalls} from './calls.js';
import {customerPage, newCustomerPage} from './customer.js';
import {clear, h, problemText} from './dom.js';
import {mountSearch} from './search.js';

const main = document.getElementById('main');
const top = document.getElementById('top');
let leavePage = null;
let calls = null;

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (!session.me) return;
  if (leavePage) leavePage();
  leavePage = null;
  const [path, search] = location.hash.replace(/^#/, '').split('?');
  const query = new URLSearchParams(search || '');
  const parts = path.split('/').filter(Boolean);
  document.querySelectorAll('header nav a').forEach((a) => {
    a.toggleAttribute('aria-current', a.getAttribute('href') === '#/' + (parts[0] || ''));
  });
  let page = 'home';
  if (parts[0] === 'customers' && parts[1]) {
    page = 'customer';
    leavePage = customerPage(main, parts[1], go);
  } else if (parts[0] === 'new') {
    page = 'new';
    newCustomerPage(main, query, go);
  } else if (parts[0] === 'board') {
    page = 'board';
    leavePage = boardPage(main, query, go);
  } else if (parts[0] === 'duplicates') {
    page = 'duplicates';
    duplicatesPage(main, go);
  } else if (parts[0] === 'devices') {
    page = 'devices';
    devicesPage(main);
  } else if (parts[0] === 'admin') {
    page = 'admin';
    adminPage(main, parts[1], go);
  } else {
    home();
  }
  document.body.dataset.page = page;
  document.title = `CRM · ${page}`;
  // A screen reader starts at the new page, unless the page chose a field.
  if (page !== 'new' && !main.contains(document.activeElement)) main.focus({preventScroll: true});
}

function home() {
  clear(main, h('section', {class: 'card home', 'aria-labelledby': 'home-title'},
    h('h1', {id: 'home-title'}, `Hello, ${session.me.name || session.me.email}`),
    h('p', {}, 'Press ', h('kbd', {}, '/'), ' to search customers by name, phone or email. ',
      'Arrow keys choose a result, Enter opens it.'),
    h('p', {}, 'When one of your phones rings, the caller appears at the bottom right.')));
}

function showLogin(message) {
  top.hidden = true;
  if (leavePage) leavePage();
  leavePage = null;
  if (calls) calls.close();
  calls = null;
  document.body.dataset.page = 'login';
  const error = h('p', {class: 'form-error', id: 'login-error', role: 'alert'}, message || '');
  const form = h('form', {class: 'card login', 'aria-labelledby': 'login-title'},
    h('h1', {id: 'login-title'}, 'Log in to the CRM'),
    h('div', {class: 'field'}, h('label', {for: 'email'}, 'Email'),
      h('input', {id: 'email', name: 'email', type: 'email', autocomplete: 'username', required: true})),
    h('div', {class: 'field'}, h('label', {for: 'password'}, 'Password'),
      h('input', {id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true})),
    error,
    h('button', {type: 'submit', class: 'primary'}, 'Log in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const button = form.querySelector('button');
    button.disabled = true;
    try {
      await login(form.elements.email.value.trim(), form.elements.password.value);
      start();
    } catch (err) {
      error.textContent = err.status === 401 ? 'Wrong email or password' : problemText(err);
    } finally {
      button.disabled = false;
    }
  });
  clear(main, form);
  form.elements.email.focus();
}

function start() {
  top.hidden = false;
  document.getElementById('who').textContent = `${session.me.name || session.me.email} (${session.me.role})`;
  document.querySelectorAll('[data-admin]').forEach((el) => { el.hidden = session.me.role !== 'admin'; });
  mountSearch(document.getElementById('search'), (id) => go('#/customers/' + id));
  calls = watchCalls(document.getElementById('calls'), go);
  route();
}

onSessionEnd((reason) => showLogin(reason));
window.addEventListener('hashchange', route);
document.getElementById('logout').addEventListener('click', async () => {
  await logout().catch(() => {});
  showLogin('You are logged out.');
});

resume().then((me) => (me ? start() : showLogin()));
