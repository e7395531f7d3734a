"""InteractiveSession: a volume's interactive work in the library (the shipped demo model on a small phantom, CPU)."""
import json

import numpy as np
import pytest
import torch

from usam.checkpoints import demo_checkpoint_path, load_checkpoint
from usam.errors import PromptError
from usam.interactive import InteractiveSession, PromptItem
from usam.interactive.state import slice_prompts, with_box
from usam.model.fast import optimize_for_inference
from usam.phantom import generate_case
from usam.predictor import NO_RULES
from usam.prompts import slice_box_from_mask


@pytest.fixture(scope="module")
def loaded():
    model, meta = load_checkpoint(demo_checkpoint_path())
    return optimize_for_inference(model), meta


@pytest.fixture(scope="module")
def case():
    return generate_case(3, "small")


@pytest.fixture(scope="module")
def Z(case):
    """The slice showing most of both classes (normal wall and tumour): the tests' slice."""
    counts = np.stack([(case.labels == c).sum(axis=(1, 2)) for c in (1, 2)]).min(axis=0)
    z = int(np.argmax(counts))
    assert counts[z] > 0 and 1 <= z <= case.labels.shape[0] - 6, "the phantom needs both classes on a middle slice"
    return z


@pytest.fixture
def session(loaded, case):
    fast, meta = loaded
    return InteractiveSession(fast, case.volume, meta)


