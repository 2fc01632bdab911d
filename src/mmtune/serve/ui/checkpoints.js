// Checkpoints: every job's checkpoints and fine-tuned models in one table, each with "chat with this",
// merge, GGUF export and evaluation (on a chosen file, or the job's validation file); the operations below.
// A picture job's models get "Generate" (the picture playground) and merge instead.
import { get } from './api.js';
import { clear, copyButton, h } from './dom.js';
import { t } from './i18n.js';
import { generateHref, isPictureJob } from './images.js';
import { opActions, opsTable } from './ops.js';

export async function checkpointsScreen(view) {
  const [jobs, files] = await Promise.all([get('/v1/fine_tuning/jobs?limit=100'), get('/v1/files?purpose=fine-tune')]);
  const evalSel = h('select', { id: 'eval-file' }, h('option', { value: '', text: t('ckpts.valfile') }),
    files.data.map((f) => h('option', { value: f.id, text: `${f.filename} (${f.id})` })));
  const maxTokens = h('input', { id: 'eval-max-tokens', type: 'number', min: 1, max: 2048, step: 1, value: 128 });
  const evalOptions = () => ({ ...(evalSel.value ? { file_id: evalSel.value } : {}), max_tokens: Number(maxTokens.value) || 128 });
  const [table, refresh, stop] = opsTable('');
  const tbody = h('tbody');
  const num = (v) => (typeof v === 'number' ? v.toFixed(4) : '–');
  const row = (job, step, metrics, name, kind) => h('tr', { class: `ckpt-row ${kind}`, 'data-model': name, 'data-job': job.id, 'data-step': step },
    h('td', {}, h('a', { href: `#/jobs/${job.id}`, class: 'mono', text: job.id })), h('td', { text: step }),
    h('td', { text: num(metrics.train_loss) }), h('td', { text: num(metrics.valid_loss) }), h('td', { class: 'mono', text: name }),
    h('td', {}, copyButton(() => name, t('copy')), ' ', isPictureJob(job)
      ? h('a', { class: 'button generate', href: generateHref(name, job.model), text: t('job.generate') })
      : h('a', { class: 'button chat', href: `#/playground?models=${encodeURIComponent(job.model)},${encodeURIComponent(name)}`, text: t('job.chat') }), ' ',
      opActions(name, { evalOptions, onStarted: refresh, pictures: isPictureJob(job) })));
  const lists = await Promise.all(jobs.data.map((j) => get(`/v1/fine_tuning/jobs/${encodeURIComponent(j.id)}/checkpoints?limit=100`)
    .then((c) => [j, c.data]).catch(() => [j, []])));
  for (const [job, cks] of lists) {
    if (job.fine_tuned_model) tbody.append(row(job, t('ckpts.final'), {}, job.fine_tuned_model, 'final'));
    for (const c of cks.slice().sort((a, b) => b.step_number - a.step_number)) {
      tbody.append(row(job, c.step_number, c.metrics, c.fine_tuned_model_checkpoint, 'checkpoint'));
    }
  }
  if (!tbody.childNodes.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted', text: t('ckpts.none') })));
  view.append(h('h1', { text: t('nav.checkpoints') }),
    h('div', { class: 'row' }, h('label', {}, t('ckpts.evalon'), ' ', evalSel), h('label', {}, 'max_tokens ', maxTokens)),
    h('table', { id: 'all-checkpoints' }, h('thead', {}, h('tr', {},
      ['job', 'step', 'train_loss', 'valid_loss', 'model', ''].map((c) => h('th', { text: c ? t(`ckpts.col.${c}`) : '' })))), tbody),
    h('h2', { text: t('ops.title') }), table);
  return stop;
}
