"""Hostile input to every app handler (hypothesis, in-process) and straight to the launched
app's Gradio API (gradio_client): out-of-range slice indices and prompt coordinates, NaN/inf,
wrong types, hostile and oversized uploads, pickle checkpoints. Each is either accepted as a
valid value or refused with a clear message (never "Internal error"), and a refusal leaves the
session (volume, masks, prompts, window) unchanged."""
from __future__ import annotations

import os
import pickle

import gradio as gr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.segment.layout import SegmentEvents

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

numbers = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([-1, 0, 1, 5, 10**9, -10**9, 2.5, -0.5]))
anything = st.one_of(numbers, st.none(), st.text(max_size=12), st.booleans(),
                     st.lists(st.integers(-3, 3), max_size=3), st.sampled_from(["3", "nan", "1e400", "", "-1"]))


def snapshot(s) -> tuple:
    """Everything a refused call must leave as it was."""
    inter = s.interactive
    return (id(s.volume), s.z, s.labels.tobytes(), repr(s.window), len(inter.actions), len(s.view_actions),
            repr(sorted((z, inter.prompts(z)) for z in range(s.nz) if inter.prompts(z))))


def call(fn, s, *args) -> str | None:
    """Run a callback; None when accepted, else the refusal message. Internal errors fail the test."""
    before = snapshot(s)
    try:
        fn(s, *args)
        return None
    except gr.Error as exc:
        msg = str(exc.message if hasattr(exc, "message") else exc)
        assert not msg.startswith("Internal error"), f"{fn.__name__}{args!r}: {msg}"
        assert msg.strip()
        assert snapshot(s) == before, f"{fn.__name__}{args!r} was refused but changed the session"
        return msg


@pytest.fixture()
def cb(fake_ctx):
    return SegmentEvents(fake_ctx)


@FUZZ
@given(z=anything)
def test_slice_navigation_any_value(cb, fake_session, z):
    s = fake_session
    for fn in (cb.set_slice, cb.go_to_slice):
        if call(fn, s, z) is None:
            assert 0 <= s.z < s.nz


@FUZZ
@given(x=anything, y=anything, z=anything, mode=st.sampled_from(["Positive point", "Negative point", "Box", "??", ""]),
       cls=st.one_of(st.sampled_from(["Normal rectum", "Tumor", "x"]), st.none()))
def test_point_prompts_any_value(cb, fake_session, x, y, z, mode, cls):
    s = fake_session
    n = len(s.interactive.actions)
    if call(cb.add_point, s, x, y, z, mode, cls) is None:
        h, w = s.slice_shape
        a = s.interactive.actions[-1]
        assert len(s.interactive.actions) == n + 1 and 0 <= a["z"] < s.nz
        assert -0.5 <= float(x) < w and -0.5 <= float(y) < h   # usam.interactive.checks.point


@FUZZ
@given(x0=anything, y0=anything, x1=anything, y1=anything, z=anything)
def test_box_prompts_any_value(cb, fake_session, x0, y0, x1, y1, z):
    call(cb.add_box, fake_session, x0, y0, x1, y1, z)


@FUZZ
@given(rules=st.one_of(anything, st.sampled_from(["box", "all", "none", "gate", "Box: the output stays inside"])))
def test_prompt_rules_any_value(cb, fake_session, rules):
    s = fake_session
    if call(cb.set_prompt_rules, s, rules) is None:
        assert s.rules in ("none", "box", "all")


@FUZZ
@given(start=anything, end=anything)
def test_volume_ranges_any_value(cb, fake_session, start, end):
    s = fake_session
    call(lambda s, a, b: cb.segment_volume(s, a, b, progress=None), s, start, end)
    call(lambda s, a, b: cb.propagate_box(s, a, b, progress=None), s, start, end)


@FUZZ
@given(width=anything, level=anything, preset=st.text(max_size=20), opacity=anything,
       visible=st.one_of(st.none(), st.lists(st.text(max_size=8), max_size=3), st.text(max_size=5)))
def test_display_settings_any_value(cb, fake_session, width, level, preset, opacity, visible):
    s = fake_session
    if call(cb.set_window, s, width, level) is None:
        assert np.isfinite(s.window.width) and s.window.width >= 1 and np.isfinite(s.window.level)
    call(cb.set_window_preset, s, preset)
    call(lambda s, o, v: cb.set_display(s, o, v, "Positive point", "Tumor"), s, opacity, visible)
    assert 0.0 <= float(s.opacity) <= 1.0


@FUZZ
@given(name=st.one_of(st.text(max_size=30), st.sampled_from(["../../etc/passwd", "Demo phantom 99", "", "0"])))
def test_demo_case_names(cb, fake_session, name):
    call(cb.load_demo_case, fake_session, name)


class _Evil:
    """A pickle that runs code when loaded (what a hostile .pth can do)."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_pickle_checkpoints_refused_unless_trusted(tmp_path):
    import torch

    from app.context import AppContext
    from app.settings import AppConfig
    from usam.checkpoints import load_checkpoint, load_sam_weights
    from usam.errors import CheckpointError
    from usam.model import build_usam, get_config

    sentinel = tmp_path / "pwned"
    evil = tmp_path / "usam_evil.pth"
    torch.save({"model": _Evil(sentinel), "args": _Evil(sentinel)}, evil)
    with pytest.raises(CheckpointError, match="pickle|trust"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        load_sam_weights(build_usam(get_config("demo")), evil)
    # the app, given these weights by flag, refuses them with the same message (never a random model)
    ctx = AppContext(AppConfig(checkpoint=str(evil), device="cpu"))
    with pytest.raises(CheckpointError, match="pickle|trust"):
        ctx.get_model()
    assert not sentinel.exists(), "the pickle ran code"
    # a plain pickle (not even a torch file) is refused as well
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Evil(sentinel)))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not sentinel.exists()