def _centre(mask2d):
    """A pixel of the mask (x = column, y = row): the middle one in raster order."""
    ys, xs = np.nonzero(mask2d)
    return float(xs[len(xs) // 2]), float(ys[len(ys) // 2])


def _snapshot(s, z):
    lg = s.logits(z)
    return s.labels(z), None if lg is None else lg.clone(), s.prompts(z), s.locked(z)


def _same(a, b):
    assert np.array_equal(a[0], b[0])
    assert (a[1] is None and b[1] is None) or torch.equal(a[1], b[1])
    assert a[2] == b[2] and a[3] == b[3]


def test_a_click_never_reruns_the_encoder(session, loaded, case, Z, monkeypatch):
    fast, _ = loaded
    calls = []
    encode = fast.model.encode
    monkeypatch.setattr(fast.model, "encode", lambda *a, **k: calls.append(len(a[0])) or encode(*a, **k))
    z = Z
    x, y = _centre(case.labels[z] == 2)
    first = session.add_point(z, x, y, 2)
    assert calls == [1] and not first.cached and session.encoder_calls == 1
    for step in (lambda: session.add_point(z, x + 3, y, 1), lambda: session.add_point(z, 5, 5, 1, positive=False),
                 lambda: session.add_box(z, x - 20, y - 20, x + 20, y + 20), lambda: session.undo(z),
                 lambda: session.redo(z), lambda: session.segment(z), lambda: session.clear(z)):
        r = step()
        assert r.cached and r.encoder_ms == 0.0
    assert calls == [1] and session.encoder_calls == 1
    assert first.labels.shape == case.labels.shape[1:] and first.labels.dtype == np.uint8
    np.testing.assert_allclose(first.probs.sum(0), 1.0, atol=1e-5)


def test_the_previous_logits_reach_the_next_decode(session, loaded, case, Z, monkeypatch):
    fast, _ = loaded
    seen = []
    decode = fast.decode
    monkeypatch.setattr(fast, "decode", lambda f, p, **kw: seen.append(kw.get("mask_logits")) or decode(f, p, **kw))
    z = Z
    x, y = _centre(case.labels[z] == 2)
    first = session.add_point(z, x, y, 2)
    second = session.add_point(z, x + 4, y + 2, 2)
    assert seen[0] is None  # a slice's first call has no previous mask
    assert len(seen[1]) == 1 and torch.equal(seen[1][0], first.logits)
    assert first.logits.dtype == torch.float16 and first.logits.shape == (3, 224, 224)
    assert torch.equal(session.logits(z), second.logits)
    # the same two points without the previous mask give another output: the mask is an input
    without = session.predictor.predict(z, slice_prompts(session.prompts(z)))
    assert np.abs(without.probs - second.probs).max() > 1e-4
    session.segment(z)  # a fresh start: no prompt, no previous mask
    assert seen[-1] is None and session.prompts(z) == () and not session.locked(z)


def test_undo_redo_clear_restore_the_state_exactly(session, loaded, case, Z):
    fast, meta = loaded
    z = Z
    x, y = _centre(case.labels[z] > 0)
    start = _snapshot(session, z)
    session.add_point(z, x, y, 1)
    a = _snapshot(session, z)
    session.add_point(z, x + 5, y + 5, 2)
    b = _snapshot(session, z)
    session.add_box(z, x - 25, y - 25, x + 25, y + 25, cls=0)
    c = _snapshot(session, z)
    assert not np.array_equal(a[0], c[0]) or not torch.equal(a[1], c[1])
    _same(_snapshot_after(session.undo, z, session), b)
    _same(_snapshot_after(session.undo, z, session), a)
    _same(_snapshot_after(session.redo, z, session), b)
    cleared = session.clear(z)
    assert not cleared.labels.any() and cleared.logits is None and not cleared.locked and cleared.prompts == ()
    _same(_snapshot_after(session.undo, z, session), b)
    _same(_snapshot_after(session.undo, z, session), a)
    _same(_snapshot_after(session.undo, z, session), start)
    assert not session.undo(z).changed and not session.can_undo(z)
    _same(_snapshot_after(session.redo, z, session), a)
    # after an undo a new click starts from the restored state: as if the undone click never was
    session.add_point(z, x + 5, y + 5, 2)
    session.undo(z)
    third = session.add_point(z, x - 4, y, 1)
    assert not session.can_redo(z)
    other = InteractiveSession(fast, case.volume, meta)
    other.add_point(z, x, y, 1)
    direct = other.add_point(z, x - 4, y, 1)
    assert np.array_equal(third.labels, direct.labels) and torch.equal(third.logits, direct.logits)


def _snapshot_after(step, z, s):
    assert step(z).changed
    return _snapshot(s, z)


def test_replaying_the_log_gives_the_same_masks_bit_for_bit(session, loaded, case, Z):
    fast, meta = loaded
    gt = case.labels
    s = session
    z = Z
    s.segment_volume(z - 1, z + 5)
    s.add_point(z, *_centre(gt[z] == 2), 2)
    s.add_point(z, *_centre(gt[z] == 1), 1)
    s.add_point(z, 3, 3, 1, positive=False)
    s.add_box(z - 1, 20, 20, 100, 100, cls=2)
    s.undo(z)
    s.redo(z)
    s.lock(z + 2)
    s.clear(z + 3)
    s.segment(z + 4)
    s.propagate(z, end=z + 5)
    s.add_point(z + 1, *_centre(gt[z] > 0), 1)
    assert s.label_map()[z].any() and len(s.actions) == 12
    log = json.loads(json.dumps(s.to_log()))  # through JSON, as a file
    again = InteractiveSession.replay(fast, case.volume, log, meta)
    assert np.array_equal(again.label_map(), s.label_map())
    for zz in range(s.num_slices):
        _same(_snapshot(again, zz), _snapshot(s, zz))
        assert again.can_undo(zz) == s.can_undo(zz) and again.can_redo(zz) == s.can_redo(zz)
    assert again.actions == s.actions and again.locked_slices() == s.locked_slices()
    view = s.label_map(copy=False)
    assert np.array_equal(view, s.label_map()) and not view.flags.writeable
    bare = InteractiveSession.replay(fast, case.volume, log["actions"], meta)  # a bare list of actions
    assert np.array_equal(bare.label_map(), s.label_map())
    with pytest.raises(PromptError, match="over the limit"):
        InteractiveSession.replay(fast, case.volume, log, meta, max_actions=5)
    with pytest.raises(PromptError, match="action 2 of the log is malformed"):
        InteractiveSession.replay(fast, case.volume, [log["actions"][0], {"op": "explode"}], meta)


def test_locked_slices_are_kept_by_volume_runs_and_stop_propagation(session, case, Z):
    gt = case.labels
    z, up = Z, Z + 4
    clicked = session.add_point(z, *_centre(gt[z] == 1), 1)
    session.lock(up)
    assert session.locked_slices() == [z, up]
    kept, kept_up = _snapshot(session, z), _snapshot(session, up)
    done = []
    r = session.segment_volume(progress=lambda d, t: done.append((d, t)))
    n = session.num_slices - 2
    assert r["segmented"] == n and r["kept_locked"] == 2 and done[-1] == (n, n) and len(done) == -(-n // 8)
    _same(_snapshot(session, z), kept)
    _same(_snapshot(session, up), kept_up)
    assert np.array_equal(session.labels(z), clicked.labels)
    assert session.labels(z + 1).any(), "the demo model finds the rectum next to the clicked slice"
    # propagation from z + 1: upwards it stops at the locked slice (or where a mask vanishes), downwards at z
    out = session.propagate(z + 1)
    assert up not in out["propagated"] and z not in out["propagated"]
    assert {"z": z, "why": "locked"} in out["stopped_at"]
    assert {"z": up, "why": "locked"} in out["stopped_at"] or any(s["why"] == "empty" for s in out["stopped_at"])
    _same(_snapshot(session, z), kept)
    _same(_snapshot(session, up), kept_up)


def test_propagation_prompts_each_slice_with_the_previous_mask_box_and_logits(session, loaded, case, Z, monkeypatch):
    fast, _ = loaded
    z = Z
    session.add_box(z, 20, 20, 110, 110)
    assert session.labels(z).any()
    seen = []
    decode = fast.decode
    monkeypatch.setattr(fast, "decode", lambda f, p, **kw: seen.append(kw.get("mask_logits")) or decode(f, p, **kw))
    prev_labels, prev_logits = session.labels(z), session.logits(z)
    out = session.propagate(z, end=z + 2)
    assert out["propagated"][0] == z + 1 and not session.locked(z + 1)
    (box,) = session.prompts(z + 1)
    want = slice_box_from_mask(prev_labels, margin=2.0)
    assert box.kind == "box" and box.cls == 0 and np.allclose(box.box, want.boxes[0])
    assert torch.equal(seen[0][0], prev_logits)  # the neighbour's logits as the mask prompt
    with pytest.raises(PromptError, match="no mask"):
        session.propagate(0)
    session.propagate(z, end=z + 1, feed_mask=False)
    assert seen[-1] is None


def test_bad_prompts_raise_prompt_errors_and_change_nothing(session, case, Z):
    z = Z
    session.add_point(z, *_centre(case.labels[z] > 0), 1)
    before, actions, calls = _snapshot(session, z), list(session.actions), session.encoder_calls
    h, w = session.slice_shape
    bad = [lambda: session.add_point(z, w, 10, 1), lambda: session.add_point(z, 10, -0.6, 1),
           lambda: session.add_point(z, float("nan"), 10, 1), lambda: session.add_point(z, "7", 10, 1),
           lambda: session.add_point(z, 10, 10, 3), lambda: session.add_point(z, 10, 10, 0),
           lambda: session.add_point(session.num_slices, 10, 10, 1), lambda: session.add_point(-1, 10, 10, 1),
           lambda: session.add_point(2.5, 10, 10, 1), lambda: session.add_point(z, 10, 10, 1, positive="yes"),
           lambda: session.add_box(z, w + 1, 0, w + 20, 20), lambda: session.add_box(z, 10, 10, 10.5, 40),
           lambda: session.add_box(z, 0, 0, 20, 20, cls=5), lambda: session.undo(99), lambda: session.clear(None),
           lambda: session.propagate(z, margin=-1), lambda: session.segment_volume("a", 3)]
    for call in bad:
        with pytest.raises(PromptError):
            call()
        _same(_snapshot(session, z), before)
        assert session.actions == actions and session.encoder_calls == calls
    # a box dragged past the edge is clipped, as the library's SlicePrompts
    assert session.add_box(z, -10, -10, w + 30, h + 30).labels.shape == (h, w)


def test_limits_prompts_per_slice_and_undo_depth_and_memory(loaded, case, Z):
    fast, meta = loaded
    s = InteractiveSession(fast, case.volume, meta, max_points_per_slice=3, max_history=2)
    z = Z
    s.add_point(z, 40, 40, 1)
    s.add_point(z, 50, 50, 2)
    s.add_box(z, 30, 30, 90, 90)  # a box counts as a prompt too
    s.add_box(z, 20, 20, 90, 90)  # and replaces the slice's earlier union box
    before = _snapshot(s, z)
    with pytest.raises(PromptError, match="at most 3"):
        s.add_point(z, 60, 60, 1)
    _same(_snapshot(s, z), before)
    assert s.undo(z).changed and s.undo(z).changed and not s.undo(z).changed  # two undo states kept
    tight = InteractiveSession(fast, case.volume, meta, max_history_mb=0.5)  # ~1.5 states of fp16 logits
    for i in range(4):
        tight.add_point(z, 40 + i, 40, 1)
    assert tight.history_bytes() <= 0.5 * 2**20 and tight.can_undo(z)
    assert len(tight.prompts(z)) == 4  # the current state is always kept
    assert tight.held_bytes() >= tight.label_map().nbytes + 3 * 224 * 224 * 2


def test_rules_are_off_unless_named(loaded, case, Z):
    fast, meta = loaded
    assert InteractiveSession(fast, case.volume, meta).predictor._rules == NO_RULES
    s = InteractiveSession(fast, case.volume, meta, rules="box")
    assert s.predictor._rules == (True, False, False) and s.settings["rules"] == "box"
    r = s.add_box(Z, 40, 40, 70, 70)
    ys, xs = np.nonzero(r.labels)
    assert xs.size == 0 or (xs.min() >= 35 and xs.max() <= 75 and ys.min() >= 35 and ys.max() <= 75)
    with pytest.raises(PromptError):
        InteractiveSession(fast, case.volume, meta, rules="magic")
    with pytest.raises(PromptError):
        InteractiveSession(fast, case.volume, meta, logits_dtype="int8")


def test_boxes_replace_by_class():
    union = PromptItem("box", cls=0, box=(0, 0, 5, 5))
    b1 = PromptItem("box", cls=1, box=(1, 1, 5, 5))
    b2 = PromptItem("box", cls=2, box=(2, 2, 5, 5))
    p = PromptItem("point", 3, 3, 1, 2)
    assert with_box((p, union), b1) == (p, b1)
    assert with_box((p, b1), b2) == (p, b1, b2)
    new1 = PromptItem("box", cls=1, box=(0, 0, 9, 9))
    assert with_box((p, b1, b2), new1) == (p, b2, new1)
    assert with_box((p, b1, b2), union) == (p, union)


def test_a_bare_array_volume_and_results_without_logits(loaded):
    fast, meta = loaded
    arr = np.random.default_rng(0).normal(0, 80, size=(3, 40, 50)).astype(np.float32)
    s = InteractiveSession(fast, arr, meta)
    r = s.result(1)
    assert r.logits is None and r.probs[0].min() == 1.0 and s.labels(1).shape == (40, 50)
    with pytest.raises(PromptError):
        InteractiveSession(fast, arr[0], meta)


def test_several_prompts_in_one_call_as_the_papers_protocols(session, loaded, case, Z):
    from usam.prompts import SlicePrompts, slice_box_from_mask, slice_points_from_mask

    fast, meta = loaded
    z = Z
    pts = slice_points_from_mask(case.labels[z], 3)
    assert len(pts.points) == 6 and set(pts.point_classes.tolist()) == {1, 2}  # 3 points per present class
    r = session.add_prompts(z, pts, use_mask=False)
    direct = session.predictor.predict(z, pts)  # the plain one-call path: the same output
    assert np.array_equal(r.labels, direct.labels) and np.array_equal(r.probs, direct.probs)
    assert len(session.prompts(z)) == 6 and session.locked(z)
    box = slice_box_from_mask(case.labels[z])
    session.add_prompts(z, box)  # the box joins the points, the previous logits are fed back
    assert [p.kind for p in session.prompts(z)].count("box") == 1 and len(session.prompts(z)) == 7
    before, actions = _snapshot(session, z), list(session.actions)
    with pytest.raises(PromptError):
        session.add_prompts(z, SlicePrompts(points=[[500, 3]], point_labels=[1], point_classes=[1]))
    with pytest.raises(PromptError):
        session.add_prompts(z, {"points": [[3, 3]]})
    _same(_snapshot(session, z), before)
    assert session.actions == actions
    again = InteractiveSession.replay(fast, case.volume, json.loads(json.dumps(session.to_log())), meta)
    _same(_snapshot(again, z), _snapshot(session, z))


def test_a_run_that_fails_half_way_changes_nothing(session, case, Z, monkeypatch):
    session.add_point(Z, *_centre(case.labels[Z] > 0), 1)
    before, actions = session.label_map(), list(session.actions)
    batch = session.predictor.predict_batch
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return batch(*a, **k)
    monkeypatch.setattr(session.predictor, "predict_batch", failing)
    with pytest.raises(RuntimeError):
        session.segment_volume()
    assert np.array_equal(session.label_map(), before) and session.actions == actions
    calls.clear()
    with pytest.raises(RuntimeError):
        session.propagate(Z)
    assert np.array_equal(session.label_map(), before) and session.actions == actions


def test_rules_changed_on_a_live_session_are_logged_and_replayed(session, loaded, case, Z):
    """set_rules is an action: the next prompts use it, the log starts from the first rules and replays exactly."""
    s, z, (model, meta), vol = session, Z, loaded, case.volume
    h, w = s.slice_shape
    s.add_box(z, w * 0.3, h * 0.3, w * 0.6, h * 0.6)
    s.set_rules("box")
    boxed = s.add_box(z, w * 0.35, h * 0.35, w * 0.55, h * 0.55).labels
    assert s.settings["rules"] == "box" and s.actions[-2] == {"op": "rules", "rules": "box"}
    rows, cols = np.nonzero(boxed)
    if len(rows):    # the box rule keeps the foreground inside the box (and its 4 px model-frame margin)
        assert rows.min() >= h * 0.35 - 0.05 * h and cols.max() <= w * 0.55 + 0.05 * w
    log = s.to_log()
    assert log["settings"]["rules"] == "none"
    again = InteractiveSession.replay(model, vol, log, meta)
    np.testing.assert_array_equal(again.label_map(), s.label_map())
    assert again.settings["rules"] == "box"
    with pytest.raises(Exception, match="rules"):
        s.set_rules("boxes")
    assert s.settings["rules"] == "box"
