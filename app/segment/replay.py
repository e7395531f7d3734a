"""The session file: every action with its prompts, written as JSON and replayed to re-create the masks.

The file's actions are the InteractiveSession's log (usam.interactive.log: prompts, undo / redo,
runs, in slice pixels) with the app's own ops in their places: "load", "window" (display only)
and "rules" (the prompt rules chosen in the page). Replaying dispatches the library's ops to
InteractiveSession.apply and handles the app's here. Version 1 files (before the library session:
boxes without a class, the prompt rules always on) replay with the rules on ("all"), as recorded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from app.context import AppContext
from app.settings import AppLimits
from app.segment import display, prompts
from app.segment.events import Events, guard, on, view_outputs
from app.segment.opening import start_session
from app.segment.results import json_default, safe_stem
from app.segment.session import Session
from usam.errors import UsamError, VolumeError
from usam.interactive import LIBRARY_OPS
from usam.interactive.log import action_cost

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

log = logging.getLogger("usam.app")

SESSION_FORMAT = "usam-studio-session"
SESSION_VERSION = 2        # 2: the library's log (previous masks fed back, rules op); 1: the app's own log
OLD_FILE_RULES = "all"     # what version 1 files were recorded with (the app's default then)


def label_bytes_sha256(labels: np.ndarray) -> str:
    """sha256 of a label map's bytes alone: the replay check (study.scoring.labels_sha256 also hashes
    shape and spacing, to lock a study's ground truth)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).hexdigest()


def file_actions(s: Session) -> list[dict[str, Any]]:
    """The session's actions for its file: the library's log with the app's own ops in their places."""
    lib, out, i = s.interactive.actions, [], 0
    for pos, a in s.view_actions:
        out += lib[i:pos]
        out.append(dict(a))
        i = max(i, pos)
    return out + [dict(a) for a in lib[i:]]


def session_dict(s: Session, ctx: AppContext) -> dict[str, Any]:
    """The session as JSON: volume hash, model hash, every action with its prompts, the window."""
    info = ctx.weights_info()
    return {
        "format": SESSION_FORMAT, "version": SESSION_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "volume": {"sha256": s.volume_hash, "name": s.name, "shape": list(s.labels.shape),
                   "spacing": [float(t) for t in s.volume.spacing]},
        "model": {"sha256": info.sha256, "weights_kind": info.kind, "weights": info.label},
        "window": {"width": s.window.width, "level": s.window.level},
        "display": {"opacity": s.opacity, "visible": list(s.visible)},
        "prompt_rules": s.rules,
        "actions": file_actions(s),
        "result": {"labels_sha256": label_bytes_sha256(s.labels),
                   "voxels": {str(c): int((s.labels == c).sum()) for c in (1, 2)}},
    }


def export_session(s: Session, ctx: AppContext, out_dir: Path | None = None) -> Path:
    """Write the session JSON."""
    out = Path(out_dir or s.tmpdir()) / f"{safe_stem(s)}_session.json"
    out.write_text(json.dumps(session_dict(s, ctx), indent=2, default=json_default))
    return out


def read_session_file(path: str | Path, max_bytes: int = AppLimits().max_session_file_kb << 10) -> dict[str, Any]:
    """Parse and check a session JSON file (its size first: it is read whole)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise VolumeError(f"the session file is {size >> 10} KB, over the limit of {max_bytes >> 10} KB")
        d = json.loads(path.read_text(encoding="utf-8"))
    except VolumeError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        raise VolumeError("not a U-SAM Studio session file (it is not readable JSON)") from None
    if not isinstance(d, dict) or d.get("format") != SESSION_FORMAT or not isinstance(d.get("actions"), list):
        raise VolumeError("not a U-SAM Studio session file (format field missing)")
    vol = d.get("volume")
    if not isinstance(vol, dict) or not isinstance(vol.get("sha256"), str):
        raise VolumeError("not a U-SAM Studio session file (the volume's sha256 is missing)")
    for key in ("model", "result", "window"):
        if key in d and not isinstance(d[key], dict):
            raise VolumeError(f"the session file's {key!r} entry is malformed")
    return d


# the app's own ops -> the keys they must carry (every other op is the library's: usam.interactive.log)
APP_ACTION_KEYS = {"load": (), "window": ("width", "level")}


def _action_cost(s: Session, a: Any) -> int:
    """Model runs an action costs (a range: its slices); checks the action's form on the way."""
    if isinstance(a, dict) and a.get("op") in APP_ACTION_KEYS:
        missing = [k for k in APP_ACTION_KEYS[a["op"]] if k not in a]
        if missing:
            raise VolumeError(f"a {a['op']!r} action lacks {', '.join(missing)}")
        return 0
    try:
        return action_cost(a, s.nz)
    except UsamError as exc:
        raise VolumeError(f"{exc} in the session file") from None


