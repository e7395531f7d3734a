"""Results of a session: measurements, exports (NIfTI, CSV + JSON), the reference and its agreement, notices."""
from __future__ import annotations

import json
import logging
import math
import re
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app import measure, ood
from app.context import AppContext
from app.segment.events import Events, guard, on
from app.segment.inputs import upload_name
from app.segment.session import Session
from usam.errors import UsamError, VolumeError

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

log = logging.getLogger("usam.app")

NSD_TOLERANCE_MM = 2.0


def measurements(s: Session) -> dict[str, Any]:
    """Measurements of the current label map."""
    return measure.measurements(s.labels, tuple(float(t) for t in s.volume.spacing))


def safe_stem(s: Session) -> str:
    """A file stem without user-provided text (uploaded names can hold patient data)."""
    stem = "upload" if s.is_upload else (re.sub(r"[^A-Za-z0-9]+", "_", s.name).strip("_").lower() or "volume")
    return f"{stem}_{s.volume_hash[:8]}"


def json_default(o: Any) -> Any:
    """numpy scalars and NaN-safe floats for json.dumps."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def export_nifti(s: Session, out_dir: Path | None = None) -> Path:
    """Multi-label NIfTI (0/1/2) with the input's affine, via usam.volumes.write_labelmap."""
    from usam.volumes import write_labelmap

    out = Path(out_dir or s.tmpdir()) / f"{safe_stem(s)}_usam_labels.nii.gz"
    return Path(write_labelmap(s.labels, s.volume, out))


