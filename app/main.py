"""The Gradio Blocks of U-SAM Studio: layout and event wiring only (logic: app/handlers.py).

Every event has an explicit api_name (listed in docs/API.md). The observer-study tab is
mounted from app/study_tab.py when that module exists: `build_study_tab(ctx)` receives the
AppContext documented in app/context.py.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import traceback
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from app import handlers as H  # noqa: E402
from app import measure  # noqa: E402
from app.context import AppContext  # noqa: E402
from app.render import DEFAULT_PRESET, WINDOW_PRESETS  # noqa: E402
from app.state import CLASS_CHOICES, MODES, Session  # noqa: E402
from app.viewer import VIEWER_CSS, VIEWER_HTML, VIEWER_JS  # noqa: E402
from usam.errors import UsamError  # noqa: E402

log = logging.getLogger("usam.app")

SESSION_TTL_S = 4 * 3600          # idle sessions (and their files) are dropped after this
DELETE_CACHE = (900, 3600)        # every 15 min, delete Gradio cache files older than 1 h
CLASS_LABELS = list(CLASS_CHOICES)  # ["Normal rectum", "Tumor"]

APP_CSS = """
.gradio-container { max-width: 1480px !important; margin: 0 auto; }
#usam-header { display: flex; align-items: center; justify-content: space-between; gap: 16px;
  padding: 10px 4px 6px 4px; border-bottom: 1px solid var(--border-color-primary); margin-bottom: 6px; }
#usam-header h1 { font-size: 22px; margin: 0; letter-spacing: -0.01em; }
#usam-header .sub { color: var(--body-text-color-subdued); font-size: 13px; margin-top: 2px; }
.usam-badge { font-size: 12px; padding: 5px 10px; border-radius: 8px; background: var(--background-fill-secondary);
  border: 1px solid var(--border-color-primary); white-space: nowrap; }
.usam-note { background: #fff7e6; color: #7a4b00; border: 1px solid #f5c26b; border-radius: 8px;
  padding: 7px 12px; font-size: 13px; margin: 4px 0 8px 0; }
