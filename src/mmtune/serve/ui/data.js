// Data: upload a file, see every finding (line, field, rule, message with its fix), the raw row.
import { get, upload } from './api.js';
import { drawHistogram } from './chart.js';
import { clear, fmtTime, h, s } from './dom.js';
import { t } from './i18n.js';

export async function dataScreen(view, fileId, params) {
  const status = h('p', { class: 'status', role: 'status' });
  const input = h('input', { type: 'file', id: 'upload-input', accept: '.jsonl,.json,.zip' });
  const button = h('button', { type: 'button', id: 'upload-button', text: t('data.upload') });
  button.addEventListener('click', async () => {
    if (!input.files.length) { status.textContent = t('data.choose'); return; }
    status.textContent = t('data.uploading');
    try {
      const f = await upload(input.files[0]);
      location.hash = `#/data/${f.id}`;
    } catch (e) { status.textContent = e.message; status.className = 'status error'; }
  });
  const list = h('ul', { class: 'files', id: 'file-list' });
  const detail = h('div', { id: 'file-detail' });
  view.append(h('h1', { text: t('data.title') }),
              h('div', { class: 'row' }, input, button), status,
              h('div', { class: 'split' }, h('section', {}, h('h2', { text: t('data.files') }), list), detail));
  const files = await get('/v1/files?purpose=fine-tune');
  for (const f of files.data) {
    list.append(h('li', { class: f.id === fileId ? 'active' : '' },
                  h('a', { href: `#/data/${f.id}`, text: f.filename }),
                  h('small', { text: ` ${f.id} · ${f.bytes} B · ${fmtTime(f.created_at)}` })));
  }
  if (!files.data.length) list.append(h('li', { class: 'muted', text: t('data.none') }));
  if (fileId) await showFile(detail, fileId, params.get('rules'));
}

async function showFile(detail, fileId, rules) {
  const jobCheck = await get(`/v1/files/${encodeURIComponent(fileId)}/check`);
  const check = rules && rules !== jobCheck.rules
    ? await get(`/v1/files/${encodeURIComponent(fileId)}/check?rules=${rules}`) : jobCheck;
  const ruleSelect = h('select', { id: 'rules' }, ['default', 'strict'].map(
    (r) => h('option', { value: r, selected: r === check.rules, text: r === jobCheck.job_rules ? `${r} (${t('data.jobrules')})` : r })));
  ruleSelect.addEventListener('change', () => { location.hash = `#/data/${fileId}?rules=${ruleSelect.value}`; });
  const severity = h('select', { id: 'severity' }, ['all', 'error', 'warning'].map(
    (s) => h('option', { value: s, text: t(`data.sev.${s}`) })));
  const tbody = h('tbody');
  const raw = h('pre', { id: 'raw-row', class: 'raw' });
  const rawTitle = h('h3', { id: 'raw-title' });
  const fill = () => {
    clear(tbody);
    for (const f of check.findings) {
      if (severity.value !== 'all' && f.severity !== severity.value) continue;
      const tr = h('tr', { class: `finding ${f.severity}`, 'data-line': f.line, 'data-rule': f.rule, tabindex: 0 },
                   h('td', { text: f.line || '–' }), h('td', { text: f.severity === 'error' ? t('data.error') : t('data.warning') }),
                   h('td', { class: 'mono', text: f.field }), h('td', { class: 'mono', text: f.rule }),
                   h('td', { text: f.message }));
      tr.addEventListener('click', () => showRaw(fileId, f.line, raw, rawTitle));
      tbody.append(tr);
    }
  };
  severity.addEventListener('change', fill);
  fill();
  const blocked = jobCheck.errors > 0;
  const create = h('a', { class: `button${blocked ? ' disabled' : ''}`, id: 'create-job', 'aria-disabled': blocked ? 'true' : 'false',
                          href: blocked ? undefined : `#/new?training_file=${fileId}`, text: t('data.createjob') });
  detail.append(...[
    h('h2', { text: check.filename }),
    h('dl', { class: 'facts' },
      h('dt', { text: t('data.format') }), h('dd', { id: 'fmt', text: check.format || '–' }),
      h('dt', { text: t('data.kind') }), h('dd', { id: 'kind', text: check.kind || '–' }),
      h('dt', { text: t('data.rows') }), h('dd', { id: 'rows', text: check.rows }),
      h('dt', { text: t('data.errors') }), h('dd', { id: 'n-errors', class: check.errors ? 'bad' : 'good', text: check.errors }),
      h('dt', { text: t('data.warnings') }), h('dd', { id: 'n-warnings', text: check.warnings })),
    h('div', { class: 'row' }, h('label', {}, t('data.rules'), ' ', ruleSelect), h('label', {}, t('data.severity'), ' ', severity), create),
    blocked ? h('p', { class: 'hint', text: t('data.blocked', { n: jobCheck.errors, rules: jobCheck.job_rules }) }) : null,
    check.truncated ? h('p', { class: 'hint', text: t('data.truncated', { n: check.findings.length }) }) : null,
    h('table', { class: 'findings', id: 'findings' },
      h('thead', {}, h('tr', {}, ['line', 'severity', 'field', 'rule', 'message'].map((c) => h('th', { text: t(`data.col.${c}`) })))),
      tbody),
    tokenSection(fileId, (line) => showRaw(fileId, line, raw, rawTitle)),
    rawTitle, raw].filter(Boolean));
}

