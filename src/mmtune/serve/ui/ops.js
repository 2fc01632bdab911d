// Tracked operations on a job's models: merge a LoRA, export GGUF, evaluate over a data file. Started
// from the job page or the Checkpoints screen, followed in an operations table and on their own page
// (#/ops/op-...): status, log, result files (downloaded with the key), the error with its fix, and an
// evaluation's exact match / BLEU / ROUGE-L with every row's prediction beside its reference.
import { fetchBlob, get, post } from './api.js';
import { clear, fmtTime, h } from './dom.js';
import { t } from './i18n.js';

export const DTYPES = ['f16', 'q8_0', 'q4_k_m', 'q5_k_m', 'q6_k', 'q4_0', 'bf16', 'f32'];
const FINAL = ['succeeded', 'failed', 'cancelled'];

function every(ms, fn) {
  let timer = null, stopped = false;
  const tick = async () => {
    let again = true;
    try { again = (await fn()) !== false; } catch (e) { /* the screen shows errors; keep polling */ }
    if (!stopped && again) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// Buttons that start merge / export / eval on `model`; `evalOptions()` gives the eval's file_id (none: the
// job's validation file) and max_tokens; `onStarted(op)` after the server accepted one. Errors show beside
// the buttons. A picture model (`pictures`) has merge only: GGUF and the text evaluation are for text models.
export function opActions(model, { base = false, pictures = false, evalOptions = () => ({}), onStarted = () => {} } = {}) {
  const status = h('span', { class: 'op-status', role: 'status' });
  const start = async (body) => {
    status.className = 'op-status'; status.textContent = t('ops.starting');
    try { const op = await post('/v1/fine_tuning/operations', { ...body, model }); status.textContent = t('ops.started'); onStarted(op); }
    catch (e) { status.className = 'op-status error'; status.textContent = e.message; }
  };
  const dtype = h('select', { class: 'op-dtype', title: 'GGUF type' }, DTYPES.map((d) => h('option', { value: d, text: d })));
  const evalButton = h('button', { type: 'button', class: 'op-eval', text: t('ops.eval'), onclick: () => start({ kind: 'eval', ...evalOptions() }) });
  if (base) return h('span', { class: 'op-actions' }, evalButton, status);
  const merge = h('button', { type: 'button', class: 'op-merge', text: t('ops.merge'), onclick: () => start({ kind: 'merge' }) });
  if (pictures) return h('span', { class: 'op-actions' }, merge, status);
  return h('span', { class: 'op-actions' }, merge,
    dtype, h('button', { type: 'button', class: 'op-export', text: t('ops.export'), onclick: () => start({ kind: 'export', dtype: dtype.value }) }),
    evalButton, status);
}

function summary(op) {
  if (op.error) return op.error.message;
  if (op.metrics) return t('ops.metrics', { em: op.metrics.exact_match.toFixed(1), bleu: op.metrics.bleu.toFixed(1), rouge: op.metrics.rouge_l.toFixed(1), n: op.metrics.n });
  if (op.files.length) return t('ops.nfiles', { n: op.files.length });
  return op.note || '';
}

// A live table of operations (`query`: '' for all, or 'job_id=...'); returns [element, refresh, stop].
export function opsTable(query = '') {
  const tbody = h('tbody');
  const table = h('table', { class: 'operations', id: 'operations' },
    h('thead', {}, h('tr', {}, ['id', 'kind', 'model', 'status', 'created', 'result'].map((c) => h('th', { text: t(`ops.col.${c}`) })))), tbody);
  const refresh = async () => {
    const ops = (await get(`/v1/fine_tuning/operations${query ? `?${query}` : ''}`)).data;
    clear(tbody);
    for (const op of ops) {
      tbody.append(h('tr', { class: 'operation', 'data-op': op.id, 'data-kind': op.kind, 'data-status': op.status },
        h('td', {}, h('a', { href: `#/ops/${op.id}`, class: 'mono', text: op.id })), h('td', { text: t(`ops.kind.${op.kind}`) }),
        h('td', { class: 'mono', text: op.model }),
        h('td', {}, h('span', { class: `badge ${op.status}`, text: t(`status.${op.status}`) })),
        h('td', { text: fmtTime(op.created_at) }), h('td', { class: op.error ? 'error' : '', text: summary(op) })));
    }
    if (!ops.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted', text: t('ops.none') })));
  };
  const stop = every(2000, refresh);
  return [table, refresh, stop];
}

export async function download(opId, name) {
  const path = `/v1/fine_tuning/operations/${encodeURIComponent(opId)}/files/${name.split('/').map(encodeURIComponent).join('/')}`;
  const blob = await fetchBlob(path);
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: name.split('/').pop(), hidden: true });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function lastUser(messages) {
  const m = [...messages].reverse().find((x) => x.role === 'user');
  if (!m) return '';
  return typeof m.content === 'string' ? m.content : m.content.filter((p) => p.type === 'text').map((p) => p.text).join(' ');
}

// One operation's page: status, cancel, error with its fix, output path and files, metrics and rows, log.
export async function opScreen(view, opId) {
  const id = encodeURIComponent(opId);
  const head = h('div', { id: 'op-head' });
  const err = h('p', { id: 'op-error', class: 'error', role: 'alert' });
  const facts = h('dl', { class: 'facts', id: 'op-facts' });
  const files = h('ul', { class: 'files', id: 'op-files' });
  const metrics = h('div', { id: 'op-metrics' });
  const rowsBody = h('tbody');
  const rowsTable = h('table', { id: 'op-rows', hidden: true }, h('thead', {}, h('tr', {},
    ['line', 'prompt', 'reference', 'prediction', 'rouge', 'bleu'].map((c) => h('th', { text: t(`ops.row.${c}`) })))), rowsBody);
  const logPre = h('pre', { id: 'op-log', class: 'log' });
  const status = h('p', { class: 'status', role: 'status' });
  view.append(h('p', {}, h('a', { href: '#/checkpoints', text: `← ${t('nav.checkpoints')}` })), head, err, facts,
    h('h2', { text: t('ops.files') }), files, status, metrics, rowsTable, h('h2', { text: t('job.log') }), logPre);
  let logOffset = 0, logText = '', shownRows = false;
  const tick = async () => {
    const op = await get(`/v1/fine_tuning/operations/${id}`);
    const log = await get(`/v1/fine_tuning/operations/${id}/log?offset=${logOffset}`);
    clear(head);
    const cancel = h('button', { type: 'button', id: 'op-cancel', class: 'danger', text: t('ops.cancel'), hidden: FINAL.includes(op.status),
                                 onclick: async () => { cancel.disabled = true; await post(`/v1/fine_tuning/operations/${id}/cancel`); } });
    head.append(h('h1', { class: 'mono', text: op.id }),
      h('p', {}, h('span', { id: 'op-status', class: `badge ${op.status}`, 'data-status': op.status, text: t(`status.${op.status}`) }), ' ',
        h('span', { text: `${t(`ops.kind.${op.kind}`)} · ${op.model}` }), ' ',
        op.job_id ? h('a', { href: `#/jobs/${op.job_id}`, class: 'mono', text: op.job_id }) : null, ' ', cancel));
    err.textContent = op.error ? `${op.error.message}` : '';
    clear(facts).append(
      h('dt', { text: t('ops.params') }), h('dd', { text: Object.entries(op.params).map(([k, v]) => `${k}=${v}`).join(', ') || '–' }),
      h('dt', { text: t('ops.col.created') }), h('dd', { text: fmtTime(op.created_at) }),
      h('dt', { text: t('ops.finished') }), h('dd', { text: fmtTime(op.finished_at) }),
      h('dt', { text: t('ops.output') }), h('dd', { id: 'op-output', class: 'mono', text: op.output_dir || '–' }),
      ...(op.note ? [h('dt', { text: t('ops.note') }), h('dd', { text: op.note })] : []));
    clear(files);
    for (const f of op.files) {
      const b = h('button', { type: 'button', class: 'download', text: t('ops.download') });
      b.addEventListener('click', async () => {
        try { await download(op.id, f.name); b.dataset.done = '1'; } catch (e) { status.textContent = e.message; status.className = 'status error'; }
      });
      files.append(h('li', { 'data-name': f.name }, h('span', { class: 'mono', text: f.name }), ' ', h('small', { text: `${f.bytes} B` }), ' ', b));
    }
    if (!op.files.length) files.append(h('li', { class: 'muted', text: FINAL.includes(op.status) ? t('ops.nofiles') : t('ops.working') }));
    clear(metrics);
    if (op.metrics) {
      metrics.append(h('h2', { text: t('ops.scores') }), h('dl', { class: 'facts' },
        h('dt', { text: 'exact match' }), h('dd', { id: 'm-em', text: op.metrics.exact_match.toFixed(2) }),
        h('dt', { text: 'BLEU' }), h('dd', { id: 'm-bleu', text: op.metrics.bleu.toFixed(2) }),
        h('dt', { text: 'ROUGE-L' }), h('dd', { id: 'm-rouge', text: op.metrics.rouge_l.toFixed(2) }),
        h('dt', { text: t('ops.scored') }), h('dd', { id: 'm-n', text: op.metrics.n })));
    }
    if (op.kind === 'eval' && op.status === 'succeeded' && !shownRows) {
      shownRows = true;
      const rows = await get(`/v1/fine_tuning/operations/${id}/rows?limit=200`);
      for (const r of rows.data) {
        rowsBody.append(h('tr', { class: 'eval-row', 'data-line': r.line }, h('td', { text: r.line }), h('td', { text: lastUser(r.prompt) }),
          h('td', { class: 'reference', text: r.reference ?? '–' }), h('td', { class: 'prediction', text: r.prediction }),
          h('td', { text: r.scores ? r.scores.rouge_l.toFixed(1) : '–' }), h('td', { text: r.scores ? r.scores.bleu.toFixed(1) : '–' })));
      }
      rowsTable.hidden = false;
      if (rows.total > rows.data.length) status.textContent = t('ops.morerows', { n: rows.data.length, total: rows.total });
    }
    if (log.text) { logText = (logText + log.text).split('\n').slice(-300).join('\n'); logPre.textContent = logText; }
    logOffset = log.next_offset;
    return !FINAL.includes(op.status);
  };
  return every(1000, tick);
}
