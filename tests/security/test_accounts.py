"""Issue 13 §3, accounts: guesses throttle the guesser, never lock out the owner; the counter
is atomic under parallel guesses (SQLite and PostgreSQL); throttled attempts are audited;
X-Forwarded-For is believed only from a trusted proxy; an unknown login costs the same argon2
work as a known one; look-alike logins and common / blank passwords are refused. Replayed
through the launched app's API (gradio_client on 127.0.0.1) and the service."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from tests.reliability.helpers import ADMIN_PASSWORD, STUDY_CODE, cheap_argon2, client, make_study_db, table_snapshot
from tests.reliability.live import launched_app
from tests.study.conftest import write_tiny_cohort

PRESET = "Abdomen (400/40)"


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    cheap_argon2()
    tmp = tmp_path_factory.mktemp("accounts_api")
    cohort = write_tiny_cohort(tmp / "cohort", 6)
    url = f"sqlite:///{tmp / 'study.db'}"
    make_study_db(url, cohort, group_sizes=(2, 2, 2), k=3)
    with launched_app(url, tmp / "data") as (app_url, demo, svc):
        yield {"app": app_url, "db": url, "svc": svc, "tmp": tmp}


@pytest.fixture()
def env(app_env):
    """The module's app with the throttle counters cleared before and after each test."""
    _clear(app_env["svc"])
    yield app_env
    _clear(app_env["svc"])


def _clear(svc):
    from study.models import LoginAttempt, LoginThrottle

    with svc.db.session() as s:
        s.query(LoginThrottle).delete()
        s.query(LoginAttempt).delete()


def _login(c, login, password):
    return c.predict(login, password, PRESET, api_name="/study_login")


def _api_error(fn, *args, **kw) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        fn(*args, **kw)
    return str(e.value)


def _audit(svc, action: str) -> list:
    from study.models import AuditLog

    with svc.db.session() as s:
        return [(r.target, r.detail) for r in s.scalars(select(AuditLog).where(AuditLog.action == action))]


def login_limits(monkeypatch, svc, **changes) -> None:
    """Change the service's login throttle limits (its settings' LoginLimits) for one test."""
    from dataclasses import replace

    s = svc.db.settings
    monkeypatch.setattr(svc.db, "settings", replace(s, login=replace(s.login, **changes)))


# ----------------------------------------------------------------------------- lockout
def test_guesses_from_one_address_never_lock_out_the_owner(env, monkeypatch):
    from study import throttle

    login_limits(monkeypatch, env["svc"], backoff_s=600.0)   # the waits outlast this test's slowest API call

    svc = env["svc"]
    seen = len(_audit(svc, "login_throttled"))
    c = client(env["app"])
    # an attacker at 127.0.0.1 guesses the admin's password through the API until throttled
    msgs = [_api_error(_login, c, "admin", f"guess-{i}") for i in range(throttle.FREE_FAILURES + 3)]
    assert all("Wrong login or password" in m for m in msgs[:throttle.FREE_FAILURES])
    assert all("Too many failed logins for this account" in m and "try again in" in m
               for m in msgs[throttle.FREE_FAILURES:])
    # the correct password from the attacker's address waits too (the guesser cannot tell) ...
    assert "Too many failed logins" in _api_error(_login, c, "admin", ADMIN_PASSWORD)
    # ... but the owner, from anywhere else, logs in at once, as often as they like
    for i in range(3):
        assert svc.login("admin", ADMIN_PASSWORD, address=f"10.7.0.{i}")
    # every throttled attempt is in the audit log (who, from where, for how long), no password
    rows = _audit(svc, "login_throttled")[seen:]
    assert len(rows) == 4 and all(t == "admin" and d["address"] == "127.0.0.1" and d["scope"] == "login"
                                  and d["wait_s"] > 0 for t, d in rows)
    assert not any(ADMIN_PASSWORD in repr(d) or "guess-" in repr(d) for _, d in rows)


