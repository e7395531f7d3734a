"""The "Observer study" tab: register / log in, annotate the assigned case slice by slice
(red normal wall, blue tumor), AI arms, heartbeats; the admin's dashboard is app/study_admin.py.

All decisions (roles, ownership, ranges, timing, scoring) live in study.service.StudyService;
every handler passes the caller's token on. Context attributes used (all optional):
    ctx.config          AppConfig (app/settings.py): .study (StudySettings: database, demo cohort,
                        warm-up), .trusted_proxies, .export_keep_s, all read once at start-up
    ctx.study_service   a ready StudyService (tests inject one); else built on ctx.config.study
    ctx.new_session     volume -> usam.interactive.InteractiveSession, for the AI arms
    ctx.weights_info()  -> object with .label and .sha256 (stored with every model output)
    (demo cohort size: ctx.config.study.demo_size, default 'full' = realistic 512^2 phantoms)
"""
from __future__ import annotations

import functools
import logging
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np

import gradio as gr

from app.contour import ContourHandlers, _not_done, grey
from app.contour_js import CONTOUR_CSS, CONTOUR_HTML, CONTOUR_JS, CONTOUR_UNBUSY_JS
from app.render import CLASS_COLORS, DEFAULT_PRESET, WINDOW_PRESETS
from app.study_admin import AdminHandlers, build_admin_panel
from usam.errors import UsamError

log = logging.getLogger("usam.study_tab")

HEARTBEAT_S = 30.0
GROUP_CHOICES = [("Group 1: novice (residents, < 5 years)", 1), ("Group 2: some surgical experience", 2),
                 ("Group 3: highly experienced", 3)]
CLASS_CHOICES = [("Normal rectal wall (red)", 1), ("Tumor (blue)", 2)]

# Heartbeat from the page: visible tab? any pointer/key input since the last beat? (listeners
# are installed on the first tick; nothing else is sent, and the server stamps the time).
HEARTBEAT_JS = """
(v, i, ...rest) => {
  if (!window.__usamStudyHB) {
    window.__usamStudyHB = true; window.__usamStudyInput = true;
    ['pointerdown', 'keydown', 'wheel', 'pointermove'].forEach(
      e => document.addEventListener(e, () => { window.__usamStudyInput = true; }, true));
  }
  const inp = !!window.__usamStudyInput; window.__usamStudyInput = false;
  return [document.visibilityState === 'visible', inp, ...rest];
}
"""


# ----------------------------------------------------------------------------- pure helpers
def grey_rgb(hu: np.ndarray, preset: str | None) -> np.ndarray:
    """Display slice (h, w, 3) uint8 through a window preset (display only)."""
    g = grey(hu, preset)
    return np.repeat(g[..., None], 3, axis=2)


