"""Handler functions of the app without a browser (fake predictor: fast and deterministic)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from app import segment as H
from app.settings import AppConfig, parse_config
from app.render import decode_data_url
from tests.app.conftest import paint
from usam.errors import PromptError, UsamError, VolumeError


def _rectum_pixel(labels2d):
    ys, xs = np.nonzero(labels2d == 1)
    i = len(ys) // 2
    return float(xs[i]), float(ys[i])


def test_start_session_opens_on_the_rectum(fake_session, small_case):
    s = fake_session
    assert s.labels.shape == small_case.labels.shape and not s.labels.any()
    assert small_case.labels[s.z].any()
    assert s.reference_name == "phantom ground truth"
    md = H.volume_summary(s)
    nz, ny, nx = small_case.labels.shape
    assert f"{nx} × {ny} × {nz}" in md and f"{small_case.volume.spacing[2]:.2f}" in md and "LPS" in md


def test_point_undo_redo_clear(fake_session):
    s = fake_session
    z = s.z
    inter = s.interactive
    H.add_point(s, 40, 50, True, 1)
    assert s.labels[z, 50, 40] == 1 and inter.locked(z)
    H.add_point(s, 60, 50, True, 2)
    assert s.labels[z, 50, 60] == 2 and len(inter.prompts(z)) == 2
    assert H.undo(s) and s.labels[z, 50, 60] == 0 and s.labels[z, 50, 40] == 1
    assert H.undo(s) and not s.labels[z].any() and not inter.locked(z)
    assert H.undo(s) is False                      # nothing left
    assert H.redo(s) and H.redo(s) and s.labels[z, 50, 60] == 2
    assert H.redo(s) is False
    H.clear_slice(s)
    assert not s.labels[z].any() and inter.prompts(z) == () and not inter.locked(z)
    assert H.undo(s) and s.labels[z, 50, 60] == 2  # clear is undoable
    H.add_point(s, 45, 45, False, 1)               # a new action drops the redo branch
    assert s.labels[z, 45, 45] == 0 and not inter.can_redo(z)


def test_every_click_feeds_the_slice_s_previous_mask_and_clear_starts_afresh(fake_session):
    """Each prompt on a slice goes to the model with the slice's last logits (the click corrects that
    output); the first prompt, a prompt after clear and 'segment this slice' start without one."""
    s = fake_session
    z, calls = s.z, s.interactive.predictor.calls
    H.add_point(s, 40, 50, True, 1)
    first = s.interactive.logits(z)
    H.add_point(s, 60, 50, True, 2)
    H.add_box(s, 30, 30, 90, 90)
    assert calls[0][2] is None and calls[1][2] is first and calls[2][2] is not None
    assert [len(c[1].points) for c in calls] == [1, 2, 2] and len(calls[2][1].boxes) == 1
    assert H.undo(s) and s.interactive.logits(z) is not None and len(calls) == 3   # undo runs nothing
    H.add_point(s, 45, 45, False, 1)
    assert calls[-1][2] is not None and calls[-1][2].shape == (3, 224, 224)
    H.clear_slice(s)
    H.add_point(s, 40, 50, True, 1)
    assert calls[-1][2] is None and len(calls[-1][1].points) == 1
    H.segment_slice(s)
    assert calls[-1][1] is None and calls[-1][2] is None
    assert s.last_timing["z"] == z and s.last_timing["cached"]


def test_box_replaces_previous_box_and_bad_prompts_change_nothing(fake_session):
    s = fake_session
    z = s.z
    H.add_box(s, 10, 10, 30, 30)
    H.add_box(s, 50, 50, 70, 70)
    assert [(p.kind, p.cls) for p in s.interactive.prompts(z)] == [("box", 0)]
    assert s.labels[z, 60, 60] == 1 and s.labels[z, 20, 20] == 0
    before = s.labels.copy(), len(s.interactive.actions)
    with pytest.raises(PromptError):
        H.add_point(s, 500, 10, True, 1)
    with pytest.raises(PromptError):
        H.add_box(s, 10, 10, 10.2, 40)
    with pytest.raises(PromptError):
        H.add_point(s, 10, 10, True, 1, z=999)
    assert np.array_equal(s.labels, before[0]) and len(s.interactive.actions) == before[1]


def test_segment_volume_keeps_locked_slices_and_reports_progress(fake_session):
    s = fake_session
    H.add_point(s, 5, 5, True, 2, z=3)
    locked = s.labels[3].copy()
    calls = []
    r = H.segment_volume(s, 0, s.nz - 1, progress=lambda f, t: calls.append(f))
    assert r["kept_locked"] == 1 and r["segmented"] == s.nz - 1
    assert np.array_equal(s.labels[3], locked)
    hu = np.asarray(s.volume.array[10])
    assert np.array_equal(s.labels[10], ((hu > 20) & (hu < 60)).astype(np.uint8))
    assert calls and calls[-1] == pytest.approx(1.0)
    # a range only touches its slices
    s2_before = s.labels.copy()
    H.clear_slice(s, 20)
    H.segment_volume(s, 5, 6)
    assert not s.labels[20].any() and np.array_equal(s.labels[5:7], s2_before[5:7])


def test_segment_slice_without_prompts(fake_session):
    s = fake_session
    H.add_point(s, 40, 40, True, 1)
    H.segment_slice(s)
    hu = np.asarray(s.volume.array[s.z])
    assert np.array_equal(s.labels[s.z], ((hu > 20) & (hu < 60)).astype(np.uint8))
    assert s.interactive.prompts(s.z) == () and not s.interactive.locked(s.z)


def test_propagate_box_runs_through_the_range_and_stops_on_empty(fake_session):
    s = fake_session
    z = 10
    H.add_box(s, 40, 40, 80, 80, z=z)
    r = H.propagate_box(s, z, z + 4)
    assert r["propagated"] == 4 and all(s.labels[k].any() for k in range(z, z + 5))
    H.clear_slice(s, z + 6)
    with pytest.raises(PromptError):
        H.propagate_box(s, z + 6, z + 8)
    r = H.propagate_box(s, z, z - 3)               # downwards as well
    assert r["propagated"] == 3 and s.labels[z - 3].any()


def test_propagate_box_passes_slice_pixel_boxes_and_the_previous_mask(fake_session):
    """Each next slice gets the previous slice's mask box in slice pixels (SlicePrompts, as
    usam.prompts.slice_box_from_mask) and that slice's logits as its mask prompt."""
    from usam.prompts import SlicePrompts, slice_box_from_mask

    s = fake_session
    z = 10
    H.add_box(s, 40, 40, 80, 80, z=z)
    calls = s.interactive.predictor.calls
    n = len(calls)
    H.propagate_box(s, z, z + 4, margin=3.0)
    seen = calls[n:]
    assert [k for k, _, _ in seen] == [z + 1, z + 2, z + 3, z + 4]
    for k, p, mask in seen:
        assert isinstance(p, SlicePrompts) and mask is not None
        np.testing.assert_allclose(p.boxes, slice_box_from_mask(s.labels[k - 1], margin=3.0).boxes)


