// The one way the studio talks to the server: same origin, the key as a Bearer header.
const KEY = 'mmtune.key';

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status; this.param = err.param || null; this.code = err.code || null;
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }
export const getKey = () => sessionStorage.getItem(KEY) || '';
export const setKey = (k) => sessionStorage.setItem(KEY, k);
export const dropKey = () => sessionStorage.removeItem(KEY);

function headers(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function answer(r) {
  const type = r.headers.get('content-type') || '';
  const body = type.includes('json') ? await r.json() : await r.text();
  if (r.status === 401) onUnauthorized();
  if (!r.ok) throw new ApiError(r.status, typeof body === 'string' ? null : body);
  return body;
}

export async function get(path) { return answer(await fetch(path, { headers: headers() })); }

export async function post(path, body) {
  return answer(await fetch(path, { method: 'POST', headers: headers({ 'Content-Type': 'application/json' }),
                                    body: JSON.stringify(body ?? {}) }));
}

export async function upload(file) {
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', file, file.name);
  return answer(await fetch('/v1/files', { method: 'POST', headers: headers(), body: form }));
}

// A file the API sends (a result download) as a Blob, fetched with the key.
export async function fetchBlob(path) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) return answer(r);
  return r.blob();
}

// Whether `key` opens the API (a server without a key takes any): /health lists the models only to a
// caller with the key, and never answers 401 (so a wrong key is no failed request).
export async function tryKey(key) {
  const r = await fetch('/health', { headers: key ? { Authorization: `Bearer ${key}` } : {} });
  return r.ok && 'models' in (await r.json());
}

// POST an OpenAI streaming request; onDelta(text) per content piece; resolves to {usage, finish}.
export async function stream(path, body, onDelta, signal) {
  const r = await fetch(path, { method: 'POST', signal, headers: headers({ 'Content-Type': 'application/json' }),
                                body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }) });
  if (!r.ok) return answer(r);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = '', usage = null, finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') return { usage, finish };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk);
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) onDelta(c.delta.content);
          if (c.finish_reason) finish = c.finish_reason;
        }
      }
    }
  }
  return { usage, finish };
}
