"""The study's contouring tool: HTML, CSS and JS of a canvas inside gr.HTML (like app/viewer.py).

The label map lives in the browser as a Uint8Array at the slice's own size (h x w, values
0/1/2) and travels as run-length text (study.masks), never through an image. Events sent
with trigger(name, data), data always {aid, z, mask (text or null), ...}:
  'next' / 'previous'   move one slice (the slice is saved when edited or interpolated)
  'goto'  {target}      strip click / slice box (saved when edited)
  'nothing'             store "nothing on this slice" and move on
  'copy'                the reader's saved mask of the previous slice becomes this slice's draft
  'interpolate'         fill untouched slices between saved ones (server, shape-based)
  'submit'              after the page's confirmation dialog with the slice summary
The server answers with a new value (app.contour.payload) whose mask_mode says what to do
with the painted labels: 'replace' (a new slice or the stored mask), 'keep' (same slice, new
window) or 'draft' (a proposal to edit: undoable, not saved yet).
"""
from __future__ import annotations

from pathlib import Path

CONTOUR_HTML = """
<div class="uc-root" tabindex="0" aria-label="Contouring tool: paint the rectal wall and the tumor">
  <div class="uc-bar">
    <div class="uc-grp" role="group" aria-label="Class">
      <button class="uc-btn uc-cls1" data-act="cls1" title="Normal rectal wall (1)"><i class="uc-sw uc-red"></i>Wall</button>
      <button class="uc-btn uc-cls2" data-act="cls2" title="Tumor (2)"><i class="uc-sw uc-blue"></i>Tumor</button>
    </div>
    <div class="uc-grp" role="group" aria-label="Tool">
      <button class="uc-btn" data-tool="brush" title="Brush (B)">Brush</button>
      <button class="uc-btn" data-tool="eraser" title="Eraser (E)">Eraser</button>
      <button class="uc-btn" data-tool="poly" title="Polygon / lasso (P): click vertices or drag; Enter closes, Enter again fills">Polygon</button>
      <button class="uc-btn" data-tool="pan" title="Pan (H, or hold Space, or middle button)">Pan</button>
    </div>
    <label class="uc-size">Size <input class="uc-num uc-bsize" type="number" min="1" max="60" step="1" value="6"
      title="Brush size in pixels ([ and ])"></label>
    <div class="uc-grp">
      <button class="uc-btn" data-act="undo" title="Undo (Ctrl+Z)">↶</button>
      <button class="uc-btn" data-act="redo" title="Redo (Ctrl+Y)">↷</button>
      <button class="uc-btn" data-act="fill" title="Fill the closed contours, even-odd (Enter)">Fill contours</button>
      <button class="uc-btn" data-act="holes" title="Fill holes of the current class (F)">Fill holes</button>
    </div>
    <div class="uc-grp">
      <button class="uc-btn" data-act="zin" title="Zoom in (+ or Ctrl+wheel)">+</button>
      <button class="uc-btn" data-act="zout" title="Zoom out (-)">−</button>
      <button class="uc-btn" data-act="fit" title="Fit the image (0)">Fit</button>
      <span class="uc-zoom">100%</span>
    </div>
  </div>
  <div class="uc-stage">
    <canvas class="uc-canvas"></canvas>
    <div class="uc-hud uc-tl"></div>
    <div class="uc-hud uc-tr"></div>
    <div class="uc-flag">INTERPOLATED · check it, edit if needed, then Save &amp; next confirms it</div>
    <div class="uc-busy">saving…</div>
    <div class="uc-msg"></div>
  </div>
  <div class="uc-strip" aria-label="Slices of this case"></div>
  <div class="uc-bar uc-nav">
    <button class="uc-btn" data-act="previous" title="Save &amp; previous slice (↓ or ←)">◀ Save &amp; previous</button>
    <button class="uc-btn uc-primary" data-act="next" title="Save &amp; next slice (↑ or →)">Save &amp; next ▶</button>
    <label class="uc-size">Slice <input class="uc-num uc-goto" type="number" step="1" title="Go to slice (Enter)"></label>
    <button class="uc-btn" data-act="copy" title="Copy the previous slice's saved mask (C)">Copy previous</button>
    <button class="uc-btn" data-act="interpolate" title="Interpolate between saved slices (I)">Interpolate</button>
    <button class="uc-btn" data-act="nothing" title="Nothing on this slice (N)">Nothing on this slice</button>
    <button class="uc-btn uc-stop" data-act="submit" title="Submit the case (asks first)">Submit case…</button>
  </div>
  <div class="uc-keys">Keys: <b>1</b> wall · <b>2</b> tumor · <b>B</b> brush · <b>E</b> eraser · <b>P</b> polygon/lasso
    (<b>Enter</b> close / fill, <b>Esc</b> cancel) · <b>F</b> fill holes · <b>[</b> <b>]</b> brush size ·
    <b>Ctrl+Z</b> undo · <b>Ctrl+Y</b> redo · <b>↑ →</b> save &amp; next · <b>↓ ←</b> save &amp; previous ·
    <b>C</b> copy previous · <b>I</b> interpolate · <b>N</b> nothing here · <b>Ctrl+wheel</b> or <b>+ −</b> zoom ·
    <b>0</b> fit · <b>Space</b>-drag or middle button: pan · wheel: slices</div>
  <div class="uc-modal" role="dialog" aria-modal="true" aria-label="Submit the case">
    <div class="uc-card">
      <h3>Submit this case?</h3>
      <div class="uc-sum"></div>
      <p class="uc-warn"></p>
      <p>A submitted case is final: it cannot be changed afterwards.</p>
      <div class="uc-bar"><button class="uc-btn" data-act="cancel">Cancel</button>
        <button class="uc-btn uc-stop uc-confirm" data-act="confirm">Submit case</button></div>
    </div>
  </div>
</div>
"""

