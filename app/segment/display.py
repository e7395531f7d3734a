"""Display settings: the slice shown, the HU window (display only), overlay opacity, classes, prompt mode."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from app.render import CUSTOM_PRESET, WINDOW_PRESETS, Window, preset_for
from app.segment.events import QUIET, Events, event_data, guard, on, view_outputs
from app.segment.inputs import as_number
from app.segment.session import CLASS_CHOICES, MODES, Session
from usam.errors import PromptError

if TYPE_CHECKING:
    from app.segment.layout import SegmentUI

MAX_WINDOW_HU = 1e6


def set_slice(s: Session, z: int | float) -> None:
    """Move the viewer to slice z (clipped)."""
    s.z = int(np.clip(int(round(as_number(z, "the slice index"))), 0, s.nz - 1))


def navigate(s: Session, delta: int | float) -> None:
    """Move the viewer by delta slices (keyboard / wheel)."""
    set_slice(s, s.z + int(delta))


def checked_window(width: Any, level: Any) -> Window:
    """A display window from any values: finite numbers, width at least 1 HU, else a PromptError."""
    width = as_number(width, "the window width")
    if width < 1:
        raise PromptError("the window width must be at least 1 HU")
    level = as_number(level, "the window level")
    if abs(width) > MAX_WINDOW_HU or abs(level) > MAX_WINDOW_HU:
        raise PromptError("the window width and level must lie within ±1,000,000 HU")
    return Window(width, level)


def set_window(s: Session, width: float, level: float) -> None:
    """Manual display window (never changes the model input)."""
    s.window = checked_window(width, level)
    s.note({"op": "window", "width": s.window.width, "level": s.window.level})


def set_window_preset(s: Session, name: str) -> None:
    """A named display window preset."""
    if name not in WINDOW_PRESETS:
        raise PromptError(f"unknown window preset {name!r}")
    set_window(s, *WINDOW_PRESETS[name])


def class_id(v: Any) -> int:
    """A class from its name ('Normal rectum' | 'Tumor') or its number (1 | 2); a PromptError otherwise."""
    if isinstance(v, str) and v in CLASS_CHOICES:
        return CLASS_CHOICES[v]
    if isinstance(v, int) and v in (1, 2):
        return int(v)
    raise PromptError(f"unknown class {str(v)[:30]!r}; choose from {list(CLASS_CHOICES)}")


def set_display(s: Session, opacity: float | None = None, visible: list[str] | tuple | None = None,
                mode: str | None = None, cls: str | int | None = None) -> None:
    """Overlay opacity, visible classes, prompt mode and point class (all checked before any is set)."""
    opacity = None if opacity is None else float(np.clip(as_number(opacity, "the opacity"), 0.0, 1.0))
    if visible is not None:
        if isinstance(visible, str) or not isinstance(visible, (list, tuple)):
            raise PromptError("the visible classes must be a list of class names")
        visible = tuple(sorted(class_id(v) for v in visible))
    cls = None if cls is None else class_id(cls)
    if mode is not None and mode not in MODES:
        raise PromptError(f"unknown prompt mode {str(mode)[:30]!r}")
    if opacity is not None:
        s.opacity = opacity
    if visible is not None:
        s.visible = visible
    if mode is not None:
        s.mode = mode
    if cls is not None:
        s.cls = cls


class DisplayEvents(Events):
    """Events of navigation and the display controls (none changes the model input)."""

    @guard
    def set_slice(self, s: Session | None, z: float):
        """Show axial slice z."""
        s = self.ensure(s)
        set_slice(s, z)
        return self.view(s)

    @guard
    def go_to_slice(self, s: Session | None, z: float, evt: gr.EventData = None):
        """Viewer keyboard / wheel navigation (event data {z}); API clients pass z."""
        s = self.ensure(s)
        set_slice(s, event_data(evt).get("z", z))
        return self.view(s)

    @guard
    def set_window_preset(self, s: Session | None, name: str):
        """Display window preset (display only: the model input never changes); "Custom" keeps the window."""
        s = self.ensure(s)
        if name != CUSTOM_PRESET:
            set_window_preset(s, name)
        return self.view(s) + (s.window.width, s.window.level)

    @guard
    def set_window(self, s: Session | None, width: float, level: float):
        """Manual display window width / level in HU (display only); the preset it matches, else "Custom"."""
        s = self.ensure(s)
        set_window(s, width, level)
        return self.view(s) + (preset_for(s.window),)

    @guard
    def set_display(self, s: Session | None, opacity: float, visible: list[str], mode: str, cls: str):
        """Overlay opacity, visible classes, prompt mode and point class."""
        s = self.ensure(s)
        set_display(s, opacity=opacity, visible=visible, mode=mode, cls=cls)
        return self.view(s)


def wire(ui: "SegmentUI", ev: DisplayEvents) -> None:
    """Slider, viewer keys / wheel, the From / To boxes, window, opacity, classes, mode."""
    view = view_outputs(ui)
    st = ui.state
    on(ui, ui.slider.input, ev.set_slice, [st, ui.slider], view, "set_slice", trigger_mode="always_last", **QUIET)
    on(ui, ui.viewer.nav, ev.go_to_slice, [st, ui.api_z], view, "go_to_slice", trigger_mode="always_last", **QUIET)
    # Enter in From / To shows that slice (never starts a run: that is the buttons' job)
    on(ui, ui.z0.submit, ev.set_slice, [st, ui.z0], view, "show_range_start", **QUIET)
    on(ui, ui.z1.submit, ev.set_slice, [st, ui.z1], view, "show_range_end", **QUIET)

    win = [st, ui.win_w, ui.win_l]
    on(ui, ui.preset.input, ev.set_window_preset, [st, ui.preset], view + [ui.win_w, ui.win_l], "set_window_preset",
       **QUIET)
    on(ui, ui.win_btn.click, ev.set_window, win, view + [ui.preset], "set_window", **QUIET)
    on(ui, ui.win_w.submit, ev.set_window, win, view + [ui.preset], "set_window_width", **QUIET)
    on(ui, ui.win_l.submit, ev.set_window, win, view + [ui.preset], "set_window_level", **QUIET)
    # typing a W or L leaves the preset: the radio says so at once (browser only)
    for box in (ui.win_w, ui.win_l):
        box.input(None, None, [ui.preset], js=f"() => {CUSTOM_PRESET!r}", queue=False, api_visibility="private")

    display_in = [st, ui.opacity, ui.visible, ui.mode, ui.cls]
    # input: a drag of the slider and typing in its number box (Enter included) both act
    on(ui, ui.opacity.input, ev.set_display, display_in, view, "set_opacity", trigger_mode="always_last", **QUIET)
    on(ui, ui.visible.input, ev.set_display, display_in, view, "set_visible_classes", **QUIET)
    on(ui, ui.mode.input, ev.set_display, display_in, view, "set_mode", **QUIET)
    on(ui, ui.cls.input, ev.set_display, display_in, view, "set_point_class", **QUIET)
