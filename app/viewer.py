"""The slice viewer: a canvas inside gr.HTML (Gradio 6 html_template + js_on_load).

The browser draws points and boxes at once and sends them with `trigger(...)`; the server
answers with a new payload (app.handlers.viewer_payload) and the overlay follows. Events:
  'point' {x, y, label, cls, z, seq}   a click (shift-click = negative point)
  'box'   {x0, y0, x1, y1, z, seq}     a drag in box mode
  'nav'   {z}                          arrow keys, page up/down, mouse wheel: the target slice
Coordinates are slice pixels (x = column, y = row, pixel centres at integers).
"""
from __future__ import annotations

VIEWER_HTML = """
<div class="uv-root" tabindex="0" aria-label="Axial CT slice viewer: click to prompt, arrow keys to scroll">
  <div class="uv-main">
    <div class="uv-stage">
      <canvas class="uv-canvas"></canvas>
      <div class="uv-hud uv-tl"></div>
      <div class="uv-hud uv-tr"></div>
      <div class="uv-hud uv-bl"></div>
      <div class="uv-hud uv-br">U-SAM</div>
      <div class="uv-ori uv-ori-l">R</div><div class="uv-ori uv-ori-r">L</div>
      <div class="uv-ori uv-ori-t">A</div><div class="uv-ori uv-ori-b">P</div>
      <div class="uv-busy">computing…</div>
    </div>
  </div>
  <div class="uv-side">
    <figure class="uv-thumb"><img class="uv-sag" alt="sagittal view"/><figcaption>Sagittal · A ← → P</figcaption></figure>
    <figure class="uv-thumb"><img class="uv-cor" alt="coronal view"/><figcaption>Coronal · R ← → L</figcaption></figure>
    <div class="uv-legend">
      <span><i class="uv-sw uv-red"></i>Normal rectum</span>
      <span><i class="uv-sw uv-blue"></i>Tumor</span>
      <span><i class="uv-dot uv-pos"></i>Positive</span>
      <span><i class="uv-dot uv-neg"></i>Negative</span>
    </div>
    <div class="uv-keys">Click: point · Shift-click: negative · Box mode: drag ·
      ↑/↓ or wheel: slice · PgUp/PgDn: ±10</div>
  </div>
</div>
"""

VIEWER_CSS = """
.uv-root { display: flex; gap: 12px; align-items: flex-start; outline: none; font-family: inherit; }
.uv-root:focus-visible .uv-stage { box-shadow: 0 0 0 2px #3b82f6; }
.uv-main { flex: 1 1 auto; min-width: 0; }
.uv-stage { position: relative; background: #05080c; border-radius: 10px; overflow: hidden;
  display: flex; justify-content: center; align-items: center; min-height: 360px; border: 1px solid #1f2937; }
.uv-canvas { display: block; cursor: crosshair; touch-action: none; }
.uv-hud { position: absolute; color: #e5e7eb; font-size: 12px; line-height: 1.35; pointer-events: none;
  text-shadow: 0 1px 2px #000; font-variant-numeric: tabular-nums; }
.uv-lock { background: rgba(234,179,8,.9); color: #111; font-weight: 600; font-size: 10.5px; padding: 1px 6px;
  border-radius: 6px; letter-spacing: .03em; display: inline-block; margin-bottom: 3px; }
.uv-tl { top: 8px; left: 10px; } .uv-tr { top: 8px; right: 10px; text-align: right; }
.uv-bl { bottom: 8px; left: 10px; } .uv-br { bottom: 8px; right: 10px; color: #6b7280; font-size: 11px; }
.uv-ori { position: absolute; color: #fbbf24; font-size: 12px; font-weight: 600; pointer-events: none; opacity: .8; }
.uv-ori-l { left: 6px; top: 50%; } .uv-ori-r { right: 6px; top: 50%; }
.uv-ori-t { top: 26px; left: 50%; } .uv-ori-b { bottom: 26px; left: 50%; }
.uv-busy { position: absolute; top: 8px; left: 50%; transform: translateX(-50%); background: rgba(59,130,246,.85);
  color: white; font-size: 11px; padding: 2px 8px; border-radius: 9px; display: none; pointer-events: none; }
.uv-root.busy .uv-busy { display: block; }
.uv-side { flex: 0 0 196px; display: flex; flex-direction: column; gap: 8px; }
.uv-thumb { margin: 0; background: #05080c; border-radius: 8px; padding: 6px; border: 1px solid #1f2937; }
.uv-thumb img { display: block; width: 100%; height: auto; image-rendering: auto; border-radius: 4px; min-height: 40px; }
.uv-thumb figcaption { color: #9ca3af; font-size: 11px; margin-top: 4px; text-align: center; }
.uv-legend { display: grid; grid-template-columns: 1fr 1fr; gap: 4px 8px; font-size: 11.5px; color: var(--body-text-color); }
.uv-legend span { display: flex; align-items: center; gap: 5px; }
.uv-sw { width: 11px; height: 11px; border-radius: 2px; display: inline-block; }
.uv-red { background: rgb(230,40,40); } .uv-blue { background: rgb(40,110,255); }
.uv-dot { width: 10px; height: 10px; border-radius: 50%; display: inline-block; border: 2px solid white; }
.uv-pos { background: #22c55e; } .uv-neg { background: #f43f5e; }
.uv-keys { font-size: 11px; color: var(--body-text-color-subdued); line-height: 1.4; }
@media (max-width: 900px) { .uv-root { flex-direction: column; } .uv-side { flex-basis: auto; width: 100%;
  flex-direction: row; flex-wrap: wrap; } .uv-thumb { width: 45%; } }
"""

