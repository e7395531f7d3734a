"""Issue 13 §2 and §6 on the handler path (app/segment/: what every event calls):
prompts per slice, undo depth and bytes, replay size and model runs, the per-session memory
budget, start-up limits read once from the environment, and user-facing errors that carry no
server path and no exception name. Memory is measured with tracemalloc against stated bounds."""
from __future__ import annotations

import tracemalloc
from dataclasses import replace

import gradio as gr
import numpy as np
import pytest

from app import segment as H
from app.segment.events import guard
from app.segment.layout import SegmentEvents
from app.settings import AppConfig, AppLimits, limits_from_env, parse_config
from tests.app.conftest import FakeContext, fake_ctx, fake_session, small_case  # noqa: F401 (fixtures)
from usam.errors import PromptError, UsamError, VolumeError
from usam.volumes import Volume, canonical_affine

MB = 1 << 20


def ctx_with(**limits) -> FakeContext:
    ctx = FakeContext()
    ctx.config = replace(ctx.config, limits=AppLimits(**limits))
    return ctx


def big_session(ctx, nz=8, n=512):
    arr = np.full((nz, n, n), -1000.0, np.float32)
    arr[:, n // 4:3 * n // 4, n // 4:3 * n // 4] = 40.0
    return H.start_session(ctx, Volume(arr, (2.5, 0.8, 0.8), canonical_affine((2.5, 0.8, 0.8))), "big")


def test_prompts_per_slice_capped(fake_ctx, fake_session):
    s = fake_session
    inter = s.interactive
    for i in range(inter.settings["max_points_per_slice"]):
        H.add_point(s, 20 + (i % 8), 20 + (i // 8), True, 1, z=5)
    before = (s.labels.tobytes(), len(inter.actions), inter.prompts(5))
    with pytest.raises(PromptError, match="at most 64"):
        H.add_point(s, 30, 30, True, 1, z=5)
    with pytest.raises(PromptError, match="at most 64"):
        H.add_box(s, 10, 10, 40, 40, z=5)
    assert (s.labels.tobytes(), len(inter.actions), inter.prompts(5)) == before
    H.add_point(s, 30, 30, True, 1, z=6)             # other slices are not affected


def test_200_points_on_a_512_slice_keep_a_bounded_history():
    """The reported case: 200 points on one slice (+49 MB of undo history). With the cap lifted
    to let them in, the history keeps 50 undo steps: packed masks (well under 1 MB) and each step's
    previous logits in the model frame (what undo gives back to the next click: 3 x 224^2 float16,
    294 KB a step), all within the session's undo budget (AppLimits.max_history_mb, 32 MB)."""
    ctx = ctx_with(max_points_per_slice=1000)
    s = big_session(ctx)
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            H.add_point(s, 200 + (i % 20) * 5, 200 + (i // 20) * 5, True, 1 + (i % 2), z=3)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    inter = s.interactive
    logits_step = 3 * 224 * 224 * 2
    assert 50 * logits_step <= inter.history_bytes() < 50 * logits_step + 1 * MB, inter.history_bytes()
    assert held - base < 24 * MB and peak - base < 40 * MB, (held - base, peak - base)
    # undo still restores the exact earlier masks, 50 steps deep and no deeper
    want = inter.labels(3)
    H.add_point(s, 100, 100, True, 2, z=3)
    assert H.undo(s, 3) and np.array_equal(s.labels[3], want)
    for _ in range(49):
        assert H.undo(s, 3)
    assert H.undo(s, 3) is False and inter.prompts(3)
    s.close()


def test_session_history_budget_drops_oldest_states_first():
    ctx = ctx_with(max_history_mb=1, max_points_per_slice=1000)   # 1 MB: three steps' logits
    s = big_session(ctx)
    inter = s.interactive
    for z in range(8):
        for i in range(10):
            H.add_point(s, 150 + 10 * i, 150 + 7 * z, True, 1, z=z)
    assert inter.history_bytes() <= 1 * MB
    assert all(len(inter.prompts(z)) == 10 for z in range(8))   # every slice keeps its current state
    s.close()


def test_session_memory_budget_refuses_a_volume_before_the_session_exists():
    ctx = ctx_with(session_memory_mb=8)                   # 8 MiB: 1.4 M voxels at 6 bytes
    arr = np.zeros((20, 512, 512), np.float32)             # 5.2 M voxels
    with pytest.raises(VolumeError, match="over this server's limit of 8 MiB"):
        H.start_session(ctx, Volume(arr, (2.5, 0.8, 0.8), canonical_affine((2.5, 0.8, 0.8))), "x")


def test_upload_read_under_the_session_budget(tmp_path):
    import nibabel as nib

    ctx = ctx_with(session_memory_mb=4)
    p = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((256, 256, 40), np.int16), np.diag([-0.8, -0.8, 2.5, 1])), str(p))
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError, match="too large|memory"):
            H.load_file(ctx, p, delete_after=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MB and p.exists()


def test_replay_bounded_and_checked_before_running(fake_ctx, fake_session):
    s = fake_session
    rec = H.session_dict(s, fake_ctx)
    calls = []
    s.interactive.predictor.predict_batch = lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError("ran"))
    point = {"op": "point", "x": 10, "y": 10, "label": 1, "cls": 1, "z": 1}
    with pytest.raises(VolumeError, match="holds 1001 actions, over the limit of 1000"):
        H.replay_session(fake_ctx, dict(rec, actions=[point] * 1001), s)
    # ten whole-volume runs: 10 x nz model runs, over a limit of 100
    ctx = ctx_with(max_replay_actions=100)
    seg = {"op": "segment_volume", "start": 0, "end": s.nz - 1}
    with pytest.raises(VolumeError, match=f"run the model {10 * s.nz} times"):
        H.replay_session(ctx, dict(rec, actions=[seg] * 10), s)
    for bad, msg in [({"op": "point", "z": 1}, "lacks"), ({"op": "box", "box": [1, 2], "z": 1}, "four"),
                     ({"op": "rm -rf"}, "unknown action"), ("point", "not an object")]:
        with pytest.raises(VolumeError, match=msg):
            H.replay_session(fake_ctx, dict(rec, actions=[bad]), s)
    for w in [{"width": float("nan"), "level": 0}, {"width": 0, "level": 0}, {"width": -500, "level": 0},
              {"width": 400}, {"width": "wide", "level": 0}]:
        with pytest.raises(PromptError, match="window"):
            H.replay_session(fake_ctx, dict(rec, window=w), s)
    with pytest.raises(VolumeError, match="window"):
        H.replay_session(fake_ctx, dict(rec, actions=[{"op": "window", "width": float("nan"), "level": 1}]), s)
    assert calls == []                                  # nothing ran for any refused file


def test_replayed_values_are_validated_like_live_ones(fake_ctx, fake_session):
    s = fake_session
    rec = H.session_dict(s, fake_ctx)
    for a, msg in [({"op": "point", "x": float("nan"), "y": 1, "label": 1, "z": 1}, "finite"),
                   ({"op": "point", "x": 1e9, "y": 1, "label": 1, "z": 1}, "outside"),
                   ({"op": "point", "x": 1, "y": 1, "label": 7, "z": 1}, "label"),
                   ({"op": "undo", "z": 10**6}, "outside")]:
        with pytest.raises(VolumeError, match=msg):
            H.replay_session(fake_ctx, dict(rec, actions=[a]), s)


def test_session_file_size_checked_before_reading(tmp_path):
    p = tmp_path / "huge.json"
    p.write_text('{"format": "usam-studio-session", "actions": [' + "1," * 300_000 + "1]}")
    with pytest.raises(VolumeError, match="over the limit of 64 KB"):
        H.read_session_file(p, max_bytes=64 << 10)


def test_limits_read_once_from_the_environment():
    c = parse_config([], {"USAM_SESSION_MEMORY_MB": "256", "USAM_MAX_POINTS_PER_SLICE": "8",
                          "USAM_MAX_REPLAY_ACTIONS": "20"})
    assert (c.limits.session_memory_mb, c.limits.max_points_per_slice, c.limits.max_replay_actions) == (256, 8, 20)
    v = c.limits.volume_limits()
    assert v.max_decode_bytes == 256 * MB and v.max_voxels == 256 * MB // 6
    assert AppConfig().limits == AppLimits()
    for bad in ("0", "-3", "lots"):
        with pytest.raises(ValueError):
            limits_from_env({"USAM_MAX_VOXELS": bad})
        with pytest.raises(SystemExit):
            parse_config([], {"USAM_MAX_VOXELS": bad})
    ctx = FakeContext()
    ctx.config = replace(ctx.config, limits=AppLimits(max_points_per_slice=2))
    s = big_session(ctx, nz=2, n=64)
    H.add_point(s, 10, 10, z=0)
    H.add_point(s, 12, 10, z=0)
    with pytest.raises(PromptError, match="at most 2"):
        H.add_point(s, 14, 10, z=0)


def test_upload_limit_of_the_server_follows_the_setting():
    from gradio.utils import _parse_file_size

    from app.context import AppContext
    from app.main import launch_kwargs

    ctx = AppContext(AppConfig(device="cpu", limits=AppLimits(max_upload_mb=300)))
    assert _parse_file_size(launch_kwargs(ctx)["max_file_size"]) == 300 * MB


def test_user_errors_show_no_paths_and_internal_errors_no_exception_text():
    @guard
    def internal(s=None):
        raise KeyError("volume")

    with pytest.raises(gr.Error) as e:
        internal()
    msg = e.value.message
    assert msg.startswith("Internal error") and "KeyError" not in msg and "volume" not in msg, msg
    assert "reference" in msg

    @guard
    def user(s=None):
        raise VolumeError("cannot read nrrd x.nrrd: Could not open /tmp/gradio/0f3a/x.nrrd for reading")

    with pytest.raises(gr.Error) as e:
        user()
    assert "/tmp" not in e.value.message and "x.nrrd" in e.value.message, e.value.message


class _Blocks:
    def __init__(self, uploads=()):
        self.upload_file_set = set(uploads)
        self.temp_file_sets = [self.upload_file_set]


def test_only_files_uploaded_to_the_app_are_read_or_deleted(fake_ctx, fake_session, small_case, tmp_path):
    from usam.volumes import write_volume

    cb = SegmentEvents(fake_ctx)
    theirs = write_volume(small_case.volume, tmp_path / "other_session_export.nii.gz")
    content = theirs.read_bytes()
    cb.blocks = _Blocks()
    with pytest.raises(gr.Error, match="not uploaded"):
        cb.load_volume(fake_session, str(theirs))
    with pytest.raises(gr.Error, match="not uploaded"):
        cb.load_reference(fake_session, str(theirs))
    assert theirs.read_bytes() == content
    mine = write_volume(small_case.volume, tmp_path / "mine.nii.gz")
    cb.blocks = _Blocks([str(mine)])
    out = cb.load_volume(fake_session, str(mine))
    assert out[0].name == "mine.nii.gz" and not mine.exists()     # an upload does not outlive the read
    assert theirs.exists()


def test_page_upload_gives_one_message_and_changes_nothing(fake_ctx, fake_session, tmp_path):
    cb = SegmentEvents(fake_ctx)
    cb.load_len = 20
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a volume" * 50)
    with pytest.warns(UserWarning):                    # gr.Warning outside a request is a Python warning
        out = cb.load_volume_page(fake_session, str(bad))
    assert len(out) == 20
    assert all(isinstance(o, dict) and o.get("__type__") == "update" and len(o) == 1 for o in out[:-1]), out[:-1]
    assert out[-1].startswith("⚠ **Not loaded:**") and "broken.nii.gz" in out[-1]


def test_process_memory_budget_refuses_new_uploads_until_sessions_close(tmp_path):
    """Many visitors' sessions together stay within USAM_TOTAL_MEMORY_MB: an upload that would
    exceed it is refused (other visitors' volumes are never evicted) until sessions close."""
    import gc

    import nibabel as nib

    gc.collect()
    base = H.live_session_bytes()
    ctx = ctx_with(session_memory_mb=64, total_memory_mb=(base >> 20) + 100)
    p = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((256, 256, 96), np.int16), np.diag([-0.8, -0.8, 2.5, 1])), str(p))
    first = H.load_file(ctx, p, delete_after=False)            # 6.3 M voxels: 25 MiB volume + 6 MiB labels
    second = H.load_file(ctx, p, delete_after=False)
    assert H.live_session_bytes() - base >= 2 * (first.volume.array.nbytes + first.labels.nbytes)
    with pytest.raises(VolumeError, match="too many volumes|memory|too large"):
        H.load_file(ctx, p, delete_after=False)
    first.close()
    third = H.load_file(ctx, p, delete_after=False)             # room again once a session closed
    for s in (second, third):
        s.close()
    assert H.live_session_bytes() <= base