def test_back_off_grows_and_a_success_or_a_quiet_hour_forgets_it(env):
    from datetime import timedelta

    from study import throttle
    from study.models import utcnow

    svc = env["svc"]
    t0 = utcnow()
    waits = []
    with svc.db.session() as s:
        t = t0
        for i in range(throttle.FREE_FAILURES + 4):
            r = throttle.reserve(s, "someone", "10.0.0.1", now=t)
            assert r is None                           # each attempt comes just when allowed
            waits.append(throttle.backoff_s(i + 1))
            t = t + timedelta(seconds=waits[-1])
        refused = throttle.reserve(s, "someone", "10.0.0.1", now=t - timedelta(seconds=0.5))
        assert refused is not None and refused.scope == "login" and 0 < refused.wait_s <= 0.5
    # FREE_FAILURES attempts at once, then the waits double
    assert waits[:throttle.FREE_FAILURES - 1] == [0.0] * (throttle.FREE_FAILURES - 1)
    assert waits[throttle.FREE_FAILURES - 1:] == [throttle.BACKOFF_S * 2 ** k for k in range(5)]
    assert throttle.backoff_s(100) == throttle.BACKOFF_MAX_S
    with svc.db.session() as s:                       # an hour without attempts: forgotten
        assert throttle.reserve(s, "someone", "10.0.0.1", now=t + timedelta(seconds=throttle.PAIR_RESET_S + 1)) \
            is None
    with svc.db.session() as s:
        throttle.settle_success(s, "someone", "10.0.0.1")
        row = s.scalar(select(throttle.LoginThrottle).where(throttle.LoginThrottle.key == "p:someone|10.0.0.1"))
        assert row.failures == 0


def test_counters_of_old_attempts_are_pruned(env):
    """Random logins must not grow the counter table without bound: stale counters go."""
    from datetime import timedelta

    from study import throttle
    from study.models import LoginThrottle, utcnow

    svc = env["svc"]
    t0 = utcnow() - timedelta(days=2)
    with svc.db.session() as s:
        for i in range(50):
            assert throttle.reserve(s, f"random{i}", "10.6.0.1", now=t0) is None
    with svc.db.session() as s:
        assert s.scalar(select(func.count()).select_from(LoginThrottle)) == 51
        throttle.reserve(s, "fresh", "10.6.0.2")                    # a new key today
        keys = set(s.scalars(select(LoginThrottle.key)))
    assert keys == {"p:fresh|10.6.0.2", "a:10.6.0.2"}


def test_per_address_limit_over_many_logins_through_the_api(env, monkeypatch):
    login_limits(monkeypatch, env["svc"], address_limit=4)
    c = client(env["app"])
    for i in range(4):                                # four different (unknown) logins
        assert "Wrong login or password" in _api_error(_login, c, f"nobody{i}", "bad-password")
    msg = _api_error(_login, c, "admin", ADMIN_PASSWORD)
    assert "Too many failed logins from your network" in msg
    assert env["svc"].login("admin", ADMIN_PASSWORD, address="10.2.2.2")   # other addresses unaffected
    assert _audit(env["svc"], "login_throttled")[-1][1]["scope"] == "address"


# ----------------------------------------------------------------------------- atomic counter
def _parallel_guesses(svc, n: int, login_of) -> tuple[int, int, list]:
    from study.errors import AuthError, RateLimited

    barrier = threading.Barrier(n)
    outcome = []

    def guess(i):
        barrier.wait()
        try:
            svc.login(login_of(i), f"wrong-{i}", address="10.5.5.5")
            return "accepted"
        except RateLimited:
            return "throttled"
        except AuthError as exc:
            return "wrong" if "Wrong login" in str(exc) else str(exc)

    with ThreadPoolExecutor(n) as ex:
        outcome = list(ex.map(guess, range(n)))
    return outcome.count("wrong"), outcome.count("throttled"), outcome


def _check_parallel(svc, limit: int, n: int, login_of):
    from study.models import AuditLog, LoginAttempt

    with svc.db.session() as s:
        seen = s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "login_throttled"))
    wrong, throttled, outcome = _parallel_guesses(svc, n, login_of)
    assert wrong + throttled == n, outcome
    assert 1 <= wrong <= limit, outcome                      # never more passwords checked than allowed
    with svc.db.session() as s:
        checked = s.scalar(select(func.count()).select_from(LoginAttempt))
        audited = s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "login_throttled"))
    assert checked == wrong and audited - seen == throttled
    return wrong


def test_20_parallel_guesses_let_at_most_the_allowed_number_through_sqlite(env):
    from study import throttle

    _check_parallel(env["svc"], throttle.FREE_FAILURES, 20, lambda i: "admin")


def test_20_parallel_guesses_over_20_logins_respect_the_address_limit_sqlite(env, monkeypatch):
    login_limits(monkeypatch, env["svc"], address_limit=5)
    _check_parallel(env["svc"], 5, 20, lambda i: f"reader{i}")


