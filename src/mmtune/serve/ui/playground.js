// Playground: 2-4 columns stream the same prompt with the same parameters at once (one
// /v1/chat/completions stream each); tokens and latency per column; an image dropped here is scaled
// down in the browser and sent as a data: URL. A row of an uploaded file (a validation file) can be the
// input, its reference answer shown beside the columns; "evaluate" runs the columns' models over the file.
// Only chat models are offered: an image-generation model named here is pointed to the picture playground.
import { get, post, stream } from './api.js';
import { clear, h } from './dom.js';
import { t } from './i18n.js';
import { generateHref, isPictureCard } from './images.js';

const MAX_SIDE = 768;

export async function playgroundScreen(view, _arg, params) {
  const [models, files] = await Promise.all([get('/v1/models'), get('/v1/files?purpose=fine-tune')]);
  const served = models.data.filter((m) => !isPictureCard(m)).map((m) => m.id);
  const pictureNames = new Set(models.data.filter(isPictureCard).map((m) => m.id));
  const asked = (params.get('models') || '').split(',').filter(Boolean);
  const wanted = asked.filter((m) => !pictureNames.has(m));
  const elsewhere = asked.filter((m) => pictureNames.has(m)).map((m) =>
    h('p', { class: 'notice picture-model', 'data-model': m }, t('pg.picturemodel', { m }), ' ',
      h('a', { class: 'button generate', href: generateHref(m), text: t('job.generate') })));
  if (!served.length) {
    view.append(h('h1', { text: t('pg.title') }), ...elsewhere, h('p', { id: 'no-chat', class: 'notice' }, t('pg.notext'), ' ',
      pictureNames.size ? h('a', { href: '#/images', text: t('nav.images') }) : ''));
    return null;
  }
  let names = wanted.length ? wanted : served.slice(0, 2);
  while (names.length < 2) names.push(served[0]);
  names = names.slice(0, 4);
  const system = h('textarea', { id: 'system', rows: 2, placeholder: t('pg.system') });
  const prompt = h('textarea', { id: 'prompt', rows: 3, placeholder: t('pg.prompt') });
  const num = (id, value, step, min) => h('input', { id, type: 'number', value, step, min });
  const temperature = num('temperature', '0.7', '0.1', '0'), maxTokens = num('max-tokens', '64', '1', '1');
  const seed = num('seed', '', '1', '0'), stop = h('input', { id: 'stop', type: 'text', placeholder: '\\n\\n' });
  const columns = h('div', { class: 'columns', id: 'columns' });
  const image = { url: null };
  const drop = h('div', { id: 'drop', class: 'drop', tabindex: 0, text: t('pg.drop') });
  const preview = h('canvas', { id: 'preview', width: 1, height: 1, hidden: true });
  const fileInput = h('input', { type: 'file', id: 'image-input', accept: 'image/*' });
  const clearImage = h('button', { type: 'button', id: 'clear-image', text: t('pg.clearimage'), hidden: true });
  const takeImage = async (file) => {
    if (!file || !file.type.startsWith('image/')) return;
    const bitmap = await createImageBitmap(file);
    const k = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
    preview.width = Math.max(1, Math.round(bitmap.width * k)); preview.height = Math.max(1, Math.round(bitmap.height * k));
    preview.getContext('2d').drawImage(bitmap, 0, 0, preview.width, preview.height);
    image.url = preview.toDataURL('image/jpeg', 0.9);
    preview.hidden = false; clearImage.hidden = false;
    drop.textContent = t('pg.attached', { w: preview.width, h: preview.height });
  };
  clearImage.addEventListener('click', () => { image.url = null; preview.hidden = true; clearImage.hidden = true; drop.textContent = t('pg.drop'); });
  fileInput.addEventListener('change', () => takeImage(fileInput.files[0]));
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); takeImage(e.dataTransfer.files[0]); });

  // prompts from a file: its rows as conversations, each with the reference answer
  const chosen = { context: [], reference: null };
  const fileSel = h('select', { id: 'prompt-file' }, h('option', { value: '', text: t('pg.nofile') }),
    files.data.map((f) => h('option', { value: f.id, selected: f.id === params.get('file'), text: `${f.filename} (${f.id})` })));
  const rowSel = h('select', { id: 'prompt-row', disabled: true });
  const reference = h('div', { id: 'reference', class: 'reference', hidden: true });
  const fileNote = h('span', { class: 'hint', id: 'prompt-note' });
  const evalStatus = h('p', { class: 'status', id: 'eval-status', role: 'status' });
  let rows = [];
  const textOf = (m) => (typeof m.content === 'string' ? m.content : (m.content || []).filter((p) => p.type === 'text').map((p) => p.text).join('\n'));
  const pickRow = () => {
    const r = rows[Number(rowSel.value)];
    if (!r) { chosen.context = []; chosen.reference = null; reference.hidden = true; return; }
    const msgs = r.messages.slice();
    const sys = msgs.length && msgs[0].role === 'system' ? msgs.shift() : null;
    const last = msgs.length && msgs[msgs.length - 1].role === 'user' ? msgs.pop() : null;
    system.value = sys ? textOf(sys) : '';
    prompt.value = last ? textOf(last) : '';
    chosen.context = msgs; chosen.reference = r.reference;
    clear(reference).append(h('strong', { text: t('pg.reference') }), ' ', h('span', { id: 'reference-text', text: r.reference ?? t('pg.noreference') }));
    reference.hidden = false;
  };
  const loadFile = async () => {
    clear(rowSel); rows = []; rowSel.disabled = true; fileNote.textContent = '';
    if (!fileSel.value) { pickRow(); return; }
    const r = await get(`/v1/files/${encodeURIComponent(fileSel.value)}/prompts?limit=200`);
    rows = r.data;
    rows.forEach((row, i) => {
      const user = [...row.messages].reverse().find((m) => m.role === 'user');
      rowSel.append(h('option', { value: i, text: `${row.line}: ${(user ? textOf(user) : '').slice(0, 80)}` }));
    });
    rowSel.disabled = !rows.length;
    fileNote.textContent = t('pg.rows', { n: r.total, skipped: r.skipped + r.skipped_media });
    pickRow();
  };
  fileSel.addEventListener('change', loadFile);
  rowSel.addEventListener('change', pickRow);
  const evaluate = async () => {
    if (!fileSel.value) { evalStatus.textContent = t('pg.choosefile'); return; }
    clear(evalStatus);
    for (const name of [...new Set(cols.map((c) => c.select.value))]) {
      try {
        const op = await post('/v1/fine_tuning/operations', { kind: 'eval', model: name, file_id: fileSel.value });
        evalStatus.append(h('a', { href: `#/ops/${op.id}`, class: 'eval-op', 'data-model': name, text: `${name}: ${op.id}` }), ' ');
      } catch (e) { evalStatus.append(h('span', { class: 'error', text: `${name}: ${e.message}` }), ' '); }
    }
  };

  const cols = [];
  const addColumn = (name) => {
    if (cols.length >= 4) return;
    const select = h('select', { class: 'col-model' }, served.map((m) => h('option', { value: m, selected: m === name, text: m })));
    if (!served.includes(name)) select.append(h('option', { value: name, selected: true, text: name }));
    const out = h('div', { class: 'answer', 'aria-live': 'polite' });
    const stats = h('p', { class: 'stats' });
    const remove = h('button', { type: 'button', class: 'remove', text: '×', title: t('pg.remove') });
    const col = { select, out, stats, el: h('section', { class: 'column' }, h('div', { class: 'row' }, select, remove), out, stats) };
    remove.addEventListener('click', () => { if (cols.length > 2) { cols.splice(cols.indexOf(col), 1); col.el.remove(); } });
    cols.push(col); columns.append(col.el);
  };
  names.forEach(addColumn);
  let controllers = [];
  const run = async () => {
    controllers.forEach((c) => c.abort());
    controllers = [];
    const content = image.url
      ? [{ type: 'text', text: prompt.value }, { type: 'image_url', image_url: { url: image.url } }] : prompt.value;
    const messages = [...(system.value.trim() ? [{ role: 'system', content: system.value }] : []), ...chosen.context, { role: 'user', content }];
    const base = { messages, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) };
    if (seed.value !== '') base.seed = Number(seed.value);
    if (stop.value) base.stop = [stop.value.replace(/\\n/g, '\n')];
    await Promise.all(cols.map(async (col) => {
      const ctl = new AbortController(); controllers.push(ctl);
      clear(col.out); col.stats.textContent = t('pg.waiting'); col.el.dataset.state = 'streaming';
      const started = performance.now(); let first = null, pieces = 0;
      try {
        const { usage, finish } = await stream('/v1/chat/completions', { ...base, model: col.select.value }, (piece) => {
          if (first === null) first = performance.now() - started;
          pieces += 1;
          col.out.append(document.createTextNode(piece));
          col.stats.textContent = t('pg.streaming', { n: pieces });
        }, ctl.signal);
        const total = (performance.now() - started) / 1000;
        const tokens = usage ? usage.completion_tokens : pieces;
        col.stats.textContent = t('pg.stats', { tokens, first: ((first ?? 0) / 1000).toFixed(2), total: total.toFixed(2),
                                                tps: (tokens / Math.max(total, 1e-3)).toFixed(1), finish: finish || '' });
        col.el.dataset.state = 'done';
      } catch (e) {
        if (e.name === 'AbortError') return;
        col.stats.textContent = e.message; col.stats.className = 'stats error'; col.el.dataset.state = 'error';
      }
    }));
  };
  view.append(
    h('h1', { text: t('pg.title') }), ...elsewhere,
    h('div', { class: 'grid' }, h('label', { class: 'field wide' }, h('span', { text: t('pg.systemlabel') }), system),
      h('label', { class: 'field wide' }, h('span', { text: t('pg.promptlabel') }), prompt),
      h('label', { class: 'field' }, h('span', { text: 'temperature' }), temperature), h('label', { class: 'field' }, h('span', { text: 'max_tokens' }), maxTokens),
      h('label', { class: 'field' }, h('span', { text: 'seed' }), seed), h('label', { class: 'field' }, h('span', { text: 'stop' }), stop)),
    h('div', { class: 'row' }, h('label', {}, t('pg.fromfile'), ' ', fileSel), rowSel, fileNote,
      h('button', { type: 'button', id: 'eval-button', onclick: evaluate, text: t('pg.evaluate') })),
    evalStatus, reference,
    h('div', { class: 'row' }, drop, fileInput, clearImage, preview),
    h('div', { class: 'row' }, h('button', { type: 'button', id: 'send', class: 'primary', onclick: run, text: t('pg.send') }),
      h('button', { type: 'button', id: 'add-column', onclick: () => addColumn(served[0]), text: t('pg.add') })),
    columns);
  if (fileSel.value) await loadFile();
  return () => controllers.forEach((c) => c.abort());
}
