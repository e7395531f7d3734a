"""The Gradio Blocks of U-SAM Studio: layout and event wiring only (logic: app/handlers.py).

Every event has an explicit api_name (listed in docs/API.md). The observer-study tab is
mounted from app/study_tab.py when that module exists: `build_study_tab(ctx)` receives the
AppContext documented in app/context.py.
"""
from __future__ import annotations

import logging
import os
import traceback
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from app import gradio_cache  # noqa: E402
from app import handlers as H  # noqa: E402
from app.callbacks import Callbacks  # noqa: E402
from app.context import AppContext  # noqa: E402
from app.render import CUSTOM_PRESET, DEFAULT_PRESET, WINDOW_PRESETS  # noqa: E402
from app.state import CLASS_CHOICES, MODES, Session  # noqa: E402
from app.viewer import VIEWER_CSS, VIEWER_HTML, VIEWER_JS  # noqa: E402

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
.usam-ood { background: #fff1f0; color: #7f1d1d; border: 1px solid #f87171; border-left: 5px solid #dc2626;
  border-radius: 8px; padding: 8px 12px; font-size: 13px; margin: 4px 0 8px 0; }
.usam-ood ul { margin: 4px 0 4px 18px; padding: 0; } .usam-ood li { margin: 2px 0; }
.dark .usam-ood { background: #3b0d0d; color: #fecaca; border-color: #b91c1c; }
/* upload, undo / redo, clear: framed like buttons, not like labels (inside a gr.Group they lose it) */
button.usam-btn { border: 1px solid #94a3b8 !important; border-radius: 6px !important; margin: 4px !important;
  background: #ffffff !important; box-shadow: 0 1px 2px rgba(15,23,42,.18) !important; font-weight: 600 !important; }
button.usam-btn:hover { background: #eff6ff !important; border-color: #3b82f6 !important; }
.dark button.usam-btn { background: #1e293b !important; border-color: #64748b !important; }
"""


def theme() -> gr.themes.Base:
    """A calm clinical theme with system fonts only (no font downloads, no third-party calls)."""
    return gr.themes.Base(
        primary_hue="blue", secondary_hue="slate", neutral_hue="slate", radius_size="md",
        font=["Inter", "Segoe UI", "system-ui", "-apple-system", "Helvetica Neue", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def launch_kwargs(ctx: AppContext) -> dict[str, Any]:
    """Keyword arguments of Blocks.launch: private by default (no share link, history, telemetry),
    Gradio's deep links off and every browser given its secret cookie (app/security.py)."""
    from app.security import harden_server

    return dict(
        server_name=ctx.config.host, server_port=ctx.config.port, share=False, theme=theme(), css=APP_CSS,
        footer_links=["api"], run_history=False, enable_monitoring=False, mcp_server=False, ssr_mode=False,
        pwa=False, show_error=True, max_file_size=f"{ctx.config.limits.max_upload_mb}mb", **harden_server(),
    )


def _close_session(s: Any) -> None:
    """gr.State delete_callback: remove the session's files when it ends or expires."""
    if isinstance(s, Session):
        s.close()


def build_app(ctx: AppContext) -> gr.Blocks:
    """All tabs and events of the app."""
    # gradio 6.x (6.31.0 here) rewrites identical cached images in place while they are being
    # served to another client (truncated downloads under concurrent readers): write atomically
    gradio_cache.install()
    cb = Callbacks(ctx)

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
            # /load_volume for API clients: a refused file is an error they can catch (the page's
            # upload button has its own event, which shows one message instead)
            api_file = gr.File(label="CT file (NIfTI, zipped DICOM, NRRD)", type="filepath")

        with gr.Tab("Segment", id="segment"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=560):
                    viewer = gr.HTML(None, html_template=VIEWER_HTML, css_template=VIEWER_CSS,
                                     js_on_load=VIEWER_JS, apply_default_css=False, elem_id="usam-viewer")
                    slider = gr.Slider(0, 1, value=0, step=1, label="Axial slice (inferior → superior)",
                                       elem_id="usam-slice")
                    status = gr.Markdown(elem_id="usam-status")
                    timing = gr.Markdown(elem_id="usam-timing")
                    with gr.Row(equal_height=True, elem_id="usam-display"):
                        # "Custom" shows a manual W/L; clicking a preset then applies it again
                        preset = gr.Radio(list(WINDOW_PRESETS) + [CUSTOM_PRESET], value=DEFAULT_PRESET,
                                          label="Window preset (display only)", scale=3, min_width=300,
                                          elem_id="usam-preset")
                        win_w = gr.Number(WINDOW_PRESETS[DEFAULT_PRESET][0], label="W (HU)", minimum=1, scale=1,
                                          min_width=70, elem_id="usam-win-w")
                        win_l = gr.Number(WINDOW_PRESETS[DEFAULT_PRESET][1], label="L (HU)", scale=1, min_width=70,
                                          elem_id="usam-win-l")
                        win_btn = gr.Button("Apply W/L", size="sm", scale=0, min_width=80, elem_id="usam-win-apply",
                                            elem_classes=["usam-btn"])
                    with gr.Row(equal_height=True):
                        opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Overlay opacity", scale=2,
                                            min_width=200, elem_id="usam-opacity")
                        visible = gr.CheckboxGroup(CLASS_LABELS, value=CLASS_LABELS, label="Show classes", scale=2,
                                                   min_width=200)
                with gr.Column(scale=1, min_width=340, elem_classes=["usam-panel"]):
                    with gr.Group():
                        gr.Markdown("### Volume")
                        case = gr.Dropdown(list(H.DEMO_CASES), value=H.DEMO_CASES[0], label="Demo case",
                                           elem_id="usam-case")
                        upload = gr.UploadButton("⤒ Upload CT: NIfTI · zipped DICOM · NRRD", size="sm",
                                                 variant="secondary", elem_classes=["usam-btn"],
                                                 file_types=[".nii", ".gz", ".zip", ".nrrd", ".nhdr"],
                                                 type="filepath", elem_id="usam-upload")
                        load_msg = gr.Markdown(elem_id="usam-load-status")
                        vol_info = gr.Markdown(elem_id="usam-volinfo")
                    with gr.Group():
                        gr.Markdown("### Prompt")
                        gr.Markdown("Click each structure present on the slice with its class: a class "
                                    "you do not click is left out, and a clicked class keeps the regions you "
                                    "clicked. A box keeps the result inside it.", elem_id="usam-prompt-help")
                        mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="usam-mode")
                        cls = gr.Radio(CLASS_LABELS, value=CLASS_LABELS[0], label="Point class",
                                       elem_id="usam-class")
                        with gr.Row():
                            undo_btn = gr.Button("↶ Undo", size="sm", variant="secondary", elem_classes=["usam-btn"],
                                                 elem_id="usam-undo")
                            redo_btn = gr.Button("↷ Redo", size="sm", variant="secondary", elem_classes=["usam-btn"],
                                                 elem_id="usam-redo")
                            clear_btn = gr.Button("✕ Clear slice", size="sm", variant="secondary",
                                                  elem_classes=["usam-btn"])
                        auto_btn = gr.Button("Segment this slice without prompts", size="sm", elem_classes=["usam-btn"])
                    with gr.Group():
                        gr.Markdown("### Whole volume")
                        with gr.Row():
                            z0 = gr.Number(0, label="From slice", precision=0, minimum=0)
                            z1 = gr.Number(0, label="To slice", precision=0, minimum=0)
                        with gr.Row():
                            vol_btn = gr.Button("Segment range", variant="primary", size="sm")
                            prop_btn = gr.Button("Propagate box from 'From' slice", size="sm", elem_classes=["usam-btn"])
                        batch_info = gr.Markdown("Corrected (prompted) slices are locked: batch runs keep them.",
                                                 elem_id="usam-batch-info")

        with gr.Tab("Results & export", id="results") as results_tab:
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=360):
                    refresh_btn = gr.Button("Update measurements", variant="primary", size="sm")
                    ood_note = gr.HTML("", elem_id="usam-ood-results")  # beside the numbers it concerns
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
                    replay_info = gr.Markdown(elem_id="usam-replay-info")
                with gr.Column(scale=3, min_width=420):
                    area_plot = gr.Plot(label="Area per slice")
                    surf_plot = gr.Plot(label="3D surface")

        _mount_study_tab(ctx)

        VIEW = [state, viewer, slider, status, timing]
        # a new volume also resets what was derived from the old one (callbacks.Callbacks.loaded)
        LOAD = VIEW + [vol_info, z0, z1, header, ref_info, case, meas, area_plot, surf_plot, files, ref_table,
                       replay_info, batch_info, ood_note, load_msg]
        cb.blocks, cb.load_len = demo, len(LOAD)
        quiet = dict(show_progress="hidden")

        def wire(event: Callable, fn: Callable, inputs: list, outputs: list, name: str, gpu: bool = False, **kw):
            """Register one event with an explicit api_name (GPU work wrapped for ZeroGPU)."""
            return event(ctx.gpu(fn) if gpu else fn, inputs, outputs, api_name=name, **kw)

        wire(demo.load, cb.init_session, [state], LOAD, "init_session")
        wire(case.input, cb.load_demo_case, [state, case], LOAD, "load_demo_case")
        wire(upload.upload, cb.load_volume_page, [state, upload], LOAD, "load_volume_page",
             show_progress_on=[load_msg], api_visibility="private")
        wire(api_file.upload, cb.load_volume, [state, api_file], LOAD, "load_volume")

        wire(slider.input, cb.set_slice, [state, slider], VIEW, "set_slice", trigger_mode="always_last", **quiet)
        wire(viewer.nav, cb.go_to_slice, [state, api_z], VIEW, "go_to_slice", trigger_mode="always_last", **quiet)

        wire(viewer.point, cb.add_point, [state, api_x, api_y, api_z, mode, cls], VIEW, "add_point", gpu=True,
             trigger_mode="multiple", **quiet)
        wire(viewer.box, cb.add_box, [state, api_x, api_y, api_x1, api_y1, api_z], VIEW, "add_box", gpu=True,
             trigger_mode="multiple", **quiet)
        wire(undo_btn.click, cb.undo, [state], VIEW, "undo", **quiet)
        wire(redo_btn.click, cb.redo, [state], VIEW, "redo", **quiet)
        wire(clear_btn.click, cb.clear_slice, [state], VIEW, "clear_slice", **quiet)
        wire(auto_btn.click, cb.segment_slice, [state], VIEW, "segment_slice", gpu=True, **quiet)

        wire(vol_btn.click, cb.segment_volume, [state, z0, z1], VIEW + [batch_info], "segment_volume", gpu=True,
             show_progress_on=[batch_info])
        wire(prop_btn.click, cb.propagate_box, [state, z0, z1], VIEW + [batch_info], "propagate_box", gpu=True,
             show_progress_on=[batch_info])
        # Enter in From / To shows that slice (never starts a run: that is the buttons' job)
        wire(z0.submit, cb.set_slice, [state, z0], VIEW, "show_range_start", **quiet)
        wire(z1.submit, cb.set_slice, [state, z1], VIEW, "show_range_end", **quiet)

        wire(preset.input, cb.set_window_preset, [state, preset], VIEW + [win_w, win_l], "set_window_preset", **quiet)
        wire(win_btn.click, cb.set_window, [state, win_w, win_l], VIEW + [preset], "set_window", **quiet)
        wire(win_w.submit, cb.set_window, [state, win_w, win_l], VIEW + [preset], "set_window_width", **quiet)
        wire(win_l.submit, cb.set_window, [state, win_w, win_l], VIEW + [preset], "set_window_level", **quiet)
        # typing a W or L leaves the preset: the radio says so at once (browser only)
        for box in (win_w, win_l):
            box.input(None, None, [preset], js=f"() => {CUSTOM_PRESET!r}", queue=False, api_visibility="private")
        display_in = [state, opacity, visible, mode, cls]
        # input: a drag of the slider and typing in its number box (Enter included) both act
        wire(opacity.input, cb.set_display, display_in, VIEW, "set_opacity", trigger_mode="always_last", **quiet)
        wire(visible.input, cb.set_display, display_in, VIEW, "set_visible_classes", **quiet)
        wire(mode.input, cb.set_display, display_in, VIEW, "set_mode", **quiet)
        wire(cls.input, cb.set_display, display_in, VIEW, "set_point_class", **quiet)

        RESULTS = [state, meas, area_plot, surf_plot, ood_note]
        wire(refresh_btn.click, cb.update_results, [state], RESULTS, "update_results")
        wire(results_tab.select, cb.update_results, [state], RESULTS, "show_results")
        wire(nii_btn.click, cb.export_nifti, [state], [state, files], "export_nifti")
        wire(meas_btn.click, cb.export_measurements, [state], [state, files], "export_measurements")
        wire(sess_btn.click, cb.export_session, [state], [state, files], "export_session")
        # a refused file: its message beside the upload (toast + that one field), not on every output
        wire(sess_upload.upload, cb.replay_session, [state, sess_upload], VIEW + [replay_info], "replay_session",
             gpu=True, show_progress_on=[replay_info])
        wire(ref_upload.upload, cb.load_reference, [state, ref_upload], [state, ref_table, ref_info],
             "load_reference", show_progress_on=[ref_info])
        wire(ref_btn.click, cb.reference_metrics, [state], [state, ref_table, ref_info], "reference_metrics")

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
