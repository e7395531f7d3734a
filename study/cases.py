"""Study cases on disk: import of a cohort (phantom manifest or NIfTI + CSV), the lazily
generated 20-case phantom demo study, and a small cache of loaded volumes and ground truth."""
from __future__ import annotations

import csv
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.errors import InvalidInput, NotFound
from study.scoring import labels_sha256
from study.settings import StudySettings

DEMO_CASES = 20
DEMO_SEED = 2025
# folder of the cached demo cohort in the data folder; the suffix names the generator, so that a
# data folder holding the first generator's cases gets the anatomy-based ones in a new folder
# (the old folder is left alone: studies imported from it still point at its files)
DEMO_FOLDER = "demo_cohort_{size}_v2"


@dataclass
class CaseSpec:
    """One case to import: id, image and label paths, inclusive slice range (None = from GT)."""
    key: str
    image: Path
    label: Path
    start: int | None = None
    end: int | None = None


@dataclass
class LoadedCase:
    """Volume (HU, z y x), ground-truth labels, spacing and affine of one case."""
    volume: object            # usam.volumes.Volume
    labels: np.ndarray


def _int_or_none(v) -> int | None:
    return None if v in (None, "") else int(float(v))


def read_specs(folder: str | Path) -> list[CaseSpec]:
    """Cases of a folder: a phantom/usam manifest.json, or cases.csv (case_id,image,label[,start,end])."""
    folder = Path(folder)
    if (folder / "manifest.json").exists():
        from usam.phantom import load_cohort

        rows = load_cohort(folder)
        return [CaseSpec(str(r["case_id"]), folder / r["image"], folder / r["label"],
                         _int_or_none(r.get("rectum_start")), _int_or_none(r.get("rectum_end")))
                for r in rows]
    if (folder / "cases.csv").exists():
        with open(folder / "cases.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        need = {"case_id", "image", "label"}
        if not rows or not need <= set(rows[0]):
            raise InvalidInput(f"{folder / 'cases.csv'} needs the columns case_id,image,label[,start,end].")
        return [CaseSpec(r["case_id"], folder / r["image"], folder / r["label"],
                         _int_or_none(r.get("start")), _int_or_none(r.get("end"))) for r in rows]
    raise InvalidInput(f"{folder} has neither manifest.json nor cases.csv.")


def load_files(image: str | Path, label: str | Path) -> LoadedCase:
    """Read a case's volume and label map (label map resampled into the volume's orientation)."""
    from usam.volumes import read_labelmap, read_volume

    vol = read_volume(image)
    labels = read_labelmap(label, reference=vol)
    if labels.shape != vol.array.shape:
        raise InvalidInput(f"Ground truth {label} shape {labels.shape} differs from the volume {vol.array.shape}.")
    return LoadedCase(vol, np.asarray(labels, dtype=np.uint8))


def slice_range(labels: np.ndarray, start: int | None, end: int | None) -> tuple[int, int]:
    """Inclusive start..end: given values checked, missing ones from the ground-truth extent."""
    n = labels.shape[0]
    if start is None or end is None:
        zs = np.flatnonzero(labels.reshape(n, -1).any(axis=1))
        if zs.size == 0:
            raise InvalidInput("Ground truth is empty and no start/end slice was given.")
        start = int(zs[0]) if start is None else start
        end = int(zs[-1]) if end is None else end
    if not 0 <= start <= end < n:
        raise InvalidInput(f"Slice range {start}..{end} is outside the volume's 0..{n - 1}.")
    return int(start), int(end)


def case_record(spec: CaseSpec) -> dict:
    """Column values for a Case row: paths, locked GT hash, slice range, spacing, shape."""
    if not spec.image.exists() or not spec.label.exists():
        raise InvalidInput(f"Case {spec.key}: missing {spec.image if not spec.image.exists() else spec.label}.")
    lc = load_files(spec.image, spec.label)
    start, end = slice_range(lc.labels, spec.start, spec.end)
    spacing = [float(s) for s in lc.volume.spacing]
    return {"key": spec.key, "volume_path": str(spec.image.resolve()), "gt_path": str(spec.label.resolve()),
            "gt_sha256": labels_sha256(lc.labels, spacing), "start_slice": start, "end_slice": end,
            "spacing": spacing, "shape": [int(s) for s in lc.labels.shape]}


def demo_cohort(size: str | None = None, folder: Path | None = None, settings: StudySettings | None = None) -> Path:
    """Folder of the 20-case phantom demo cohort, generated on first use (then cached on disk).

    size and folder default to the settings' demo size and a folder in their data folder."""
    settings = settings or StudySettings()
    size = size or settings.demo_size
    folder = folder or settings.data_folder() / DEMO_FOLDER.format(size=size)
    if not (folder / "manifest.json").exists():
        from usam.phantom import generate_cohort

        generate_cohort(folder, cases=DEMO_CASES, seed=DEMO_SEED, size=size)
    return folder


class CaseCache:
    """A few loaded cases in memory (a full-size case is ~100 MB); thread-safe, LRU."""

    def __init__(self, max_items: int = 4):
        self.max_items = max_items
        self._items: OrderedDict[tuple, LoadedCase] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, volume_path: str, gt_path: str, gt_sha256: str) -> LoadedCase:
        """Loaded case; the ground truth must still hash to the value locked at import."""
        key = (volume_path, gt_path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        if not Path(volume_path).exists():
            raise NotFound("The case's volume file is missing on the server.")
        lc = load_files(volume_path, gt_path)
        if labels_sha256(lc.labels, lc.volume.spacing) != gt_sha256:
            raise InvalidInput("The ground truth file changed since it was locked at import; "
                               "scoring refused.")
        with self._lock:
            self._items[key] = lc
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return lc


CACHE = CaseCache()


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)