.dark .usam-note { background: #3a2a08; color: #fcd38a; border-color: #8a6412; }
.usam-panel h3 { margin: 2px 0 4px 0 !important; font-size: 14px !important; text-transform: uppercase;
  letter-spacing: .04em; color: var(--body-text-color-subdued); }
#usam-status, #usam-timing { font-size: 13px; }
#usam-timing p { font-variant-numeric: tabular-nums; }
footer { display: none !important; }
"""


def theme() -> gr.themes.Base:
    """A calm clinical theme with system fonts only (no font downloads, no third-party calls)."""
    return gr.themes.Base(
        primary_hue="blue", secondary_hue="slate", neutral_hue="slate", radius_size="md",
        font=["Inter", "Segoe UI", "system-ui", "-apple-system", "Helvetica Neue", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def launch_kwargs(ctx: AppContext) -> dict[str, Any]:
    """Keyword arguments of Blocks.launch: private by default (no share link, history, telemetry)."""
    return dict(
        server_name=ctx.config.host, server_port=ctx.config.port, share=False, theme=theme(), css=APP_CSS,
        footer_links=["api"], run_history=False, enable_monitoring=False, mcp_server=False, ssr_mode=False,
        pwa=False, show_error=True, max_file_size="2gb",
    )


def _close_session(s: Any) -> None:
    """gr.State delete_callback: remove the session's files when it ends or expires."""
    if isinstance(s, Session):
        s.close()


def _guard(fn: Callable) -> Callable:
    """User errors -> a clear message in the page; the previous state stays (no outputs change)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        sess = next((a for a in args if isinstance(a, Session)), None)
        try:
            if sess is None:
                return fn(*args, **kwargs)
            with sess.lock:  # events of one session never interleave (points may arrive in bursts)
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UsamError as exc:
            raise gr.Error(str(exc), title="Not done", print_exception=False) from exc
        except Exception as exc:  # a bug: keep the page alive and the state unchanged
            log.error("handler %s failed:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(f"Internal error ({type(exc).__name__}): {exc}", title="Internal error") from exc

    return wrapper


def header_html(ctx: AppContext) -> str:
    """Title, active weights and the demo-weights warning."""
    info = ctx.weights_info()
    note = f'<div class="usam-note" id="usam-weights-note">⚠️ {info.note}</div>' if info.note else ""
    return (
        '<div id="usam-header"><div><h1>U-SAM Studio</h1><div class="sub">Rectal cancer segmentation in CT · '
        'U-SAM (SAM ViT encoder + U-shaped adapter) · <span style="color:rgb(230,40,40)">■</span> normal rectum '
        '<span style="color:rgb(40,110,255)">■</span> tumor</div></div>'
        f'<div class="usam-badge" id="usam-weights">Weights: <b>{info.label}</b> · device {ctx.device} · '
        f'sha256 <code>{info.sha256[:10]}</code></div></div>{note}'
    )


def build_app(ctx: AppContext) -> gr.Blocks:
    """All tabs and events of the app."""
    gpu = ctx.gpu

    def ensure(s: Session | None) -> Session:
        """API clients may skip init_session: start on the demo case."""
        return s if isinstance(s, Session) else H.load_demo(ctx, 0)

    def view(s: Session, t0: float | None = None) -> tuple:
        """The outputs that follow every viewer change: state, viewer, slider, status, timing."""
        payload = H.viewer_payload(s)
        server_ms = None if t0 is None else (time.perf_counter() - t0) * 1000.0
        if server_ms is not None and s.last_timing:
            s.last_timing["server_ms"] = server_ms
        return (s, payload, gr.update(value=s.z, maximum=max(s.nz - 1, 1)), H.slice_status(s),
                H.timing_text(s, server_ms))

    def loaded(s: Session) -> tuple:
        """Outputs after a volume is loaded: the view plus volume info and range defaults."""
        return view(s) + (H.volume_summary(s), gr.update(value=0, maximum=s.nz - 1),
                          gr.update(value=s.nz - 1, maximum=s.nz - 1), header_html(ctx), _reference_text(s))

    def _reference_text(s: Session) -> str:
        """Which reference the metrics compare with."""
        if s.reference is None:
            return "No reference label map: upload one (same grid as the volume) to see Dice / IoU / NSD."
        return f"Reference: **{s.reference_name}**. NSD tolerance 2.0 mm."

    with gr.Blocks(title="U-SAM Studio", delete_cache=DELETE_CACHE, analytics_enabled=False) as demo:
        state = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=_close_session)
        header = gr.HTML('<div id="usam-header"><div><h1>U-SAM Studio</h1><div class="sub">loading model…</div>'
                         '</div></div>', elem_id="usam-header-wrap")

        # hidden inputs: how API clients pass coordinates (the browser sends them as event data)
        with gr.Row(visible=False):
            api_x = gr.Number(-1, label="x (slice column, px)")
            api_y = gr.Number(-1, label="y (slice row, px)")
            api_x1 = gr.Number(-1, label="x1 (box, px)")
            api_y1 = gr.Number(-1, label="y1 (box, px)")
            api_z = gr.Number(-1, label="z (slice index; -1 = current)")

        with gr.Tab("Segment", id="segment"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=560):
                    viewer = gr.HTML(None, html_template=VIEWER_HTML, css_template=VIEWER_CSS,
                                     js_on_load=VIEWER_JS, apply_default_css=False, elem_id="usam-viewer")
                    slider = gr.Slider(0, 1, value=0, step=1, label="Axial slice (inferior → superior)",
                                       elem_id="usam-slice")
                    status = gr.Markdown(elem_id="usam-status")
                    timing = gr.Markdown(elem_id="usam-timing")
                with gr.Column(scale=2, min_width=320, elem_classes=["usam-panel"]):
                    with gr.Group():
                        gr.Markdown("### Volume")
                        case = gr.Dropdown(list(H.DEMO_CASES), value=H.DEMO_CASES[0], label="Demo case",
                                           elem_id="usam-case")
                        upload = gr.File(label="Upload CT: NIfTI (.nii/.nii.gz), zipped DICOM series (.zip), NRRD",
                                         file_types=[".nii", ".gz", ".zip", ".nrrd", ".nhdr"], type="filepath",
                                         height=90, elem_id="usam-upload")
                        vol_info = gr.Markdown(elem_id="usam-volinfo")
                    with gr.Group():
                        gr.Markdown("### Prompt")
                        mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="usam-mode")
                        cls = gr.Radio(CLASS_LABELS, value=CLASS_LABELS[0], label="Point class",
                                       elem_id="usam-class")
                        with gr.Row():
                            undo_btn = gr.Button("↶ Undo", size="sm")
                            redo_btn = gr.Button("↷ Redo", size="sm")
                            clear_btn = gr.Button("✕ Clear slice", size="sm")
                        auto_btn = gr.Button("Segment this slice without prompts", size="sm")
                    with gr.Group():
                        gr.Markdown("### Whole volume")
                        with gr.Row():
                            z0 = gr.Number(0, label="From slice", precision=0, minimum=0)
                            z1 = gr.Number(0, label="To slice", precision=0, minimum=0)
                        with gr.Row():
                            vol_btn = gr.Button("Segment range", variant="primary", size="sm")
                            prop_btn = gr.Button("Propagate box from 'From' slice", size="sm")
                        batch_info = gr.Markdown("Corrected (prompted) slices are locked: batch runs keep them.")
                    with gr.Accordion("Display", open=True):
                        preset = gr.Radio(list(WINDOW_PRESETS), value=DEFAULT_PRESET, label="Window preset")
                        with gr.Row():
                            win_w = gr.Number(WINDOW_PRESETS[DEFAULT_PRESET][0], label="Window (HU)", minimum=1)
                            win_l = gr.Number(WINDOW_PRESETS[DEFAULT_PRESET][1], label="Level (HU)")
                            win_btn = gr.Button("Apply W/L", size="sm", scale=0, min_width=90)
                        opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Overlay opacity")
                        visible = gr.CheckboxGroup(CLASS_LABELS, value=CLASS_LABELS, label="Show classes")
                        gr.Markdown("Display settings never change what the model sees.",
                                    elem_classes=["usam-hint"])

        with gr.Tab("Results & export", id="results") as results_tab:
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=360):
                    refresh_btn = gr.Button("Update measurements", variant="primary", size="sm")
                    meas = gr.Dataframe(headers=["Quantity", "Value", "Unit"], interactive=False,
                                        label="Measurements", elem_id="usam-measurements")
                    gr.Markdown("#### Export")
                    with gr.Row():
                        nii_btn = gr.Button("Label map (NIfTI)", size="sm")
                        meas_btn = gr.Button("Measurements (CSV + JSON)", size="sm")
                        sess_btn = gr.Button("Session (JSON)", size="sm")
                    files = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                    elem_id="usam-downloads")
                    gr.Markdown("#### Compare with a reference")
                    ref_info = gr.Markdown()
                    ref_upload = gr.File(label="Reference label map (0/1/2, same grid)", type="filepath",
                                         file_types=[".nii", ".gz", ".nrrd", ".nhdr"], height=80)
                    ref_btn = gr.Button("Compute Dice / IoU / NSD", size="sm")
                    ref_table = gr.Dataframe(headers=["Class", "Dice", "IoU", "NSD", "HD95 (mm)", "mL (pred)",
                                                      "mL (ref)"], interactive=False, label="Agreement")
                    gr.Markdown("#### Replay a session")
                    sess_upload = gr.File(label="Session JSON (re-creates the masks on the loaded volume)",
                                          type="filepath", file_types=[".json"], height=80)
                    replay_info = gr.Markdown()
                with gr.Column(scale=3, min_width=420):
                    area_plot = gr.Plot(label="Area per slice")
                    surf_plot = gr.Plot(label="3D surface")

        _mount_study_tab(ctx)

        VIEW = [state, viewer, slider, status, timing]
        LOAD = VIEW + [vol_info, z0, z1, header, ref_info]

        # --- loading --------------------------------------------------------------------------
        @_guard
        def init_session(s: Session | None):
            """Start (or resume) the session on the first demo case."""
            if isinstance(s, Session):
                return loaded(s)
            return loaded(H.load_demo(ctx, 0))

        @_guard
        def load_demo_case(s: Session | None, name: str):
            """Load a demo phantom case by name."""
            new = H.load_demo(ctx, name)
            if isinstance(s, Session):
                new.window, new.opacity, new.visible, new.mode, new.cls = s.window, s.opacity, s.visible, s.mode, s.cls
                s.close()
            return loaded(new)

        @_guard
        def load_volume(s: Session | None, path: str | None):
            """Load an uploaded NIfTI / zipped DICOM / NRRD; a bad file leaves the previous volume."""
            if not path:
                raise gr.Error("No file received.", title="Not done", print_exception=False)
            new = H.load_file(ctx, path)
            if isinstance(s, Session):
                new.window, new.opacity, new.visible, new.mode, new.cls = s.window, s.opacity, s.visible, s.mode, s.cls
                s.close()
            return loaded(new)

        demo.load(init_session, [state], LOAD, api_name="init_session")
        case.input(load_demo_case, [state, case], LOAD, api_name="load_demo_case")
        upload.upload(load_volume, [state, upload], LOAD, api_name="load_volume").then(
            lambda: None, None, upload, api_name="reset_upload", show_progress="hidden")

        # --- navigation ----------------------------------------------------------------------------
        @_guard
        def set_slice(s: Session | None, z: float):
            """Show axial slice z."""
            s = ensure(s)
            H.set_slice(s, z)
            return view(s)

        @_guard
        def go_to_slice(s: Session | None, z: float, evt: gr.EventData = None):
            """Viewer keyboard / wheel navigation (event data {z}); API: pass z."""
            s = ensure(s)
            data = getattr(evt, "_data", None) or {}
            H.set_slice(s, data.get("z", z))
            return view(s)

        slider.input(set_slice, [state, slider], VIEW, api_name="set_slice", trigger_mode="always_last",
                     show_progress="hidden")
        viewer.nav(go_to_slice, [state, api_z], VIEW, api_name="go_to_slice", trigger_mode="always_last",
                   show_progress="hidden")

        # --- prompts ---------------------------------------------------------------------------------
        def _ack(s: Session, data: dict) -> None:
            if "seq" in data:
                s.ack = max(s.ack, int(data["seq"]))

        @_guard
        @gpu
        def add_point(s: Session | None, x: float, y: float, z: float, mode_name: str, cls_name: str,
                      evt: gr.EventData = None):
            """A point prompt: browser click (event data) or API (x, y, z; mode 'Negative point' = negative)."""
            t0 = time.perf_counter()
            s = ensure(s)
            data = getattr(evt, "_data", None) or {}
            if data:
                x, y, z, positive, c = data["x"], data["y"], data.get("z"), bool(data.get("label", 1)), data.get("cls", s.cls)
            else:
                positive, c = mode_name != MODES[1], CLASS_CHOICES.get(cls_name, s.cls)
                z = None if z is None or z < 0 else z
            try:
                H.add_point(s, x, y, positive, int(c), z=z)
            finally:
                _ack(s, data)
            return view(s, t0)

        @_guard
        @gpu
        def add_box(s: Session | None, x0: float, y0: float, x1: float, y1: float, z: float,
                    evt: gr.EventData = None):
            """A box prompt (xyxy in slice pixels): browser drag (event data) or API."""
            t0 = time.perf_counter()
            s = ensure(s)
            data = getattr(evt, "_data", None) or {}
            if data:
                x0, y0, x1, y1, z = data["x0"], data["y0"], data["x1"], data["y1"], data.get("z")
            else:
                z = None if z is None or z < 0 else z
            try:
                H.add_box(s, x0, y0, x1, y1, z=z)
            finally:
                _ack(s, data)
            return view(s, t0)

        viewer.point(add_point, [state, api_x, api_y, api_z, mode, cls], VIEW, api_name="add_point",
                     trigger_mode="multiple", show_progress="hidden")
        viewer.box(add_box, [state, api_x, api_y, api_x1, api_y1, api_z], VIEW, api_name="add_box",
                   trigger_mode="multiple", show_progress="hidden")

        def _slice_op(op: Callable[[Session], Any], name: str, doc: str) -> Callable:
            @_guard
            def fn(s: Session | None):
                t0 = time.perf_counter()
                s = ensure(s)
                if op(s) is False:
                    gr.Info(f"Nothing to {name} on slice {s.z}.")
                return view(s, t0)

            fn.__name__, fn.__doc__ = name, doc
            return fn

        undo_btn.click(_slice_op(H.undo, "undo", "Undo the last action on the current slice."), [state], VIEW,
                       api_name="undo", show_progress="hidden")
        redo_btn.click(_slice_op(H.redo, "redo", "Redo on the current slice."), [state], VIEW,
                       api_name="redo", show_progress="hidden")
        clear_btn.click(_slice_op(H.clear_slice, "clear", "Clear prompts and mask of the current slice."),
                        [state], VIEW, api_name="clear_slice", show_progress="hidden")
        auto_btn.click(gpu(_slice_op(H.segment_slice, "segment", "Segment the current slice without prompts.")),
                       [state], VIEW, api_name="segment_slice", show_progress="hidden")

        # --- whole volume -----------------------------------------------------------------------------
        def _progress_fn(progress: gr.Progress) -> Callable[[float, str], None]:
            return lambda frac, text: progress(frac, desc=text)

        @_guard
        @gpu
        def segment_volume(s: Session | None, start: float, end: float, progress=gr.Progress()):
            """U-SAM without prompts over slices start..end; locked slices are kept."""
            s = ensure(s)
            r = H.segment_volume(s, start, end, progress=_progress_fn(progress))
            msg = (f"Segmented slices {r['start']}–{r['end']}: {r['segmented']} predicted, {r['kept_locked']} "
                   f"corrected slices kept, {r['seconds']:.1f} s.")
            return view(s) + (msg,)

        @_guard
        @gpu
        def propagate_box(s: Session | None, start: float, end: float, progress=gr.Progress()):
            """Box-prompt each slice from start to end with the previous slice's mask box."""
            s = ensure(s)
            r = H.propagate_box(s, start, end, progress=_progress_fn(progress))
            stop = f" Stopped at slice {r['stopped_at']} (previous mask empty)." if r["stopped_at"] is not None else ""
            msg = (f"Propagated a box from slice {r['start']} towards {r['end']}: {r['propagated']} slices in "
                   f"{r['seconds']:.1f} s.{stop}")
            return view(s) + (msg,)

        vol_btn.click(segment_volume, [state, z0, z1], VIEW + [batch_info], api_name="segment_volume",
                      show_progress_on=[batch_info])
        prop_btn.click(propagate_box, [state, z0, z1], VIEW + [batch_info], api_name="propagate_box",
                       show_progress_on=[batch_info])

        # --- display -------------------------------------------------------------------------------------
        @_guard
        def set_window_preset(s: Session | None, name: str):
            """Display window preset (display only)."""
            s = ensure(s)
            H.set_window_preset(s, name)
            return view(s) + (s.window.width, s.window.level)

        @_guard
        def set_window(s: Session | None, width: float, level: float):
            """Manual display window width / level in HU (display only)."""
            s = ensure(s)
            H.set_window(s, width, level)
            return view(s)

        @_guard
        def set_display(s: Session | None, opacity_v: float, visible_v: list[str], mode_v: str, cls_v: str):
            """Overlay opacity, visible classes, prompt mode and point class."""
            s = ensure(s)
            H.set_display(s, opacity=opacity_v, visible=visible_v, mode=mode_v, cls=cls_v)
            return view(s)

        preset.input(set_window_preset, [state, preset], VIEW + [win_w, win_l], api_name="set_window_preset",
                     show_progress="hidden")
        win_btn.click(set_window, [state, win_w, win_l], VIEW, api_name="set_window", show_progress="hidden")
        win_w.submit(set_window, [state, win_w, win_l], VIEW, api_name="set_window_width", show_progress="hidden")
        win_l.submit(set_window, [state, win_w, win_l], VIEW, api_name="set_window_level", show_progress="hidden")
        display_in = [state, opacity, visible, mode, cls]
        opacity.release(set_display, display_in, VIEW, api_name="set_opacity", show_progress="hidden")
        visible.input(set_display, display_in, VIEW, api_name="set_visible_classes", show_progress="hidden")
        mode.input(set_display, display_in, VIEW, api_name="set_mode", show_progress="hidden")
        cls.input(set_display, display_in, VIEW, api_name="set_point_class", show_progress="hidden")

        # --- results and export --------------------------------------------------------------------------
        @_guard
        def update_results(s: Session | None):
            """Measurements table, per-slice area plot and 3D surface of the current masks."""
            s = ensure(s)
            m = H.results(s)
            sp = tuple(float(t) for t in s.volume.spacing)
            return (s, measure.measurement_rows(m), measure.area_figure(s.labels, sp, s.z),
                    measure.surface_figure(s.labels, sp))

        refresh_btn.click(update_results, [state], [state, meas, area_plot, surf_plot], api_name="update_results")
        results_tab.select(update_results, [state], [state, meas, area_plot, surf_plot],
                           api_name="show_results")

        @_guard
        def export_nifti(s: Session | None):
            """Multi-label NIfTI (0 background, 1 normal rectum, 2 tumor) with the input's affine."""
            s = ensure(s)
            return s, [str(H.export_nifti(s))]

        @_guard
        def export_measurements(s: Session | None):
            """Measurements as CSV and JSON."""
            s = ensure(s)
            return s, [str(p) for p in H.export_measurements(s, ctx)]

        @_guard
        def export_session(s: Session | None):
            """Session JSON (volume hash, model hash, every prompt, window) that re-creates the masks."""
            s = ensure(s)
            return s, [str(H.export_session(s, ctx))]

        nii_btn.click(export_nifti, [state], [state, files], api_name="export_nifti")
        meas_btn.click(export_measurements, [state], [state, files], api_name="export_measurements")
        sess_btn.click(export_session, [state], [state, files], api_name="export_session")

        @_guard
        @gpu
        def replay_session(s: Session | None, path: str | None):
            """Re-create the masks of a session JSON on the loaded volume."""
            s = ensure(s)
            if not path:
                raise gr.Error("No file received.", title="Not done", print_exception=False)
            data = H.read_session_file(path)
            new, rep = H.replay_session(ctx, data, s)
            s.close()
            msg = (f"Replayed {rep['actions']} actions. Masks "
                   + ("**identical** to the recorded ones." if rep["labels_match"] else "**differ** from the recorded ones")
                   + ("" if rep["same_model"] else " (the session was recorded with other weights)."))
            return view(new) + (msg,)

        sess_upload.upload(replay_session, [state, sess_upload], VIEW + [replay_info], api_name="replay_session")

        @_guard
        def load_reference(s: Session | None, path: str | None):
            """Use an uploaded label map as the reference and compute Dice / IoU / NSD."""
            s = ensure(s)
            if not path:
                raise gr.Error("No file received.", title="Not done", print_exception=False)
            H.load_reference(s, path)
            return s, H.metric_rows(H.reference_metrics(s)), _reference_text(s)

        @_guard
        def reference_metrics(s: Session | None):
            """Dice / IoU / NSD (2 mm) of the current masks against the reference."""
            s = ensure(s)
            return s, H.metric_rows(H.reference_metrics(s)), _reference_text(s)

        ref_upload.upload(load_reference, [state, ref_upload], [state, ref_table, ref_info],
                          api_name="load_reference")
        ref_btn.click(reference_metrics, [state], [state, ref_table, ref_info], api_name="reference_metrics")

    return demo


def _mount_study_tab(ctx: AppContext) -> None:
    """The observer-study tab from app/study_tab.py, when that module exists."""
    import importlib.util

    if importlib.util.find_spec("app.study_tab") is None:
        return
    with gr.Tab("Observer study", id="study"):
        try:
            from app.study_tab import build_study_tab

            build_study_tab(ctx)
        except Exception as exc:  # the segmentation tabs must keep working
            log.error("observer study tab failed:\n%s", traceback.format_exc())
            gr.Markdown(f"The observer study tab could not be built: `{type(exc).__name__}: {exc}`")