// Tokens per row with a chosen model's tokenizer (counted by the server through the chat template), drawn
// as a histogram; the rows over max_length listed (click one for its raw line).
function tokenSection(fileId, onLine) {
  const modelSel = h('select', { id: 'tok-model' });
  get('/v1/fine_tuning/models').then((m) => {
    for (const spec of m.data.filter((x) => x.kind !== 'image-generation')) {
      modelSel.append(h('option', { value: spec.id, selected: spec.default, text: spec.id }));
    }
  }).catch(() => {});
  const maxLength = h('input', { id: 'tok-max-length', type: 'number', min: 8, step: 1, value: 2048 });
  const status = h('p', { class: 'status', id: 'tok-status', role: 'status' });
  const svg = s('svg', { id: 'histogram', class: 'chart histogram', role: 'img' });
  const facts = h('dl', { class: 'facts', id: 'tok-facts' });
  const over = h('tbody');
  const overTable = h('table', { id: 'over-rows', hidden: true },
    h('thead', {}, h('tr', {}, h('th', { text: t('data.col.line') }), h('th', { text: t('data.tok.tokens') }))), over);
  const count = async () => {
    status.className = 'status'; status.textContent = t('data.tok.counting'); button.disabled = true;
    try {
      const q = new URLSearchParams({ model: modelSel.value, max_length: maxLength.value || '2048' });
      const r = await get(`/v1/files/${encodeURIComponent(fileId)}/tokens?${q}`);
      drawHistogram(svg, r.histogram, r.max_length);
      svg.dataset.rows = String(r.rows);
      clear(facts).append(
        h('dt', { text: t('data.tok.model') }), h('dd', { text: r.model }),
        h('dt', { text: t('data.tok.range') }), h('dd', { text: `${r.tokens.min} – ${r.tokens.max}` }),
        h('dt', { text: t('data.tok.median') }), h('dd', { text: `${r.tokens.p50} · p95 ${r.tokens.p95}` }),
        h('dt', { text: t('data.tok.total') }), h('dd', { id: 'tok-total', text: r.tokens.total }),
        h('dt', { text: t('data.tok.over', { n: r.max_length }) }),
        h('dd', { id: 'tok-over', class: r.rows_over_max_length ? 'bad' : 'good', text: r.rows_over_max_length }));
      clear(over);
      for (const row of r.over) {
        const tr = h('tr', { class: 'over-row', 'data-line': row.line, tabindex: 0 }, h('td', { text: row.line }), h('td', { text: row.tokens }));
        tr.addEventListener('click', () => onLine(row.line));
        over.append(tr);
      }
      overTable.hidden = !r.over.length;
      status.textContent = r.rows_over_max_length
        ? t('data.tok.cut', { n: r.rows_over_max_length, tokens: r.tokens_over_max_length, max: r.max_length }) : t('data.tok.fits', { max: r.max_length });
      status.className = r.rows_over_max_length ? 'status warn' : 'status';
    } catch (e) { status.textContent = e.message; status.className = 'status error'; }
    button.disabled = false;
  };
  const button = h('button', { type: 'button', id: 'tokens-button', onclick: count, text: t('data.tok.count') });
  return h('section', { id: 'tokens' }, h('h2', { text: t('data.tok.title') }),
    h('div', { class: 'row' }, h('label', {}, t('data.tok.model'), ' ', modelSel), h('label', {}, 'max_length ', maxLength), button),
    status, svg, facts, overTable);
}

async function showRaw(fileId, line, raw, title) {
  if (!line) { title.textContent = t('data.wholefile'); raw.textContent = ''; return; }
  const r = await get(`/v1/files/${encodeURIComponent(fileId)}/lines?line=${line}&count=1`);
  title.textContent = t('data.rawline', { n: line });
  raw.textContent = r.data.length ? r.data[0].text : '';
}
