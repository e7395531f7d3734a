"""Rendering and measurement functions (pure numpy; no model, no browser)."""
from __future__ import annotations

import numpy as np
import pytest

from app import measure
from app.render import (CLASS_COLORS, Window, apply_window, blend, decode_data_url, overlay_rgba,
                        png_data_url, reformat_views)


def test_window_maps_level_to_mid_grey_and_clips():
    hu = np.array([[-1000.0, 40.0, 240.0, 3000.0]])
    g = apply_window(hu, Window(400, 40))
    assert g.tolist() == [[0, 128, 255, 255]]


def test_overlay_colours_and_hidden_classes():
    lab = np.array([[0, 1, 2]], np.uint8)
    ov = overlay_rgba(lab, (1, 2))
    assert ov[0, 0, 3] == 0
    assert tuple(ov[0, 1, :3]) == CLASS_COLORS[1] and ov[0, 1, 3] == 255
    assert tuple(ov[0, 2, :3]) == CLASS_COLORS[2]
    only_tumor = overlay_rgba(lab, (2,))
    assert only_tumor[0, 1, 3] == 0 and only_tumor[0, 2, 3] == 255


def test_blend_opacity_zero_is_grey_and_full_is_colour():
    grey = np.full((1, 2), 100, np.uint8)
    lab = np.array([[0, 1]], np.uint8)
    assert blend(grey, lab, 0.0)[0, 1].tolist() == [100, 100, 100]
    assert blend(grey, lab, 1.0)[0, 1].tolist() == list(CLASS_COLORS[1])
    assert blend(grey, lab, 1.0)[0, 0].tolist() == [100, 100, 100]


def test_png_round_trip():
    img = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    assert np.array_equal(decode_data_url(png_data_url(img)), img)


def test_reformat_marks_current_slice_with_physical_aspect():
    vol = np.zeros((10, 20, 30), np.float32)
    views = reformat_views(vol, None, (4.0, 1.0, 1.0), z=9, cross_xy=(5, 5), window=Window(), size=120)
    sag, cor = views["sagittal"], views["coronal"]
    # 10 slices x 4 mm = 40 mm high; sagittal 20 mm wide, coronal 30 mm wide
    assert sag.shape[0] > sag.shape[1] and cor.shape[0] > cor.shape[1]
    # superior (z = 9) is at the top: the yellow marker row lies in the top slice's band
    yellow = np.flatnonzero((sag[:, :, 0] == 255).all(1) & (sag[:, :, 2] == 0).all(1))
    assert len(yellow) == 1 and yellow[0] < sag.shape[0] / 10


def _box_labels():
    lab = np.zeros((10, 50, 50), np.uint8)
    lab[2:5, 10:20, 10:30] = 2   # tumor: 3 slices, 10 x 20 px
    lab[1:7, 30:34, 30:34] = 1
    return lab


def test_volumes_extent_and_diameter():
    lab = _box_labels()
    sp = (2.5, 0.5, 1.0)
    m = measure.measurements(lab, sp)
    assert m["tumor_ml"] == pytest.approx(3 * 10 * 20 * 2.5 * 0.5 * 1.0 / 1000)
    assert m["normal_rectum_ml"] == pytest.approx(6 * 16 * 1.25 / 1000)
    assert m["tumor_craniocaudal_extent_mm"] == pytest.approx(7.5)
    # 10 rows x 0.5 mm = 5 mm, 20 cols x 1 mm = 20 mm: diagonal of the pixel squares' outline
    assert m["tumor_max_axial_diameter_mm"] == pytest.approx(np.hypot(5.0, 20.0), abs=0.01)
    assert m["slices_with_tumor"] == 3


def test_empty_labels_measure_zero_and_figures_build():
    lab = np.zeros((4, 16, 16), np.uint8)
    m = measure.measurements(lab, (1, 1, 1))
    assert m["tumor_ml"] == 0 and m["tumor_max_axial_diameter_mm"] == 0 and m["tumor_craniocaudal_extent_mm"] == 0
    assert measure.surface_figure(lab, (1, 1, 1)).data == ()
    assert len(measure.area_figure(lab, (1, 1, 1), 2).data) == 2


def test_surface_figure_has_one_mesh_per_present_class():
    fig = measure.surface_figure(_box_labels(), (2.5, 0.5, 1.0))
    assert {t.name for t in fig.data} == {"Normal rectum", "Tumor"}
    z = np.asarray(fig.data[1].z)
    assert z.min() >= 2 * 2.5 - 2.5 - 1e-6 and z.max() <= 5 * 2.5 + 1e-6  # in mm, within the tumor's slab


def test_measurements_csv_has_header_and_rows():
    text = measure.measurements_csv(measure.measurements(_box_labels(), (1, 1, 1)), {"volume_sha256": "abc"})
    lines = text.strip().splitlines()
    assert lines[0] == "quantity,value,unit" and lines[-1].startswith("volume_sha256,abc")
