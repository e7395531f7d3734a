"""Measurements of a label map (mL, extent, diameter, per-slice areas) and their Plotly figures."""
from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from app.render import CLASS_COLORS, CLASS_NAMES
from usam.metrics import volume_ml


def craniocaudal_extent_mm(labels: np.ndarray, spacing: tuple[float, float, float], cls: int = 2) -> float:
    """Cranio-caudal extent: number of slices from the first to the last holding the class x sz."""
    zs = np.flatnonzero((labels == cls).any(axis=(1, 2)))
    if zs.size == 0:
        return 0.0
    return float(zs[-1] - zs[0] + 1) * float(spacing[0])


def _max_pairwise_mm(points_mm: np.ndarray) -> float:
    """Largest distance between any two points (on their convex hull)."""
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) >= 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except QhullError:  # collinear points: the brute force below is still exact
            pass
    if len(points_mm) > 2000:  # bound the O(n^2) step; hull vertices are far fewer in practice
        points_mm = points_mm[:: int(math.ceil(len(points_mm) / 2000))]
    d = points_mm[:, None, :] - points_mm[None, :, :]
    return float(np.sqrt((d ** 2).sum(-1)).max())


def max_axial_diameter_mm(labels: np.ndarray, spacing: tuple[float, float, float], cls: int = 2) -> float:
    """Largest in-plane (axial) diameter of the class over all slices, in mm.

    Feret diameter of the pixel squares' corners, so a single pixel measures its diagonal.
    """
    sy, sx = float(spacing[1]), float(spacing[2])
    best = 0.0
    for z in np.flatnonzero((labels == cls).any(axis=(1, 2))):
        ys, xs = np.nonzero(labels[z] == cls)
        corners = np.concatenate([np.stack([ys + dy, xs + dx], 1) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
        best = max(best, _max_pairwise_mm(corners * np.array([sy, sx])))
    return best


def slice_areas_mm2(labels: np.ndarray, spacing: tuple[float, float, float]) -> dict[int, np.ndarray]:
    """Per-slice area (mm^2) of each class."""
    px = float(spacing[1]) * float(spacing[2])
    return {c: (labels == c).sum(axis=(1, 2)).astype(np.float64) * px for c in (1, 2)}


def measurements(labels: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, Any]:
    """All reported numbers of a label map, JSON-ready."""
    return {
        "normal_rectum_ml": round(volume_ml(labels == 1, spacing), 3),
        "tumor_ml": round(volume_ml(labels == 2, spacing), 3),
        "tumor_craniocaudal_extent_mm": round(craniocaudal_extent_mm(labels, spacing, 2), 2),
        "tumor_max_axial_diameter_mm": round(max_axial_diameter_mm(labels, spacing, 2), 2),
        "slices_with_normal_rectum": int((labels == 1).any(axis=(1, 2)).sum()),
        "slices_with_tumor": int((labels == 2).any(axis=(1, 2)).sum()),
        "spacing_mm": [float(s) for s in spacing],
    }


def measurement_rows(m: dict[str, Any]) -> list[list[Any]]:
    """Table rows (quantity, value, unit) for the UI."""
    return [
        ["Normal rectum volume", m["normal_rectum_ml"], "mL"],
        ["Tumor volume", m["tumor_ml"], "mL"],
        ["Tumor cranio-caudal extent", m["tumor_craniocaudal_extent_mm"], "mm"],
        ["Tumor max axial diameter", m["tumor_max_axial_diameter_mm"], "mm"],
        ["Slices with normal rectum", m["slices_with_normal_rectum"], "slices"],
        ["Slices with tumor", m["slices_with_tumor"], "slices"],
    ]


def measurements_csv(m: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """Measurements as CSV text (quantity,value,unit) plus provenance rows."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["quantity", "value", "unit"])
    for row in measurement_rows(m):
        w.writerow(row)
    for k, v in (extra or {}).items():
        w.writerow([k, v, ""])
    return buf.getvalue()


def area_figure(labels: np.ndarray, spacing: tuple[float, float, float], current_z: int | None = None):
    """Plotly line plot of per-slice area per class, current slice marked."""
    import plotly.graph_objects as go

    areas = slice_areas_mm2(labels, spacing)
    z = np.arange(labels.shape[0])
    fig = go.Figure()
    for c, a in areas.items():
        r, g, b = CLASS_COLORS[c]
        fig.add_trace(go.Scatter(x=z, y=a, mode="lines", name=CLASS_NAMES[c],
                                 line=dict(color=f"rgb({r},{g},{b})", width=2)))
    if current_z is not None:
        fig.add_vline(x=int(current_z), line_dash="dot", line_color="#d4a000")
    fig.update_layout(template="plotly_white", height=260, margin=dict(l=50, r=10, t=30, b=40),
                      title=dict(text="Area per axial slice", font=dict(size=13)),
                      xaxis_title="slice index (inferior → superior)", yaxis_title="area (mm²)",
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return fig


def surface_figure(labels: np.ndarray, spacing: tuple[float, float, float], max_voxels: int = 2_000_000):
    """Plotly 3D surface (marching cubes) of each class, in mm."""
    import plotly.graph_objects as go
    from skimage.measure import marching_cubes

    # downsample in-plane for big volumes: the surface view is for orientation, not measurement
    step = 1
    while labels[:, ::step, ::step].size > max_voxels:
        step += 1
    lab = labels[:, ::step, ::step]
    sp = (float(spacing[0]), float(spacing[1]) * step, float(spacing[2]) * step)
    fig = go.Figure()
    for c in (1, 2):
        mask = lab == c
        if mask.sum() < 2:
            continue
        padded = np.pad(mask.astype(np.float32), 1)  # closed surfaces at the volume border
        try:
            verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=sp)
        except (ValueError, RuntimeError):
            continue
        verts -= np.array(sp)  # undo the padding offset
        r, g, b = CLASS_COLORS[c]
        # axes shown as x (left-right), y (anterior-posterior), z (inferior-superior)
        fig.add_trace(go.Mesh3d(x=verts[:, 2], y=verts[:, 1], z=verts[:, 0], i=faces[:, 0], j=faces[:, 1],
                                k=faces[:, 2], color=f"rgb({r},{g},{b})", opacity=0.55 if c == 1 else 0.9,
                                name=CLASS_NAMES[c], showlegend=True, flatshading=False))
    fig.update_layout(height=360, margin=dict(l=0, r=0, t=30, b=0), template="plotly_white",
                      title=dict(text="3D surface (marching cubes)", font=dict(size=13)),
                      scene=dict(aspectmode="data", xaxis_title="x (mm, R→L)", yaxis_title="y (mm, A→P)",
                                 zaxis_title="z (mm, I→S)"),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right"))
    return fig
