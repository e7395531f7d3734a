"""Pure rendering of slices, overlays and thumbnails for the viewer (numpy + PIL, no Gradio)."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Display window presets (width, level) in HU for pelvic CT. Display only: the model input
# uses the checkpoint's own window (DESIGN.md), never these.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "Abdomen (400/40)": (400.0, 40.0),
    "Soft tissue (350/50)": (350.0, 50.0),
    "Bone (1800/400)": (1800.0, 400.0),
}
DEFAULT_PRESET = "Abdomen (400/40)"
CUSTOM_PRESET = "Custom"  # what the preset radio shows for a manual W/L that matches no preset

# label -> RGB; paper colours: normal rectum red, tumor blue
CLASS_COLORS: dict[int, tuple[int, int, int]] = {1: (230, 40, 40), 2: (40, 110, 255)}
CLASS_NAMES: dict[int, str] = {1: "Normal rectum", 2: "Tumor"}


@dataclass(frozen=True)
class Window:
    """A display window in HU: width and level (centre)."""

    width: float = 400.0
    level: float = 40.0

    @property
    def bounds(self) -> tuple[float, float]:
        """Lowest and highest displayed HU."""
        return self.level - self.width / 2.0, self.level + self.width / 2.0


def preset_for(window: "Window") -> str:
    """The preset a window is (by width and level), else CUSTOM_PRESET."""
    for name, (w, l) in WINDOW_PRESETS.items():
        if abs(window.width - w) < 1e-6 and abs(window.level - l) < 1e-6:
            return name
    return CUSTOM_PRESET


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """Map HU to uint8 grey levels through a display window."""
    lo, hi = window.bounds
    scaled = (np.asarray(hu, dtype=np.float32) - lo) / max(hi - lo, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def overlay_rgba(labels: np.ndarray, visible: tuple[int, ...] = (1, 2), alpha: int = 255) -> np.ndarray:
    """RGBA overlay (h, w, 4) uint8 of a label map; hidden classes and background are transparent."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape + (4,), dtype=np.uint8)
    for cls in visible:
        if cls not in CLASS_COLORS:
            continue
        sel = labels == cls
        out[sel, :3] = CLASS_COLORS[cls]
        out[sel, 3] = alpha
    return out


def blend(grey: np.ndarray, labels: np.ndarray | None, opacity: float = 0.5,
          visible: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Grey uint8 slice with the overlay alpha-blended in: RGB uint8 (h, w, 3)."""
    rgb = np.repeat(np.asarray(grey, dtype=np.float32)[..., None], 3, axis=2)
    if labels is not None and opacity > 0:
        ov = overlay_rgba(labels, visible).astype(np.float32)
        a = ov[..., 3:4] / 255.0 * float(opacity)
        rgb = rgb * (1.0 - a) + ov[..., :3] * a
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def png_data_url(image: np.ndarray) -> str:
    """PNG-encode a uint8 grey / RGB / RGBA array as a data: URL (no files, no third-party hosts)."""
    buf = io.BytesIO()
    # compress_level 1: the PNG goes over localhost, encode speed matters more than bytes
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_data_url(url: str) -> np.ndarray:
    """Inverse of png_data_url (for tests and API clients)."""
    raw = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)))


def _resize(img: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """Resize an image array with PIL."""
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(img).resize((max(1, width), max(1, height)), resample))


def reformat_views(volume_hu: np.ndarray, labels: np.ndarray | None, spacing: tuple[float, float, float],
                   z: int, cross_xy: tuple[int, int], window: Window, opacity: float = 0.5,
                   visible: tuple[int, ...] = (1, 2), size: int = 180) -> dict[str, np.ndarray]:
    """Sagittal and coronal RGB thumbnails at cross_xy with the current axial slice marked.

    Display conventions: superior at the top; sagittal anterior on the left; coronal patient
    right on the left (radiological). Thumbnails are resampled to physical aspect ratio.
    """
    nz, ny, nx = volume_hu.shape
    sz, sy, sx = (float(s) for s in spacing)
    x = int(np.clip(cross_xy[0], 0, nx - 1))
    y = int(np.clip(cross_xy[1], 0, ny - 1))
    views = {}
    for name, hu2d, lab2d, col_mm in (
        ("sagittal", volume_hu[::-1, :, x], None if labels is None else labels[::-1, :, x], sy),
        ("coronal", volume_hu[::-1, y, :], None if labels is None else labels[::-1, y, :], sx),
    ):
        rgb = blend(apply_window(hu2d, window), lab2d, opacity, visible)
        h_mm, w_mm = nz * sz, hu2d.shape[1] * col_mm
        scale = size / max(h_mm, w_mm)
        out_h, out_w = max(8, int(round(h_mm * scale))), max(8, int(round(w_mm * scale)))
        img = _resize(rgb, out_w, out_h).copy()
        # the current axial slice: a yellow line at its row (array z flipped for display)
        row = int(round((nz - 1 - z + 0.5) / nz * out_h - 0.5))
        row = int(np.clip(row, 0, out_h - 1))
        img[row, :, :] = (255, 214, 0)
        views[name] = img
    return views