def test_propagation_stops_at_a_corrected_slice(fake_session):
    """The library's rule: a locked (corrected) slice ends the propagation and is kept as it is."""
    s = fake_session
    z = 10
    H.add_box(s, 40, 40, 80, 80, z=z)
    H.add_point(s, 20, 20, True, 2, z=z + 3)
    kept = s.labels[z + 3].copy()
    r = H.propagate_box(s, z, z + 6)
    assert r["propagated"] == 2 and r["slices"] == [z + 1, z + 2]
    assert (r["stopped_at"], r["stop_reason"]) == (z + 3, "locked")
    assert np.array_equal(s.labels[z + 3], kept) and not s.labels[z + 4].any()


def test_viewer_payload_and_status(fake_session):
    s = fake_session
    H.add_point(s, 40, 50, True, 1)
    p = H.viewer_payload(s)
    assert p["w"] == 128 and p["h"] == 128 and p["z"] == s.z and p["nz"] == s.nz
    ov = decode_data_url(p["overlay"])
    assert ov.shape == (128, 128, 4) and ov[50, 40, 0] > 200 and ov[50, 40, 3] == 255
    assert p["points"] == [[40.0, 50.0, 1, 1]] and p["locked"] and p["can_undo"]
    assert decode_data_url(p["slice"]).shape == (128, 128)
    assert "decoder" in H.timing_text(s, 12.0) and "server total 12 ms" in H.timing_text(s, 12.0)
    H.set_display(s, visible=["Tumor"])
    assert H.viewer_payload(s)["overlay"] == ""    # the only class present is hidden
    H.set_window_preset(s, "Bone (1800/400)")
    assert s.window.width == 1800
    with pytest.raises(PromptError):
        H.set_window(s, 0, 40)
    H.navigate(s, 1000)
    assert s.z == s.nz - 1


def test_display_window_never_changes_model_input(fake_session):
    s = fake_session
    seen = []
    pred = s.interactive.predictor
    orig = pred.predict_batch
    pred.predict_batch = lambda zs, p, m: (seen.append(np.asarray(pred.volume.array[zs[0]]).copy()), orig(zs, p, m))[1]
    H.segment_slice(s)
    H.set_window(s, 100, 500)
    H.segment_slice(s)
    assert np.array_equal(seen[0], seen[1])


