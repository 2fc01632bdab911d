// Building the page: every piece of text goes in as a text node (never as HTML), so a dataset row or
// a model answer holding markup shows as the characters it is and runs nothing.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const svgNS = 'http://www.w3.org/2000/svg';
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  add(el, children);
  return el;
}

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

export function fmtTime(unix) { return unix ? new Date(unix * 1000).toLocaleString() : '–'; }

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '–';
  seconds = Math.max(0, Math.round(seconds));
  const m = Math.floor(seconds / 60), sec = seconds % 60;
  return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : m ? `${m} min ${sec} s` : `${sec} s`;
}

export function copyButton(getText, label) {
  const b = h('button', { type: 'button', class: 'copy', text: label });
  b.addEventListener('click', async () => {
    const text = getText();
    try { await navigator.clipboard.writeText(text); b.dataset.copied = text; b.classList.add('done'); }
    catch (e) { b.title = String(e); }
    setTimeout(() => b.classList.remove('done'), 1500);
  });
  return b;
}
