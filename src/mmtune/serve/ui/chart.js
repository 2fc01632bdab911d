// A small SVG line chart: training loss, validation loss and learning rate (its own axis) over steps,
// with exponential smoothing of the losses. One <circle> per recorded point.
import { clear, s } from './dom.js';

const W = 640, H = 260, PAD = { l: 48, r: 56, t: 12, b: 28 };

export function smooth(values, weight) {
  let last = null;
  return values.map((v) => (last = last === null ? v : last * weight + v * (1 - weight)));
}

function scale(values, lo, hi) {
  let min = Math.min(...values), max = Math.max(...values);
  if (!isFinite(min)) { min = 0; max = 1; }
  if (max - min < 1e-12) { max += 0.5; min -= 0.5; }
  return (v) => hi - ((v - min) / (max - min)) * (hi - lo);
}

export function drawChart(svg, series, weight) {
  // series: {train: [[step, v]], valid: [...], lr: [...]}
  clear(svg);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const all = [...series.train, ...series.valid, ...series.lr];
  const steps = all.map((p) => p[0]);
  const x = scale(steps.length ? steps : [0, 1], W - PAD.r, PAD.l);
  const losses = [...series.train, ...series.valid].map((p) => p[1]);
  const y = scale(losses.length ? losses : [0, 1], PAD.t, H - PAD.b);
  const ylr = scale(series.lr.length ? series.lr.map((p) => p[1]) : [0, 1], PAD.t, H - PAD.b);
  svg.append(s('rect', { class: 'frame', x: PAD.l, y: PAD.t, width: W - PAD.l - PAD.r, height: H - PAD.t - PAD.b }));
  const axisLabels = (vals, f, xPos, anchor) => {
    if (!vals.length) return;
    const lo = Math.min(...vals), hi = Math.max(...vals);
    for (const v of [lo, (lo + hi) / 2, hi]) svg.append(s('text', { class: 'tick', x: xPos, y: f(v) + 4, 'text-anchor': anchor }, fmt(v)));
  };
  axisLabels(losses, y, PAD.l - 4, 'end');
  axisLabels(series.lr.map((p) => p[1]), ylr, W - PAD.r + 4, 'start');
  if (steps.length) {
    const lo = Math.min(...steps), hi = Math.max(...steps);
    for (const v of new Set([lo, Math.round((lo + hi) / 2), hi])) svg.append(s('text', { class: 'tick', x: x(v), y: H - 8, 'text-anchor': 'middle' }, String(v)));
  }
  const line = (pts, cls, fy, w) => {
    if (!pts.length) return;
    const ys = w ? smooth(pts.map((p) => p[1]), w) : pts.map((p) => p[1]);
    svg.append(s('polyline', { class: `line ${cls}`, points: pts.map((p, i) => `${x(p[0])},${fy(ys[i])}`).join(' ') }));
    pts.forEach((p) => svg.append(s('circle', { class: `pt ${cls}`, cx: x(p[0]), cy: fy(p[1]), r: 2.5, 'data-step': p[0] },
                                      s('title', {}, `step ${p[0]}: ${fmt(p[1])}`))));
  };
  line(series.lr, 'lr', ylr, 0);
  line(series.train, 'train', y, weight);
  line(series.valid, 'valid', y, weight);
}

function fmt(v) { return Math.abs(v) < 0.01 && v !== 0 ? v.toExponential(1) : v.toFixed(3); }

// A histogram of tokens per row: one <rect class="bar"> per bin (data-lo, data-hi, data-count), bins
// holding rows over max_length marked "over", and the max_length line when it falls inside the range.
export function drawHistogram(svg, bins, maxLength) {
  clear(svg);
  const w = 640, hgt = 200, pad = { l: 40, r: 12, t: 12, b: 30 };
  svg.setAttribute('viewBox', `0 0 ${w} ${hgt}`);
  if (!bins.length) return;
  const lo = bins[0].lo, hi = bins[bins.length - 1].hi + 1;
  const top = Math.max(...bins.map((b) => b.count), 1);
  const x = (v) => pad.l + ((v - lo) / Math.max(hi - lo, 1)) * (w - pad.l - pad.r);
  const y = (c) => hgt - pad.b - (c / top) * (hgt - pad.t - pad.b);
  svg.append(s('rect', { class: 'frame', x: pad.l, y: pad.t, width: w - pad.l - pad.r, height: hgt - pad.t - pad.b }));
  for (const b of bins) {
    const over = b.hi > maxLength;
    svg.append(s('rect', { class: `bar${over ? ' over' : ''}`, x: x(b.lo) + 0.5, y: y(b.count), width: Math.max(1, x(b.hi + 1) - x(b.lo) - 1),
                           height: hgt - pad.b - y(b.count), 'data-lo': b.lo, 'data-hi': b.hi, 'data-count': b.count },
                  s('title', {}, `${b.lo}–${b.hi} tokens: ${b.count} rows`)));
  }
  for (const v of [0, Math.round(top / 2), top]) svg.append(s('text', { class: 'tick', x: pad.l - 4, y: y(v) + 4, 'text-anchor': 'end' }, String(v)));
  for (const v of [lo, Math.round((lo + hi) / 2), hi - 1]) svg.append(s('text', { class: 'tick', x: x(v), y: hgt - 10, 'text-anchor': 'middle' }, String(v)));
  if (maxLength >= lo && maxLength < hi) {
    svg.append(s('line', { class: 'limit', id: 'max-length-line', x1: x(maxLength + 1), x2: x(maxLength + 1), y1: pad.t, y2: hgt - pad.b }),
               s('text', { class: 'tick limit-label', x: x(maxLength + 1) + 3, y: pad.t + 10 }, `max_length ${maxLength}`));
  }
}
