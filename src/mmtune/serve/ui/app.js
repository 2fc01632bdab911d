// The studio's shell: sign-in, language, hash routing (#/jobs/ftjob-...). No state of its own beyond
// the key (sessionStorage) and the language (localStorage): every screen reads the API.
import { dropKey, getKey, setKey, setUnauthorizedHandler, tryKey } from './api.js';
import { applyI18n, lang, setLang, t } from './i18n.js';
import { clear } from './dom.js';
import { dataScreen } from './data.js';
import { newJobScreen } from './newjob.js';
import { jobScreen, jobsScreen } from './jobs.js';
import { playgroundScreen } from './playground.js';
import { imagesScreen } from './images.js';
import { modelsScreen } from './models.js';
import { checkpointsScreen } from './checkpoints.js';
import { opScreen } from './ops.js';

const view = document.getElementById('view');
let stopCurrent = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [pathPart, query = ''] = hash.split('?');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || 'data', arg: parts[1] || null, params: new URLSearchParams(query) };
}

async function render() {
  if (stopCurrent) { stopCurrent(); stopCurrent = null; }
  const r = route();
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.getAttribute('href') === `#/${r.name === 'ops' ? 'checkpoints' : r.name}`);
  }
  clear(view);
  const screens = { data: dataScreen, new: newJobScreen, jobs: r.arg ? jobScreen : jobsScreen,
                    playground: playgroundScreen, images: imagesScreen, models: modelsScreen, checkpoints: checkpointsScreen, ops: opScreen };
  const screen = screens[r.name] || dataScreen;
  view.dataset.screen = r.name;
  try {
    stopCurrent = (await screen(view, r.arg, r.params)) || null;
  } catch (e) {
    view.append(Object.assign(document.createElement('p'), { className: 'error', textContent: e.message }));
  }
}

function showSignIn(message) {
  document.getElementById('signin').hidden = false;
  document.getElementById('view').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('signin-error').textContent = message || '';
  document.getElementById('key').focus();
}

function signedIn() {
  document.getElementById('signin').hidden = true;
  document.getElementById('view').hidden = false;
  document.getElementById('signout').hidden = !getKey();
  document.body.dataset.signedIn = '1';
  render();
}

setUnauthorizedHandler(() => { dropKey(); delete document.body.dataset.signedIn; showSignIn(t('signin.wrong')); });

document.getElementById('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const key = document.getElementById('key').value.trim();
  if (await tryKey(key)) { setKey(key); document.getElementById('key').value = ''; signedIn(); }
  else showSignIn(t('signin.wrong'));
});
document.getElementById('signout').addEventListener('click', () => { dropKey(); location.reload(); });
document.getElementById('lang').addEventListener('click', () => { setLang(lang() === 'zh' ? 'en' : 'zh'); render(); });
window.addEventListener('hashchange', () => { if (document.body.dataset.signedIn) render(); });

applyI18n();
(async () => {
  if (await tryKey(getKey())) signedIn();
  else { dropKey(); showSignIn(''); }
})();
