"""Fixtures of the app tests: a tiny phantom session and a fake, deterministic predictor."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.context import AppContext, WeightsInfo
from app.settings import AppConfig
from study.settings import StudySettings

ROOT = Path(__file__).resolve().parents[2]
DEMO_CKPT = ROOT / "checkpoints" / "usam_demo.safetensors"


@dataclass
class FakeResult:
    labels: np.ndarray
    probs: np.ndarray
    encoder_ms: float
    decoder_ms: float
    cached: bool
    logits: object = None


def _fake_logits(lab: np.ndarray):
    """Model-frame (3, 224, 224) logits whose argmax is `lab` (nearest), as a real result carries."""
    import torch

    h, w = lab.shape
    iy = np.minimum((np.arange(224) + 0.5) * h / 224, h - 1).astype(int)
    ix = np.minimum((np.arange(224) + 0.5) * w / 224, w - 1).astype(int)
    small = lab[iy][:, ix]
    return torch.from_numpy(np.stack([np.where(small == k, 8.0, -8.0) for k in range(3)]).astype(np.float32))


class FakePredictor:
    """Deterministic stand-in for VolumePredictor: disks at points, filled boxes, HU rule without prompts.

    With a previous mask (mask_logits) the slice starts from that mask, as the real decoder is fed it:
    points paint over it, a box keeps it inside the box and fills the box."""

    def __init__(self, volume):
        self.volume = volume
        self.encoder_calls = 0
        self._seen: set[int] = set()
        self.cache = self._seen            # what Session.close() clears
        self.calls: list[tuple] = []       # (z, prompts, mask_logits) of every slice run, for tests
        self.answer: np.ndarray | None = None  # set: what a run without prompts gives (see paint)
        self._rules = (False, False, False)     # the rules' names are checked as the real predictor's

    def set_rules(self, prompt_rules):
        from usam.prompt_rules import parse_rules

        self._rules = parse_rules(prompt_rules)

    def predict(self, z, prompts=None, mask_logits=None):
        from usam.preprocess import logits_to_labels
        from usam.prompts import model_to_slice, to_model_frame

        self.calls.append((z, prompts, mask_logits))
        t0 = time.perf_counter()
        hu = np.asarray(self.volume.array[z])
        h, w = hu.shape
        prompts = to_model_frame(prompts, (h, w))  # slice pixels in, as the real predictor converts
        cached = z in self._seen
        if not cached:
            self._seen.add(z)
            self.encoder_calls += 1
        lab = np.zeros((h, w), np.uint8)
        if mask_logits is not None:
            lab = logits_to_labels(mask_logits.float()[None], (h, w))[0][0].astype(np.uint8)
        yy, xx = np.mgrid[:h, :w]
        if (prompts is None or prompts.is_empty) and mask_logits is None:
            if self.answer is not None:
                lab = np.array(self.answer[z], np.uint8)
            else:
                lab[(hu > 20) & (hu < 60)] = 1  # a fixed HU band: deterministic "segmentation"
        elif prompts is not None:
            for b in prompts.boxes:
                (x0, y0), (x1, y1) = model_to_slice(b.reshape(2, 2), (h, w))
                inside = np.zeros((h, w), bool)
                inside[int(np.ceil(y0)) + 1:int(y1), int(np.ceil(x0)) + 1:int(x1)] = True
                lab[~inside] = 0
                lab[inside & (lab == 0)] = 1
            if len(prompts.points):
                xy = model_to_slice(prompts.points, (h, w))
                for (x, y), l, c in zip(xy, prompts.point_labels, prompts.point_classes):
                    disk = (xx - x) ** 2 + (yy - y) ** 2 <= 9
                    lab[disk] = int(c or 1) if l == 1 else 0
        probs = np.zeros((3, h, w), np.float32)
        return FakeResult(lab, probs, 0.0 if cached else 5.0, (time.perf_counter() - t0) * 1000, cached,
                          _fake_logits(lab))

    def predict_batch(self, zs, prompts=None, mask_logits=None):
        n = len(zs)
        prompts = [None] * n if prompts is None else prompts
        mask_logits = [None] * n if mask_logits is None else mask_logits
        return [self.predict(z, p, m) for z, p, m in zip(zs, prompts, mask_logits)]

    def predict_volume(self, z_range=None, prompt_fn=None, batch_size=8, progress=None):
        zs = list(range(self.volume.array.shape[0])) if z_range is None else list(z_range)
        out = np.zeros(self.volume.array.shape, np.uint8)
        for i, z in enumerate(zs):
            out[z] = self.predict(z, prompt_fn(z) if prompt_fn else None).labels
            if progress is not None and ((i + 1) % batch_size == 0 or i + 1 == len(zs)):
                progress(i + 1, len(zs))
        return out


def paint(s, labels: np.ndarray) -> None:
    """Give a fake session this label map, the way the app makes one (a whole-volume run without prompts)."""
    from app import segment as H

    pred = s.interactive.predictor
    pred.answer = labels
    try:
        H.segment_volume(s)
    finally:
        pred.answer = None


def fake_interactive(volume, predictor=None, **settings):
    """A usam InteractiveSession on a volume whose predictor is `predictor` (default: a FakePredictor)."""
    from unittest import mock

    from usam.interactive import session as mod

    pred = FakePredictor(volume) if predictor is None else predictor
    with mock.patch.object(mod, "VolumePredictor", lambda *a, **k: pred):
        return mod.InteractiveSession(None, volume, **settings)


def quiet_config(**kw) -> AppConfig:
    """AppConfig for an app built by a test: the study's demo cohort is not generated in the
    background (USAM_STUDY_WARMUP=0), unless the caller passes its own study settings."""
    kw.setdefault("study", StudySettings(warmup="0"))
    return AppConfig(**kw)


class FakeContext(AppContext):
    """AppContext whose InteractiveSessions (the Segment tab's, the study's AI arms') run on FakePredictor."""

    def __init__(self):
        super().__init__(quiet_config(device="cpu", demo_size="small"), model=object(),
                         metadata={"weights_kind": "fake"})

    def new_predictor(self, volume):
        return FakePredictor(volume)

    def new_session(self, volume, **options):
        return fake_interactive(volume, **options)

    def weights_info(self):
        return WeightsInfo(kind="fake", label="fake", path="-", sha256="f" * 64, is_demo=True, note="fake")


@pytest.fixture(scope="session")
def small_case():
    from app.segment import demo_case

    return demo_case(0, "small")


@pytest.fixture()
def fake_ctx():
    return FakeContext()


@pytest.fixture()
def fake_session(fake_ctx, small_case):
    from app import segment as H

    s = H.start_session(fake_ctx, small_case.volume, "Demo phantom 1", small_case.labels)
    yield s
    s.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_app():
    """The real app (demo weights, or the random demo model while they are missing) on 127.0.0.1."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.main import build_app, launch_kwargs

    # the demo weights are trained on full-size (512^2) phantoms: test on those
    ctx = AppContext(quiet_config(host="127.0.0.1", port=_free_port(), device="cpu", demo_size="full"))
    from tests.reliability.helpers import for_tests

    demo = for_tests(build_app(ctx))
    demo.queue(default_concurrency_limit=2)
    kw = launch_kwargs(ctx)
    kw.update(prevent_thread_lock=True, quiet=True)
    demo.launch(**kw)
    try:
        yield f"http://127.0.0.1:{ctx.config.port}/", ctx
    finally:
        demo.close()
