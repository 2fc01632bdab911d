// Data: upload a file, see every finding (line, field, rule, message with its fix), the raw row.
import { get, upload } from './api.js';
import { clear, fmtTime, h } from './dom.js';
import { t } from './i18n.js';

export async function dataScreen(view, fileId, params) {
  const status = h('p', { class: 'status', role: 'status' });
  const input = h('input', { type: 'file', id: 'upload-input', accept: '.jsonl,.json' });
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
    rawTitle, raw].filter(Boolean));
}

async function showRaw(fileId, line, raw, title) {
  if (!line) { title.textContent = t('data.wholefile'); raw.textContent = ''; return; }
  const r = await get(`/v1/files/${encodeURIComponent(fileId)}/lines?line=${line}&count=1`);
  title.textContent = t('data.rawline', { n: line });
  raw.textContent = r.data.length ? r.data[0].text : '';
}