def _err(fn: Callable, scrub: list | None = None) -> Callable:
    """Study errors -> a clear message in the page; other failures logged without arguments.
    `scrub`: password boxes whose copy Gradio keeps of the session's last input is emptied."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UsamError as exc:
            raise gr.Error(str(exc), title="Not done", print_exception=False) from exc
        except Exception as exc:
            # the traceback only: arguments may hold passwords or tokens
            log.error("study handler %s failed:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(f"Internal error ({type(exc).__name__}).", title="Internal error") from exc

    # the one place where the browser's secret reaches the study service: every handler wired
    # through _err (E) checks it (study.auth.resolve_token), see app/security.with_browser
    from app.security import with_browser

    return with_browser(wrapper, scrub)


def _click_xy(index: Any, hw: tuple[int, int]) -> tuple[float, float]:
    """Pixel (x, y) of a click on the prompt image; refused unless finite and inside the slice."""
    try:
        x, y = (float(v) for v in list(index)[:2])
    except (TypeError, ValueError, OverflowError):
        raise _not_done("Click on the image to place a prompt.") from None
    if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < hw[1] and 0 <= y < hw[0]):
        raise _not_done("Click inside the image to place a prompt.")
    return x, y


def _point_class(cls: Any) -> int:
    """Point class 1 (normal rectal wall) or 2 (tumor); the default 1 when none is chosen."""
    if cls in (None, ""):
        return 1
    try:
        c = float(cls)
    except (TypeError, ValueError, OverflowError):
        c = float("nan")
    if c not in (1.0, 2.0) or isinstance(cls, bool):
        raise _not_done("Choose the point class: normal rectal wall or tumor.")
    return int(c)


# ----------------------------------------------------------------------------- handlers
class StudyTab(ContourHandlers, AdminHandlers):
    """Handlers of the tab (plain methods: a test can call them without a browser)."""

    def __init__(self, service, demo_size: str | None = None, *, proxies: list | None = None,
                 export_keep_s: float = 120.0):
        """`proxies`: app.security.trusted_proxies(...) (none: X-Forwarded-For is never believed);
        `export_keep_s`: how long an admin export's folder stays after delivery."""
        self.svc = service
        self.demo_size = demo_size
        self.proxies = list(proxies or [])
        self.export_keep_s = float(export_keep_s)
        self._demo_lock = threading.Lock()
        self._demo_ready = False
        self.demo_note = ""

    # -- demo study ---------------------------------------------------------------------------
    def ensure_study(self) -> None:
        """Set up the 20-case phantom demo study when no study has cases (once, lazily)."""
        if self._demo_ready:
            return
        from study import ops

        with self._demo_lock:
            if not self._demo_ready:
                sid, pw_file = ops.ensure_demo_study(self.svc.db, self.demo_size)
                if pw_file:
                    self.demo_note = f"Demo admin password written to `{pw_file}` on the server."
                self._demo_ready = True

    def warm_up(self) -> None:
        """Background start-up: generate the demo cohort so the first login does not wait."""
        try:
            self.ensure_study()
        except Exception:
            log.error("demo study set-up failed:\n%s", traceback.format_exc())

    # -- accounts -----------------------------------------------------------------------------
    def _address(self, request: gr.Request | None) -> str:
        """The caller's address for the login throttle (X-Forwarded-For only from a trusted proxy)."""
        from app.security import request_address

        return request_address(request, self.proxies)

    def register(self, code, login, password, name, group, years, specialty, request: gr.Request = None):
        """Create a reader account with the study code."""
        self.ensure_study()
        # group and years are checked by the service (clear messages for any value an API client sends)
        u = self.svc.register(code, login, password, name or "", group, years, specialty or "",
                              self._address(request))
        return f"Account **{u['login']}** created. Log in to start."

    def login(self, login, password, preset, request: gr.Request = None):
        """Log in; readers land on their current case, admins on the dashboard."""
        self.ensure_study()
        token = self.svc.login(login, password, self._address(request))
        me = self.svc.me(token)
        if me["role"] == "admin":
            return (token, None, f"Logged in as **{me['login']}** (administrator).", gr.update(visible=False),
                    gr.update(visible=True)) + self._blank()
        cur, outs = self._load_current(token, preset)
        return (token, cur, f"Logged in as **{me['login']}**.", gr.update(visible=True),
                gr.update(visible=False)) + outs

    def logout(self, token):
        """End the session: the token stops working."""
        if token:
            self.svc.logout(token)
        return (None, None, "Logged out.", gr.update(visible=False), gr.update(visible=False)) + self._blank()

    def heartbeat(self, visible, had_input, token, cur):
        """Activity heartbeat from the page (ignored when no case is open)."""
        if not token or not isinstance(cur, dict) or "aid" not in cur:
            return
        self.svc.heartbeat(token, cur["aid"], bool(visible), bool(had_input), cur.get("z"))

    # -- AI arms --------------------------------------------------------------------------------
    def _prompt_text(self, cur: dict) -> str:
        if cur.get("arm") == "usam_p":
            n = {c: sum(p[2] == c for p in cur["points"]) for c in (1, 2)}
            return f"Points on this slice: normal {n[1]}, tumor {n[2]} (3 per present class)."
        if cur.get("arm") == "usam_b":
            return f"Box corners clicked: {len(cur['box'])}/2."
        return ""

    def prompt_click(self, token, cur, cls, preset, evt: gr.SelectData):
        """A click on the prompt image: a point (U-SAM/P) or a box corner (U-SAM/B), with its time."""
        cur = self._need(cur)
        self.svc.me(token)                                    # refuses unauthenticated callers
        x, y = _click_xy(getattr(evt, "index", None), (cur["h"], cur["w"]))
        cls = _point_class(cls)
        now = time.time()
        ms = (now - cur.get("last_prompt", cur["shown"])) * 1000.0
        cur["last_prompt"] = now
        if cur["arm"] == "usam_b":
            cur["box"] = (cur["box"] + [(x, y, ms)])[-2:]
        elif cur["arm"] == "usam_p":
            cur["points"].append((x, y, cls, True, ms))
        return cur, self._marked(token, cur, preset), self._prompt_text(cur)

    def _marked(self, token, cur, preset) -> np.ndarray:
        img = grey_rgb(self.svc.get_slice(token, cur["aid"], cur["z"]).image, preset).copy()
        for p in cur["points"]:
            y, x = int(p[1]), int(p[0])
            img[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = CLASS_COLORS.get(p[2], (255, 255, 0))
        if len(cur["box"]) == 2:
            (x0, y0, _), (x1, y1, _) = cur["box"]
            x0, x1, y0, y1 = int(min(x0, x1)), int(max(x0, x1)), int(min(y0, y1)), int(max(y0, y1))
            img[y0:y1 + 1, [x0, x1]] = (255, 255, 0)
            img[[y0, y1], x0:x1 + 1] = (255, 255, 0)
        return img

    def run_model(self, token, cur, preset):
        """Run U-SAM on this slice with the clicked prompts; the output becomes the editable mask."""
        cur = self._need(cur)
        box = None
        if cur["arm"] == "usam_b":
            if len(cur["box"]) != 2:
                raise gr.Error("Click two opposite corners of the box first.", title="Not done",
                               print_exception=False)
            (x0, y0, m0), (x1, y1, m1) = cur["box"]
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1, 0, m0 + m1)
        labels = self.svc.predict_slice(token, cur["aid"], cur["z"], cur["points"] if cur["arm"] == "usam_p" else [],
                                        box)
        outs = self._show(token, cur, preset)      # the model's output is saved: shown as stored
        return cur, outs[2], self._prompt_text(cur)