def export_measurements(s: Session, ctx: AppContext | None = None, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Measurements as CSV and JSON."""
    m = measurements(s)
    extra = {"volume_sha256": s.volume_hash}
    if ctx is not None:
        info = ctx.weights_info()
        extra.update({"model_sha256": info.sha256, "weights": info.label})
    if s.reference is not None:
        m["reference_metrics"] = reference_metrics(s)
    d = Path(out_dir or s.tmpdir())
    csv_path = d / f"{safe_stem(s)}_measurements.csv"
    csv_path.write_text(measure.measurements_csv(m, extra))
    json_path = d / f"{safe_stem(s)}_measurements.json"
    json_path.write_text(json.dumps({**m, **extra}, indent=2, default=json_default))
    return csv_path, json_path


def load_reference(s: Session, path: str | Path, delete_after: bool = True, limits: Any = None) -> None:
    """Use an uploaded label map (same grid as the volume) as the reference (limits: usam VolumeLimits)."""
    from usam.volumes import read_labelmap

    path = Path(path)
    try:
        ref = read_labelmap(path, reference=s.volume, limits=limits)
    except UsamError:
        raise
    except Exception as exc:  # a reader library's own error: say what the user can do; the log gets the rest
        log.warning("reading a reference failed:\n%s", traceback.format_exc())
        raise VolumeError(f"could not read {upload_name(path)!r} as a label map") from exc
    finally:
        if delete_after:
            path.unlink(missing_ok=True)
    ref = np.asarray(ref)
    if ref.shape != s.labels.shape:
        raise VolumeError(f"the reference has shape {ref.shape}, the volume {s.labels.shape}")
    s.reference, s.reference_name = ref.astype(np.uint8), "uploaded label map"


def reference_metrics(s: Session, nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, Any]:
    """Dice / IoU / NSD of the current labels against the reference."""
    from usam.metrics import case_metrics

    if s.reference is None:
        raise VolumeError("no reference label map: upload one first")
    return case_metrics(s.labels, s.reference, tuple(float(t) for t in s.volume.spacing),
                        nsd_tolerance_mm=nsd_tolerance_mm)


def metric_rows(m: dict[str, Any]) -> list[list[Any]]:
    """Table rows (class, Dice, IoU, NSD, HD95, predicted mL, reference mL)."""
    def f(v: Any, nd: int = 3) -> Any:
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), nd)

    rows = []
    for c, name in ((1, "Normal rectum"), (2, "Tumor")):
        r = m["per_class"].get(c) or m["per_class"].get(str(c)) or {}
        rows.append([name, f(r.get("dice")), f(r.get("iou")), f(r.get("nsd")), f(r.get("hd95"), 2),
                     f(r.get("vol_pred_ml"), 2), f(r.get("vol_gt_ml"), 2)])
    mm = m.get("mean", {})
    rows.append(["Mean", f(mm.get("dice")), f(mm.get("iou")), f(mm.get("nsd")), f(mm.get("hd95"), 2), None, None])
    return rows


def reference_text(s: Session) -> str:
    """Which reference the agreement metrics compare with."""
    if s.reference is None:
        return "No reference label map: upload one (same grid as the volume) to see Dice / IoU / NSD."
    return f"Reference: **{s.reference_name}**. NSD tolerance {NSD_TOLERANCE_MM} mm."


def ood_findings(s: Session, m: dict | None = None) -> list[ood.Finding]:
    """Why the current results may be unlike the training data: volume, model uncertainty (of the last
    whole-volume run), measurements (m: measurements(s) when the caller has it already)."""
    if s.volume_hash not in s.ood_volume:
        s.ood_volume.clear()
        s.ood_volume[s.volume_hash] = ood.volume_findings(np.asarray(s.volume.array), s.volume.spacing)
    sp = tuple(float(t) for t in s.volume.spacing)
    return (s.ood_volume[s.volume_hash] + list(s.ood_model)
            + ood.measurement_findings(measurements(s) if m is None else m, s.labels, sp))


class ResultsEvents(Events):
    """Events of the Results & export tab (the session file's: app/segment/replay.py)."""

    @guard
    def update_results(self, s: Session | None):
        """Measurements table, per-slice area plot, 3D surface and out-of-distribution notice of the current masks."""
        s = self.ensure(s)
        m = measurements(s)
        sp = tuple(float(t) for t in s.volume.spacing)
        return (s, measure.measurement_rows(m), measure.area_figure(s.labels, sp, s.z),
                measure.surface_figure(s.labels, sp),
                ood.notice_html(ood_findings(s, m), "these measurements"))

    @guard
    def export_nifti(self, s: Session | None):
        """Multi-label NIfTI (0 background, 1 normal rectum, 2 tumor) with the input's affine."""
        s = self.ensure(s)
        return s, [str(export_nifti(s))]

    @guard
    def export_measurements(self, s: Session | None):
        """Measurements as CSV and JSON."""
        s = self.ensure(s)
        return s, [str(p) for p in export_measurements(s, self.ctx)]

    @guard
    def load_reference(self, s: Session | None, path: str | None):
        """Use an uploaded label map as the reference and compute Dice / IoU / NSD."""
        s = self.ensure(s)
        path = self.upload_path(path)
        load_reference(s, path, delete_after=self.owns_upload(path),
                       limits=self.ctx.config.limits.volume_limits())
        return s, metric_rows(reference_metrics(s)), reference_text(s)

    @guard
    def reference_metrics(self, s: Session | None):
        """Dice / IoU / NSD (2 mm tolerance) of the current masks against the reference."""
        s = self.ensure(s)
        return s, metric_rows(reference_metrics(s)), reference_text(s)


def wire(ui: "SegmentUI", ev: ResultsEvents) -> None:
    """The Results tab's events: measurements, exports, the reference."""
    outs = [ui.state, ui.meas, ui.area_plot, ui.surf_plot, ui.ood_note]
    on(ui, ui.refresh_btn.click, ev.update_results, [ui.state], outs, "update_results")
    on(ui, ui.results_tab.select, ev.update_results, [ui.state], outs, "show_results")
    on(ui, ui.nii_btn.click, ev.export_nifti, [ui.state], [ui.state, ui.files], "export_nifti")
    on(ui, ui.meas_btn.click, ev.export_measurements, [ui.state], [ui.state, ui.files], "export_measurements")
    # a refused file: its message beside the upload (toast + that one field), not on every output
    on(ui, ui.ref_upload.upload, ev.load_reference, [ui.state, ui.ref_upload], [ui.state, ui.ref_table, ui.ref_info],
       "load_reference", show_progress_on=[ui.ref_info])
    on(ui, ui.ref_btn.click, ev.reference_metrics, [ui.state], [ui.state, ui.ref_table, ui.ref_info],
       "reference_metrics")
