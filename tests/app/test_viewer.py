"""Segment-tab controls through the callbacks: preset radio and manual W/L, Enter boxes, the OOD notice."""
from __future__ import annotations

import numpy as np
import pytest

from app import segment as H
from app.segment.layout import SegmentEvents
from app.render import CUSTOM_PRESET, DEFAULT_PRESET, WINDOW_PRESETS, Window, preset_for
from app.viewer import VIEWER_CSS, VIEWER_HTML, VIEWER_JS
from tests.app.conftest import FakePredictor, FakeResult, _fake_logits, paint
from usam.volumes import Volume


@pytest.fixture()
def cb(fake_ctx):
    return SegmentEvents(fake_ctx)


def test_preset_for_names_presets_and_custom():
    for name, (w, l) in WINDOW_PRESETS.items():
        assert preset_for(Window(w, l)) == name
    assert preset_for(Window(401, 40)) == CUSTOM_PRESET
    assert preset_for(Window(400, 41)) == CUSTOM_PRESET


def test_manual_window_switches_radio_to_custom_and_preset_reapplies(cb, fake_session):
    s = fake_session
    out = cb.set_window(s, 123, 45)
    assert out[-1] == CUSTOM_PRESET and (s.window.width, s.window.level) == (123, 45)
    assert out[1]["window"] == [123, 45]
    # "Custom" chosen in the radio keeps the manual window and reports it back to the W/L boxes
    out = cb.set_window_preset(s, CUSTOM_PRESET)
    assert out[-2:] == (123, 45)
    # a preset clicked again after a manual W/L applies it
    out = cb.set_window_preset(s, DEFAULT_PRESET)
    assert out[-2:] == WINDOW_PRESETS[DEFAULT_PRESET]
    # a manual W/L that equals a preset shows that preset
    assert cb.set_window(s, 1800, 400)[-1] == "Bone (1800/400)"


def test_range_boxes_show_their_slice(cb, fake_session):
    out = cb.set_slice(fake_session, 3)  # what Enter in From / To calls
    assert fake_session.z == 3 and out[1]["z"] == 3 and "Slice **3**" in out[3]


def test_results_without_notice_on_phantom(cb, fake_session):
    paint(fake_session, fake_session.ground_truth)  # a plausible result on a training-like volume
    assert cb.update_results(fake_session)[-1] == ""


def test_implausible_whole_volume_result_gets_notice(cb, fake_session):
    # the stand-in predictor labels every voxel of a 20-60 HU band: litres of "rectal wall"
    msg = cb.segment_volume(fake_session, 0, fake_session.nz - 1, progress=None)[-1]
    assert "usam-ood" in msg and "Normal rectal wall volume" in msg and "mL is implausible" in msg


def test_results_and_whole_volume_notice_on_unlike_volume(fake_ctx, cb, small_case):
    a = np.asarray(small_case.volume.array, np.float32)
    unlike = Volume(array=(a - a.min()) / (a.max() - a.min()), spacing=small_case.volume.spacing,
                    affine=small_case.volume.affine, source={"format": "nifti"})
    s = H.start_session(fake_ctx, unlike, "Uploaded nifti")
    try:
        msg = cb.segment_volume(s, 0, s.nz - 1, progress=None)[-1]
        assert msg.startswith("Segmented slices") and "usam-ood" in msg and "span only" in msg
        note = cb.update_results(s)[-1]
        assert "Unlike the training data" in note and "these measurements" in note
    finally:
        s.close()


def test_model_uncertainty_enters_notice(cb, fake_session, monkeypatch):
    s = fake_session

    class Unsure(FakePredictor):  # a model that is never sure: 0.5 on its foreground
        def predict(self, z, prompts=None, mask_logits=None):
            lab = np.zeros(s.slice_shape, np.uint8)
            lab[:4, :4] = 1
            p = np.zeros((3,) + s.slice_shape, np.float32)
            p[0] = 1.0
            p[:, :4, :4] = np.array([0.25, 0.5, 0.25])[:, None, None]
            return FakeResult(lab, p, 0.0, 1.0, True, _fake_logits(lab))

    s.interactive.predictor = Unsure(s.volume)
    msg = cb.segment_volume(s, 0, s.nz - 1, progress=None)[-1]
    assert "unsure of its own output" in msg and "100 %" in msg


def test_viewer_js_is_safe_in_a_template_and_has_the_controls():
    # Gradio evaluates these as JS template strings: a backtick or ${ would break the page
    for text in (VIEWER_HTML, VIEWER_CSS, VIEWER_JS):
        assert "`" not in text and "${" not in text
    for sel in ("uv-zin", "uv-zout", "uv-fit", "uv-pan", "uv-zoom"):
        assert sel in VIEWER_HTML
    assert "trigger('nav'" in VIEWER_JS and "my !== updSeq" in VIEWER_JS
