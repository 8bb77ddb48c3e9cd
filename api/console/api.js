// The session and every call to the JSON API.
//
// The access token lives in memory only. The refresh token is kept in
// sessionStorage: it survives a reload of this tab, is not shared with other
// tabs or kept after the tab closes, and the page's Content-Security-Policy
// allows no inline or foreign script that could read it. The access token
// is renewed a minute before it expires, and once more when an answer is
// 401; refresh tokens are single use, so one renewal runs at a time.

const REFRESH_KEY = 'crm.refresh_token';

let accessToken = null;
let renewTimer = null;
let renewing = null;
const endListeners = [];

/** Who is logged in (`GET /v1/me`), once logged in. */
export const session = {me: null};

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
  /** `{field: message}` from a validation problem's `errors`. */
  get fields() {
    const out = {};
    for (const e of this.problem.errors || []) out[e.field] = e.message;
    return out;
  }
}

/** Called with a reason when the session ends without the user asking. */
export function onSessionEnd(listener) {
  endListeners.push(listener);
}

function keep(tokens) {
  accessToken = tokens.access_token;
  sessionStorage.setItem(REFRESH_KEY, tokens.refresh_token);
  clearTimeout(renewTimer);
  const renewIn = Math.max(5, tokens.expires_in - 60) * 1000;
  renewTimer = setTimeout(() => renew().catch(() => {}), renewIn);
}

function forget() {
  accessToken = null;
  session.me = null;
  clearTimeout(renewTimer);
  sessionStorage.removeItem(REFRESH_KEY);
}

async function send(method, path, body, contentType) {
  const headers = {Accept: 'application/json'};
  if (accessToken) headers.Authorization = 'Bearer ' + accessToken;
  if (body !== undefined) headers['Content-Type'] = contentType || 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return {response, data: null};
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = {detail: text};
  }
  return {response, data};
}

/** Exchanges the refresh token for a new pair; ends the session if refused. */
function renew() {
  if (!renewing) {
    renewing = (async () => {
      const refresh = sessionStorage.getItem(REFRESH_KEY);
      if (!refresh) throw new ApiError(401, {detail: 'not logged in'});
      const {response, data} = await send('POST', '/v1/auth/refresh', {refresh_token: refresh});
      if (!response.ok) {
        const ended = session.me !== null;
        forget();
        if (ended) endListeners.forEach((l) => l('Your session has ended. Log in again.'));
        throw new ApiError(response.status, data);
      }
      keep(data);
    })().finally(() => {
      renewing = null;
    });
  }
  return renewing;
}

/** Calls the API; renews the access token once on 401. Throws ApiError. */
export async function api(path, {method = 'GET', body, contentType} = {}) {
  let {response, data} = await send(method, path, body, contentType);
  if (response.status === 401 && sessionStorage.getItem(REFRESH_KEY)) {
    await renew();
    ({response, data} = await send(method, path, body, contentType));
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export async function login(email, password) {
  const {response, data} = await send('POST', '/v1/auth/login', {email, password});
  if (!response.ok) throw new ApiError(response.status, data);
  keep(data);
  session.me = await api('/v1/me');
  return session.me;
}

/** Picks up this tab's session after a reload; null when there is none. */
export async function resume() {
  if (!sessionStorage.getItem(REFRESH_KEY)) return null;
  try {
    await renew();
    session.me = await api('/v1/me');
    return session.me;
  } catch {
    forget();
    return null;
  }
}

export async function logout() {
  const refresh = sessionStorage.getItem(REFRESH_KEY);
  try {
    if (refresh) await api('/v1/auth/logout', {method: 'POST', body: {refresh_token: refresh}});
  } finally {
    forget();
  }
}

/** Checks the session after a stream ended it: ends it here too if so. */
export async function checkSession() {
  try {
    await api('/v1/me');
    return true;
  } catch {
    return false;
  }
}

/**
 * A live stream (`GET /v1/stream`) opened with a single-use ticket, since
 * EventSource cannot send headers. After an error or `closed`, it opens
 * again with a new ticket from the last event id. Returns `{close()}`.
 * `handlers` maps event types to functions of the parsed `data`.
 */
export function liveStream(params, handlers) {
  let source = null;
  let lastId = null;
  let closed = false;
  let wait = 500;
  let retry = null;

  async function open() {
    if (closed) return;
    try {
      const {ticket} = await api('/v1/stream/tickets', {method: 'POST', body: {}});
      if (closed) return;
      const query = new URLSearchParams(params);
      query.set('ticket', ticket);
      if (lastId) query.set('after', lastId);
      source = new EventSource('/v1/stream?' + query);
      source.onopen = () => {
        wait = 500;
        if (handlers.open) handlers.open();
      };
      source.onerror = () => {
        console.info('live stream interrupted; opening it again');
        again();
      };
      for (const [type, handler] of Object.entries(handlers)) {
        if (type === 'open' || type === 'reset') continue;
        source.addEventListener(type, (event) => {
          if (event.lastEventId) lastId = event.lastEventId;
          handler(JSON.parse(event.data));
        });
      }
      source.addEventListener('reset', () => {
        lastId = null;
        if (handlers.reset) handlers.reset();
      });
      source.addEventListener('closed', async (event) => {
        const reason = JSON.parse(event.data).reason;
        console.info('live stream closed by the server:', reason);
        source.close();
        if (reason === 'session_ended' && !(await checkSession())) return;
        again();
      });
    } catch (e) {
      if (e.status === 401 || e.status === 403) return;
      again();
    }
  }

  function again() {
    if (source) source.close();
    if (closed) return;
    clearTimeout(retry);
    retry = setTimeout(open, wait);
    wait = Math.min(wait * 2, 15000);
  }

  open();
  return {
    close() {
      closed = true;
      clearTimeout(retry);
      if (source) source.close();
    },
  };
}