def make_service(ctx: Any, settings: Any = None):
    """The study service for this app: ctx.study_service, else one on the settings' database
    (study.settings.StudySettings; default: the documented defaults) with the app's model."""
    svc = getattr(ctx, "study_service", None)
    if svc is not None:
        return svc
    from study.db import get_database
    from study.service import StudyService

    factory = getattr(ctx, "new_session", None)
    name = sha = ""
    try:
        info = ctx.weights_info()
        name, sha = str(info.label)[:64], str(info.sha256)[:64]
    except Exception:
        pass
    return StudyService(get_database(settings=settings), session_factory=factory, model_name=name,
                        checkpoint_hash=sha)


def _wire_account_ui(reg_ev, login_ev, logout_ev, pw_in, rpw_in, account_box, session_box) -> None:
    """UI-only steps after the account events (no API endpoints): the password boxes emptied after
    every attempt, successful or not (the browser's field and the copy Gradio keeps of a session's
    last input values), and the login / register forms folded away while logged in."""
    private = dict(api_visibility="private", show_progress="hidden")
    boxes = [account_box, session_box]
    for ev, box in ((login_ev, pw_in), (reg_ev, rpw_in)):   # Gradio 6 runs .then only after a success
        # a plain "" (not gr.update(value="")): Gradio 6.31 then also overwrites its stored copy
        ev.then(lambda: "", None, [box], **private)
        ev.failure(lambda: "", None, [box], **private)
    login_ev.success(lambda: (gr.update(visible=False), gr.update(visible=True)), None, boxes, **private)
    logout_ev.success(lambda: (gr.update(visible=True), gr.update(visible=False)), None, boxes, **private)