def test_20_parallel_guesses_postgres(tmp_path, monkeypatch):
    from study import ops, throttle
    from study.cases import CaseCache
    from study.db import Database
    from study.service import StudyService
    from tests.pg import pg_or_fail

    cheap_argon2()
    with pg_or_fail("usam_security_test") as url:
        db = Database(url)
        db.migrate()
        with db.session() as s:
            ops.add_clinician(s, "admin", ADMIN_PASSWORD, role="admin")
        svc = StudyService(db, cache=CaseCache())
        _check_parallel(svc, throttle.FREE_FAILURES, 20, lambda i: "admin")
        _clear(svc)
        login_limits(monkeypatch, svc, address_limit=5)
        _check_parallel(svc, 5, 20, lambda i: f"reader{i}")
        assert svc.login("admin", ADMIN_PASSWORD, address="10.9.9.9")
        db.dispose()


# ----------------------------------------------------------------------------- X-Forwarded-For
def test_forwarded_for_is_ignored_without_a_trusted_proxy(env, monkeypatch):
    """Each guess claims another address in X-Forwarded-For: the throttle still sees 127.0.0.1."""
    from gradio_client import Client

    from study import throttle

    login_limits(monkeypatch, env["svc"], backoff_s=600.0)   # the waits outlast this test's slowest API call

    msgs = []
    for i in range(throttle.FREE_FAILURES + 2):
        c = Client(env["app"], verbose=False, analytics_enabled=False,
                   headers={"X-Forwarded-For": f"203.0.113.{i}"})
        msgs.append(_api_error(_login, c, "admin", f"guess-{i}"))
    assert "Too many failed logins" in msgs[-1] and "Too many failed logins" in msgs[throttle.FREE_FAILURES]
    assert {d["address"] for _, d in _audit(env["svc"], "login_failed")[-throttle.FREE_FAILURES:]} == {"127.0.0.1"}


def test_client_address_believes_only_trusted_proxies():
    from app.security import client_address, trusted_proxies

    none = trusted_proxies("")
    lb = trusted_proxies("10.0.0.0/8, 127.0.0.1")
    assert client_address("127.0.0.1", "203.0.113.9", none) == "127.0.0.1"
    assert client_address("198.51.100.7", "203.0.113.9", lb) == "198.51.100.7"   # peer not a proxy
    assert client_address("10.1.2.3", "203.0.113.9", lb) == "203.0.113.9"
    # a client writes its own X-Forwarded-For: only the hop the trusted proxy appended counts
    assert client_address("10.1.2.3", "1.1.1.1, 203.0.113.9", lb) == "203.0.113.9"
    assert client_address("10.1.2.3", "1.1.1.1, 203.0.113.9, 10.4.4.4", lb) == "203.0.113.9"
    assert client_address("10.1.2.3", "not-an-ip", lb) == "10.1.2.3"
    assert trusted_proxies("garbage, 10.0.0.0/8") == trusted_proxies("10.0.0.0/8")


