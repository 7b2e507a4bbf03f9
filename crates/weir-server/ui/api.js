// The JSON API, as the dashboard calls it. Problems (application/problem+json)
// become errors carrying the server's detail.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `the server answered ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// The session's CSRF token, while one is held (auth on): memory only, gone with
// the page. The session itself is an HttpOnly cookie the browser sends with
// every same-origin fetch; a write made with it must echo this token.
let csrf = null;
// What to do when a call finds the session gone (set by app.js once signed in).
let lost = null;

/** Sends `token` (null: none) as `X-CSRF-Token` on every write from now on. */
export function useCsrf(token) {
  csrf = token || null;
}

/** `fn(error)` runs when a call answers 401: the session expired or its key was revoked. */
export function onSessionLost(fn) {
  lost = fn;
}

/**
 * The raw answer: status and body text (a task's payload is read from the text).
 * `session: true` marks the session's own calls (`/v1/session`), for which a 401
 * is an answer (no session, a refused key) rather than a lost session.
 */
export async function call(method, path, body, { session = false } = {}) {
  const init = { method, headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['content-type'] = 'application/json';
  }
  if (csrf && method !== 'GET' && method !== 'HEAD') init.headers['x-csrf-token'] = csrf;
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { detail: `the server did not answer (${e.message})` });
  }
  const text = await res.text();
  if (!res.ok) {
    let p = null;
    try { p = JSON.parse(text); } catch { /* not a problem document */ }
    const err = new ApiError(res.status, p);
    if (res.status === 401 && !session && lost) {
      lost(err);
      // The page that asked is replaced by the sign-in view: its caller waits
      // for good rather than drawing an error over it (and its poll ends).
      return new Promise(() => {});
    }
    throw err;
  }
  return text;
}

/** The parsed answer (null for an empty one, e.g. 204). */
export async function api(method, path, body, opts) {
  const text = await call(method, path, body, opts);
  return text ? JSON.parse(text) : null;
}

export const seg = encodeURIComponent;

/**
 * The source text of `key`'s value in a JSON object's text, or undefined. A
 * payload is the producer's JSON: shown from its own text, its numbers keep every
 * digit and its keys their order (JSON.parse would round big integers).
 */
export function rawField(text, key) {
  let i = 0;
  const n = text.length;
  const ws = () => { while (i < n && ' \t\r\n'.includes(text[i])) i++; };
  const str = () => { // at a '"': returns the string's end (after the quote)
    let j = i + 1;
    while (j < n && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
    return j + 1;
  };
  const value = () => { // skips one value from i
    ws();
    if (text[i] === '"') { i = str(); return; }
    if (text[i] === '{' || text[i] === '[') {
      let depth = 0;
      while (i < n) {
        const c = text[i];
        if (c === '"') { i = str(); continue; }
        if (c === '{' || c === '[') depth++;
        if (c === '}' || c === ']') { depth--; if (depth === 0) { i++; return; } }
        i++;
      }
      return;
    }
    while (i < n && !',}] \t\r\n'.includes(text[i])) i++;
  };
  ws();
  if (text[i] !== '{') return undefined;
  i++;
  for (;;) {
    ws();
    if (text[i] !== '"') return undefined;
    const end = str();
    const name = JSON.parse(text.slice(i, end));
    i = end;
    ws();
    i++; // ':'
    ws();
    const start = i;
    value();
    if (name === key) return text.slice(start, i);
    ws();
    if (text[i] !== ',') return undefined;
    i++;
  }
}

/** JSON text indented by two spaces, every token kept as written. */
export function pretty(raw) {
  let out = '';
  let depth = 0;
  let i = 0;
  const nl = () => '\n' + '  '.repeat(depth);
  while (i < raw.length) {
    const c = raw[i];
    if (c === '"') {
      let j = i + 1;
      while (j < raw.length && raw[j] !== '"') j += raw[j] === '\\' ? 2 : 1;
      out += raw.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    if (' \t\r\n'.includes(c)) { i++; continue; }
    if (c === '{' || c === '[') {
      const close = c === '{' ? '}' : ']';
      let k = i + 1;
      while (k < raw.length && ' \t\r\n'.includes(raw[k])) k++;
      if (raw[k] === close) { out += c + close; i = k + 1; continue; }
      depth++;
      out += c + nl();
    } else if (c === '}' || c === ']') {
      depth--;
      out += nl() + c;
    } else if (c === ',') {
      out += ',' + nl();
    } else if (c === ':') {
      out += ': ';
    } else {
      out += c;
    }
    i++;
  }
  return out;
}