def build_study_tab(ctx: Any) -> StudyTab:
    """Build the tab's components and events inside the caller's gr.Tab; returns the handlers."""
    from app.security import trusted_proxies

    config = ctx.config
    settings = config.study   # the study's configuration, read once at start-up (app.settings.parse_config)
    # the study needs realistic 512^2 cases; USAM_STUDY_DEMO_SIZE=small for quick trials
    tab = StudyTab(make_service(ctx, settings), settings.demo_size, proxies=trusted_proxies(config.trusted_proxies),
                   export_keep_s=config.export_keep_s)
    # generate the demo cohort in the background at start-up unless USAM_STUDY_WARMUP=0 (tests
    # that mount this tab say so: they must not pay for 20 full-size phantoms)
    if settings.warmup != "0":
        threading.Thread(target=tab.warm_up, daemon=True, name="study-demo-setup").start()
    E = _err
    presets = list(WINDOW_PRESETS)

    token = gr.State(None)
    cur = gr.State(None)
    gr.Markdown("Observer study: annotate your assigned cases slice by slice. Time is measured on the server; "
                "each slice you edit is saved when you move to another slice.")
    status = gr.Markdown(elem_id="study-status")
    with gr.Row():
        with gr.Column(scale=1):
            # folded away once logged in (shown again on logout)
            with gr.Column(elem_id="study-account") as account_box:
                with gr.Group():
                    login_in = gr.Textbox(label="Login", elem_id="study-login")
                    pw_in = gr.Textbox(label="Password", type="password", elem_id="study-password")
                    login_btn = gr.Button("Log in", variant="primary", elem_id="study-login-btn")
                with gr.Accordion("Register (study code from the administrator)", open=False):
                    code_in = gr.Textbox(label="Study code")
                    rlogin_in = gr.Textbox(label="Login")
                    rpw_in = gr.Textbox(label="Password (at least 8 characters, not a common one)",
                                        type="password", elem_id="study-register-password")
                    name_in = gr.Textbox(label="Name")
                    group_in = gr.Radio(GROUP_CHOICES, label="Experience group")
                    years_in = gr.Number(label="Years of experience", minimum=0, maximum=80)
                    spec_in = gr.Textbox(label="Specialty")
                    reg_btn = gr.Button("Register")
            with gr.Row(visible=False, elem_id="study-session") as session_box:
                logout_btn = gr.Button("Log out", elem_id="study-logout-btn")
            preset = gr.Radio(presets, value=DEFAULT_PRESET, label="Window preset")

    with gr.Column(visible=False) as reader_panel:
        info = gr.Markdown(elem_id="study-case-info")
        # the contouring tool (app/contour_js.py); API clients pass the mask text, the case and
        # the slice number through these hidden inputs (the page sends them as event data)
        contour = gr.HTML(None, html_template=CONTOUR_HTML, css_template=CONTOUR_CSS, js_on_load=CONTOUR_JS,
                          apply_default_css=False, elem_id="study-contour")
        with gr.Row(visible=False):
            mask_in = gr.Textbox(label="Mask text: rle:H:W:v,n,... (or b64:H:W:...) at the slice size")
            aid_in = gr.Number(label="Case (assignment id) the call is for", precision=0)
            zs = gr.Number(label="Slice number", precision=0)
        with gr.Accordion("U-SAM prompts (AI arms only)", open=False):
            cls_in = gr.Radio(CLASS_CHOICES, value=1, label="Point class")
            prompt_img = gr.Image(label="Click to place prompts", interactive=False, type="numpy", format="png",
                                  elem_id="study-prompt-image")
            prompt_info = gr.Markdown()
            model_btn = gr.Button("Run U-SAM on this slice")
        hb_visible = gr.Checkbox(value=True, visible=False)
        hb_input = gr.Checkbox(value=False, visible=False)
        timer = gr.Timer(HEARTBEAT_S)

    admin_panel = build_admin_panel(tab, token, E)

    CASE = [info, zs, contour, prompt_img, prompt_info]
    # Enter in the years box registers like the button (one event, one endpoint)
    reg_ev = gr.on([reg_btn.click, years_in.submit], E(tab.register, [rpw_in]),
                   [code_in, rlogin_in, rpw_in, name_in, group_in, years_in, spec_in], [status],
                   api_name="study_register")
    login_ev = login_btn.click(E(tab.login, [pw_in]), [login_in, pw_in, preset],
                               [token, cur, status, reader_panel, admin_panel] + CASE, api_name="study_login")
    logout_ev = logout_btn.click(E(tab.logout), [token], [token, cur, status, reader_panel, admin_panel] + CASE,
                                 api_name="study_logout")
    _wire_account_ui(reg_ev, login_ev, logout_ev, pw_in, rpw_in, account_box, session_box)
    page = [token, cur, mask_in, aid_in]
    quiet = dict(show_progress="hidden")      # the tool shows its own "saving…"; errors as one message
    events = [
        contour.next(E(tab.next_slice), page + [preset], [cur] + CASE, api_name="study_next", **quiet),
        contour.previous(E(tab.previous_slice), page + [preset], [cur] + CASE, api_name="study_previous", **quiet),
        contour.goto(E(tab.goto), page + [zs, preset], [cur] + CASE, api_name="study_goto", **quiet),
        contour.copy(E(tab.copy_previous), [token, cur, aid_in, preset], [cur] + CASE,
                     api_name="study_copy_previous", **quiet),
        contour.nothing(E(tab.nothing), [token, cur, aid_in, preset], [cur] + CASE, api_name="study_nothing", **quiet),
        contour.interpolate(E(tab.interpolate), page + [preset], [cur] + CASE, api_name="study_interpolate", **quiet),
        contour.submit(E(tab.submit), page + [preset], [cur, status] + CASE, api_name="study_submit", **quiet)]
    for ev in events:       # a refused call: the tool takes input again at once, the reader's edits kept
        ev.failure(None, None, None, js=CONTOUR_UNBUSY_JS, api_visibility="private", show_progress="hidden")
    preset.change(E(lambda t, c, p: tab.rewindow(t, c, p) if isinstance(c, dict) else (gr.skip(), gr.skip())),
                  [token, cur, preset], [contour, prompt_img], api_name="study_window")
    timer.tick(E(tab.heartbeat), [hb_visible, hb_input, token, cur], None, js=HEARTBEAT_JS,
               api_name="study_heartbeat", show_progress="hidden")
    prompt_img.select(E(tab.prompt_click), [token, cur, cls_in, preset], [cur, prompt_img, prompt_info],
                      api_name="study_prompt")
    model_btn.click(E(tab.run_model), [token, cur, preset], [cur, contour, prompt_info], api_name="study_run_model")
    return tab
