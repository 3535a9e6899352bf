// The admin API, called with the key kept in this tab's sessionStorage (never localStorage, never a cookie,
// never a URL). The API's own error message is what a failed call reports.

const STORE_KEY = 'llm-gateway.console.key';
// The gateway's root, from this module's own URL (…/console/assets/api.js): right behind a path prefix too.
const ROOT = new URL('../../', import.meta.url);

export class ApiError extends Error {
  constructor(status, message, code, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body; // the parsed answer, whatever its shape
  }
}

export const session = {
  key: () => window.sessionStorage.getItem(STORE_KEY),
  save: (key) => window.sessionStorage.setItem(STORE_KEY, key),
  clear: () => window.sessionStorage.removeItem(STORE_KEY),
};

let onUnauthorized = () => {};

/** What to do when the key stops working (revoked admin key, gateway restarted with another one). */
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  let body = null;
  try {
    body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch (e) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, message, code, body);
}

/** A raw call: the Response, or an ApiError with the API's message. `key` overrides the stored key. */
export async function call(path, {method = 'GET', body, type, key, accept} = {}) {
  const headers = {Authorization: `Bearer ${key || session.key() || ''}`};
  if (type) headers['Content-Type'] = type;
  if (accept) headers.Accept = accept;
  let response;
  try {
    response = await fetch(new URL(path, ROOT), {
      method, body, headers, credentials: 'omit', cache: 'no-store', redirect: 'error', referrerPolicy: 'no-referrer',
    });
  } catch (e) {
    throw new ApiError(0, 'The gateway cannot be reached.', 'network_error');
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && !key) onUnauthorized(error);
    throw error;
  }
  return response;
}

/** A JSON call: the parsed body. */
export async function json(path, options = {}) {
  const init = {...options};
  if (options.data !== undefined) {
    init.body = JSON.stringify(options.data);
    init.type = 'application/json';
  }
  const response = await call(path, init);
  return response.status === 204 ? null : response.json();
}

/** A call that answers with a body even when it refuses (the reload: 400 with its problems). */
export async function jsonEvenIfRefused(path, options, refusedStatus) {
  try {
    return {ok: true, body: await json(path, options)};
  } catch (error) {
    if (error instanceof ApiError && error.status === refusedStatus && error.body) return {ok: false, body: error.body};
    throw error;
  }
}
