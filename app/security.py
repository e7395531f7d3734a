"""What the web server adds to the study's own checks (docs/SECURITY.md):

- every browser gets a random secret in an HttpOnly cookie (`usam_browser`); a study login is
  bound to it, so the Gradio session hash alone (which any page script, log or shared link
  may reveal) grants nothing: `with_browser` hands the calling browser's secret to
  study.auth around every study handler;
- Gradio 6's deep links are turned off (`/gradio_api/deep_link` stored every input value of a
  session, passwords included, in a world-readable file served to anyone holding the link);
- the client address used by the login throttle: the TCP peer, and `X-Forwarded-For` only
  when the peer is a configured trusted proxy (AppConfig.trusted_proxies);
- folders for admin exports that are deleted after delivery.

Its settings (trusted proxies, the cookie's SameSite, how long exports stay) come from the
AppConfig read once at start-up (app/settings.py); nothing here reads the environment.
"""
from __future__ import annotations

import functools
import inspect
import ipaddress
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

log = logging.getLogger("usam.security")

BROWSER_COOKIE = "usam_browser"
_COOKIE_RE = re.compile(r"^[A-Za-z0-9_\-]{43}$")    # secrets.token_urlsafe(32)
EXPORT_PREFIX = "usam_export_"


# ----------------------------------------------------------------------------- client address
def trusted_proxies(raw: str) -> list:
    """Networks whose X-Forwarded-For is believed, from AppConfig.trusted_proxies (comma-separated
    addresses / CIDRs; a part that is neither is logged and ignored)."""
    nets = []
    for part in (raw or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            log.warning("USAM_TRUSTED_PROXIES: %r is not an address or network; ignored", part)
    return nets


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _is_trusted(addr: str, nets: list) -> bool:
    ip = _ip(addr)
    return ip is not None and any(ip in n for n in nets)


def client_address(peer: str, forwarded_for: str | None, nets: list) -> str:
    """The address to throttle: the peer, or, when the peer is a trusted proxy, the right-most
    address in X-Forwarded-For that is not a trusted proxy (what the client wrote to the left
    of it is not believed); `nets`: trusted_proxies(...)."""
    addr = (peer or "")[:64]
    if not forwarded_for or not _is_trusted(addr, nets):
        return addr
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, nets):
            return hop[:64] if _ip(hop) is not None else addr
        addr = hop[:64]
    return addr


def request_address(request: Any, nets: list) -> str:
    """client_address of a gr.Request behind the trusted proxies `nets` (empty when there is no request)."""
    try:
        peer = (request.client.host or "") if request is not None and request.client else ""
        xff = request.headers.get("x-forwarded-for") if request is not None else None
    except Exception:
        return ""
    return client_address(peer, xff, nets)


# ----------------------------------------------------------------------------- browser binding
def browser_secret(request: Any) -> str:
    """The browser's secret from its cookie ("" when it sent none or a malformed one)."""
    try:
        value = request.cookies.get(BROWSER_COOKIE) or ""
    except Exception:
        return ""
    return value if _COOKIE_RE.match(value) else ""


_REQ = "usam_request"


