"""The slice viewer: a canvas inside gr.HTML (Gradio 6 html_template + js_on_load).

The browser draws points and boxes at once and sends them with `trigger(...)`; the server
answers with a new payload (app.segment.payload.viewer_payload) and the overlay follows. Events:
  'point' {x, y, label, cls, z, seq}   a click (shift-click = negative point)
  'box'   {x0, y0, x1, y1, z, seq}     a drag in box mode
  'nav'   {z}                          arrow keys, page up/down, home/end, mouse wheel: the target slice
Coordinates are slice pixels (x = column, y = row, pixel centres at integers) at any zoom.

Zoom (Ctrl+wheel around the cursor, + / - keys and buttons, 0 / Fit) and pan (Ctrl-drag,
middle-drag, space-drag or the pan mode) are browser-only and persist across slices. Navigation
keeps one request in flight: keys pressed meanwhile move only the target, sent when the answer
arrives; an answer whose images finish decoding after a newer one is dropped. The slice label
is drawn from the same payload as the image, so label, image, slider and status agree.
"""
from __future__ import annotations

VIEWER_HTML = """
<div class="uv-root" tabindex="0" aria-label="Axial CT slice viewer: arrow keys or Page Up / Page Down to scroll, plus / minus to zoom; click to prompt">
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
      <div class="uv-goto"></div>
      <div class="uv-tools" role="toolbar" aria-label="Zoom and pan">
        <button type="button" class="uv-btn uv-zout" tabindex="-1" title="Zoom out (−)" aria-label="Zoom out">−</button>
        <span class="uv-zoom" title="Zoom">100 %</span>
        <button type="button" class="uv-btn uv-zin" tabindex="-1" title="Zoom in (+)" aria-label="Zoom in">+</button>
        <button type="button" class="uv-btn uv-fit" tabindex="-1" title="Fit the slice (0)" aria-label="Fit">Fit</button>
        <button type="button" class="uv-btn uv-pan" tabindex="-1" title="Pan mode: drag moves the image (H)" aria-label="Pan mode" aria-pressed="false">Pan</button>
      </div>
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
      ↑/↓, PgUp/PgDn (±10), Home/End or wheel: slice ·
      Ctrl+wheel, + / −: zoom · 0: fit · Ctrl-drag, middle-drag or Pan (H): pan</div>
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
.uv-bl { bottom: 40px; left: 10px; } .uv-br { bottom: 40px; right: 10px; color: #6b7280; font-size: 11px; }
.uv-ori { position: absolute; color: #fbbf24; font-size: 12px; font-weight: 600; pointer-events: none; opacity: .8; }
.uv-ori-l { left: 6px; top: 50%; } .uv-ori-r { right: 6px; top: 50%; }
.uv-ori-t { top: 26px; left: 50%; } .uv-ori-b { bottom: 40px; left: 50%; }
.uv-busy { position: absolute; top: 8px; left: 50%; transform: translateX(-50%); background: rgba(59,130,246,.85);
  color: white; font-size: 11px; padding: 2px 8px; border-radius: 9px; display: none; pointer-events: none; }
.uv-root.busy .uv-busy { display: block; }
.uv-goto { position: absolute; top: 30px; left: 50%; transform: translateX(-50%); background: rgba(15,23,42,.85);
  color: #e5e7eb; font-size: 11px; padding: 2px 8px; border-radius: 9px; display: none; pointer-events: none; }
.uv-root.navigating .uv-goto { display: block; }
.uv-canvas.uv-panning, .uv-root.uv-panmode .uv-canvas { cursor: grab; }
.uv-canvas.uv-panning { cursor: grabbing; }
.uv-tools { position: absolute; bottom: 8px; left: 50%; transform: translateX(-50%); display: flex; gap: 4px;
  align-items: center; background: rgba(15,23,42,.78); border: 1px solid #334155; border-radius: 8px; padding: 3px 5px; }
.uv-btn { background: #1e293b; color: #e5e7eb; border: 1px solid #475569; border-radius: 6px; font-size: 12px;
  min-width: 26px; height: 24px; padding: 0 7px; cursor: pointer; line-height: 1; font-family: inherit; }
.uv-btn:hover { background: #334155; } .uv-btn[aria-pressed="true"] { background: #2563eb; border-color: #60a5fa; }
.uv-zoom { color: #e5e7eb; font-size: 11.5px; min-width: 44px; text-align: center; font-variant-numeric: tabular-nums; }
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
let data = null, imSlice = null, imOv = null, imgZ = null, pending = [], drag = null, pan = null, seq = 0;
let disp = {w: 1, h: 1}, dpr = 1;
// the view: slice drawn at zoom k with its top-left corner at (ox, oy) canvas CSS px; kept across slices
let view = {k: 1, ox: 0, oy: 0}, panMode = false, spaceDown = false;
// navigation: one request in flight at a time; keys pressed meanwhile only move the target
let navTarget = null, navSent = null, navSentAt = 0, updSeq = 0;
const ZMAX = 16, ZSTEP = 1.25;

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
function clampView() {
  view.k = Math.max(1, Math.min(ZMAX, view.k));
  // the zoomed slice always covers the canvas: no empty margins to get lost in
  view.ox = Math.min(0, Math.max(disp.w - disp.w * view.k, view.ox));
  view.oy = Math.min(0, Math.max(disp.h - disp.h * view.k, view.oy));
}
function layout() {
  if (!data) return;
  const cw = Math.max(200, stage.clientWidth);
  const maxH = Math.max(320, Math.min(window.innerHeight * 0.74, 760));
  const aspect = (data.h * data.sy) / (data.w * data.sx);
  let w = cw, h = cw * aspect;
  if (h > maxH) { h = maxH; w = h / aspect; }
  dpr = window.devicePixelRatio || 1;
  const fx = disp.w > 1 ? w / disp.w : 1, fy = disp.h > 1 ? h / disp.h : 1;
  view.ox *= fx; view.oy *= fy;  // a resize keeps the same part of the slice in view
  disp = {w: w, h: h};
  canvas.style.width = w + 'px';
  canvas.style.height = h + 'px';
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  clampView();
}
// slice pixel (x = column, y = row; centres at integers) <-> canvas CSS px, through the view
function toCanvas(x, y) {
  return [(x + 0.5) / data.w * disp.w * view.k + view.ox, (y + 0.5) / data.h * disp.h * view.k + view.oy];
}
function localXY(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * disp.w / r.width, (ev.clientY - r.top) * disp.h / r.height];
}
function toSlice(ev) {
  const c = localXY(ev);
  const x = (c[0] - view.ox) / view.k / disp.w * data.w - 0.5;
  const y = (c[1] - view.oy) / view.k / disp.h * data.h - 0.5;
  return [Math.max(0, Math.min(data.w - 1, x)), Math.max(0, Math.min(data.h - 1, y))];
}
function zoomAt(factor, cx, cy) {
  if (!data) return;
  const k0 = view.k;
  const k1 = Math.max(1, Math.min(ZMAX, k0 * factor));
  // the slice point under (cx, cy) stays under it
  view.ox = cx - (cx - view.ox) * k1 / k0;
  view.oy = cy - (cy - view.oy) * k1 / k0;
  view.k = k1;
  clampView(); draw();
}
function fit() { view = {k: 1, ox: 0, oy: 0}; draw(); }
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
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.fillStyle = '#000'; g.fillRect(0, 0, disp.w, disp.h);
  g.save();
  g.translate(view.ox, view.oy); g.scale(view.k, view.k);
  // past 4x the slice's own pixels show (nearest), as in a reading workstation
  if (imSlice) { g.imageSmoothingEnabled = view.k < 4; g.drawImage(imSlice, 0, 0, disp.w, disp.h); }
  if (imOv && data.opacity > 0) {
    g.globalAlpha = data.opacity; g.imageSmoothingEnabled = false;
    g.drawImage(imOv, 0, 0, disp.w, disp.h); g.globalAlpha = 1;
  }
  g.restore();
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
  // the label is the drawn image's own slice: it can never disagree with the picture
  // slice indices run 0..nz-1: say so, as the status line does ("53 / 100" read as 100 slices)
  element.querySelector('.uv-tl').innerHTML = 'Axial <b>' + data.z + '</b> · slices 0–' + (data.nz - 1) +
    '<br>W ' + Math.round(data.window[0]) + ' · L ' + Math.round(data.window[1]);
  element.querySelector('.uv-tr').innerHTML = (data.locked ? '<span class="uv-lock">CORRECTED · LOCKED</span><br>' : '') +
    (data.mode === 'box' ? 'Box mode' : (data.mode === 'neg' ? 'Negative point' : 'Positive point')) +
    (data.mode === 'box' ? '' : (data.cls === 2 ? ' · tumor' : ' · normal rectum'));
  element.querySelector('.uv-bl').innerHTML = data.w + '×' + data.h + ' px · ' +
    data.sx.toFixed(2) + '×' + data.sy.toFixed(2) + ' mm';
  element.querySelector('.uv-zoom').textContent = Math.round(view.k * 100) + ' %';
  const going = navTarget !== null && navTarget !== data.z;
  root.classList.toggle('navigating', going);
  element.querySelector('.uv-goto').textContent = going ? ('going to slice ' + navTarget + '…') : '';
  root.dataset.z = String(data.z);
  root.dataset.zoom = view.k.toFixed(4);
}
function sendNav() {
  if (navTarget === null || !data) return;
  // one navigation request at a time; a lost answer (4 s) does not block the keys for good
  if (navSent !== null && Date.now() - navSentAt < 4000) return;
  navSent = navTarget; navSentAt = Date.now();
  trigger('nav', {z: navTarget});
}
async function update() {
  const my = ++updSeq;
  const v = parse(props.value);
  if (!v || !v.slice) { data = null; return; }
  const ims = await Promise.all([loadImg(v.slice), loadImg(v.overlay)]);
  if (my !== updSeq) return;  // a newer answer arrived while these images decoded: this one is stale
  const sizeChanged = !data || data.w !== v.w || data.h !== v.h || data.sx !== v.sx || data.sy !== v.sy;
  const newVolume = !data || data.name !== v.name || data.nz !== v.nz || sizeChanged;
  data = v; imSlice = ims[0]; imOv = ims[1]; imgZ = v.z;
  const ack = v.ack || 0;
  pending = pending.filter(function (q) { return q.seq > ack && q.z === v.z; });
  root.classList.toggle('busy', pending.length > 0);
  if (newVolume) { navTarget = null; navSent = null; }
  if (navSent !== null && (v.z === navSent || Date.now() - navSentAt > 4000)) navSent = null;
  if (navTarget !== null && v.z === navTarget) navTarget = null;
  element.querySelector('.uv-sag').src = v.sag || '';
  element.querySelector('.uv-cor').src = v.cor || '';
  if (sizeChanged) { view = {k: 1, ox: 0, oy: 0}; disp = {w: 1, h: 1}; layout(); }
  draw();
  if (navTarget !== null) sendNav();  // keys pressed while this answer was on its way
  if (!window.__uvFocused && document.activeElement === document.body) {
    window.__uvFocused = true;  // keys work at once, without a click (which would place a point)
    root.focus({preventScroll: true});
  }
}
function startPan(ev) {
  pan = {x: ev.clientX, y: ev.clientY, ox: view.ox, oy: view.oy};
  canvas.classList.add('uv-panning');
  canvas.setPointerCapture(ev.pointerId);
}
canvas.addEventListener('pointerdown', function (ev) {
  if (!data) return;
  root.focus({preventScroll: true});
  if (ev.button === 1 || (ev.button === 0 && (ev.ctrlKey || ev.metaKey || spaceDown || panMode))) {
    ev.preventDefault(); startPan(ev); return;
  }
  if (ev.button !== 0) return;
  const p = toSlice(ev);
  drag = {x: p[0], y: p[1], cur: null, sx: ev.clientX, sy: ev.clientY};
  canvas.setPointerCapture(ev.pointerId);
});
canvas.addEventListener('mousedown', function (ev) { if (ev.button === 1) ev.preventDefault(); });  // no autoscroll
canvas.addEventListener('auxclick', function (ev) { ev.preventDefault(); });
canvas.addEventListener('contextmenu', function (ev) { if (pan) ev.preventDefault(); });
canvas.addEventListener('pointermove', function (ev) {
  if (pan && data) {
    const r = canvas.getBoundingClientRect();
    view.ox = pan.ox + (ev.clientX - pan.x) * disp.w / r.width;
    view.oy = pan.oy + (ev.clientY - pan.y) * disp.h / r.height;
    clampView(); draw(); return;
  }
  if (!drag || !data) return;
  if (data.mode === 'box') { drag.cur = toSlice(ev); draw(); }
});
function endPan() { pan = null; canvas.classList.remove('uv-panning'); }
canvas.addEventListener('pointercancel', function () { endPan(); drag = null; if (data) draw(); });
canvas.addEventListener('pointerup', function (ev) {
  if (pan) { endPan(); return; }
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
function nav(to) {
  if (!data) return;
  const base = navTarget !== null ? navTarget : data.z;
  const t = Math.max(0, Math.min(data.nz - 1, to(base)));
  if (t === base) return;
  navTarget = t; hud(); sendNav();
}
function setPanMode(on) {
  panMode = on;
  root.classList.toggle('uv-panmode', on);
  element.querySelector('.uv-pan').setAttribute('aria-pressed', on ? 'true' : 'false');
}
const STEPS = {ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10};
function onKey(ev) {
  if (ev.altKey || ev.ctrlKey || ev.metaKey) return;  // browser shortcuts stay the browser's
  if (ev.key in STEPS) { ev.preventDefault(); const d = STEPS[ev.key]; nav(function (b) { return b + d; }); }
  else if (ev.key === 'Home') { ev.preventDefault(); nav(function () { return 0; }); }
  else if (ev.key === 'End') { ev.preventDefault(); nav(function () { return data.nz - 1; }); }
  else if (ev.key === '+' || ev.key === '=') { ev.preventDefault(); zoomAt(ZSTEP, disp.w / 2, disp.h / 2); }
  else if (ev.key === '-' || ev.key === '_') { ev.preventDefault(); zoomAt(1 / ZSTEP, disp.w / 2, disp.h / 2); }
  else if (ev.key === '0') { ev.preventDefault(); fit(); }
  else if (ev.key === 'h' || ev.key === 'H') { ev.preventDefault(); setPanMode(!panMode); }
  else if (ev.key === ' ') { ev.preventDefault(); spaceDown = true; }
}
root.addEventListener('keydown', onKey);
root.addEventListener('keyup', function (ev) { if (ev.key === ' ') spaceDown = false; });
// keys typed with nothing focused (the page itself) go to the viewer while it is on screen
document.addEventListener('keydown', function (ev) {
  const a = document.activeElement;
  if ((a === null || a === document.body) && root.offsetParent !== null) onKey(ev);
});
canvas.addEventListener('wheel', function (ev) {
  ev.preventDefault();
  if (ev.ctrlKey || ev.metaKey) {  // also a touchpad pinch
    const c = localXY(ev);
    zoomAt(ev.deltaY < 0 ? ZSTEP : 1 / ZSTEP, c[0], c[1]);
  } else {
    const d = ev.deltaY < 0 ? 1 : -1;
    nav(function (b) { return b + d; });
  }
}, {passive: false});
function tool(sel, fn) {
  element.querySelector(sel).addEventListener('click', function (ev) {
    ev.preventDefault(); fn(); root.focus({preventScroll: true});
  });
}
tool('.uv-zin', function () { zoomAt(ZSTEP, disp.w / 2, disp.h / 2); });
tool('.uv-zout', function () { zoomAt(1 / ZSTEP, disp.w / 2, disp.h / 2); });
tool('.uv-fit', fit);
tool('.uv-pan', function () { setPanMode(!panMode); });
// a click on the viewer's frame (not the slice) focuses it without placing a point
root.addEventListener('pointerdown', function (ev) { if (ev.target !== canvas) root.focus({preventScroll: true}); });
// for tests and API users: the view and what is drawn
root.__uv = {
  view: function () { return {k: view.k, ox: view.ox, oy: view.oy, w: disp.w, h: disp.h}; },
  state: function () {
    return {z: data ? data.z : null, imgZ: imgZ, navTarget: navTarget, navSent: navSent,
            pending: pending.length, points: data ? data.points : [], nx: data ? data.w : 0, ny: data ? data.h : 0,
            opacity: data ? data.opacity : null};
  },
  nz: function () { return data ? data.nz : 0; },
  toCanvas: function (x, y) { return toCanvas(x, y); },
};
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