def test_export_nifti_keeps_affine_and_labels(fake_session, tmp_path):
    s = fake_session
    paint(s, s.ground_truth)
    path = H.export_nifti(s, tmp_path)
    img = nib.load(str(path))
    assert np.allclose(img.affine, s.volume.source.get("affine_on_disk", s.volume.affine))
    from usam.volumes import read_labelmap

    assert np.array_equal(read_labelmap(path, reference=s.volume), s.ground_truth)
    csv_path, json_path = H.export_measurements(s, None, tmp_path)
    m = json.loads(json_path.read_text())
    assert m["tumor_ml"] > 0 and m["reference_metrics"]["per_class"]["2"]["dice"] == pytest.approx(1.0)
    assert "Tumor volume" in csv_path.read_text()


def test_session_json_replay_recreates_masks(fake_ctx, fake_session, tmp_path):
    s = fake_session
    H.add_point(s, 40, 50, True, 1, z=12)
    H.add_point(s, 44, 50, False, 1, z=12)
    H.add_box(s, 30, 30, 90, 90, z=13)
    H.undo(s, 13)
    H.redo(s, 13)
    H.propagate_box(s, 13, 16)
    H.segment_volume(s, 20, 25)
    H.clear_slice(s, 22)
    H.set_window(s, 350, 50)
    path = H.export_session(s, fake_ctx, tmp_path)
    data = H.read_session_file(path)
    assert data["volume"]["sha256"] == s.volume_hash and data["model"]["sha256"] == "f" * 64
    assert data["window"] == {"width": 350.0, "level": 50.0}
    base = H.start_session(fake_ctx, s.volume, s.name, s.ground_truth)
    replayed, report = H.replay_session(fake_ctx, data, base)
    assert np.array_equal(replayed.labels, s.labels)
    assert report["labels_match"] and report["same_model"]
    assert replayed.window.width == 350 and replayed.interactive.locked_slices() == s.interactive.locked_slices()
    assert data["version"] == 2 and data["prompt_rules"] == "none"
    assert [a["op"] for a in data["actions"]][:2] == ["load", "point"] and data["actions"][-1]["op"] == "window"


def test_prompt_rules_are_off_by_default_shown_when_on_and_replayed(fake_ctx, fake_session, tmp_path):
    s = fake_session
    assert s.rules == "none" and "prompt rules" not in H.slice_status(s)
    H.add_point(s, 40, 50, True, 1, z=12)
    H.set_prompt_rules(s, "Box: the output stays inside the box")
    assert s.rules == "box" and "prompt rules: box" in H.slice_status(s)
    assert s.interactive.predictor._rules == (True, False, False)
    H.add_box(s, 30, 30, 90, 90, z=13)
    with pytest.raises(PromptError, match="unknown prompt rules"):
        H.set_prompt_rules(s, "gate, select")
    data = json.loads(H.export_session(s, fake_ctx, tmp_path).read_text())
    assert [a["op"] for a in data["actions"]] == ["load", "point", "rules", "box"] and data["prompt_rules"] == "box"
    replayed, report = H.replay_session(fake_ctx, data, H.start_session(fake_ctx, s.volume, s.name))
    assert report["labels_match"] and replayed.rules == "box"
    H.set_prompt_rules(s, "none")
    assert "prompt rules" not in H.slice_status(s)


def test_an_old_app_session_file_still_replays(fake_ctx, small_case):
    """A version 1 file (the app's own log: boxes without a class, 'kind' keys, the rules always on)
    replays through the library session, with the rules it was recorded with."""
    s = H.start_session(fake_ctx, small_case.volume, "Demo phantom 1", small_case.labels)
    old = {"format": "usam-studio-session", "version": 1, "volume": {"sha256": s.volume_hash},
           "model": {"sha256": "f" * 64}, "window": {"width": 350.0, "level": 50.0},
           "actions": [{"op": "load", "volume_hash": s.volume_hash},
                       {"op": "point", "z": 12, "kind": "point", "x": 40.0, "y": 50.0, "label": 1, "cls": 2},
                       {"op": "point", "z": 12, "kind": "point", "x": 44.0, "y": 50.0, "label": 0, "cls": 1},
                       {"op": "box", "z": 13, "kind": "box", "box": [30.0, 30.0, 90.0, 90.0]},
                       {"op": "undo", "z": 13}, {"op": "redo", "z": 13},
                       {"op": "propagate", "start": 13, "end": 15, "margin": 2.0},
                       {"op": "segment_volume", "start": 20, "end": 22}, {"op": "clear", "z": 21},
                       {"op": "window", "width": 350.0, "level": 50.0}],
           "result": {"labels_sha256": "0" * 64}}
    replayed, report = H.replay_session(fake_ctx, old, s)
    inter = replayed.interactive
    assert report["old_file"] and not report["labels_match"] and replayed.rules == "all"
    assert replayed.labels[12, 50, 40] == 2 and replayed.labels[12, 50, 44] == 0
    assert [(p.kind, p.cls) for p in inter.prompts(13)] == [("box", 0)] and replayed.labels[13, 60, 60] == 1
    assert all(replayed.labels[k].any() for k in (14, 15)) and not replayed.labels[21].any()
    assert inter.locked_slices() == [12, 13] and replayed.window.width == 350
    s.close()
    replayed.close()


