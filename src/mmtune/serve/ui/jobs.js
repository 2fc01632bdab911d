// Jobs: the list (status, queue position) and one job's page: live chart, step / total, ETA, tokens/s,
// events, the log's tail, checkpoints ("chat with this"), cancel. All of it re-read from the API.
// A picture (FLUX LoRA) job's page shows its sample pictures per checkpoint step instead of tokens/s, and
// "Generate" (the picture playground) where a text job has "Chat".
import { fetchBlob, get, post } from './api.js';
import { drawChart } from './chart.js';
import { clear, copyButton, fmtDuration, fmtTime, h, s } from './dom.js';
import { t } from './i18n.js';
import { generateHref, isPictureJob } from './images.js';
import { opActions, opsTable } from './ops.js';

const ACTIVE = ['validating_files', 'queued', 'running'];
const POLL_MS = 1000;

function every(ms, fn) {
  let timer = null, stopped = false;
  const tick = async () => {
    try { await fn(); } catch (e) { /* shown by the screen; keep polling */ }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

export async function jobsScreen(view) {
  const tbody = h('tbody');
  view.append(h('h1', { text: t('jobs.title') }),
              h('p', {}, h('a', { class: 'button', href: '#/new', text: t('nav.new') })),
              h('table', { class: 'jobs', id: 'jobs' }, h('thead', {}, h('tr', {},
                ['id', 'model', 'status', 'queue', 'created', 'result'].map((c) => h('th', { text: t(`jobs.col.${c}`) })))), tbody));
  return every(2000, async () => {
    const jobs = (await get('/v1/fine_tuning/jobs?limit=100')).data;
    const queued = jobs.filter((j) => j.status === 'queued').sort((a, b) => a.created_at - b.created_at || (a.id < b.id ? -1 : 1));
    clear(tbody);
    for (const j of jobs) {
      const pos = queued.indexOf(j);
      tbody.append(h('tr', { 'data-job': j.id },
        h('td', {}, h('a', { href: `#/jobs/${j.id}`, class: 'mono', text: j.id })), h('td', { text: j.model }),
        h('td', {}, h('span', { class: `badge ${j.status}`, text: t(`status.${j.status}`) })),
        h('td', { text: pos >= 0 ? String(pos + 1) : '' }), h('td', { text: fmtTime(j.created_at) }),
        h('td', { class: 'mono', text: j.fine_tuned_model || (j.error ? j.error.message : '') })));
    }
    if (!jobs.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted', text: t('jobs.none') })));
  });
}

export async function jobScreen(view, jobId) {
  const id = encodeURIComponent(jobId);
  const head = h('div', { id: 'job-head' });
  const resumed = h('div', { id: 'resumed', class: 'notice', hidden: true });
  const progress = h('progress', { id: 'progress', max: 1, value: 0 });
  const facts = h('dl', { class: 'facts', id: 'job-facts' });
  const svg = s('svg', { id: 'chart', class: 'chart', role: 'img' });
  const weight = h('input', { type: 'range', id: 'smoothing', min: 0, max: 0.95, step: 0.05, value: 0 });
  const eventsList = h('ol', { id: 'events', class: 'events' });
  const logPre = h('pre', { id: 'log', class: 'log' });
  const ckpts = h('tbody', { id: 'checkpoints' });
  const error = h('p', { id: 'job-error', class: 'error' });
  const samplesEl = h('div', { id: 'samples', class: 'samples' });
  const samplesSection = h('section', { id: 'samples-section', hidden: true }, h('h2', { text: t('job.samples') }),
    h('p', { class: 'hint', text: t('job.sampleshint') }), samplesEl);
  const [opsEl, opsRefresh, opsStop] = opsTable(`job_id=${id}`);
  view.append(
    h('p', {}, h('a', { href: '#/jobs', text: `← ${t('jobs.title')}` })), head, resumed, error, progress, facts,
    h('section', {}, h('h2', { text: t('job.chart') }),
      h('div', { class: 'legend' }, h('span', { class: 'key train', text: t('job.trainloss') }), h('span', { class: 'key valid', text: t('job.validloss') }),
        h('span', { class: 'key lr', text: t('job.lr') }), h('label', {}, t('job.smoothing'), ' ', weight)), svg),
    samplesSection,
    h('section', {}, h('h2', { text: t('job.checkpoints') }), h('table', { class: 'checkpoints' },
      h('thead', {}, h('tr', {}, ['step', 'train_loss', 'valid_loss', 'model', ''].map((c) => h('th', { text: c })))), ckpts)),
    h('section', {}, h('h2', { text: t('ops.title') }), opsEl),
    h('div', { class: 'split' },
      h('section', {}, h('h2', { text: t('job.events') }), eventsList),
      h('section', {}, h('h2', { text: t('job.log') }), logPre)));

  let events = [], logOffset = -16384, logText = '', lastJob = null, shownCkpts = '', shownSamples = '';
  const pictures = new Map(); // file id -> Promise of an object URL: each sample is downloaded once, not per poll
  const redraw = () => {
    const series = { train: [], valid: [], lr: [] };
    const seen = { train: new Set(), valid: new Set(), lr: new Set() };
    for (const e of events) {
      if (e.type !== 'metrics' || !e.data) continue;
      const add = (k, v) => { if (typeof v === 'number' && !seen[k].has(e.data.step)) { seen[k].add(e.data.step); series[k].push([e.data.step, v]); } };
      add('train', e.data.train_loss); add('valid', e.data.valid_loss); add('lr', e.data.learning_rate);
    }
    for (const k of Object.keys(series)) series[k].sort((a, b) => a[0] - b[0]);
    svg.dataset.metricEvents = String(events.filter((e) => e.type === 'metrics').length);
    drawChart(svg, series, Number(weight.value));
  };
  weight.addEventListener('input', redraw);

  const tick = async () => {
    const job = await get(`/v1/fine_tuning/jobs/${id}`);
    const [ev, ck, log] = await Promise.all([
      get(`/v1/fine_tuning/jobs/${id}/events?limit=10000`),
      get(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`),
      get(`/v1/fine_tuning/jobs/${id}/log?offset=${logOffset}`)]);
    events = ev.data.slice().reverse(); // oldest first
    if (!lastJob || lastJob.status !== job.status || lastJob.fine_tuned_model !== job.fine_tuned_model) renderHead(head, job, opsRefresh);
    error.textContent = job.error ? job.error.message : '';
    const picture = isPictureJob(job);
    const step = job.mmtune.step || 0, total = job.mmtune.total_steps;
    progress.max = total || 1; progress.value = job.status === 'succeeded' ? progress.max : step;
    const metrics = events.filter((e) => e.type === 'metrics' && typeof e.data.trained_tokens === 'number');
    let tps = null;
    if (metrics.length > 1) {
      const a = metrics[0], b = metrics[metrics.length - 1];
      if (b.created_at > a.created_at) tps = (b.data.trained_tokens - a.data.trained_tokens) / (b.created_at - a.created_at);
    }
    clear(facts).append(
      h('dt', { text: t('job.step') }), h('dd', { id: 'step', text: `${step} / ${total ?? '?'}` }),
      h('dt', { text: t('job.eta') }), h('dd', { id: 'eta', text: job.estimated_finish ? fmtDuration(job.estimated_finish - Date.now() / 1000) : '–' }),
      ...(picture ? [] : [ // a picture job trains on pictures: no tokens, so no tokens/s and no token price
        h('dt', { text: t('job.tps') }), h('dd', { id: 'tps', text: tps === null ? '–' : tps.toFixed(0) }),
        h('dt', { text: t('job.tokens') }), h('dd', { text: job.trained_tokens ?? '–' }),
        h('dt', { text: t('job.cost') }), h('dd', { text: job.estimated_cost ?? '–' })]),
      h('dt', { text: t('job.attempts') }), h('dd', { id: 'attempts', text: job.mmtune.attempts }));
    samplesSection.hidden = !picture;
    if (picture) {
      const steps = sampleSteps(events);
      const key = steps.map(([st, list]) => `${st}:${list.map((x) => x.file_id).join('+')}`).join(',');
      if (key !== shownSamples) { shownSamples = key; renderSamples(samplesEl, steps, pictures); }
    }
    const restarts = events.filter((e) => /service restarted|Resuming training/.test(e.message));
    resumed.hidden = !restarts.length;
    if (restarts.length) clear(resumed).append(h('strong', { text: t('job.resumed') }), ' ', restarts.map((e) => e.message).join(' · '));
    clear(eventsList);
    for (const e of events.slice().reverse().slice(0, 200)) {
      eventsList.append(h('li', { class: `event ${e.level} ${e.type}` }, h('time', { text: fmtTime(e.created_at) }), ' ', e.message));
    }
    const ckKey = ck.data.map((c) => `${c.step_number}:${c.metrics.valid_loss}`).join(',');
    if (ckKey !== shownCkpts) { // rebuilt only when they change (the operation buttons keep their choices)
      shownCkpts = ckKey;
      clear(ckpts);
      for (const c of ck.data.slice().sort((a, b) => a.step_number - b.step_number)) {
        const name = c.fine_tuned_model_checkpoint;
        ckpts.append(h('tr', { class: 'checkpoint', 'data-step': c.step_number },
          h('td', { text: c.step_number }), h('td', { text: num(c.metrics.train_loss) }), h('td', { text: num(c.metrics.valid_loss) }),
          h('td', { class: 'mono', text: name }),
          h('td', {}, copyButton(() => name, t('copy')), useButton(job, name),
            opActions(name, { onStarted: opsRefresh, pictures: picture }))));
      }
    }
    if (log.text) {
      logText = (logText + log.text).split('\n').slice(-300).join('\n');
      logPre.textContent = logText;
      logPre.scrollTop = logPre.scrollHeight;
    }
    logOffset = log.next_offset;
    redraw();
    lastJob = job;
    return job;
  };
  let stop = null;
  const loop = async () => {
    const job = await tick();
    if (!ACTIVE.includes(job.status) && stop) { stop(); stop = null; }
  };
  stop = every(POLL_MS, loop);
  return () => {
    if (stop) stop(); opsStop();
    for (const url of pictures.values()) url.then((u) => URL.revokeObjectURL(u), () => {});
    return lastJob;
  };
}

// Chat with a text job's model (beside its base), or draw with a picture job's (beside its base, same seed).
function useButton(job, name, id) {
  if (isPictureJob(job)) return h('a', { class: 'button generate', id: id && `generate-${id}`, href: generateHref(name, job.model), text: t('job.generate') });
  return h('a', { class: 'button', id: id && `chat-${id}`, href: `#/playground?models=${encodeURIComponent(job.model)},${encodeURIComponent(name)}`, text: t('job.chat') });
}

// The sample events' pictures by step, oldest step first: [[step, [{file_id, filename, prompt}]]]. The
// final samples come at the last step; when a checkpoint was also saved there, they are the same pictures
// (same weights, same seed): the later event stands for the step.
function sampleSteps(events) {
  const byStep = new Map();
  for (const e of events) {
    if (e.data && Array.isArray(e.data.samples) && e.data.samples.length) byStep.set(Number(e.data.step), e.data.samples);
  }
  return [...byStep].sort((a, b) => a[0] - b[0]);
}

function renderSamples(el, steps, pictures) {
  clear(el);
  if (!steps.length) { el.append(h('p', { class: 'muted', id: 'no-samples', text: t('job.nosamples') })); return; }
  for (const [step, list] of steps) {
    el.append(h('div', { class: 'sample-step', 'data-step': step }, h('h3', { text: t('job.samplestep', { n: step }) }),
      h('div', { class: 'sample-row' }, list.map((sample) => {
        const img = h('img', { class: 'sample', alt: sample.prompt, title: sample.filename, 'data-file': sample.file_id });
        const note = h('figcaption', { text: sample.prompt });
        if (!pictures.has(sample.file_id)) {
          pictures.set(sample.file_id, fetchBlob(`/v1/files/${encodeURIComponent(sample.file_id)}/content`).then((b) => URL.createObjectURL(b)));
        }
        pictures.get(sample.file_id).then((url) => { img.src = url; }, (e) => {
          pictures.delete(sample.file_id); // tried again when the samples change
          note.append(h('span', { class: 'error', text: ` ${e.message}` }));
        });
        return h('figure', { class: 'picture' }, img, note);
      }))));
  }
}

function renderHead(head, job, onStarted) {
  clear(head);
  const cancel = h('button', { type: 'button', id: 'cancel', class: 'danger', text: t('job.cancel'), hidden: !ACTIVE.includes(job.status) });
  cancel.addEventListener('click', async () => { cancel.disabled = true; await post(`/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/cancel`); });
  const picture = isPictureJob(job);
  head.append(h('h1', { class: 'mono', text: job.id }),
    h('p', {}, h('span', { id: 'job-status', class: `badge ${job.status}`, 'data-status': job.status, text: t(`status.${job.status}`) }),
      ' ', h('span', { id: 'job-what', text: `${job.model} · ${job.mmtune.preset} · ${picture ? t('job.picturelora') : job.mmtune.method}` }), ' ', cancel));
  if (job.fine_tuned_model) {
    head.append(h('p', { class: 'model-id' }, h('code', { id: 'ft-model', text: job.fine_tuned_model }), ' ',
      copyButton(() => job.fine_tuned_model, t('copy')), useButton(job, job.fine_tuned_model, 'ft'),
      opActions(job.fine_tuned_model, { onStarted, pictures: picture })));
  }
}

function num(v) { return typeof v === 'number' ? v.toFixed(4) : '–'; }