def _fresh(v: Any) -> Any:
    """A copy of the dict / list structure of v (arrays, text and other leaves are shared, not copied)."""
    if isinstance(v, dict):
        return {k: _fresh(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_fresh(x) for x in v]
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return tuple(_fresh(x) for x in v)
    return v


def scrub_stored_inputs(session_hash: str | None, components: list) -> None:
    """Empty Gradio's stored copy of these inputs' last values in one session (Gradio keeps every
    input value of a session in memory: the password boxes must not stay there)."""
    from gradio.context import LocalContext

    try:
        blocks = LocalContext.blocks.get(None)
        app = getattr(blocks, "server_app", None)
        sess = app.state_holder.session_data.get(session_hash) if app is not None and session_hash else None
        if sess is None:
            return
        for c in components:
            if c._id in sess.config_values:
                sess._update_value_in_config(c._id, "")     # Gradio 6.31 internals: tested in tests/security
    except Exception:
        log.error("could not clear stored input values of a session", exc_info=True)


def with_browser(fn: Callable, scrub: list | None = None) -> Callable:
    """Wrap a Gradio handler so that its study calls run as the calling browser (study.auth.browser).

    Gradio injects a gr.Request into a parameter annotated with it; the wrapper gets one added
    when the handler has none (and drops it again before calling the handler). A direct Python
    call without a request (tests, other code) runs as a library call. `scrub`: input components
    (password boxes) whose stored copy in the session is emptied after every call."""
    from study import auth

    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    hints = gr.utils.get_type_hints(fn)
    idx = next((i for i, p in enumerate(params) if p.kind in positional
                and hints.get(p.name) in (gr.Request, Optional[gr.Request])), None)
    added = idx is None
    if added:
        pos = [i for i, p in enumerate(params) if p.kind in positional]
        idx = pos[-1] + 1 if pos else 0
        params.insert(idx, inspect.Parameter(_REQ, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                             annotation=gr.Request))
    name = params[idx].name

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = list(args)
        req = kwargs.pop(_REQ, None) if added else kwargs.get(name)
        if len(args) > idx:
            req = args[idx]
            if added:
                del args[idx]
        if req is None:                       # a direct call, not through Gradio
            return fn(*args, **kwargs)
        # the handler works on copies of the session's dicts and lists (gr.State values): what
        # it changes is stored only when it returns them, so a refused call (a stranger holding
        # the session hash, any error) leaves the session exactly as it was
        args = [_fresh(a) for a in args]
        try:
            with auth.browser(browser_secret(req)):
                return fn(*args, **kwargs)
        finally:
            if scrub:
                scrub_stored_inputs(getattr(req, "session_hash", None), scrub)

    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__annotations__ = {**hints, _REQ: gr.Request} if added else dict(hints)
    if gr.utils.get_type_hints(wrapper).get(name) not in (gr.Request, Optional[gr.Request]):
        raise TypeError(f"{getattr(fn, '__name__', fn)}: Gradio would not pass the request")  # fail closed
    return wrapper


# ----------------------------------------------------------------------------- ASGI middleware
def _cookie_header(value: str, scope: dict, same_site: str) -> bytes:
    headers = dict((k.lower(), v) for k, v in scope.get("headers", []))
    https = scope.get("scheme") == "https" or headers.get(b"x-forwarded-proto", b"").startswith(b"https")
    parts = [f"{BROWSER_COOKIE}={value}", "Path=/", "HttpOnly", f"SameSite={same_site}"]
    if https or same_site.lower() == "none":
        parts.append("Secure")                 # SameSite=None requires it (the Spaces iframe)
    if same_site.lower() == "none":
        parts.append("Partitioned")            # a third-party iframe keeps a cookie of its own
    return "; ".join(parts).encode("latin-1")


def _has_cookie(scope: dict) -> bool:
    for k, v in scope.get("headers", []):
        if k.lower() == b"cookie":
            try:
                c = SimpleCookie()
                c.load(v.decode("latin-1"))
            except Exception:
                continue
            if BROWSER_COOKIE in c and _COOKIE_RE.match(c[BROWSER_COOKIE].value):
                return True
    return False


def _is_deep_link(scope: dict) -> bool:
    path = scope.get("path", "").rstrip("/")
    query = scope.get("query_string", b"") or b""
    return path.endswith("/deep_link") or b"deep_link=" in query


class SecurityMiddleware:
    """ASGI middleware: refuses Gradio's deep links; gives every browser its secret cookie
    (`same_site`: AppConfig.cookie_samesite)."""

    def __init__(self, app, same_site: str = "Lax"):
        self.app = app
        self.same_site = same_site

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        if _is_deep_link(scope):
            body = b'{"detail":"Not found"}'
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if _has_cookie(scope):
            return await self.app(scope, receive, send)
        cookie = _cookie_header(secrets.token_urlsafe(32), scope, self.same_site)

        async def send_with_cookie(message):
            if message.get("type") == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [(b"set-cookie", cookie)])
            await send(message)

        return await self.app(scope, receive, send_with_cookie)


def harden_server(same_site: str = "Lax") -> dict[str, Any]:
    """Blocks.launch keyword arguments of this module (the middleware, setting cookies with this
    SameSite), and uvicorn told not to rewrite the client address from X-Forwarded-For itself
    (client_address decides)."""
    from starlette.middleware import Middleware

    os.environ["FORWARDED_ALLOW_IPS"] = ""     # written for uvicorn (Gradio builds its Config), never read here
    return {"app_kwargs": {"middleware": [Middleware(SecurityMiddleware, same_site=same_site)]}}


# ----------------------------------------------------------------------------- export folders
def export_root(settings: Any) -> Path:
    """Private folder (0700) of the admin's export files, inside the study's data folder
    (`settings`: the study's StudySettings, e.g. the service's db.settings)."""
    root = settings.data_folder() / "exports"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    return root


def new_export_dir(root: Path, keep_s: float) -> Path:
    """A fresh folder for one export under `root` (export_root); stale ones (older than keep_s:
    a crash, an earlier run) are removed first."""
    now = time.time()
    for old in root.glob(EXPORT_PREFIX + "*"):
        try:
            if now - old.stat().st_mtime > keep_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX, dir=root))


def delete_later(folder: Path, delay_s: float) -> threading.Timer:
    """Delete an export folder delay_s after delivery (once Gradio has copied its file for the download)."""
    t = threading.Timer(delay_s, shutil.rmtree, (folder,), {"ignore_errors": True})
    t.daemon = True
    t.start()
    return t