def test_replay_refuses_another_volume_and_bad_files(fake_ctx, fake_session, tmp_path):
    s = fake_session
    data = H.session_dict(s, fake_ctx)
    data["volume"]["sha256"] = "0" * 64
    with pytest.raises(VolumeError):
        H.replay_session(fake_ctx, data, s)
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(VolumeError):
        H.read_session_file(bad)


def test_bad_upload_is_a_user_error_and_is_deleted(fake_ctx, tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"this is not a nifti file at all" * 10)
    with pytest.raises(UsamError):
        H.load_file(fake_ctx, bad)
    assert not bad.exists()  # privacy: uploads do not outlive the read


def test_upload_nifti_round_trip(fake_ctx, small_case, tmp_path):
    from usam.volumes import write_volume

    path = write_volume(small_case.volume, tmp_path / "ct.nii.gz")
    s = H.load_file(fake_ctx, path)
    assert s.labels.shape == small_case.volume.array.shape and s.reference is None
    assert s.name == "ct.nii.gz" and not path.exists()   # named by its file name (issue 17)
    ref = tmp_path / "ref.nii.gz"
    from usam.volumes import write_labelmap

    write_labelmap(small_case.labels, s.volume, ref)
    H.load_reference(s, ref)
    paint(s, small_case.labels)
    rows = H.metric_rows(H.reference_metrics(s))
    assert rows[0][1] == pytest.approx(1.0) and rows[1][1] == pytest.approx(1.0)
    s.close()


def test_session_close_deletes_files(fake_session):
    s = fake_session
    out = H.export_nifti(s)
    assert out.exists()
    s.close()
    assert not out.exists()


def test_parse_config_flags_and_environment():
    c = parse_config([], {"USAM_HOST": "0.0.0.0", "USAM_PORT": "9000", "USAM_CHECKPOINT": "/x.safetensors",
                          "USAM_DEVICE": "cpu"})
    assert (c.host, c.port, c.checkpoint, c.device) == ("0.0.0.0", 9000, "/x.safetensors", "cpu")
    c = parse_config(["--port", "7000", "--host", "127.0.0.1"], {"USAM_PORT": "9000"})
    assert (c.host, c.port, c.checkpoint) == ("127.0.0.1", 7000, None)
    assert AppConfig().host == "127.0.0.1"


def test_replay_with_the_real_predictor_is_exact(tmp_path, small_case):
    """Session JSON -> replay on U-SAM itself (the app's weights) gives the identical label map."""
    from app.context import AppContext

    ctx = AppContext(AppConfig(device="cpu", demo_size="small"))
    s = H.start_session(ctx, small_case.volume, "Demo phantom 1", small_case.labels)
    zs = np.flatnonzero((small_case.labels == 1).any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    x, y = _rectum_pixel(small_case.labels[z])
    H.add_point(s, x, y, True, 1, z=z)
    H.add_box(s, x - 15, y - 15, x + 15, y + 15, z=z + 1)
    H.segment_volume(s, z + 2, z + 4)
    H.undo(s, z + 1)
    assert s.interactive.encoder_calls == 5 and s.last_timing["cached"] is False
    H.add_point(s, x + 1, y, False, 1, z=z)
    assert s.last_timing["cached"] is True      # second click on a slice: features from the cache
    data = json.loads(H.export_session(s, ctx, tmp_path).read_text())
    replayed, report = H.replay_session(ctx, data, s)
    assert report["labels_match"] and np.array_equal(replayed.labels, s.labels)
    s.close()
    replayed.close()


@pytest.mark.parametrize("bad", [dict(cls="Bladder"), dict(visible=["Tumor", "Bone"]), dict(mode="Lasso"),
                                 dict(visible="Tumor"), dict(cls=3)])
def test_set_display_checks_every_value_before_setting_any(fake_session, bad):
    s = fake_session
    before = (s.opacity, s.visible, s.mode, s.cls)
    with pytest.raises(PromptError):
        H.set_display(s, **{"opacity": 0.9, "visible": ["Normal rectum"], "mode": "Box", "cls": "Tumor", **bad})
    assert (s.opacity, s.visible, s.mode, s.cls) == before
    H.set_display(s, opacity=0.9, visible=["Tumor", 1], mode="Box", cls=2)
    assert (s.opacity, s.visible, s.mode, s.cls) == (0.9, (1, 2), "Box", 2)