CONTOUR_CSS = """
.uc-root { display: flex; flex-direction: column; gap: 6px; outline: none; font-family: inherit; position: relative; }
.uc-root:focus-visible .uc-stage { box-shadow: 0 0 0 2px #3b82f6; }
.uc-bar { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.uc-grp { display: flex; gap: 2px; }
.uc-btn { padding: 4px 9px; border: 1px solid var(--border-color-primary); border-radius: 6px; cursor: pointer;
  background: var(--button-secondary-background-fill); color: var(--body-text-color); font-size: 13px; }
.uc-btn:hover { filter: brightness(0.95); }
.uc-btn.on { background: #1d4ed8; color: white; border-color: #1d4ed8; }
.uc-primary { background: #2563eb; color: white; border-color: #2563eb; }
.uc-stop { background: #b91c1c; color: white; border-color: #b91c1c; }
.uc-btn:disabled { opacity: .5; cursor: default; }
.uc-sw { width: 10px; height: 10px; border-radius: 2px; display: inline-block; margin-right: 4px; }
.uc-red { background: rgb(230,40,40); } .uc-blue { background: rgb(40,110,255); }
.uc-size { font-size: 13px; display: flex; gap: 4px; align-items: center; }
.uc-num { width: 64px; padding: 2px 4px; border: 1px solid var(--border-color-primary); border-radius: 4px;
  background: var(--input-background-fill); color: var(--body-text-color); }
.uc-zoom { font-size: 12px; min-width: 44px; color: var(--body-text-color-subdued); font-variant-numeric: tabular-nums; }
.uc-stage { position: relative; background: #05080c; border-radius: 8px; overflow: hidden; border: 1px solid #1f2937;
  height: max(420px, calc(100vh - 300px)); }
.uc-canvas { display: block; width: 100%; height: 100%; cursor: crosshair; touch-action: none; }
.uc-hud { position: absolute; color: #e5e7eb; font-size: 12px; line-height: 1.35; pointer-events: none;
  text-shadow: 0 1px 2px #000; font-variant-numeric: tabular-nums; }
.uc-tl { top: 8px; left: 10px; } .uc-tr { top: 8px; right: 10px; text-align: right; }
.uc-flag { position: absolute; bottom: 10px; left: 50%; transform: translateX(-50%); background: rgba(234,179,8,.92);
  color: #111; font-weight: 600; font-size: 12px; padding: 3px 10px; border-radius: 8px; display: none; pointer-events: none; }
.uc-root.interp .uc-flag { display: block; }
.uc-busy { position: absolute; top: 8px; left: 50%; transform: translateX(-50%); background: rgba(59,130,246,.85);
  color: white; font-size: 11px; padding: 2px 8px; border-radius: 9px; display: none; pointer-events: none; }
.uc-root.busy .uc-busy { display: block; }
.uc-msg { position: absolute; top: 34px; left: 50%; transform: translateX(-50%); background: rgba(15,23,42,.9);
  color: white; font-size: 12px; padding: 3px 10px; border-radius: 8px; display: none; pointer-events: none; }
.uc-strip { display: flex; gap: 2px; }
.uc-cell { flex: 1 1 0; min-width: 6px; max-width: 34px; height: 22px; overflow: hidden; font-size: 11px; line-height: 20px; text-align: center; border-radius: 4px;
  cursor: pointer; border: 1px solid #64748b; color: var(--body-text-color); font-variant-numeric: tabular-nums; }
.uc-cell.saved { background: #16a34a; border-color: #15803d; color: white; }
.uc-cell.nothing { background: #94a3b8; border-color: #64748b; color: #0f172a; }
.uc-cell.interpolated { background: repeating-linear-gradient(45deg, #facc15, #facc15 4px, #fde68a 4px, #fde68a 8px);
  border-color: #ca8a04; color: #111; }
.uc-cell.untouched { background: transparent; }
.uc-cell.here { outline: 3px solid #2563eb; outline-offset: 1px; font-weight: 700; }
.uc-cell.dirty::after { content: "*"; }
.uc-keys { font-size: 11.5px; color: var(--body-text-color-subdued); line-height: 1.5; }
.uc-modal { position: fixed; inset: 0; background: rgba(0,0,0,.45); display: none; align-items: center;
  justify-content: center; z-index: 1000; }
.uc-root.asking .uc-modal { display: flex; }
.uc-card { background: var(--background-fill-primary); color: var(--body-text-color); border-radius: 10px; padding: 16px 20px;
  max-width: 460px; box-shadow: 0 10px 30px rgba(0,0,0,.35); }
.uc-card h3 { margin: 0 0 8px 0; }
.uc-warn { color: #b45309; font-weight: 600; }
.uc-sum table { border-collapse: collapse; font-size: 13px; }
.uc-sum td { padding: 1px 10px 1px 0; }
"""

# after a refused call (the page shows the message): take input again, edits kept
CONTOUR_UNBUSY_JS = """() => { const r = document.querySelector('#study-contour .uc-root');
  if (r && r.__contour) r.__contour.unbusy(); }"""

# No backticks and no dollar-brace in it: Gradio evaluates templates as JS template strings
# (tests/app/test_contour_js.py checks). Read once, at import.
CONTOUR_JS = (Path(__file__).resolve().parent / "static" / "contour.js").read_text(encoding="utf-8")

