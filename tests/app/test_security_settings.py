"""The server's security settings reach what uses them: AppConfig (parse_config) -> the study tab's
proxies and export keep time, and the cookie's SameSite in the middleware (app/security.py)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import gradio as gr

from tests.app.conftest import FakeContext


def test_the_study_tab_takes_the_proxies_and_export_time_from_the_config(tmp_path):
    import dataclasses

    from app.study_tab import build_study_tab
    from study.db import Database
    from study.service import StudyService
    from study.settings import StudySettings

    ctx = FakeContext()
    ctx.config = dataclasses.replace(ctx.config, trusted_proxies="10.0.0.0/8", export_keep_s=7.0)
    db = Database(f"sqlite:///{tmp_path / 'study.db'}", settings=StudySettings(data_dir=tmp_path, warmup="0"))
    ctx.study_service = StudyService(db)
    with gr.Blocks():
        tab = build_study_tab(ctx)
    assert tab.export_keep_s == 7.0
    via_proxy = SimpleNamespace(client=SimpleNamespace(host="10.1.2.3"),
                                headers={"x-forwarded-for": "1.1.1.1, 203.0.113.9"})
    direct = SimpleNamespace(client=SimpleNamespace(host="198.51.100.7"), headers={"x-forwarded-for": "203.0.113.9"})
    assert tab._address(via_proxy) == "203.0.113.9"        # the right-most hop left of the trusted proxy
    assert tab._address(direct) == "198.51.100.7"          # a client's own header is not believed
    db.dispose()


def _set_cookie(same_site: str, scheme: str = "http") -> str:
    from app.security import harden_server

    mw = harden_server(same_site)["app_kwargs"]["middleware"][0]
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    asyncio.run(mw.cls(app, *mw.args, **mw.kwargs)({"type": "http", "path": "/", "scheme": scheme,
                                                      "headers": []}, None, send))
    return dict(sent[0]["headers"])[b"set-cookie"].decode()


def test_the_cookie_gets_the_configured_same_site():
    lax = _set_cookie("Lax")
    assert "SameSite=Lax" in lax and "HttpOnly" in lax and "Secure" not in lax
    assert "Secure" in _set_cookie("Lax", scheme="https")
    none = _set_cookie("None")
    assert "SameSite=None" in none and "Secure" in none and "Partitioned" in none
    assert "SameSite=Strict" in _set_cookie("Strict")


def test_the_demo_warm_up_follows_the_study_settings_only(tmp_path, monkeypatch):
    import dataclasses
    import threading

    from app import study_tab
    from study.settings import StudySettings

    started = threading.Event()
    monkeypatch.setattr(study_tab.StudyTab, "warm_up", lambda self: started.set())
    for warmup, expected in (("0", False), ("1", True), ("auto", True)):   # no test-runner check any more
        started.clear()
        ctx = FakeContext()
        ctx.config = dataclasses.replace(ctx.config, study=StudySettings(data_dir=tmp_path, warmup=warmup))
        ctx.study_service = SimpleNamespace()
        with gr.Blocks():
            study_tab.build_study_tab(ctx)
        assert started.wait(5 if expected else 0.2) is expected, warmup
