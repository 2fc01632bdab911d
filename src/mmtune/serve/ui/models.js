// Models: what this server serves (fine-tuned ones with their job and base; each with its kind, from the
// card's `mmtune.kind`), and the registry with memory estimates; copy an id, take the code that calls it,
// or open it: the chat playground for a text model, the picture playground for an image-generation one.
import { get } from './api.js';
import { copyButton, h } from './dom.js';
import { t } from './i18n.js';
import { generateHref, isPictureCard } from './images.js';

export async function modelsScreen(view) {
  const [served, jobs, registry] = await Promise.all([get('/v1/models'), get('/v1/fine_tuning/jobs?limit=100'),
                                                      get('/v1/fine_tuning/models')]);
  const byModel = new Map(jobs.data.filter((j) => j.fine_tuned_model).map((j) => [j.fine_tuned_model, j]));
  const snippet = (m) => `from openai import OpenAI\nclient = OpenAI(base_url="${location.origin}/v1", api_key=KEY)\n` + (isPictureCard(m)
    ? `client.images.generate(model=${JSON.stringify(m.id)}, prompt="a photo", size="512x512", response_format="b64_json", extra_body={"seed": 0})`
    : `client.chat.completions.create(model=${JSON.stringify(m.id)}, messages=[{"role": "user", "content": "Hello"}])`);
  const code = h('pre', { id: 'model-code', class: 'code', hidden: true });
  view.append(h('h1', { text: t('models.title') }),
    h('h2', { text: t('models.served') }),
    h('table', { id: 'served' }, h('thead', {}, h('tr', {}, [t('models.id'), t('models.kind'), t('models.job'), t('models.base'), ''].map((c) => h('th', { text: c })))),
      h('tbody', {}, served.data.map((m) => {
        const job = byModel.get(m.id) || jobs.data.find((j) => m.id.startsWith(`${j.fine_tuned_model || '\u0000'}:ckpt`)) ||
                    jobs.data.find((j) => m.id.includes(`:${j.id}:ckpt-step-`));
        const picture = isPictureCard(m);
        return h('tr', { 'data-model': m.id, 'data-kind': picture ? 'image-generation' : 'text' }, h('td', { class: 'mono', text: m.id }),
          h('td', { class: 'kind', text: t(picture ? 'models.kind.picture' : 'models.kind.text') }),
          h('td', {}, job ? h('a', { href: `#/jobs/${job.id}`, class: 'mono', text: job.id }) : ''),
          h('td', { text: job ? job.model : '' }),
          h('td', {}, copyButton(() => m.id, t('copy')), h('button', { type: 'button', text: t('models.code'), onclick: () => { code.textContent = snippet(m); code.hidden = false; } }),
            picture ? h('a', { class: 'button generate', href: generateHref(m.id, job && job.model), text: t('job.generate') })
              : h('a', { class: 'button chat', href: `#/playground?models=${encodeURIComponent(m.id)}`, text: t('job.chat') })));
      }))),
    code,
    h('h2', { text: t('models.registry') }), h('p', { class: 'hint', text: t('models.basis', { b: registry.memory_basis }) }),
    h('table', { id: 'registry' }, h('thead', {}, h('tr', {}, [t('models.id'), t('models.kind'), t('models.accepts'), t('models.params'), 'full GiB', 'lora GiB', 'qlora GiB'].map((c) => h('th', { text: c })))),
      h('tbody', {}, registry.data.map((m) => h('tr', {}, h('td', { class: 'mono', text: m.id, title: m.description }), h('td', { text: m.kind }),
        h('td', { text: m.accepts.join(', ') }), h('td', { text: `${m.params_b} B` }),
        ...['full', 'lora', 'qlora'].map((k) => h('td', { text: m.memory_gib[k].toFixed(1) })))))));
}
