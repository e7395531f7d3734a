"""Errors a user can cause; their message is shown as is in the UI and the CLI."""


class UsamError(Exception):
    """Base of every user-facing error (bad file, wrong shape, missing weights, bad prompt)."""


class VolumeError(UsamError):
    """A volume or label map that cannot be read or written."""


class CheckpointError(UsamError):
    """Weights that are missing, untrusted or do not fit the model."""


class PromptError(UsamError):
    """A prompt outside the slice or of the wrong form."""