# No backticks and no "${" below: Gradio evaluates templates as JS template strings, and this
# code is passed to new Function(...) as is.
VIEWER_JS = r"""
const root = element.querySelector('.uv-root');
const stage = element.querySelector('.uv-stage');
const canvas = element.querySelector('.uv-canvas');
const g = canvas.getContext('2d');
let data = null, imSlice = null, imOv = null, pending = [], drag = null, seq = 0;
let navTarget = null, lastNav = 0, disp = {w: 1, h: 1};

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
function layout() {
  if (!data) return;
  const cw = Math.max(200, stage.clientWidth);
  const maxH = Math.max(320, Math.min(window.innerHeight * 0.74, 760));
  const aspect = (data.h * data.sy) / (data.w * data.sx);
  let w = cw, h = cw * aspect;
  if (h > maxH) { h = maxH; w = h / aspect; }
  const dpr = window.devicePixelRatio || 1;
  disp = {w: w, h: h};
  canvas.style.width = w + 'px';
  canvas.style.height = h + 'px';
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
}
function toCanvas(x, y) { return [(x + 0.5) / data.w * disp.w, (y + 0.5) / data.h * disp.h]; }
function toSlice(ev) {
  const r = canvas.getBoundingClientRect();
  const x = (ev.clientX - r.left) / r.width * data.w - 0.5;
  const y = (ev.clientY - r.top) / r.height * data.h - 0.5;
  return [Math.max(0, Math.min(data.w - 1, x)), Math.max(0, Math.min(data.h - 1, y))];
}
function drawPoint(p, ghost) {
  const c = toCanvas(p[0], p[1]);
  const pos = p[2] === 1;
  g.save();
  g.globalAlpha = ghost ? 0.75 : 1;
  g.beginPath(); g.arc(c[0], c[1], 6.5, 0, 2 * Math.PI);
  g.fillStyle = pos ? '#22c55e' : '#f43f5e'; g.fill();
  g.lineWidth = 2; g.strokeStyle = p[3] === 2 ? '#60a5fa' : '#ffffff'; g.stroke();
  g.strokeStyle = '#0b0f14'; g.lineWidth = 1.6; g.beginPath();
  g.moveTo(c[0] - 3, c[1]); g.lineTo(c[0] + 3, c[1]);
  if (pos) { g.moveTo(c[0], c[1] - 3); g.lineTo(c[0], c[1] + 3); }
  g.stroke(); g.restore();
}
function drawBox(b, ghost) {
  const a = toCanvas(Math.min(b[0], b[2]), Math.min(b[1], b[3]));
  const c = toCanvas(Math.max(b[0], b[2]), Math.max(b[1], b[3]));
  g.save(); g.setLineDash([6, 4]); g.lineWidth = 2;
  g.strokeStyle = ghost ? 'rgba(250,204,21,0.8)' : '#facc15';
  g.strokeRect(a[0], a[1], c[0] - a[0], c[1] - a[1]); g.restore();
}
function draw() {
  if (!data) { return; }
  g.clearRect(0, 0, disp.w, disp.h);
  g.fillStyle = '#000'; g.fillRect(0, 0, disp.w, disp.h);
  if (imSlice) { g.imageSmoothingEnabled = true; g.drawImage(imSlice, 0, 0, disp.w, disp.h); }
  if (imOv && data.opacity > 0) {
    g.save(); g.globalAlpha = data.opacity; g.imageSmoothingEnabled = false;
    g.drawImage(imOv, 0, 0, disp.w, disp.h); g.restore();
  }
  if (data.cross) {
    const c = toCanvas(data.cross[0], data.cross[1]);
    g.save(); g.strokeStyle = 'rgba(250,204,21,0.28)'; g.lineWidth = 1; g.setLineDash([3, 5]);
    g.beginPath(); g.moveTo(c[0], 0); g.lineTo(c[0], disp.h); g.moveTo(0, c[1]); g.lineTo(disp.w, c[1]);
    g.stroke(); g.restore();
  }
  if (data.box) drawBox(data.box, false);
  (data.points || []).forEach(function (p) { drawPoint(p, false); });
  pending.forEach(function (q) { if (q.kind === 'box') drawBox(q.box, true); else drawPoint(q.p, true); });
  if (drag && drag.cur) drawBox([drag.x, drag.y, drag.cur[0], drag.cur[1]], true);
  hud();
}
function hud() {
  const z = navTarget !== null ? navTarget : data.z;
  element.querySelector('.uv-tl').innerHTML = 'Axial <b>' + z + '</b> / ' + (data.nz - 1) +
    '<br>W ' + Math.round(data.window[0]) + ' · L ' + Math.round(data.window[1]);
  element.querySelector('.uv-tr').innerHTML = (data.locked ? '<span class="uv-lock">CORRECTED · LOCKED</span><br>' : '') +
    (data.mode === 'box' ? 'Box mode' : (data.mode === 'neg' ? 'Negative point' : 'Positive point')) +
    (data.mode === 'box' ? '' : (data.cls === 2 ? ' · tumor' : ' · normal rectum'));
  element.querySelector('.uv-bl').innerHTML = data.w + '×' + data.h + ' px · ' +
    data.sx.toFixed(2) + '×' + data.sy.toFixed(2) + ' mm';
}
async function update() {
  const v = parse(props.value);
  if (!v || !v.slice) { data = null; return; }
  const ims = await Promise.all([loadImg(v.slice), loadImg(v.overlay)]);
  const sizeChanged = !data || data.w !== v.w || data.h !== v.h || data.sx !== v.sx || data.sy !== v.sy;
  data = v; imSlice = ims[0]; imOv = ims[1];
  const ack = v.ack || 0;
  pending = pending.filter(function (q) { return q.seq > ack && q.z === v.z; });
  if (navTarget !== null && (v.z === navTarget || Date.now() - lastNav > 400)) navTarget = null;
  root.classList.toggle('busy', pending.length > 0);
  element.querySelector('.uv-sag').src = v.sag || '';
  element.querySelector('.uv-cor').src = v.cor || '';
  if (sizeChanged) layout();
  draw();
}
canvas.addEventListener('pointerdown', function (ev) {
  if (!data || ev.button !== 0) return;
  root.focus({preventScroll: true});
  const p = toSlice(ev);
  drag = {x: p[0], y: p[1], cur: null, sx: ev.clientX, sy: ev.clientY};
  canvas.setPointerCapture(ev.pointerId);
});
canvas.addEventListener('pointermove', function (ev) {
  if (!drag || !data) return;
  if (data.mode === 'box') { drag.cur = toSlice(ev); draw(); }
});
canvas.addEventListener('pointerup', function (ev) {
  if (!drag || !data) return;
  const d = drag; drag = null;
  const p = toSlice(ev);
  const moved = Math.hypot(ev.clientX - d.sx, ev.clientY - d.sy);
  seq += 1;
  if (data.mode === 'box') {
    if (moved < 4) { draw(); return; }
    const b = [Math.min(d.x, p[0]), Math.min(d.y, p[1]), Math.max(d.x, p[0]), Math.max(d.y, p[1])];
    pending.push({kind: 'box', box: b, seq: seq, z: data.z});
    root.classList.add('busy'); draw();
    trigger('box', {x0: b[0], y0: b[1], x1: b[2], y1: b[3], z: data.z, seq: seq});
  } else {
    const label = (data.mode === 'neg' || ev.shiftKey) ? 0 : 1;
    pending.push({kind: 'point', p: [d.x, d.y, label, data.cls], seq: seq, z: data.z});
    root.classList.add('busy'); draw();
    trigger('point', {x: d.x, y: d.y, label: label, cls: data.cls, z: data.z, seq: seq});
  }
});
function nav(delta) {
  if (!data) return;
  const base = navTarget !== null ? navTarget : data.z;
  const t = Math.max(0, Math.min(data.nz - 1, base + delta));
  if (t === base) return;
  navTarget = t; lastNav = Date.now(); hud();
  trigger('nav', {z: t});
}
root.addEventListener('keydown', function (ev) {
  const steps = {ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10};
  if (ev.key in steps) { ev.preventDefault(); nav(steps[ev.key]); }
});
canvas.addEventListener('wheel', function (ev) {
  ev.preventDefault(); nav(ev.deltaY < 0 ? 1 : -1);
}, {passive: false});
window.addEventListener('resize', function () { layout(); draw(); });
let lastCw = 0;
if (window.ResizeObserver) {
  new ResizeObserver(function () {
    if (data && stage.clientWidth !== lastCw) { lastCw = stage.clientWidth; layout(); draw(); }
  }).observe(stage);
}
watch('value', update);
update();
"""
