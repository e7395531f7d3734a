"""The action log of an InteractiveSession: its form, what replaying it costs, and replay.

An action is a JSON object with an "op" and its arguments, in slice pixels, as the session's
calls take them. The ops (the app's session file uses the same names and keys; its own display
ops, e.g. "load" and "window", are not the library's: see LIBRARY_OPS):

    {"op": "point", "z", "x", "y", "label": 1 | 0, "cls": 1 | 2}
    {"op": "box", "z", "box": [x0, y0, x1, y1], "cls": 0 | 1 | 2}         cls optional (0)
    {"op": "prompts", "z", "prompts": SlicePrompts.to_dict(), "use_mask": true | false}
    {"op": "undo" | "redo" | "clear" | "segment_slice", "z"}
    {"op": "lock", "z", "locked": true | false}
    {"op": "segment_volume", "start", "end"}                              inclusive, None = the volume's end
    {"op": "propagate", "start", "end", "margin", "feed_mask"}            end None = both ways
    {"op": "rules", "rules": "none" | "box" | ... }                       prompt rules from here on
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usam.errors import PromptError, UsamError
from usam.interactive import checks
from usam.prompts import SlicePrompts

if TYPE_CHECKING:
    from usam.interactive.session import InteractiveSession

LOG_FORMAT = "usam-interactive-log"
# op -> the keys its action must carry
ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "point": ("z", "x", "y", "label"), "box": ("z", "box"), "prompts": ("z", "prompts"), "undo": ("z",),
    "redo": ("z",), "clear": ("z",), "segment_slice": ("z",), "lock": ("z",), "segment_volume": ("start", "end"),
    "propagate": ("start", "end"), "rules": ("rules",)}
LIBRARY_OPS = frozenset(ACTION_KEYS)
# the session settings a log carries (InteractiveSession's keyword arguments)
SETTING_NAMES = ("rules", "logits_dtype", "max_points_per_slice", "max_history", "max_history_mb", "batch_size")
DEFAULT_MAX_REPLAY_ACTIONS = 1000  # app/settings.py AppLimits.max_replay_actions


def check_action(a: Any) -> str:
    """The op of a well-formed action; PromptError naming what is wrong otherwise."""
    if not isinstance(a, dict):
        raise PromptError("an action is not an object")
    op = a.get("op")
    if not isinstance(op, str) or op not in ACTION_KEYS:
        raise PromptError(f"unknown action {str(op)[:30]!r}")
    missing = [k for k in ACTION_KEYS[op] if k not in a]
    if missing:
        raise PromptError(f"a {op!r} action lacks {', '.join(missing)}")
    if op == "box" and (not isinstance(a["box"], (list, tuple)) or len(a["box"]) != 4):
        raise PromptError("a 'box' action needs four coordinates")
    if op == "point" and a["label"] not in (0, 1):
        raise PromptError("a point's label must be 0 or 1")
    if op == "prompts" and not isinstance(a["prompts"], dict):
        raise PromptError("a 'prompts' action needs its prompts as an object")
    return op


def action_cost(a: dict[str, Any], num_slices: int) -> int:
    """Model runs an action may cost (a range: its slices); checks its form on the way."""
    op = check_action(a)
    if op == "segment_volume":
        lo, hi = checks.slice_range(a["start"], a["end"], num_slices)
        return hi - lo + 1
    if op == "propagate":
        if a["end"] is None:
            return num_slices - 1
        return abs(int(checks.number(a["end"], "the last slice")) - int(checks.number(a["start"], "the slice")))
    return 1 if op in ("point", "box", "prompts", "segment_slice") else 0


def apply_action(s: "InteractiveSession", a: dict[str, Any]) -> Any:
    """One logged action on a session, through the live call's checks; returns what the call returns."""
    op = check_action(a)
    if op == "point":
        return s.add_point(a["z"], a["x"], a["y"], a.get("cls", 1), positive=bool(a["label"]))
    if op == "box":
        return s.add_box(a["z"], *a["box"], cls=a.get("cls", 0))
    if op == "prompts":
        return s.add_prompts(a["z"], SlicePrompts.from_dict(a["prompts"]), use_mask=bool(a.get("use_mask", True)))
    if op == "undo":
        return s.undo(a["z"])
    if op == "redo":
        return s.redo(a["z"])
    if op == "clear":
        return s.clear(a["z"])
    if op == "segment_slice":
        return s.segment(a["z"])
    if op == "lock":
        return s.lock(a["z"], bool(a.get("locked", True)))
    if op == "segment_volume":
        return s.segment_volume(a["start"], a["end"])
    if op == "rules":
        if not isinstance(a["rules"], str):
            raise PromptError("a 'rules' action needs the rules' name")
        return s.set_rules(a["rules"])
    return s.propagate(a["start"], a["end"], margin=a.get("margin", 2.0), feed_mask=bool(a.get("feed_mask", True)))


def log_actions(log: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(actions, settings) of a log: InteractiveSession.to_log()'s dict or a bare list of actions."""
    if isinstance(log, list):
        return log, {}
    if not isinstance(log, dict) or log.get("format") != LOG_FORMAT or not isinstance(log.get("actions"), list):
        raise PromptError("not an interactive session log (format or actions missing)")
    settings = log.get("settings") or {}
    if not isinstance(settings, dict):
        raise PromptError("the log's settings are malformed")
    return log["actions"], settings


def replay(session: "InteractiveSession", log: Any,
           max_actions: int = DEFAULT_MAX_REPLAY_ACTIONS) -> "InteractiveSession":
    """Apply a log's actions to a fresh session (the whole log is checked, and its model runs counted
    against max_actions, before the first runs). A refused action names its place in the log."""
    actions, _ = log_actions(log)
    if session.actions:
        raise PromptError("replay needs a fresh session (this one has actions already)")
    if len(actions) > max_actions:
        raise PromptError(f"the log holds {len(actions)} actions, over the limit of {max_actions}")
    cost = 0
    for i, a in enumerate(actions):
        try:
            cost += action_cost(a, session.num_slices)
        except UsamError as exc:
            raise PromptError(f"action {i + 1} of the log is malformed: {exc}") from None
    if cost > max_actions:
        raise PromptError(f"replaying the log could run the model {cost} times, over the limit of {max_actions}")
    for i, a in enumerate(actions):
        try:
            apply_action(session, a)
        except UsamError as exc:
            raise PromptError(f"action {i + 1} of the log ({a['op']}) was refused: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError):
            raise PromptError(f"action {i + 1} of the log ({a['op']}) is malformed") from None
    return session
