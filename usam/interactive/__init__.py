"""Interactive work on one volume: InteractiveSession (prompts in slice pixels, previous masks, undo/redo,
locks, propagation, volume runs, the replayable action log)."""
from usam.interactive.log import LIBRARY_OPS, LOG_FORMAT, apply_action, check_action
from usam.interactive.session import InteractiveResult, InteractiveSession
from usam.interactive.state import PromptItem

__all__ = ["InteractiveSession", "InteractiveResult", "PromptItem", "LIBRARY_OPS", "LOG_FORMAT", "apply_action",
           "check_action"]
