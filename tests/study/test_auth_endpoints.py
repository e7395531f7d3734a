"""Auth through the launched app's Gradio API: EVERY study endpoint (enumerated from the app,
not from a hand-written list) is refused without a login, with an expired session, and with a
reader's session where the administrator is needed; nothing stored changes. Login attempts are
rate-limited per user and per address; passwords and tokens never appear in logs, responses or
the database."""
from __future__ import annotations

import hashlib
import logging
import re
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select, update

from tests.reliability.helpers import (ADMIN_PASSWORD, STUDY_CODE, cheap_argon2, client, mask_text,
                                       make_study_db, table_snapshot)
from tests.reliability.live import launched_app
from tests.study.conftest import write_tiny_cohort

PRESET = "Abdomen (400/40)"
PUBLIC = {"/study_register", "/study_login", "/study_logout"}
ADMIN = {"/study_admin_report", "/study_admin_export", "/study_admin_drop", "/study_admin_set_group",
         "/study_admin_run_models"}
# endpoints whose handler returns nothing when no case is open: no refusal is needed, but nothing may change
NOOP_WITHOUT_CASE = {"/study_heartbeat", "/study_window"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from gradio_client.exceptions import AppError  # noqa: F401  (import check)

    cheap_argon2()
    tmp = tmp_path_factory.mktemp("auth_api")
    cohort = write_tiny_cohort(tmp / "cohort", 6)
    url = f"sqlite:///{tmp / 'study.db'}"
    make_study_db(url, cohort, group_sizes=(2, 2, 2), k=3)
    with launched_app(url, tmp / "data") as (app_url, demo, svc):
        yield {"app": app_url, "db": url, "demo": demo, "svc": svc, "tmp": tmp}


def _study_endpoints(c, demo) -> dict[str, dict]:
    api = c.view_api(print_info=False, return_format="dict")
    named = {n: e for n, e in api["named_endpoints"].items() if n.startswith("/study_")}
    # cross-check with the Blocks: every registered study event is a named, listed endpoint
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    registered = {"/" + f.api_name for f in fns if f.api_name and str(f.api_name).startswith("study")}
    assert registered == set(named), (registered ^ set(named))
    assert not any("study" in str(n) for n in api.get("unnamed_endpoints", {}))
    return named


def _args(endpoint: dict, folder, floats: float = 1.0) -> list:
    """Well-typed dummy arguments for an endpoint, built from its API description (floats: slider
    values, which Gradio itself checks against the session's slider range)."""
    out = []
    for i, p in enumerate(endpoint["parameters"]):
        t = p["python_type"]["type"]
        if t == "float":
            out.append(floats)
        elif p.get("label", "").startswith("Mask text"):
            out.append(mask_text(np.ones((40, 40), np.uint8)))
        elif t.startswith("Literal["):
            first = re.findall(r"'([^']*)'", t)[0]
            out.append(int(first) if first.isdigit() else first)     # int choices are listed as strings
        elif t == "bool":
            out.append(True)
        elif t == "int":
            out.append(2)
        elif t == "float":
            out.append(1.0)
        else:
            out.append("x")
    return out


def _refused(c, name: str, args: list) -> str:
    """Call an endpoint; return the error message (fail if the call was accepted)."""
    from gradio_client.exceptions import AppError

    try:
        res = c.predict(*args, api_name=name)
    except AppError as exc:
        return str(exc)
    if name in NOOP_WITHOUT_CASE:
        return "no-op"
    raise AssertionError(f"{name} accepted the call: {str(res)[:300]}")


def _login(c, login, password):
    return c.predict(login, password, PRESET, api_name="/study_login")


def test_every_study_endpoint_refuses_anonymous_and_wrong_role(env):
    c_anon = client(env["app"])
    eps = _study_endpoints(c_anon, env["demo"])
    # the enumeration really found the study tab's handlers (not a vacuous loop)
    assert len(eps) >= 15 and ADMIN <= set(eps) and {"/study_next", "/study_submit", "/study_goto"} <= set(eps)

    # a reader with an open case, and some work saved
    r = client(env["app"])
    r.predict(STUDY_CODE, "reader.one", "reader-pw-1", "Reader One", 1, 5.0, "surgery", api_name="/study_register")
    out = _login(r, "reader.one", "reader-pw-1")
    assert "Logged in as **reader.one**" in out[0]
    r.predict(mask_text(np.ones((40, 40), np.uint8)), out[3]["aid"], PRESET, api_name="/study_next")
    before = table_snapshot(env["db"])

    messages = {}
    for name, ep in sorted(eps.items()):
        if name in PUBLIC:
            continue
        messages[name] = _refused(c_anon, name, _args(ep, env["tmp"]))          # no login at all
    for name in ADMIN:                                                            # a reader where admin is needed
        msg = _refused(r, name, _args(eps[name], env["tmp"]))
        assert "administrator" in msg, (name, msg)
    assert table_snapshot(env["db"]) == before
    for name, msg in messages.items():
        if name == "/study_prompt":
            continue   # a select event: through the API Gradio itself fails on the missing click data
        assert msg == "no-op" or "log in" in msg.lower(), (name, msg)
    assert set(messages) == set(eps) - PUBLIC

    # an admin session has no case to annotate: reader endpoints are refused for it too
    a = client(env["app"])
    assert "administrator" in _login(a, "admin", ADMIN_PASSWORD)[0]
    for name in ("/study_next", "/study_previous", "/study_submit", "/study_goto", "/study_nothing",
                 "/study_copy_previous", "/study_run_model"):
        _refused(a, name, _args(eps[name], env["tmp"]))
    after_admin = table_snapshot(env["db"])
    logins = ("audit_log", "auth_sessions", "login_attempts", "login_throttle")
    assert {k: v for k, v in after_admin.items() if k not in logins} == \
        {k: v for k, v in before.items() if k not in logins}


def test_expired_and_revoked_sessions_are_refused_mid_case(env):
    from study.db import Database
    from study.models import AuthSession, Clinician, utcnow

    eps = _study_endpoints(client(env["app"]), env["demo"])
    r = client(env["app"])
    r.predict(STUDY_CODE, "reader.two", "reader-pw-2", "Reader Two", 2, 3.0, "radiology", api_name="/study_register")
    aid = _login(r, "reader.two", "reader-pw-2")[3]["aid"]
    r.predict(mask_text(np.ones((40, 40), np.uint8)), aid, PRESET, api_name="/study_next")
    db = Database(env["db"])
    with db.session() as s:
        uid = s.scalar(select(Clinician.id).where(Clinician.login == "reader.two"))
        s.execute(update(AuthSession).where(AuthSession.clinician_id == uid)
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    db.dispose()
    before = table_snapshot(env["db"])
    for name in ("/study_next", "/study_previous", "/study_goto", "/study_submit", "/study_nothing",
                 "/study_copy_previous", "/study_window", "/study_heartbeat", "/study_run_model"):
        msg = _refused(r, name, _args(eps[name], env["tmp"], floats=3.0))   # 3: inside the case's range
        assert "expired" in msg or "log in" in msg.lower() or msg == "no-op", (name, msg)
    assert table_snapshot(env["db"]) == before


def test_no_password_or_token_in_logs_responses_or_database(env, caplog, capfd):
    from study.db import Database
    from study.models import AuthSession, Clinician

    caplog.set_level(logging.DEBUG)
    password = "S3cret-Horse-Battery-42"
    c = client(env["app"])
    responses = [c.predict(STUDY_CODE, "reader.three", password, "Reader Three", 3, 20.0, "surgery",
                           api_name="/study_register")]
    responses.append(_login(c, "reader.three", password))
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:                      # a wrong password is not echoed either
        _login(client(env["app"]), "reader.three", password + "x")
    responses.append(str(e.value))
    with pytest.raises(AppError) as e:                      # nor a password given with a wrong code
        client(env["app"]).predict("WRONG", "reader.x", password, "", 1, 1.0, "", api_name="/study_register")
    responses.append(str(e.value))
    token = env["svc"].login("reader.three", password)     # a token we know, used through the service
    env["svc"].next_case(token)
    with pytest.raises(Exception):
        env["svc"].save_slice(token, 10**6, 2, np.zeros((40, 40), np.uint8))
    out, err = capfd.readouterr()
    text = "\n".join([caplog.text, out, err, repr(responses)])
    assert password not in text and token not in text
    db = Database(env["db"])
    with db.session() as s:
        hashes = set(s.scalars(select(AuthSession.token_hash)))
        u = s.scalar(select(Clinician).where(Clinician.login == "reader.three"))
        assert u.password_hash.startswith("$argon2id$")
    db.dispose()
    from argon2 import PasswordHasher

    assert PasswordHasher().verify(u.password_hash, password)
    # no token of any session (incl. those handed to the browser state) appears anywhere we can see
    for word in set(re.findall(r"[A-Za-z0-9_\-]{40,48}", text)):
        assert hashlib.sha256(word.encode()).hexdigest() not in hashes
    dump = repr(table_snapshot(env["db"]))
    assert password not in dump and token not in dump
    assert len(hashes) >= 2


def test_login_throttled_per_user_and_address_and_per_address_through_the_api(env):
    """Guesses throttle the guesser's (login, address) and address, never the owner elsewhere
    (the attacks themselves: tests/security/test_accounts.py)."""
    from dataclasses import replace

    from gradio_client.exceptions import AppError

    from study import throttle
    from study.db import Database
    from study.errors import RateLimited
    from study.models import LoginAttempt, LoginThrottle

    svc = env["svc"]

    def clear_attempts():
        db = Database(env["db"])
        with db.session() as s:
            s.query(LoginAttempt).delete()
            s.query(LoginThrottle).delete()
        db.dispose()

    clear_attempts()              # earlier tests' failures from 127.0.0.1 count too (as they should)
    settings = svc.db.settings    # the service's login limits (StudySettings.login)
    try:
        c = client(env["app"])
        c.predict(STUDY_CODE, "reader.four", "reader-pw-4", "Reader Four", 1, 1.0, "", api_name="/study_register")
        # per (login, address): the guesser's address waits, the owner's does not
        for i in range(throttle.FREE_FAILURES):
            with pytest.raises(Exception, match="Wrong login or password"):
                svc.login("reader.four", "bad-password", address="10.1.0.1")
        with pytest.raises(RateLimited):
            svc.login("reader.four", "reader-pw-4", address="10.1.0.1")
        assert svc.login("reader.four", "reader-pw-4", address="10.9.9.9")
        # per address, over different logins, through the API
        svc.db.settings = replace(settings, login=replace(settings.login, address_limit=5))
        for i in range(5):
            with pytest.raises(AppError, match="Wrong login or password"):
                _login(c, f"nobody{i}", "bad-password")
        with pytest.raises(AppError, match="Too many failed logins"):
            _login(c, "admin", ADMIN_PASSWORD)               # correct, but this address waits
        assert svc.login("admin", ADMIN_PASSWORD, address="10.2.2.2")   # another address still may
    finally:
        svc.db.settings = settings
        clear_attempts()
