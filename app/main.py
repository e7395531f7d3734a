"""The Gradio app of U-SAM Studio: theme, page CSS, launch settings and the tabs put together.

The Segment and Results tabs live in app/segment/ (one module a feature; every event has an
explicit api_name, listed in docs/API.md). The observer-study tab is app/study_tab.py:
`build_study_tab(ctx)` receives the AppContext documented in app/context.py.
"""
from __future__ import annotations

import logging
import os
import traceback
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from app import gradio_cache  # noqa: E402
from app.context import AppContext  # noqa: E402
from app.segment.layout import SegmentEvents, SegmentUI, build_tabs, wire_all  # noqa: E402
from app.segment.session import Session  # noqa: E402

log = logging.getLogger("usam.app")

SESSION_TTL_S = 4 * 3600          # idle sessions (and their files) are dropped after this
DELETE_CACHE = (900, 3600)        # every 15 min, delete Gradio cache files older than 1 h

APP_CSS = """
.gradio-container { max-width: 1480px !important; margin: 0 auto; }
#usam-header { display: flex; align-items: center; justify-content: space-between; gap: 16px;
  padding: 10px 4px 6px 4px; border-bottom: 1px solid var(--border-color-primary); margin-bottom: 6px; }
#usam-header h1 { font-size: 22px; margin: 0; letter-spacing: -0.01em; }
#usam-header .sub { color: var(--body-text-color-subdued); font-size: 13px; margin-top: 2px; }
.usam-badge { font-size: 12px; padding: 5px 10px; border-radius: 8px; background: var(--background-fill-secondary);
  border: 1px solid var(--border-color-primary); white-space: nowrap; }
.usam-note { background: #fff7e6; color: #7a4b00; border: 1px solid #f5c26b; border-radius: 8px;
  padding: 7px 12px; font-size: 13px; margin: 4px 0 8px 0; }
.dark .usam-note { background: #3a2a08; color: #fcd38a; border-color: #8a6412; }
.usam-panel h3 { margin: 2px 0 4px 0 !important; font-size: 14px !important; text-transform: uppercase;
  letter-spacing: .04em; color: var(--body-text-color-subdued); }
#usam-status, #usam-timing { font-size: 13px; }
#usam-timing p { font-variant-numeric: tabular-nums; }
.usam-ood { background: #fff1f0; color: #7f1d1d; border: 1px solid #f87171; border-left: 5px solid #dc2626;
  border-radius: 8px; padding: 8px 12px; font-size: 13px; margin: 4px 0 8px 0; }
.usam-ood ul { margin: 4px 0 4px 18px; padding: 0; } .usam-ood li { margin: 2px 0; }
.dark .usam-ood { background: #3b0d0d; color: #fecaca; border-color: #b91c1c; }
/* upload, undo / redo, clear: framed like buttons, not like labels (inside a gr.Group they lose it) */
button.usam-btn { border: 1px solid #94a3b8 !important; border-radius: 6px !important; margin: 4px !important;
  background: #ffffff !important; box-shadow: 0 1px 2px rgba(15,23,42,.18) !important; font-weight: 600 !important; }
button.usam-btn:hover { background: #eff6ff !important; border-color: #3b82f6 !important; }
.dark button.usam-btn { background: #1e293b !important; border-color: #64748b !important; }
"""


def theme() -> gr.themes.Base:
    """A calm clinical theme with system fonts only (no font downloads, no third-party calls)."""
    return gr.themes.Base(
        primary_hue="blue", secondary_hue="slate", neutral_hue="slate", radius_size="md",
        font=["Inter", "Segoe UI", "system-ui", "-apple-system", "Helvetica Neue", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def launch_kwargs(ctx: AppContext) -> dict[str, Any]:
    """Keyword arguments of Blocks.launch: private by default (no share link, history, telemetry),
    Gradio's deep links off and every browser given its secret cookie (app/security.py)."""
    from app.security import harden_server

    return dict(
        server_name=ctx.config.host, server_port=ctx.config.port, share=False, theme=theme(), css=APP_CSS,
        footer_links=["api"], run_history=False, enable_monitoring=False, mcp_server=False, ssr_mode=False,
        pwa=False, show_error=True, max_file_size=f"{ctx.config.limits.max_upload_mb}mb",
        **harden_server(ctx.config.cookie_samesite),
    )


def _close_session(s: Any) -> None:
    """gr.State delete_callback: remove the session's files when it ends or expires."""
    if isinstance(s, Session):
        s.close()


def build_app(ctx: AppContext) -> gr.Blocks:
    """All tabs and events of the app."""
    # gradio 6.x (6.31.0 here) rewrites identical cached images in place while they are being
    # served to another client (truncated downloads under concurrent readers): write atomically
    gradio_cache.install()
    events = SegmentEvents(ctx)

    with gr.Blocks(title="U-SAM Studio", delete_cache=DELETE_CACHE, analytics_enabled=False) as demo:
        state = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=_close_session)
        header = gr.HTML('<div id="usam-header"><div><h1>U-SAM Studio</h1><div class="sub">loading model…</div>'
                         '</div></div>', elem_id="usam-header-wrap")
        ui = SegmentUI(ctx, demo, state, header)
        build_tabs(ui)
        _mount_study_tab(ctx)
        wire_all(ui, events)
    return demo


def _mount_study_tab(ctx: AppContext) -> None:
    """The observer-study tab (app/study_tab.py); a failure to build it leaves the other tabs working."""
    from app.study_tab import build_study_tab

    with gr.Tab("Observer study", id="study"):
        try:
            build_study_tab(ctx)
        except Exception:  # the segmentation tabs must keep working; the log gets the detail
            log.error("observer study tab failed:\n%s", traceback.format_exc())
            gr.Markdown("The observer study tab could not be built: the server log has the details.")
