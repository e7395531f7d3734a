"""Process-wide context of the app: the settings and the lazily loaded U-SAM model every session shares.

Contract for tabs mounted by app/main.py (e.g. app/study_tab.py: `build_study_tab(ctx)`):

    ctx.config            AppConfig (app/settings.py): host, port, checkpoint (str | None), device,
                          demo_size ('full' default | 'small'), env (dict of USAM_* variables seen at start),
                          limits (AppLimits: upload, voxel, memory, zip, prompt, history, replay caps)
    ctx.device            the torch device string in use
    ctx.get_model()       -> (model, metadata): loaded once per process on first use, shared by
                          all sessions (thread-safe); model is in eval mode on ctx.device
    ctx.new_predictor(volume) -> usam.predictor.VolumePredictor for one session and one volume
    ctx.weights_info()    -> WeightsInfo: kind, label, path, sha256, is_demo, note (for the page)
    ctx.gpu(fn)           -> fn wrapped in spaces.GPU on Hugging Face ZeroGPU, else fn unchanged

Nothing here imports gradio: a tab builds its own components and calls these.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from app.settings import AppConfig


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'."""
    if name and name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class WeightsInfo:
    """What the page says about the active weights."""

    kind: str            # 'demo-phantom' | 'trained' | 'sam-init' | 'reference' | 'random-init'
    label: str           # one line for the header
    path: str            # file name only (no local paths in the page)
    sha256: str
    is_demo: bool
    note: str            # the warning shown for demo / random weights ('' otherwise)
    config_name: str = ""


DEMO_NOTE = ("Demo weights: this small U-SAM was trained on synthetic pelvic CT phantoms only. "
             "Not for clinical use.")
RANDOM_NOTE = ("Randomly initialised weights: the demo checkpoint was not found, so masks are "
               "meaningless. For wiring and timing only. Not for clinical use.")


def _file_sha256(path: Path) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_metadata(config: Any) -> dict[str, Any]:
    """Checkpoint-like metadata for a randomly initialised model."""
    from usam.preprocess import default_preprocessing

    return {
        "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
        "classes": {"0": "background", "1": "normal rectum", "2": "tumor"},
        "preprocessing": default_preprocessing(),  # the HU window and normalisation, defined once in usam
        "weights_kind": "random-init",
        "provenance": {"data": "none (random initialisation)"},
    }


def _identity(fn: Callable) -> Callable:
    return fn


def gpu_decorator() -> Callable[[Callable], Callable]:
    """spaces.GPU on Hugging Face ZeroGPU (only when the `spaces` package is importable)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return _identity
    return spaces.GPU


class AppContext:
    """Configuration plus the shared model; see the module docstring for the contract."""

    def __init__(self, config: AppConfig | None = None, *, model: Any = None, metadata: dict | None = None,
                 weights_path: Path | None = None):
        self.config = config or AppConfig()
        self.device = resolve_device(self.config.device)
        self._lock = threading.Lock()
        self._model = model
        self._metadata = metadata
        self._weights_path = weights_path
        self._info: WeightsInfo | None = None
        self._inference: Any = None  # the model's FastUsam, built on first use
        self.gpu = gpu_decorator()
        if model is not None and metadata is None:
            cfg = getattr(model, "config", None)
            self._metadata = default_metadata(cfg) if cfg is not None else {"weights_kind": "random-init"}

    # --- model ----------------------------------------------------------------------------
    def _load(self) -> None:
        """Load the weights once: flag > env > checkpoints/ > demo; random demo model as last resort."""
        from usam.errors import CheckpointError

        from usam.checkpoints import load_checkpoint, resolve_weights

        try:
            path = Path(resolve_weights(self.config.checkpoint))
            if not path.exists():
                raise CheckpointError(f"weights not found: {path.name}")
            model, meta = load_checkpoint(path, device=self.device)
            self._weights_path = path
        except CheckpointError:
            if self.config.checkpoint:  # the user named weights: never silently swap them
                raise
            model, meta = self._random_demo()
        model.eval()
        self._model, self._metadata = model, dict(meta)

    def _random_demo(self) -> tuple[Any, dict]:
        """The demo configuration with random weights (seeded, so hashes are stable)."""
        import torch

        from usam.model import build_usam, get_config

        torch.manual_seed(0)
        cfg = get_config("demo")
        model = build_usam(cfg).to(self.device)
        self._weights_path = None
        return model, default_metadata(cfg)

    def get_model(self) -> tuple[Any, dict]:
        """(model, metadata), loaded on first use and shared by every session."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._load()
        return self._model, self._metadata

    def inference_model(self) -> Any:
        """The shared model's inference form (usam.model.fast.FastUsam), built once for every session."""
        model, _ = self.get_model()
        if self._inference is None or self._inference.model is not model:
            with self._lock:
                if self._inference is None or self._inference.model is not model:
                    from usam.model.fast import optimize_for_inference

                    self._inference = optimize_for_inference(model, self.device)
        return self._inference

    def new_predictor(self, volume: Any) -> Any:
        """A VolumePredictor for one session's volume on the shared model."""
        from usam.predictor import VolumePredictor

        _, meta = self.get_model()
        return VolumePredictor(self.inference_model(), volume, meta, device=self.device)

    def new_session(self, volume: Any, **options: Any) -> Any:
        """An InteractiveSession (usam.interactive) for one volume on the shared model; options: its limits, rules."""
        from usam.interactive import InteractiveSession

        _, meta = self.get_model()
        return InteractiveSession(self.inference_model(), volume, meta, device=self.device, **options)

    def weights_info(self) -> WeightsInfo:
        """Description of the active weights (loads the model if needed)."""
        if self._info is not None:
            return self._info
        model, meta = self.get_model()
        kind = str(meta.get("weights_kind", "trained"))
        cfg = meta.get("config") or {}
        cfg_name = cfg.get("name", "") if isinstance(cfg, dict) else str(cfg)
        if self._weights_path is not None and self._weights_path.exists():
            sha, name = _file_sha256(self._weights_path), self._weights_path.name
        else:
            from usam.training.provenance import weights_checksum  # the hash of weights without a file

            sha, name = weights_checksum(model), "(random initialisation)"
        if kind == "random-init":
            label, note, demo = f"Random U-SAM ({cfg_name or 'demo'} config), untrained", RANDOM_NOTE, True
        elif kind == "demo-phantom":
            label, note, demo = f"Demo U-SAM ({cfg_name or 'demo'} config) · {name}", DEMO_NOTE, True
        else:
            label, note, demo = f"U-SAM ({cfg_name}, {kind}) · {name}", "", False
        self._info = WeightsInfo(kind=kind, label=label, path=name, sha256=sha, is_demo=demo, note=note,
                                 config_name=cfg_name)
        return self._info
