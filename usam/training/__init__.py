"""U-SAM training as a library: `train(TrainConfig(...))`; `python -m usam train` (usam/train.py)
only parses its flags into a TrainConfig.

Modules: config (the run's settings, validated once), optim (parameter groups, recipes, poly
schedule), augment (seeded augmentation and the training dataset), prompting (training prompts
per batch), step (the loss of one batch), validation (model selection on cached val slices),
model_init (a fresh or initialised model), ddp (torchrun process group), provenance
(checkpoint metadata), outputs (the run folder: log, resumable state, checkpoints), loop (the run).
"""
from usam.training.config import TrainConfig
from usam.training.loop import train

__all__ = ["TrainConfig", "train"]
