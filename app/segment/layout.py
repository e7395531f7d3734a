"""The Segment and Results & export tabs: their components, and the wiring of every feature onto them.

To add a viewer action: its logic, its event method and its `wire` line go in the feature module
it belongs to (loading, prompts, runs, display, results, replay); a new component goes below;
its api_name goes into docs/API.md. (A new feature module adds its event class to SegmentEvents
and itself to wire_all.)
"""
from __future__ import annotations

import gradio as gr

from app.context import AppContext
from app.render import CUSTOM_PRESET, DEFAULT_PRESET, WINDOW_PRESETS
from app.segment import display, loading, prompts, replay, results, runs
from app.segment.opening import DEMO_CASES
from app.segment.runs import BATCH_HINT
from app.segment.session import CLASS_CHOICES, MODES, RULE_CHOICES
from app.viewer import VIEWER_CSS, VIEWER_HTML, VIEWER_JS

CLASS_LABELS = list(CLASS_CHOICES)  # ["Normal rectum", "Tumor"]


class SegmentEvents(loading.LoadingEvents, prompts.PromptEvents, runs.RunEvents, display.DisplayEvents,
                    results.ResultsEvents, replay.ReplayEvents):
    """Every event of the two tabs, bound to one AppContext (tests and `python -m app.bench` call them
    as plain methods, without a browser)."""


class SegmentUI:
    """The components of the two tabs, by name (set by build_tabs), with the context and the shared state."""

    def __init__(self, ctx: AppContext, blocks: gr.Blocks, state: gr.State, header: gr.HTML):
        self.ctx, self.blocks, self.state, self.header = ctx, blocks, state, header


