// New job: model, files, preset -> resolved values, overrides, the estimate, the same job as CLI /
// curl / Python, and a 400 shown beside the field its error.param names.
import { ApiError, get, post } from './api.js';
import { clear, copyButton, fmtDuration, h } from './dom.js';
import { t } from './i18n.js';

const NUMBERS = [ // [field, body path, step]
  ['n_epochs', 'hyperparameters', '1'], ['batch_size', 'hyperparameters', '1'],
  ['learning_rate_multiplier', 'hyperparameters', 'any'], ['lora_rank', 'top', '1'], ['lora_alpha', 'top', 'any'],
  ['lora_dropout', 'top', 'any'], ['max_length', 'top', '1'], ['max_steps', 'top', '1'], ['save_steps', 'top', '1'],
  ['seed', 'top', '1'],
];

export async function newJobScreen(view, _arg, params) {
  const [models, files] = await Promise.all([get('/v1/fine_tuning/models'), get('/v1/files?purpose=fine-tune')]);
  const fields = {};
  const field = (name, control) => {
    const err = h('span', { class: 'field-error', id: `err-${name}`, role: 'alert' });
    fields[name] = { control, err };
    return h('label', { class: 'field', 'data-field': name }, h('span', { text: t(`job.f.${name}`) }), control, err);
  };
  const modelSel = h('select', { id: 'f-model' }, models.data.filter((m) => m.kind !== 'image-generation').map(
    (m) => h('option', { value: m.id, selected: m.default, text: `${m.id} (${m.accepts.join(', ')})` })));
  const fileOptions = (empty) => [empty ? h('option', { value: '', text: t('job.none') }) : null,
    ...files.data.map((f) => h('option', { value: f.id, text: `${f.filename} (${f.id})` }))];
  const trainSel = h('select', { id: 'f-training_file' }, fileOptions(false));
  if (params.get('training_file')) trainSel.value = params.get('training_file');
  const valSel = h('select', { id: 'f-validation_file' }, fileOptions(true));
  const presetSel = h('select', { id: 'f-preset' }, Object.keys(models.presets).map(
    (p) => h('option', { value: p, selected: p === models.default_preset, text: p })));
  const methodSel = h('select', { id: 'f-method' }, models.methods.map((m) => h('option', { value: m, text: m })));
  const suffix = h('input', { id: 'f-suffix', type: 'text', placeholder: 'my-model' });
  const numbers = NUMBERS.map(([name, , step]) => field(name, h('input', { id: `f-${name}`, type: 'number', step, placeholder: 'auto' })));
  const presetInfo = h('p', { class: 'hint', id: 'preset-values' });
  const showPreset = () => {
    const p = models.presets[presetSel.value];
    presetInfo.textContent = t('job.presetvalues', { v: Object.entries(p).map(([k, v]) => `${k}=${v}`).join(', ') });
  };
  presetSel.addEventListener('change', showPreset);
  showPreset();
  const estimateOut = h('div', { id: 'estimate' });
  const codeOut = h('div', { id: 'code' });
  const status = h('p', { class: 'status', role: 'status' });

  const body = () => {
    const b = { model: modelSel.value, training_file: trainSel.value, preset: presetSel.value, method: methodSel.value };
    if (valSel.value) b.validation_file = valSel.value;
    if (suffix.value.trim()) b.suffix = suffix.value.trim();
    const hyper = {};
    for (const [name, where] of NUMBERS) {
      const v = fields[name].control.value;
      if (v === '') continue;
      const n = Number(v);
      if (where === 'hyperparameters') hyper[name] = n; else b[name] = n;
    }
    if (Object.keys(hyper).length) b.hyperparameters = hyper;
    return b;
  };
  const clearErrors = () => { for (const f of Object.values(fields)) { f.err.textContent = ''; f.control.classList.remove('invalid'); } };
  const showError = (e) => {
    const name = (e.param || '').split('.').pop();
    const f = fields[name];
    if (e instanceof ApiError && f) { f.err.textContent = e.message; f.control.classList.add('invalid'); f.control.focus(); status.textContent = ''; }
    else { status.textContent = e.message; status.className = 'status error'; }
  };
  const estimate = async () => {
    clearErrors(); status.textContent = ''; status.className = 'status';
    showCode(codeOut, body());
    try { showEstimate(estimateOut, await post('/v1/fine_tuning/jobs/estimate', body()), methodSel.value); }
    catch (e) { clear(estimateOut); showError(e); }
  };
  const create = async () => {
    clearErrors(); status.textContent = t('job.creating'); status.className = 'status';
    try { const job = await post('/v1/fine_tuning/jobs', body()); location.hash = `#/jobs/${job.id}`; }
    catch (e) { showError(e); }
  };
  view.append(
    h('h1', { text: t('job.title') }),
    h('form', { class: 'grid', id: 'job-form', onsubmit: (ev) => { ev.preventDefault(); create(); } },
      field('model', modelSel), field('training_file', trainSel), field('validation_file', valSel),
      field('preset', presetSel), field('method', methodSel), field('suffix', suffix), ...numbers),
    presetInfo,
    h('div', { class: 'row' },
      h('button', { type: 'button', id: 'estimate-button', onclick: estimate, text: t('job.estimate') }),
      h('button', { type: 'button', id: 'create-button', class: 'primary', onclick: create, text: t('job.create') })),
    status, estimateOut, codeOut);
  if (!files.data.length) status.textContent = t('job.nofiles');
}

