// The root's REST API from the browser: the login kept in sessionStorage (this tab only),
// the bearer token on every call, and one refresh with the refresh token when the access
// token has expired (POST /api/auth/refresh).

const KEY = 'canopy.session';

/** An error answer: its status and body ({message, field?, problems?}). */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/** The saved login ({username, token, refresh_token}) or null. */
export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || 'null');
  } catch {
    return null;
  }
}

function save(s) {
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}

/** The access token's claims (user, roles), read without checking: the root checks. */
export function claims() {
  const t = session()?.token;
  if (!t) return null;
  try {
    const part = t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part.padEnd(part.length + ((4 - part.length % 4) % 4), '=')));
  } catch {
    return null;
  }
}

export function isAdmin() {
  return (claims()?.roles || []).includes('Admin');
}

let onLoggedOut = () => {};
/** Called when the login is gone (logged out, or the refresh token was refused). */
export function whenLoggedOut(f) {
  onLoggedOut = f;
}

async function readBody(r) {
  const text = await r.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return { message: text };
  }
}

export async function login(username, password, organization) {
  const body = { username, password };
  if (organization) body.organization_name = organization;
  const r = await fetch('/api/auth/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const b = await readBody(r);
  if (!r.ok) throw new ApiError(r.status, b);
  save({ username, token: b.token, refresh_token: b.refresh_token });
}

export function logout() {
  save(null);
  onLoggedOut();
}

let refreshing = null;
/** A new access token from the refresh token; one request however many callers wait. */
async function refresh() {
  refreshing ??= (async () => {
    const s = session();
    if (!s?.refresh_token) return false;
    const r = await fetch('/api/auth/refresh', {
      method: 'POST',
      headers: { Authorization: `Bearer ${s.refresh_token}` },
    });
    if (!r.ok) return false;
    const b = await readBody(r);
    save({ ...s, token: b.token });
    return true;
  })().finally(() => { refreshing = null; });
  return refreshing;
}

/**
 * fetch() with the bearer token; on 401 the token is refreshed once and the request sent
 * again. A refused refresh logs out. Returns the Response (any status but that 401).
 */
export async function authFetch(path, options = {}) {
  const send = () => fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${session()?.token || ''}` },
  });
  let r = await send();
  if (r.status === 401) {
    if (await refresh()) r = await send();
    if (r.status === 401) {
      logout();
      throw new ApiError(401, await readBody(r));
    }
  }
  return r;
}

/** A JSON call: the decoded answer, or an ApiError. */
export async function api(method, path, body) {
  const options = { method };
  if (body !== undefined) {
    options.headers = { 'Content-Type': 'application/json' };
    options.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const r = await authFetch(path, options);
  const b = await readBody(r);
  if (!r.ok) throw new ApiError(r.status, b);
  return b;
}

export const get = path => api('GET', path);