# ----------------------------------------------------------------------------- timing
def test_unknown_logins_cost_one_argon2_verification_like_known_ones(env, monkeypatch):
    """Equal work, not a timed test: an unknown login verifies against a dummy hash with the
    same parameters (measured figures: docs/SECURITY.md)."""
    from argon2 import PasswordHasher

    from study import auth
    from study.errors import AuthError

    calls = []

    class Spy(PasswordHasher):
        def verify(self, hash, password):
            calls.append(hash)
            return super().verify(hash, password)

    spy = Spy(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(auth, "_HASHER", spy)
    svc = env["svc"]
    for login in ("admin", "no-such-user"):
        with pytest.raises(AuthError, match="Wrong login or password"):
            svc.login(login, "wrong-password-1", address=f"10.3.3.{len(calls)}")
    assert len(calls) == 2
    known, unknown = calls
    assert known.split("$")[:4] == unknown.split("$")[:4]        # same algorithm, version and cost


# ----------------------------------------------------------------------------- look-alike logins
def test_look_alike_logins_are_refused_through_the_api(env):
    c = client(env["app"])
    before = table_snapshot(env["db"])
    cases = {
        "ａｄｍｉｎ": "taken",                     # fullwidth: NFKC -> admin
        "ADMIN": "taken",                        # case
        "admіn": "one alphabet",                # Cyrillic і among Latin letters
        "аdmin": "one alphabet",                # Cyrillic а
        "аԁміп": "looks like an existing one",  # all Cyrillic look-alikes of a, d, m, i, n
        "adm1n": "looks like an existing one",  # digit one for i
        "admín": "looks like an existing one",  # accent
    }
    for login, why in cases.items():
        msg = _api_error(c.predict, STUDY_CODE, login, "Uncommon-pass-42", "", 1, 1.0, "",
                         api_name="/study_register")
        assert why in msg, (login, msg)
    changed = {k for k, v in table_snapshot(env["db"]).items() if v != before.get(k)}
    assert changed <= {"login_throttle", "login_attempts", "audit_log"} and "clinicians" not in changed


def test_logins_are_stored_and_matched_in_one_canonical_form(env):
    svc = env["svc"]
    u = svc.register(STUDY_CODE, "  Dr.Straße ", "Uncommon-pass-43", group=2)
    assert u["login"] == "dr.strasse"
    assert svc.login("ＤＲ.STRASSE", "Uncommon-pass-43", address="10.8.0.1")
    from study.errors import Conflict

    with pytest.raises(Conflict):
        svc.register(STUDY_CODE, "dr.strasse", "Uncommon-pass-44", group=2)
    with pytest.raises(Conflict, match="looks like"):
        svc.register(STUDY_CODE, "dr.strassé", "Uncommon-pass-44", group=2)
    from study.logins import check_login, login_skeleton

    assert login_skeleton("rnary") == login_skeleton("mary") and login_skeleton("paypal") != login_skeleton("paypa")
    assert check_login("müller") == "müller" and check_login("ΑΘΗΝΑ") == "αθηνα"


# ----------------------------------------------------------------------------- passwords
def test_common_blank_and_trivial_passwords_are_refused_through_the_api(env):
    c = client(env["app"])
    before = table_snapshot(env["db"])
    cases = {"password1": "most common", "Password123!": "most common", "qwertyuiop": "most common",
             "iloveyou2": "most common", "Letmein2024": "most common", "        ": "only spaces",
             "\t\t\t\t\t\t\t\t\t": "only spaces", "aaaaaaaaaa": "one character", "newreader7": "the login",
             "short": "at least 8"}
    for pw, why in cases.items():
        msg = _api_error(c.predict, STUDY_CODE, "newreader7", pw, "", 1, 1.0, "", api_name="/study_register")
        assert why in msg, (pw, msg)
    changed = {k for k, v in table_snapshot(env["db"]).items() if v != before.get(k)}
    assert "clinicians" not in changed and "auth_sessions" not in changed
    from study.passwords import COMMON_PASSWORDS

    assert len(COMMON_PASSWORDS) >= 300
    c.predict(STUDY_CODE, "newreader7", "Uncommon-pass-45", "", 1, 1.0, "", api_name="/study_register")


# ----------------------------------------------------------------------------- migration
def test_an_existing_database_upgrades(tmp_path):
    """A database at the first revision (with a login in its old form) upgrades in place."""
    from alembic import command
    from sqlalchemy import inspect, text

    from study.db import Database, alembic_config
    from study.service import StudyService

    cheap_argon2()
    from study import auth

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(db), "0001")
    pw_hash = auth._HASHER.hash("Uncommon-pass-46")
    with db.engine.begin() as c:
        for login in ("straße", "strasse2", "ｂｏｂ"):
            c.execute(text("INSERT INTO clinicians (login, name, password_hash, role, specialty, status, simulated, "
                           "created_at) VALUES (:l, '', :h, 'reader', '', 'active', 0, '2026-01-01')"),
                      {"l": login, "h": pw_hash})
    db.migrate()
    insp = inspect(db.engine)
    assert "login_throttle" in insp.get_table_names()
    assert "browser_hash" in {col["name"] for col in insp.get_columns("auth_sessions")}
    with db.engine.connect() as c:
        logins = sorted(r[0] for r in c.execute(text("SELECT login FROM clinicians")))
    assert logins == ["bob", "strasse", "strasse2"]
    svc = StudyService(db)
    assert svc.login("Straße", "Uncommon-pass-46") and svc.login("BOB", "Uncommon-pass-46")
    db.dispose()


def test_the_cli_finds_a_reader_by_the_canonical_login(env, capsys):
    """`python -m study drop-reader` takes the login as typed, like the login page."""
    from study.__main__ import main

    svc = env["svc"]
    svc.register(STUDY_CODE, "Dr.Weiß", "Uncommon-pass-47", group=3)
    assert main(["--db", env["db"], "drop-reader", "DR.WEISS"]) == 0
    assert "dropped" in capsys.readouterr().out
    with svc.db.session() as s:
        from study.models import Clinician

        assert s.scalar(select(Clinician.status).where(Clinician.login == "dr.weiss")) == "dropped"