function showEstimate(out, e, method) {
  clear(out);
  const own = e.mmtune, hyper = e.hyperparameters;
  const rows = [
    ['preset', own.preset], ['method', own.method], ['n_epochs', hyper.n_epochs], ['batch_size', hyper.batch_size],
    ['learning_rate', own.learning_rate], ['lora_rank', own.lora_rank], ['lora_alpha', own.lora_alpha],
    ['lora_dropout', own.lora_dropout], ['max_length', own.max_length], ['max_steps', own.max_steps ?? '–'],
  ];
  const mem = e.memory_gib ? h('table', { class: 'memory', id: 'memory' },
    h('thead', {}, h('tr', {}, h('th', { text: t('job.method') }), h('th', { text: 'GiB' }), h('th', { text: t('job.fits') }))),
    h('tbody', {}, Object.entries(e.memory_gib).map(([m, v]) => h('tr', { class: m === method ? 'chosen' : '' },
      h('td', { text: m }), h('td', { text: v.total.toFixed(2) }),
      h('td', { text: e.free_memory_gib === null ? '?' : v.total <= e.free_memory_gib ? '✓' : '✗' }))))) : null;
  out.append(
    h('h2', { text: t('job.estimate') }),
    h('div', { class: 'split' },
      h('table', { class: 'resolved', id: 'resolved' }, h('tbody', {}, rows.map(([k, v]) => h('tr', { 'data-key': k }, h('th', { text: k }), h('td', { text: v }))))),
      h('dl', { class: 'facts' },
        h('dt', { text: t('job.steps') }), h('dd', { id: 'est-steps', text: e.total_steps ?? '–' }),
        h('dt', { text: t('job.tokens') }), h('dd', { id: 'est-tokens', title: e.tokens.method, text: e.tokens.total }),
        h('dt', { text: t('job.time') }), h('dd', { id: 'est-time', title: e.time_basis, text: e.time_s === null ? t('job.notime') : fmtDuration(e.time_s) }),
        h('dt', { text: t('job.cost') }), h('dd', { id: 'est-cost', text: `${e.estimated_cost}` }),
        h('dt', { text: t('job.free') }), h('dd', { text: `${e.free_memory_gib ?? '?'} GiB (${e.device})` }),
        h('dt', { text: t('job.filecheck') }), h('dd', { text: `${e.file_check.rows} rows, ${e.file_check.errors} errors, ${e.file_check.warnings} warnings (${e.file_check.rules})` })),
      mem));
}

function showCode(out, body) {
  clear(out);
  const base = `${location.origin}/v1`;
  const flags = [`mmtune jobs create ${body.training_file}`, `--base-url ${base}`, `--model ${body.model}`, `--preset ${body.preset}`, `--method ${body.method}`];
  const flag = { n_epochs: '--epochs', batch_size: '--batch-size', learning_rate_multiplier: '--lr-multiplier', lora_rank: '--lora-rank',
                 lora_alpha: '--lora-alpha', lora_dropout: '--lora-dropout', max_length: '--max-length', max_steps: '--max-steps',
                 save_steps: '--save-steps', seed: '--seed' };
  if (body.validation_file) flags.push(`--validation ${body.validation_file}`);
  if (body.suffix) flags.push(`--suffix ${body.suffix}`);
  for (const [k, v] of Object.entries({ ...body.hyperparameters, ...body })) if (flag[k]) flags.push(`${flag[k]} ${v}`);
  const cli = flags.join(' \\\n  ');
  const curl = `curl ${base}/fine_tuning/jobs \\\n  -H "Authorization: Bearer $MMTUNE_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '${JSON.stringify(body)}'`;
  const { model, training_file, validation_file, suffix, hyperparameters, seed, ...extra } = body;
  const args = [`model=${JSON.stringify(model)}`, `training_file=${JSON.stringify(training_file)}`];
  if (validation_file) args.push(`validation_file=${JSON.stringify(validation_file)}`);
  if (suffix) args.push(`suffix=${JSON.stringify(suffix)}`);
  if (seed !== undefined) args.push(`seed=${seed}`);
  if (hyperparameters) args.push(`hyperparameters=${JSON.stringify(hyperparameters)}`);
  args.push(`extra_body=${JSON.stringify(extra)}`);
  const py = `from openai import OpenAI\nclient = OpenAI(base_url="${base}", api_key=KEY)\njob = client.fine_tuning.jobs.create(\n    ${args.join(',\n    ')})`;
  for (const [name, text] of [['cli', cli], ['curl', curl], ['python', py]]) {
    out.append(h('div', { class: 'code' }, h('h3', { text: t(`job.code.${name}`) }), copyButton(() => text, t('copy')),
                 h('pre', { id: `code-${name}`, text })));
  }
}
