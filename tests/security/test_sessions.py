"""Issue 13 §4 (sessions and Gradio state) and §6 (admin exports), replayed against the launched
app on 127.0.0.1: a second client that sends only a victim's Gradio session hash gets nothing
(cannot save, read or log the victim out); Gradio's deep links are off, so no stored state
with passwords exists or is served; the browser's secret is an HttpOnly cookie; admin CSV
exports do not stay behind on the server; in Chromium the password box is emptied after use
(in the page and in Gradio's stored copy of the session) and the login forms fold away."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.reliability.helpers import ADMIN_PASSWORD, STUDY_CODE, cheap_argon2, client, make_study_db, table_snapshot
from tests.reliability.live import launched_app
from tests.study.conftest import write_tiny_cohort

PRESET = "Abdomen (400/40)"
PASSWORD = "Victim-Passphrase-913"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cheap_argon2()
    tmp = tmp_path_factory.mktemp("sessions_api")
    cohort = write_tiny_cohort(tmp / "cohort", 6)
    url = f"sqlite:///{tmp / 'study.db'}"
    make_study_db(url, cohort, group_sizes=(2, 2, 2), k=3)
    # exports deleted half a second after delivery (test_admin_exports_do_not_stay_behind)
    with launched_app(url, tmp / "data", export_keep_s=0.5) as (app_url, demo, svc):
        yield {"app": app_url, "db": url, "svc": svc, "tmp": tmp, "demo": demo}


def _err(fn, *args, **kw) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        fn(*args, **kw)
    return str(e.value)


def _open_assignment(svc, login: str) -> int:
    from study.models import Assignment, Clinician

    with svc.db.session() as s:
        uid = s.scalar(select(Clinician.id).where(Clinician.login == login))
        return s.scalar(select(Assignment.id).where(Assignment.clinician_id == uid, Assignment.status == "open"))


def _args(c, name: str, aid: int, z: int) -> list:
    """Arguments of a study endpoint from its API description (the case, the slice, the preset)."""
    ep = c.view_api(print_info=False, return_format="dict")["named_endpoints"][name]
    out = []
    for p in ep["parameters"]:
        label = p.get("label") or ""
        if label.startswith("Case"):
            out.append(aid)
        elif label.startswith("Slice"):
            out.append(z)
        elif label.startswith("Mask"):
            out.append("")
        elif p["python_type"]["type"].startswith("Literal[") and "Abdomen" in p["python_type"]["type"]:
            out.append(PRESET)
        else:
            raise AssertionError(f"{name}: unexpected parameter {p}")
    return out


def _reader(env, login: str):
    c = client(env["app"])
    c.predict(STUDY_CODE, login, PASSWORD, "", 1, 2.0, "", api_name="/study_register")
    out = c.predict(login, PASSWORD, PRESET, api_name="/study_login")
    assert f"Logged in as **{login}**" in out[0]
    return c, _open_assignment(env["svc"], login)


def test_a_stolen_session_hash_alone_grants_nothing(env):
    from study.models import SliceMask

    victim, aid = _reader(env, "victim.one")
    z = 2
    victim.predict(*_args(victim, "/study_nothing", aid, z), api_name="/study_nothing")   # the victim saves
    before = table_snapshot(env["db"])

    thief = client(env["app"])                 # another browser: its own cookie, the victim's hash
    thief.session_hash = victim.session_hash
    for name in ("/study_nothing", "/study_next", "/study_submit"):
        msg = _err(thief.predict, *_args(thief, name, aid, z), api_name=name)
        assert "log in" in msg.lower(), (name, msg)
    assert "log in" in _err(thief.predict, True, True, api_name="/study_heartbeat").lower()
    assert "log in" in _err(thief.predict, api_name="/study_logout").lower()       # cannot log them out
    assert "log in" in _err(thief.predict, api_name="/study_admin_report").lower()
    assert table_snapshot(env["db"]) == before                                    # nothing stored changed

    # the victim is still logged in and works on
    victim.predict(*_args(victim, "/study_nothing", aid, z + 1), api_name="/study_nothing")
    with env["svc"].db.session() as s:
        assert sorted(s.scalars(select(SliceMask.z).where(SliceMask.assignment_id == aid))) == [z, z + 1]
    victim.predict(api_name="/study_logout")
    assert "log in" in _err(victim.predict, *_args(victim, "/study_nothing", aid, z), api_name="/study_nothing").lower()


def test_a_stolen_admin_session_hash_cannot_export_or_manage(env):
    admin = client(env["app"])
    assert "administrator" in admin.predict("admin", ADMIN_PASSWORD, PRESET, api_name="/study_login")[0]
    before = table_snapshot(env["db"])
    thief = client(env["app"])
    thief.session_hash = admin.session_hash
    assert "log in" in _err(thief.predict, api_name="/study_admin_export").lower()
    assert "log in" in _err(thief.predict, 1, 2, api_name="/study_admin_set_group").lower()
    assert "log in" in _err(thief.predict, 1, api_name="/study_admin_drop").lower()
    assert table_snapshot(env["db"]) == before
    assert admin.predict(api_name="/study_admin_report")[0]                     # the admin still is


def test_the_browser_secret_is_an_http_only_cookie(env):
    r = httpx.get(env["app"], timeout=60)
    cookie = r.headers.get("set-cookie", "")
    assert cookie.startswith("usam_browser=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie \
        and "Path=/" in cookie
    again = httpx.get(env["app"], cookies={"usam_browser": r.cookies["usam_browser"]}, timeout=60)
    assert "usam_browser" not in again.headers.get("set-cookie", "")            # kept, not replaced
    # a login from a client that sends no cookie is refused with a clear message
    from study.errors import AuthError
    from study import auth

    with auth.browser(""):
        with pytest.raises(AuthError, match="session cookie"):
            env["svc"].login("admin", ADMIN_PASSWORD)


def test_deep_links_are_off_and_no_state_with_passwords_is_stored(env):
    victim, _ = _reader(env, "victim.two")
    h = victim.session_hash
    r = httpx.get(env["app"] + "gradio_api/deep_link", params={"session_hash": h}, timeout=60)
    assert r.status_code == 404
    r = httpx.get(env["app"], params={"deep_link": "abc123"}, timeout=60)
    assert r.status_code == 404
    gradio_tmp = Path(os.environ["GRADIO_TEMP_DIR"])
    for path in gradio_tmp.rglob("*"):
        assert "deep_links" not in path.parts, path
    for path in gradio_tmp.rglob("state.json"):
        assert PASSWORD not in path.read_text(errors="replace")
    # nor does Gradio's in-memory copy of the session's inputs keep the password (an API client
    # runs none of the page's clearing steps: the handlers empty the stored copy themselves)
    sess = env["demo"].server_app.state_holder.session_data[h]
    assert PASSWORD not in json.dumps(list(sess.components), default=str)


def test_admin_exports_do_not_stay_behind(env):
    from app import security

    tmp_before = set(Path(tempfile.gettempdir()).glob("usam_study_*"))
    admin = client(env["app"], downloads=env["tmp"] / "downloads")
    admin.predict("admin", ADMIN_PASSWORD, PRESET, api_name="/study_login")
    path = admin.predict(api_name="/study_admin_export")
    assert Path(path).read_text().splitlines()[0].startswith(("study", "case", "reader", "arm", "group", "id"))
    root = security.export_root(env["svc"].db.settings)
    assert root == env["tmp"] / "data" / "exports"                     # in the study's data folder
    assert oct(root.stat().st_mode & 0o777) == "0o700"
    deadline = time.monotonic() + 30
    while any(root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(root.iterdir())                                     # deleted after delivery
    assert set(Path(tempfile.gettempdir()).glob("usam_study_*")) == tmp_before   # none in the temp folder


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing: apt-get install -y chromium")
def test_in_chromium_passwords_are_cleared_and_the_forms_fold_away(env):
    from playwright.sync_api import sync_playwright

    env["svc"].register(STUDY_CODE, "victim.three", PASSWORD, group=2)
    demo = env["demo"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu",
                                                                  "--no-first-run"])
        page = b.new_page()
        page.goto(env["app"])
        page.get_by_role("tab", name="Observer study").click()
        # a wrong password first: the box is emptied after the failed attempt too
        page.locator("#study-login input, #study-login textarea").first.fill("victim.three")
        pw = page.locator("#study-password input, #study-password textarea").first
        pw.fill("Wrong-Passphrase-1")
        page.locator("#study-login-btn").click()
        page.wait_for_function("() => { const e = document.querySelector('#study-password input, "
                               "#study-password textarea'); return e && e.value === ''; }", timeout=60000)
        pw.fill(PASSWORD)
        page.locator("#study-login-btn").click()
        page.wait_for_function("() => document.querySelector('#study-status')?.innerText.includes('Logged in as')",
                               timeout=120000)
        page.wait_for_function("() => { const e = document.querySelector('#study-logout-btn'); "
                               "return e && e.offsetParent !== null; }", timeout=60000)
        page.wait_for_function("() => { const e = document.querySelector('#study-account'); "
                               "return !e || e.offsetParent === null; }", timeout=60000)
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["usam_browser"]["httpOnly"] and cookies["usam_browser"]["sameSite"] == "Lax"
        assert page.evaluate("() => document.cookie").find("usam_browser") < 0     # not readable by scripts
        # no stored Gradio state of any session holds either password (once the page's clearing
        # steps, sent with the fold-away, have run)
        def stored() -> str:
            return json.dumps([list(sess.components) for sess in demo.server_app.state_holder.session_data.values()],
                              default=str)

        deadline = time.monotonic() + 60
        while PASSWORD in stored() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert PASSWORD not in stored() and "Wrong-Passphrase-1" not in stored()
        page.locator("#study-logout-btn").click()
        page.wait_for_function("() => { const e = document.querySelector('#study-account'); "
                               "return e && e.offsetParent !== null; }", timeout=60000)
        b.close()
