
const root = element.querySelector('.uc-root');
const stage = element.querySelector('.uc-stage');
const canvas = element.querySelector('.uc-canvas');
const g = canvas.getContext('2d');
const strip = element.querySelector('.uc-strip');
const bsize = element.querySelector('.uc-bsize');
const gotoBox = element.querySelector('.uc-goto');
const COLORS = {1: [230, 40, 40], 2: [40, 110, 255]};
let data = null, img = null, labels = null, dirty = false, busy = false, busyTimer = null;
let tool = 'brush', cls = 1, alpha = 0.5;
let view = {k: 1, ox: 0, oy: 0, fitted: false}, cw = 1, ch = 1;
let hist = new Map();          // z -> {undo: [Uint8Array], redo: []}, insertion order
let contours = [], open = null, stroke = null, panning = null, spaceDown = false, hover = null, wantFocus = false;
const mcan = document.createElement('canvas');
const mg = mcan.getContext('2d');

function parse(v) {
  if (typeof v === 'string') { try { return JSON.parse(v); } catch (e) { return null; } }
  return v;
}
function loadImg(src) {
  return new Promise(function (res) {
    if (!src) { res(null); return; }
    const im = new Image();
    im.onload = function () { res(im); };
    im.onerror = function () { res(null); };
    im.src = src;
  });
}
// ---- mask text (study.masks): "rle:H:W:v,n,..." exactly at the slice size
function encode(lab, h, w) {
  const out = [];
  let v = lab[0], n = 0;
  for (let i = 0; i < lab.length; i++) {
    if (lab[i] === v) { n++; } else { out.push(v, n); v = lab[i]; n = 1; }
  }
  if (lab.length) out.push(v, n);
  return 'rle:' + h + ':' + w + ':' + out.join(',');
}
function decode(text, h, w) {
  const lab = new Uint8Array(h * w);
  if (!text) return lab;
  const parts = text.split(':');
  if (parts[0] !== 'rle' || +parts[1] !== h || +parts[2] !== w) return lab;
  const nums = parts[3] ? parts[3].split(',') : [];
  let p = 0;
  for (let i = 0; i + 1 < nums.length; i += 2) {
    const v = +nums[i], n = +nums[i + 1];
    lab.fill(v, p, p + n); p += n;
  }
  return lab;
}
// ---- view: k = display px per slice px (x), y scaled by the spacing ratio
function ratio() { return data ? data.sy / data.sx : 1; }
function fit() {
  if (!data) return;
  const k = Math.min(cw / data.w, ch / (data.h * ratio()));
  view = {k: k, ox: (cw - data.w * k) / 2, oy: (ch - data.h * ratio() * k) / 2, fitted: true};
}
function resize() {
  const r = stage.getBoundingClientRect();
  cw = Math.max(200, r.width); ch = Math.max(200, r.height);
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(cw * dpr); canvas.height = Math.round(ch * dpr);
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  if (view.fitted) fit();
}
function zoomAt(f, px, py) {
  if (!data) return;
  const k = Math.max(0.1, Math.min(64, view.k * f));
  const f2 = k / view.k;
  view = {k: k, ox: px - (px - view.ox) * f2, oy: py - (py - view.oy) * f2, fitted: false};
  draw();
}
function toSlice(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left - view.ox) / view.k - 0.5, (ev.clientY - r.top - view.oy) / (view.k * ratio()) - 0.5];
}
function toScreen(x, y) { return [view.ox + (x + 0.5) * view.k, view.oy + (y + 0.5) * view.k * ratio()]; }
// ---- drawing
function paintMask() {
  if (!data) return;
  const im = mg.createImageData(data.w, data.h);
  const d = im.data;
  for (let i = 0; i < labels.length; i++) {
    const c = COLORS[labels[i]];
    if (c) { const j = 4 * i; d[j] = c[0]; d[j + 1] = c[1]; d[j + 2] = c[2]; d[j + 3] = 255; }
  }
  mg.putImageData(im, 0, 0);
}
function draw() {
  g.clearRect(0, 0, cw, ch);
  g.fillStyle = '#000'; g.fillRect(0, 0, cw, ch);
  if (!data) return;
  const W = data.w * view.k, H = data.h * view.k * ratio();
  g.imageSmoothingEnabled = view.k < 2;
  if (img) g.drawImage(img, view.ox, view.oy, W, H);
  g.save(); g.globalAlpha = alpha; g.imageSmoothingEnabled = false;
  g.drawImage(mcan, view.ox, view.oy, W, H); g.restore();
  g.save(); g.lineWidth = 1.5;
  contours.forEach(function (c) { path(c, true); g.strokeStyle = '#facc15'; g.setLineDash([5, 3]); g.stroke(); });
  if (open && open.length) {
    path(open.concat(hover ? [hover] : []), false); g.strokeStyle = '#fde047'; g.setLineDash([]); g.stroke();
    const s = toScreen(open[0][0], open[0][1]);
    g.beginPath(); g.arc(s[0], s[1], 4, 0, 2 * Math.PI); g.fillStyle = '#fde047'; g.fill();
  }
  g.restore();
  if (hover && (tool === 'brush' || tool === 'eraser')) {
    const s = toScreen(hover[0], hover[1]);
    g.beginPath(); g.arc(s[0], s[1], Math.max(1, size() / 2 * view.k), 0, 2 * Math.PI);
    g.strokeStyle = tool === 'eraser' ? '#ffffff' : (cls === 2 ? '#93c5fd' : '#fca5a5'); g.lineWidth = 1; g.stroke();
  }
  hud();
}
function path(pts, close) {
  g.beginPath();
  pts.forEach(function (p, i) { const s = toScreen(p[0], p[1]); if (i) g.lineTo(s[0], s[1]); else g.moveTo(s[0], s[1]); });
  if (close) g.closePath();
}
function hud() {
  const n = data.end - data.start + 1;
  element.querySelector('.uc-tl').innerHTML = 'Slice <b class="uc-z">' + data.z + '</b> (' + (data.z - data.start + 1) +
    '/' + n + ')' + (dirty ? ' · <span class="uc-dirty">edited</span>' : '') + '<br>' + data.w + '×' + data.h + ' px';
  element.querySelector('.uc-tr').innerHTML = (tool === 'eraser' ? 'Eraser' : (cls === 2 ? 'Tumor' : 'Rectal wall')) +
    ' · ' + tool + (tool === 'brush' || tool === 'eraser' ? ' ' + size() + ' px' : '') +
    (contours.length ? '<br>' + contours.length + ' contour(s): Enter fills' : '');
  element.querySelector('.uc-zoom').textContent = Math.round(view.k / baseK() * 100) + '%';
  root.querySelectorAll('[data-tool]').forEach(function (b) { b.classList.toggle('on', b.dataset.tool === tool); });
  root.querySelector('.uc-cls1').classList.toggle('on', cls === 1);
  root.querySelector('.uc-cls2').classList.toggle('on', cls === 2);
  const h = hist.get(data.z);
  root.querySelector('[data-act=undo]').disabled = !(h && h.undo.length);
  root.querySelector('[data-act=redo]').disabled = !(h && h.redo.length);
  root.classList.toggle('interp', data.source === 'interpolated' && !dirty);
  const cells = strip.children;
  for (let i = 0; i < cells.length; i++) cells[i].classList.toggle('dirty', dirty && +cells[i].dataset.z === data.z);
}
function baseK() { return data ? Math.min(cw / data.w, ch / (data.h * ratio())) : 1; }
function size() { return Math.max(1, Math.min(60, Math.round(+bsize.value || 1))); }
function buildStrip() {
  strip.innerHTML = '';
  (data.strip || []).forEach(function (st, i) {
    const z = data.start + i;
    const c = document.createElement('div');
    c.className = 'uc-cell ' + st + (z === data.z ? ' here' : '');
    c.dataset.z = z; c.dataset.state = st; c.textContent = data.strip.length <= 40 ? z : '';
    c.title = 'Slice ' + z + ': ' + (st === 'nothing' ? 'nothing on this slice' : st);
    c.addEventListener('click', function () { go('goto', {target: z}); });
    strip.appendChild(c);
  });
}
// ---- editing
// undo history of the last few slices visited (40 steps each): bounded browser memory
function H() {
  if (!hist.has(data.z)) {
    hist.set(data.z, {undo: [], redo: []});
    if (hist.size > 8) hist.delete(hist.keys().next().value);      // the slice visited longest ago
  }
  return hist.get(data.z);
}
function snapshot() {
  const h = H(); h.undo.push(labels.slice()); if (h.undo.length > 40) h.undo.shift(); h.redo = [];
}
function changed() { dirty = true; paintMask(); draw(); }
function dab(x, y, v) {
  const r = size() / 2, r2 = r * r;
  const y0 = Math.max(0, Math.ceil(y - r)), y1 = Math.min(data.h - 1, Math.floor(y + r));
  const x0 = Math.max(0, Math.ceil(x - r)), x1 = Math.min(data.w - 1, Math.floor(x + r));
  for (let yy = y0; yy <= y1; yy++) for (let xx = x0; xx <= x1; xx++) {
    if ((xx - x) * (xx - x) + (yy - y) * (yy - y) <= r2) labels[yy * data.w + xx] = v;
  }
}
function strokeTo(p) {
  const v = tool === 'eraser' ? 0 : cls;
  const q = stroke.last, dist = Math.hypot(p[0] - q[0], p[1] - q[1]);
  const step = Math.max(0.5, size() / 4), n = Math.max(1, Math.ceil(dist / step));
  for (let i = 1; i <= n; i++) dab(q[0] + (p[0] - q[0]) * i / n, q[1] + (p[1] - q[1]) * i / n, v);
  stroke.last = p;
}
// even-odd scanline fill of all closed contours at pixel centres
function fillContours() {
  if (open && open.length > 2) { contours.push(open); }
  open = null;
  if (!contours.length) return;
  snapshot();
  const v = tool === 'eraser' ? 0 : cls;
  for (let y = 0; y < data.h; y++) {
    const xs = [];
    contours.forEach(function (c) {
      for (let i = 0; i < c.length; i++) {
        const a = c[i], b = c[(i + 1) % c.length];
        if ((a[1] <= y) !== (b[1] <= y)) xs.push(a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1]));
      }
    });
    xs.sort(function (p, q) { return p - q; });
    for (let i = 0; i + 1 < xs.length; i += 2) {
      const x0 = Math.max(0, Math.ceil(xs[i])), x1 = Math.min(data.w - 1, Math.floor(xs[i + 1]));
      for (let x = x0; x <= x1; x++) labels[y * data.w + x] = v;
    }
  }
  contours = [];
  changed();
}
function fillHoles() {
  const w = data.w, h = data.h, seen = new Uint8Array(w * h), stack = [];
  const push = function (i) { if (!seen[i] && labels[i] !== cls) { seen[i] = 1; stack.push(i); } };
  for (let x = 0; x < w; x++) { push(x); push((h - 1) * w + x); }
  for (let y = 0; y < h; y++) { push(y * w); push(y * w + w - 1); }
  while (stack.length) {
    const i = stack.pop(), x = i % w;
    if (x > 0) push(i - 1); if (x < w - 1) push(i + 1);
    if (i >= w) push(i - w); if (i < (h - 1) * w) push(i + w);
  }
  let n = 0;
  for (let i = 0; i < labels.length; i++) if (!seen[i] && labels[i] === 0) n++;
  if (!n) return;
  snapshot();
  for (let i = 0; i < labels.length; i++) if (!seen[i] && labels[i] === 0) labels[i] = cls;
  changed();
}
function undo() {
  const h = H(); if (!h.undo.length) return;
  h.redo.push(labels.slice()); labels = h.undo.pop(); changed();
}
function redo() {
  const h = H(); if (!h.redo.length) return;
  h.undo.push(labels.slice()); labels = h.redo.pop(); changed();
}
// ---- server
function setBusy(b) {
  busy = b; root.classList.toggle('busy', b);
  clearTimeout(busyTimer);
  // a refused call ends busy through the event's failure hook (CONTOUR_UNBUSY_JS); this is
  // the fallback should that never come (a lost connection): the edits stay either way
  if (b) busyTimer = setTimeout(function () { setBusy(false); }, 10000);
}
function go(kind, extra) {
  if (!data || busy) return;
  if (kind === 'copy' && (data.z <= data.start || data.strip[data.z - data.start - 1] === 'untouched')) {
    flash('The previous slice has no saved mask to copy.'); return;
  }
  if ((kind === 'next' && data.z >= data.end || kind === 'previous' && data.z <= data.start) && !dirty &&
      data.source !== 'interpolated') { flash(kind === 'next' ? 'This is the last slice of the case.' :
      'This is the first slice of the case.'); return; }
  const keep = dirty || ((kind === 'next' || kind === 'previous') && data.source === 'interpolated');
  const d = Object.assign({aid: data.aid, z: data.z, mask: keep ? encode(labels, data.h, data.w) : null}, extra || {});
  if (kind === 'nothing' || kind === 'copy') d.mask = null;
  setBusy(true);
  trigger(kind, d);
}
function flash(msg) {
  const f = element.querySelector('.uc-msg');
  f.textContent = msg; f.style.display = 'block';
  clearTimeout(flash.t); flash.t = setTimeout(function () { f.style.display = 'none'; }, 2500);
}
function takeFocus() {
  if (wantFocus && root.offsetParent !== null) {
    wantFocus = false;
    if (!root.contains(document.activeElement)) root.focus({preventScroll: true});
  }
}
function summary() {
  const n = {saved: 0, nothing: 0, interpolated: 0, untouched: 0};
  (data.strip || []).forEach(function (s) { n[s] = (n[s] || 0) + 1; });
  return n;
}
function ask() {
  if (!data) return;
  const n = summary();
  element.querySelector('.uc-sum').innerHTML = '<table><tr><td>Slices saved</td><td class="uc-n-saved">' + n.saved +
    '</td></tr><tr><td>Nothing on the slice</td><td class="uc-n-nothing">' + n.nothing + '</td></tr>' +
    '<tr><td>Interpolated, not confirmed</td><td class="uc-n-interpolated">' + n.interpolated + '</td></tr>' +
    '<tr><td>Untouched</td><td class="uc-n-untouched">' + n.untouched + '</td></tr></table>' +
    (dirty ? '<p>This slice\'s edits are saved with the submission.</p>' : '');
  element.querySelector('.uc-warn').textContent = n.interpolated ?
    'Confirm (or clear) the interpolated slices first: a case with unconfirmed interpolations is not submitted.' :
    (n.untouched ? n.untouched + ' slice(s) were never looked at.' : '');
  element.querySelector('.uc-confirm').disabled = n.interpolated > 0;
  root.classList.add('asking');
  element.querySelector('.uc-confirm').focus();
}
async function update() {
  const v = parse(props.value);
  if (!v || !v.aid) { data = null; setBusy(false); draw(); return; }
  const im = await loadImg(v.slice);
  const newCase = !data || data.aid !== v.aid || data.w !== v.w || data.h !== v.h;
  const sameSlice = data && !newCase && data.z === v.z;
  const prev = data;
  data = v; img = im;
  mcan.width = v.w; mcan.height = v.h;
  if (newCase) { hist = new Map(); contours = []; open = null; }
  if (v.mask_mode === 'keep' && sameSlice && labels) {
    // same slice, new window: the reader's strokes stay
  } else if (v.mask_mode === 'draft' && sameSlice && labels) {
    snapshot(); labels = decode(v.mask, v.h, v.w); dirty = true;
  } else {
    labels = decode(v.mask, v.h, v.w); dirty = false;
    if (!sameSlice) { contours = []; open = null; }
  }
  if (newCase || !view.k || view.fitted && prev === null) { resize(); fit(); }
  // a newly opened case takes the keyboard (shortcuts work without a first click); while the
  // panel is still hidden, it does so when it appears (the resize observer below)
  if (newCase) wantFocus = true;
  takeFocus();
  gotoBox.min = v.start; gotoBox.max = v.end; gotoBox.value = v.z;
  setBusy(false);
  buildStrip(); paintMask(); draw();
}
// ---- input
canvas.addEventListener('pointerdown', function (ev) {
  if (!data) return;
  root.focus({preventScroll: true});
  if (ev.button === 1 || ev.button === 2 || tool === 'pan' || spaceDown) {
    panning = {x: ev.clientX, y: ev.clientY, ox: view.ox, oy: view.oy};
    canvas.setPointerCapture(ev.pointerId); ev.preventDefault(); return;
  }
  if (ev.button !== 0 || busy) return;
  const p = toSlice(ev);
  canvas.setPointerCapture(ev.pointerId);
  if (tool === 'brush' || tool === 'eraser') {
    snapshot(); stroke = {last: p}; dab(p[0], p[1], tool === 'eraser' ? 0 : cls); changed();
  } else if (tool === 'poly') {
    if (open && open.length > 2) {
      const s = toScreen(open[0][0], open[0][1]), r = canvas.getBoundingClientRect();
      if (Math.hypot(ev.clientX - r.left - s[0], ev.clientY - r.top - s[1]) < 8) {
        contours.push(open); open = null; draw(); return;
      }
    }
    if (!open) open = [];
    open.push(p); stroke = {lasso: true, sx: ev.clientX, sy: ev.clientY}; draw();
  }
});
canvas.addEventListener('pointermove', function (ev) {
  if (!data) return;
  if (panning) {
    view.ox = panning.ox + ev.clientX - panning.x; view.oy = panning.oy + ev.clientY - panning.y;
    view.fitted = false; draw(); return;
  }
  const p = toSlice(ev);
  hover = p;
  if (stroke && stroke.last) { strokeTo(p); changed(); return; }
  if (stroke && stroke.lasso && open && Math.hypot(ev.clientX - stroke.sx, ev.clientY - stroke.sy) > 3) {
    const q = open[open.length - 1];
    if (Math.hypot(p[0] - q[0], p[1] - q[1]) >= 0.75) open.push(p);
  }
  draw();
});
function endPointer() {
  if (panning) { panning = null; return; }
  if (stroke && stroke.lasso && open && open.length > 8) {
    // a freehand drag is a lasso: it closes itself
    contours.push(open); open = null;
  }
  stroke = null; draw();
}
canvas.addEventListener('pointerup', endPointer);
canvas.addEventListener('pointercancel', endPointer);
canvas.addEventListener('pointerleave', function () { hover = null; if (!stroke) draw(); });
canvas.addEventListener('dblclick', function () {
  if (tool === 'poly' && open && open.length > 2) { contours.push(open); open = null; draw(); }
});
canvas.addEventListener('contextmenu', function (ev) { ev.preventDefault(); });
canvas.addEventListener('wheel', function (ev) {
  if (!data) return;
  ev.preventDefault();
  if (ev.ctrlKey || ev.metaKey || ev.altKey) {
    const r = canvas.getBoundingClientRect();
    zoomAt(ev.deltaY < 0 ? 1.15 : 1 / 1.15, ev.clientX - r.left, ev.clientY - r.top);
  } else {
    go(ev.deltaY < 0 ? 'next' : 'previous');
  }
}, {passive: false});
root.addEventListener('click', function (ev) {
  const b = ev.target.closest('button');
  if (!b || !root.contains(b)) return;
  if (b.dataset.tool) { tool = b.dataset.tool; open = null; draw(); return; }
  act(b.dataset.act);
});
function act(a) {
  if (!data) return;
  if (a === 'cls1' || a === 'cls2') { cls = a === 'cls1' ? 1 : 2; if (tool === 'eraser' || tool === 'pan') tool = 'brush'; draw(); }
  else if (a === 'undo') undo();
  else if (a === 'redo') redo();
  else if (a === 'fill') fillContours();
  else if (a === 'holes') fillHoles();
  else if (a === 'zin') zoomAt(1.25, cw / 2, ch / 2);
  else if (a === 'zout') zoomAt(0.8, cw / 2, ch / 2);
  else if (a === 'fit') { fit(); draw(); }
  else if (a === 'submit') ask();
  else if (a === 'cancel') root.classList.remove('asking');
  else if (a === 'confirm') { root.classList.remove('asking'); go('submit'); }
  else if (a) go(a);
}
function numEnter(box, fn) {
  box.addEventListener('keydown', function (ev) { if (ev.key === 'Enter') { ev.preventDefault(); ev.stopPropagation(); fn(); } });
}
numEnter(gotoBox, function () {
  const t = Math.round(+gotoBox.value);
  if (data && isFinite(t)) go('goto', {target: Math.max(data.start, Math.min(data.end, t))});
});
numEnter(bsize, function () { bsize.value = size(); draw(); });
bsize.addEventListener('change', function () { bsize.value = size(); draw(); });
root.addEventListener('keydown', function (ev) {
  if (!data || ev.target.tagName === 'INPUT') return;
  if (root.classList.contains('asking')) {
    if (ev.key === 'Escape') { root.classList.remove('asking'); ev.preventDefault(); }
    return;
  }
  const k = ev.key, mod = ev.ctrlKey || ev.metaKey;
  let used = true;
  if (mod && (k === 'z' || k === 'Z')) { if (ev.shiftKey) redo(); else undo(); }
  else if (mod && (k === 'y' || k === 'Y')) redo();
  else if (mod) used = false;
  else if (k === '1') act('cls1');
  else if (k === '2') act('cls2');
  else if (k === 'b' || k === 'B') tool = 'brush';
  else if (k === 'e' || k === 'E') tool = 'eraser';
  else if (k === 'p' || k === 'P') tool = 'poly';
  else if (k === 'h' || k === 'H') tool = 'pan';
  else if (k === '[') bsize.value = Math.max(1, size() - 1);
  else if (k === ']') bsize.value = Math.min(60, size() + 1);
  else if (k === 'Enter') { if (open && open.length > 2) { contours.push(open); open = null; } else fillContours(); }
  else if (k === 'Escape') { contours = []; open = null; }
  else if (k === 'f' || k === 'F') fillHoles();
  else if (k === 'ArrowUp' || k === 'ArrowRight') go('next');
  else if (k === 'ArrowDown' || k === 'ArrowLeft') go('previous');
  else if (k === 'c' || k === 'C') go('copy');
  else if (k === 'i' || k === 'I') go('interpolate');
  else if (k === 'n' || k === 'N') go('nothing');
  else if (k === '+' || k === '=') act('zin');
  else if (k === '-') act('zout');
  else if (k === '0') act('fit');
  else if (k === ' ') { spaceDown = true; }
  else used = false;
  if (used) { ev.preventDefault(); draw(); }
});
root.addEventListener('keyup', function (ev) { if (ev.key === ' ') spaceDown = false; });
// the page's test hooks: read the painted labels exactly (no pixels of the screen involved)
root.__contour = {
  labels: function () { return labels ? Array.from(labels) : null; },
  text: function () { return labels && data ? encode(labels, data.h, data.w) : null; },
  view: function () { return {k: view.k, ox: view.ox, oy: view.oy, base: baseK()}; },
  data: function () { return data; }, dirty: function () { return dirty; }, busy: function () { return busy; },
  unbusy: function () { setBusy(false); },
  toClient: function (x, y) {
    const r = canvas.getBoundingClientRect(), s = toScreen(x, y); return [r.left + s[0], r.top + s[1]];
  }
};
window.addEventListener('resize', function () { resize(); draw(); });
if (window.ResizeObserver) new ResizeObserver(function () { resize(); draw(); takeFocus(); }).observe(stage);
resize();
watch('value', update);
update();