def build_tabs(ui: SegmentUI) -> None:
    """The components of the Segment and Results & export tabs, inside the open Blocks."""
    # hidden inputs: how API clients pass coordinates (the browser sends them as event data)
    with gr.Row(visible=False):
        ui.api_x = gr.Number(-1, label="x (slice column, px)")
        ui.api_y = gr.Number(-1, label="y (slice row, px)")
        ui.api_x1 = gr.Number(-1, label="x1 (box, px)")
        ui.api_y1 = gr.Number(-1, label="y1 (box, px)")
        ui.api_z = gr.Number(-1, label="z (slice index; -1 = current)")
        # /load_volume for API clients: a refused file is an error they can catch (the page's
        # upload button has its own event, which shows one message instead)
        ui.api_file = gr.File(label="CT file (NIfTI, zipped DICOM, NRRD)", type="filepath")

    with gr.Tab("Segment", id="segment"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=560):
                ui.viewer = gr.HTML(None, html_template=VIEWER_HTML, css_template=VIEWER_CSS,
                                    js_on_load=VIEWER_JS, apply_default_css=False, elem_id="usam-viewer")
                ui.slider = gr.Slider(0, 1, value=0, step=1, label="Axial slice (inferior → superior)",
                                      elem_id="usam-slice")
                ui.status = gr.Markdown(elem_id="usam-status")
                ui.timing = gr.Markdown(elem_id="usam-timing")
                with gr.Row(equal_height=True, elem_id="usam-display"):
                    # "Custom" shows a manual W/L; clicking a preset then applies it again
                    ui.preset = gr.Radio(list(WINDOW_PRESETS) + [CUSTOM_PRESET], value=DEFAULT_PRESET,
                                         label="Window preset (display only)", scale=3, min_width=300,
                                         elem_id="usam-preset")
                    ui.win_w = gr.Number(WINDOW_PRESETS[DEFAULT_PRESET][0], label="W (HU)", minimum=1, scale=1,
                                         min_width=70, elem_id="usam-win-w")
                    ui.win_l = gr.Number(WINDOW_PRESETS[DEFAULT_PRESET][1], label="L (HU)", scale=1, min_width=70,
                                         elem_id="usam-win-l")
                    ui.win_btn = gr.Button("Apply W/L", size="sm", scale=0, min_width=80, elem_id="usam-win-apply",
                                           elem_classes=["usam-btn"])
                with gr.Row(equal_height=True):
                    ui.opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Overlay opacity", scale=2,
                                           min_width=200, elem_id="usam-opacity")
                    ui.visible = gr.CheckboxGroup(CLASS_LABELS, value=CLASS_LABELS, label="Show classes", scale=2,
                                                  min_width=200)
            with gr.Column(scale=1, min_width=340, elem_classes=["usam-panel"]):
                with gr.Group():
                    gr.Markdown("### Volume")
                    ui.case = gr.Dropdown(list(DEMO_CASES), value=DEMO_CASES[0], label="Demo case",
                                          elem_id="usam-case")
                    ui.upload = gr.UploadButton("⤒ Upload CT: NIfTI · zipped DICOM · NRRD", size="sm",
                                                variant="secondary", elem_classes=["usam-btn"],
                                                file_types=[".nii", ".gz", ".zip", ".nrrd", ".nhdr"],
                                                type="filepath", elem_id="usam-upload")
                    ui.load_msg = gr.Markdown(elem_id="usam-load-status")
                    ui.vol_info = gr.Markdown(elem_id="usam-volinfo")
                with gr.Group():
                    gr.Markdown("### Prompt")
                    gr.Markdown("Each click corrects the slice's current output (its previous mask goes "
                                "back to the model with the new prompt): a positive point of a class where "
                                "it is missing, a negative point where it is wrong. Clear starts the slice "
                                "afresh. The overlay is the network's own unless prompt rules are on.",
                                elem_id="usam-prompt-help")
                    ui.mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="usam-mode")
                    ui.cls = gr.Radio(CLASS_LABELS, value=CLASS_LABELS[0], label="Point class",
                                      elem_id="usam-class")
                    with gr.Row():
                        ui.undo_btn = gr.Button("↶ Undo", size="sm", variant="secondary", elem_classes=["usam-btn"],
                                                elem_id="usam-undo")
                        ui.redo_btn = gr.Button("↷ Redo", size="sm", variant="secondary", elem_classes=["usam-btn"],
                                                elem_id="usam-redo")
                        ui.clear_btn = gr.Button("✕ Clear slice", size="sm", variant="secondary",
                                                 elem_classes=["usam-btn"])
                    ui.auto_btn = gr.Button("Segment this slice without prompts", size="sm", elem_classes=["usam-btn"])
                    # post-processing of the output from what the prompts say (usam.prompt_rules): off by
                    # default; the status line under the slice names it while it is on
                    ui.rules = gr.Radio(list(RULE_CHOICES), value=next(iter(RULE_CHOICES)),
                                        label="Prompt rules (post-processing of the next prompts)",
                                        elem_id="usam-rules")
                with gr.Group():
                    gr.Markdown("### Whole volume")
                    with gr.Row():
                        ui.z0 = gr.Number(0, label="From slice", precision=0, minimum=0)
                        ui.z1 = gr.Number(0, label="To slice", precision=0, minimum=0)
                    with gr.Row():
                        ui.vol_btn = gr.Button("Segment range", variant="primary", size="sm")
                        ui.prop_btn = gr.Button("Propagate box from 'From' slice", size="sm", elem_classes=["usam-btn"])
                    ui.batch_info = gr.Markdown(BATCH_HINT, elem_id="usam-batch-info")

    with gr.Tab("Results & export", id="results") as ui.results_tab:
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=360):
                ui.refresh_btn = gr.Button("Update measurements", variant="primary", size="sm")
                ui.ood_note = gr.HTML("", elem_id="usam-ood-results")  # beside the numbers it concerns
                ui.meas = gr.Dataframe(headers=["Quantity", "Value", "Unit"], interactive=False,
                                       label="Measurements", elem_id="usam-measurements")
                gr.Markdown("#### Export")
                with gr.Row():
                    ui.nii_btn = gr.Button("Label map (NIfTI)", size="sm")
                    ui.meas_btn = gr.Button("Measurements (CSV + JSON)", size="sm")
                    ui.sess_btn = gr.Button("Session (JSON)", size="sm")
                ui.files = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                   elem_id="usam-downloads")
                gr.Markdown("#### Compare with a reference")
                ui.ref_info = gr.Markdown()
                ui.ref_upload = gr.File(label="Reference label map (0/1/2, same grid)", type="filepath",
                                        file_types=[".nii", ".gz", ".nrrd", ".nhdr"], height=80)
                ui.ref_btn = gr.Button("Compute Dice / IoU / NSD", size="sm")
                ui.ref_table = gr.Dataframe(headers=["Class", "Dice", "IoU", "NSD", "HD95 (mm)", "mL (pred)",
                                                     "mL (ref)"], interactive=False, label="Agreement")
                gr.Markdown("#### Replay a session")
                ui.sess_upload = gr.File(label="Session JSON (re-creates the masks on the loaded volume)",
                                         type="filepath", file_types=[".json"], height=80)
                ui.replay_info = gr.Markdown(elem_id="usam-replay-info")
            with gr.Column(scale=3, min_width=420):
                ui.area_plot = gr.Plot(label="Area per slice")
                ui.surf_plot = gr.Plot(label="3D surface")


def wire_all(ui: SegmentUI, ev: SegmentEvents) -> None:
    """Register every feature's events on the components (each feature's `wire`)."""
    ev.blocks = ui.blocks
    for feature in (loading, display, prompts, runs, results, replay):
        feature.wire(ui, ev)
