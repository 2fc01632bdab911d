// Picture playground: an image-generation model (a FLUX base, a picture job's `ft:` model or one of its
// checkpoints) draws a prompt through POST /v1/images/generations (b64_json); a second column draws the
// same prompt at the same seed with another model, so a tuned LoRA is seen beside its base ("does my LoRA
// change anything?"). Pictures come back as base64 PNGs and are shown through object URLs (the CSP allows
// img-src blob:, never data:). Also the helpers other screens use to tell picture models from chat models.
import { get, post } from './api.js';
import { clear, h } from './dom.js';
import { t } from './i18n.js';

export const PICTURE = 'image-generation';

// /v1/models' cards say a model's kind in mmtune's own field (`mmtune.kind`); a card without it is a chat model.
export const isPictureCard = (m) => (m.mmtune && m.mmtune.kind) === PICTURE;
export const isPictureJob = (job) => (job.mmtune && job.mmtune.kind) === PICTURE;

// The picture playground's address for `model`, with `compare` (a job's base, as the job names it) beside it.
export function generateHref(model, compare) {
  const q = new URLSearchParams({ model });
  if (compare) q.set('compare', compare);
  return `#/images?${q}`;
}

// The served picture model a job's `model` means: itself, or the served name of its folder (a picture job
// may name its base by path, and `mmtune serve NAME=PATH` serves it as NAME).
export function servedAs(model, names) {
  if (!model) return null;
  if (names.includes(model)) return model;
  const leaf = model.replace(/[\\/]+$/, '').split(/[\\/]/).pop();
  return names.includes(leaf) ? leaf : null;
}

function pictureUrl(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: 'image/png' }));
}

export async function imagesScreen(view, _arg, params) {
  const names = (await get('/v1/models')).data.filter(isPictureCard).map((m) => m.id);
  view.append(h('h1', { text: t('img.title') }));
  if (!names.length) {
    view.append(h('p', { id: 'no-pictures', class: 'notice', text: t('img.none') }));
    return null;
  }
  const wanted = params.get('model');
  const first = servedAs(wanted, names) || names[0];
  const compare = servedAs(params.get('compare'), names);
  const prompt = h('textarea', { id: 'img-prompt', rows: 3, placeholder: t('img.prompt') });
  prompt.value = params.get('prompt') || '';
  const num = (id, value, min, max, step = 1) => h('input', { id, type: 'number', value, min, max, step });
  const seed = num('img-seed', '0', 0, 2147483647), steps = num('img-steps', '', 1, 100);
  const width = num('img-width', '', 16, 2048, 16), height = num('img-height', '', 16, 2048, 16);
  const n = num('img-n', '1', 1, 10), guidance = num('img-guidance', '', 0, 30, 0.5);
  const status = h('p', { id: 'img-status', class: 'status', role: 'status' });
  const columns = h('div', { class: 'columns', id: 'img-columns' });
  const urls = new Set();
  const dropUrls = () => { for (const u of urls) URL.revokeObjectURL(u); urls.clear(); };
  const notServed = wanted && !servedAs(wanted, names)
    ? h('p', { id: 'img-missing', class: 'notice', text: t('img.missing', { m: wanted }) }) : null;

  const cols = [];
  const column = (name, optional) => {
    const select = h('select', { class: 'img-model' },
      optional ? h('option', { value: '', selected: !name, text: t('img.nocompare') }) : null,
      names.map((m) => h('option', { value: m, selected: m === name, text: m })));
    const out = h('div', { class: 'pictures', 'aria-live': 'polite' });
    const stats = h('p', { class: 'stats' });
    const el = h('section', { class: 'column img-column' }, h('div', { class: 'row' },
      optional ? h('span', { class: 'hint', text: t('img.compare') }) : null, select), out, stats);
    const col = { select, out, stats, el };
    cols.push(col); columns.append(el);
    return col;
  };
  column(first, false);
  column(compare && compare !== first ? compare : '', true);

  const request = () => {
    const body = { prompt: prompt.value, n: Number(n.value) || 1, seed: Number(seed.value) || 0, response_format: 'b64_json' };
    if (steps.value !== '') body.steps = Number(steps.value);
    if (guidance.value !== '') body.guidance = Number(guidance.value);
    if ((width.value === '') !== (height.value === '')) throw new Error(t('img.bothsides'));
    if (width.value !== '') body.size = `${Number(width.value)}x${Number(height.value)}`;
    return body;
  };
  let run = 0;
  const generate = async () => {
    let body;
    try { body = request(); } catch (e) { status.className = 'status error'; status.textContent = e.message; return; }
    if (!prompt.value.trim()) { status.className = 'status error'; status.textContent = t('img.noprompt'); return; }
    status.className = 'status'; status.textContent = '';
    const mine = ++run;
    dropUrls();
    await Promise.all(cols.filter((c) => c.select.value).map(async (col) => {
      clear(col.out); col.stats.className = 'stats'; col.stats.textContent = t('img.drawing'); col.el.dataset.state = 'drawing';
      const started = performance.now();
      try {
        const r = await post('/v1/images/generations', { ...body, model: col.select.value });
        if (mine !== run) return;
        const seconds = ((performance.now() - started) / 1000).toFixed(2);
        r.data.forEach((item, i) => {
          const url = pictureUrl(item.b64_json);
          urls.add(url);
          col.out.append(h('figure', { class: 'picture' }, h('img', { src: url, class: 'generated', alt: prompt.value, 'data-seed': body.seed + i }),
            h('figcaption', { text: t('img.seed', { s: body.seed + i }) })));
        });
        col.stats.textContent = t('img.stats', { n: r.data.length, size: r.size, s: seconds });
        col.el.dataset.state = 'done';
      } catch (e) {
        if (mine !== run) return;
        col.stats.className = 'stats error'; col.stats.textContent = e.message; col.el.dataset.state = 'error';
      }
    }));
  };
  for (const col of cols) col.select.addEventListener('change', () => { clear(col.out); col.stats.textContent = ''; delete col.el.dataset.state; });
  view.append(notServed || '',
    h('div', { class: 'grid' }, h('label', { class: 'field wide' }, h('span', { text: t('img.promptlabel') }), prompt),
      h('label', { class: 'field' }, h('span', { text: 'seed' }), seed), h('label', { class: 'field' }, h('span', { text: t('img.steps') }), steps),
      h('label', { class: 'field' }, h('span', { text: t('img.width') }), width), h('label', { class: 'field' }, h('span', { text: t('img.height') }), height),
      h('label', { class: 'field' }, h('span', { text: 'n' }), n), h('label', { class: 'field' }, h('span', { text: 'guidance' }), guidance)),
    h('p', { class: 'hint', text: t('img.hint') }),
    h('div', { class: 'row' }, h('button', { type: 'button', id: 'img-generate', class: 'primary', onclick: generate, text: t('img.generate') })),
    status, columns);
  return () => { run += 1; dropUrls(); };
}
