"""Loading a volume: a demo case or an upload (NIfTI, zipped DICOM, NRRD), its summary, and the reset it brings."""
from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from app.context import AppContext
from app.segment.events import Events, guard, on, view_outputs
from app.segment.inputs import md, upload_name
from app.segment.opening import DEMO_CASES, load_demo, memory_grant, start_session
from app.segment.prompts import set_prompt_rules
from app.segment.results import reference_text
from app.segment.runs import BATCH_HINT
from app.segment.session import Session
from usam.errors import UsamError, VolumeError

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

log = logging.getLogger("usam.app")


def load_file(ctx: AppContext, path: str | Path, delete_after: bool = True) -> Session:
    """Session on an uploaded NIfTI / zipped DICOM / NRRD, named by its file name.

    delete_after: remove the file once read (privacy). The caller passes True only for a file
    this session uploaded itself, never for a path it was merely given (issue 13 §6)."""
    from usam.volumes import read_volume

    path = Path(path)
    try:
        with memory_grant(ctx) as grant:
            try:
                volume = read_volume(path, limits=ctx.config.limits.volume_limits(grant))
            except UsamError:
                raise
            except Exception as exc:  # a reader library's own error: say what the user can do; the log gets the rest
                log.warning("reading an upload failed:\n%s", traceback.format_exc())
                raise VolumeError(f"could not read {upload_name(path)!r} as NIfTI, zipped DICOM or NRRD") from exc
            return start_session(ctx, volume, upload_name(path), is_upload=True)
    finally:
        if delete_after:
            path.unlink(missing_ok=True)  # privacy: no copy of the upload outlives the read


def _file_axes(v: Any) -> str:
    """Orientation codes of the file's own voxel axes, from its on-disk affine ('' when it has none)."""
    import nibabel as nib

    src = v.source if isinstance(v.source, dict) else {}
    disk_affine = src.get("affine_on_disk")
    try:
        return "".join(nib.aff2axcodes(np.asarray(disk_affine if disk_affine is not None else v.affine)))
    except (ValueError, TypeError, IndexError, np.linalg.LinAlgError) as exc:
        log.info("no axis codes for the loaded volume: %r", exc)
        return ""


def volume_summary(s: Session) -> str:
    """Markdown: dimensions, spacing, orientation, source of the loaded volume."""
    v = s.volume
    nz, ny, nx = s.labels.shape
    sz, sy, sx = (float(t) for t in v.spacing)
    src = v.source if isinstance(v.source, dict) else {}
    orient = "shown LPS+ (radiological: patient right on screen left, anterior up)"
    axes = _file_axes(v)
    if axes:
        orient += f" · file axes {axes}"
    on_disk = src.get("shape_on_disk")
    return (f"**{md(s.name)}** · {nx} × {ny} × {nz} voxels (x × y × z) · spacing {sx:.2f} × {sy:.2f} × {sz:.2f} mm"
            f" · {orient}" + (f" · on disk {tuple(on_disk)}" if on_disk else "")
            + f" · hash `{s.volume_hash[:12]}`")


def header_html(ctx: AppContext) -> str:
    """Title, active weights and the demo-weights warning."""
    info = ctx.weights_info()
    note = f'<div class="usam-note" id="usam-weights-note">⚠ {info.note}</div>' if info.note else ""
    return (
        '<div id="usam-header"><div><h1>U-SAM Studio</h1><div class="sub">Rectal cancer segmentation in CT · '
        'U-SAM (SAM ViT encoder + U-shaped adapter) · <span style="color:rgb(230,40,40)">■</span> normal rectum '
        '<span style="color:rgb(40,110,255)">■</span> tumor</div></div>'
        f'<div class="usam-badge" id="usam-weights">Weights: <b>{info.label}</b> · device {ctx.device} · '
        f'sha256 <code>{info.sha256[:10]}</code></div></div>{note}'
    )


def load_outputs(ui: "SegmentUI") -> list:
    """The LOAD outputs, in the order LoadingEvents.loaded returns them."""
    return view_outputs(ui) + [ui.vol_info, ui.z0, ui.z1, ui.header, ui.ref_info, ui.case, ui.meas, ui.area_plot,
                               ui.surf_plot, ui.files, ui.ref_table, ui.replay_info, ui.batch_info, ui.ood_note,
                               ui.load_msg]


class LoadingEvents(Events):
    """Events that open a volume (page load, demo choice, upload)."""

    def loaded(self, s: Session) -> tuple:
        """LOAD outputs: VIEW + volume info, range defaults, header, reference text, then everything
        derived from the previous volume reset (demo choice, results, downloads, agreement table,
        replay message, batch line, notice) and the load status line."""
        demo = s.name if (s.name in DEMO_CASES and not s.is_upload) else None
        return self.view(s) + (volume_summary(s), gr.update(value=0, maximum=s.nz - 1),
                               gr.update(value=s.nz - 1, maximum=s.nz - 1), header_html(self.ctx),
                               reference_text(s),
                               gr.update(value=demo), [], None, None, None, [], "", BATCH_HINT, "",
                               f"Loaded **{md(s.name)}**.")

    @staticmethod
    def _carry_display(new: Session, old: Session | None) -> None:
        """Keep the user's display settings across volumes; free the old session's files."""
        if isinstance(old, Session):
            new.window, new.opacity, new.visible, new.mode, new.cls = old.window, old.opacity, old.visible, old.mode, old.cls
            set_prompt_rules(new, old.rules)   # the page's choice stays; the new session file records it
            old.close()

    @guard
    def init_session(self, s: Session | None):
        """Start (or resume) the session on the first demo case."""
        return self.loaded(self.ensure(s))

    @guard
    def load_demo_case(self, s: Session | None, name: str):
        """Load a demo phantom case by name."""
        new = load_demo(self.ctx, name)
        self._carry_display(new, s)
        return self.loaded(new)

    @guard
    def load_volume(self, s: Session | None, path: str | None):
        """Load an uploaded NIfTI / zipped DICOM / NRRD; a bad file leaves the previous volume."""
        path = self.upload_path(path)
        new = load_file(self.ctx, path, delete_after=self.owns_upload(path))
        self._carry_display(new, s)
        return self.loaded(new)

    def load_volume_page(self, s: Session | None, path: str | None):
        """The page's upload button: load_volume, but a refused file gives ONE message (the load status
        line and a warning toast) and leaves every other output as it was (no error on each output)."""
        try:
            return self.load_volume(s, path)
        except gr.Error as exc:
            msg = str(getattr(exc, "message", exc))
            gr.Warning(msg, title="Not loaded")
            return tuple(gr.skip() for _ in range(max(self.load_len - 1, 0))) + (f"⚠ **Not loaded:** {msg}",)


def wire(ui: "SegmentUI", ev: LoadingEvents) -> None:
    """Page load, the demo dropdown, the page's upload button and the API's /load_volume."""
    outs = load_outputs(ui)
    ev.load_len = len(outs)
    on(ui, ui.blocks.load, ev.init_session, [ui.state], outs, "init_session")
    on(ui, ui.case.input, ev.load_demo_case, [ui.state, ui.case], outs, "load_demo_case")
    on(ui, ui.upload.upload, ev.load_volume_page, [ui.state, ui.upload], outs, "load_volume_page",
       show_progress_on=[ui.load_msg], api_visibility="private")
    # /load_volume for API clients: a refused file is an error they can catch
    on(ui, ui.api_file.upload, ev.load_volume, [ui.state, ui.api_file], outs, "load_volume")