def apply_action(s: Session, a: dict[str, Any]) -> None:
    """Re-apply one recorded action to a session (the replay step), through the live calls' checks."""
    _action_cost(s, a)
    op = a["op"]
    if op == "rules":   # the page's names too (a session file written by hand or by an older page)
        prompts.set_prompt_rules(s, a["rules"])
    elif op in LIBRARY_OPS:
        s.interactive.apply(a)
    elif op == "window":
        display.set_window(s, a["width"], a["level"])
    # "load" starts the file: the session it is replayed on has it already


def replay_session(ctx: AppContext, data: dict[str, Any], base: Session) -> tuple[Session, dict[str, Any]]:
    """Re-create a session's masks on the same volume from its JSON; reports whether they match.

    Every action goes through the live handlers' validation; the whole file is checked (form,
    window, number of model runs against AppLimits.max_replay_actions) before the first one runs."""
    vol_hash = data.get("volume", {}).get("sha256") if isinstance(data.get("volume"), dict) else None
    if vol_hash != base.volume_hash:
        raise VolumeError("this session was recorded on a different volume: load that volume first "
                          f"(session volume {str(vol_hash)[:12]}, loaded {base.volume_hash[:12]})")
    actions = data.get("actions")
    if not isinstance(actions, list):
        raise VolumeError("not a U-SAM Studio session file (no actions)")
    limit = ctx.config.limits.max_replay_actions
    if len(actions) > limit:
        raise VolumeError(f"the session file holds {len(actions)} actions, over the limit of {limit}")
    cost = sum(_action_cost(base, a) for a in actions)
    if cost > limit:
        raise VolumeError(f"replaying the session file would run the model {cost} times, over the limit of {limit}")
    window = None
    if "window" in data:
        w = data["window"]
        window = display.checked_window(w.get("width"), w.get("level"))
    s = start_session(ctx, base.volume, base.name, base.ground_truth, is_upload=base.is_upload)
    s.reference, s.reference_name = base.reference, base.reference_name
    old_file = data.get("version", 1) == 1
    try:
        if old_file:
            prompts.set_prompt_rules(s, OLD_FILE_RULES)
        for i, a in enumerate(actions):
            try:
                apply_action(s, a)
            except UsamError as exc:
                raise VolumeError(f"action {i + 1} of the session file ({a.get('op')}) was refused: {exc}") from None
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                log.warning("replay action %d malformed: %r", i + 1, exc)
                raise VolumeError(f"action {i + 1} of the session file ({str(a.get('op'))[:20]}) is malformed") from None
    except BaseException:
        s.close()   # the half-replayed session's files go with it
        raise
    if window is not None:
        s.window = window
    info = ctx.weights_info()
    report = {
        "actions": len(actions),
        "same_model": data.get("model", {}).get("sha256") == info.sha256,
        "labels_match": data.get("result", {}).get("labels_sha256") == label_bytes_sha256(s.labels),
        "old_file": old_file,
    }
    return s, report


class ReplayEvents(Events):
    """Events of the session file: export and replay."""

    @guard
    def export_session(self, s: Session | None):
        """Session JSON (volume hash, model hash, every prompt, window) that re-creates the masks."""
        s = self.ensure(s)
        return s, [str(export_session(s, self.ctx))]

    @guard
    def replay_session(self, s: Session | None, path: str | None):
        """Re-create the masks of a session JSON on the loaded volume."""
        s = self.ensure(s)
        path = self.upload_path(path)
        data = read_session_file(path, max_bytes=self.ctx.config.limits.max_session_file_kb << 10)
        new, rep = replay_session(self.ctx, data, s)
        new.opacity, new.visible, new.mode, new.cls = s.opacity, s.visible, s.mode, s.cls  # window, rules: the file's
        s.close()
        msg = (f"Replayed {rep['actions']} actions. Masks "
               + ("**identical** to the recorded ones." if rep["labels_match"] else "**differ** from the recorded ones.")
               + ("" if rep["same_model"] else " The session was recorded with other weights.")
               + (" It was recorded by an earlier version of the app, with the prompt rules on (all): replayed "
                  "with them, each prompt now also fed its slice's previous mask." if rep["old_file"] else ""))
        return self.view(new) + (msg, gr.update(value=prompts.rules_label(new)))


def wire(ui: "SegmentUI", ev: ReplayEvents) -> None:
    """The session export button and the replay upload (its message beside the upload)."""
    on(ui, ui.sess_btn.click, ev.export_session, [ui.state], [ui.state, ui.files], "export_session")
    # the rules radio last: the file's prompt rules are the replayed session's
    on(ui, ui.sess_upload.upload, ev.replay_session, [ui.state, ui.sess_upload],
       view_outputs(ui) + [ui.replay_info, ui.rules], "replay_session", gpu=True, show_progress_on=[ui.replay_info])
