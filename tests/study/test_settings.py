"""StudySettings: parsed once from an environment mapping, documented defaults, clear errors, passed down."""
from datetime import timedelta
from pathlib import Path

import pytest

from study.settings import LoginLimits, SettingsError, StudySettings


def test_defaults_from_an_empty_environment():
    s = StudySettings.from_env({})
    assert s == StudySettings()
    assert (s.db_url, s.data_dir, s.session_hours, s.demo_size, s.demo_arms, s.admin_password, s.warmup) == \
        (None, Path("data/study"), 12.0, "full", ("manual",), None, "auto")
    assert s.session_ttl == timedelta(hours=12)
    # empty or blank values mean the default too
    blank = {k: " " for k in ("USAM_STUDY_DB", "USAM_STUDY_DATA", "USAM_STUDY_SESSION_HOURS",
                              "USAM_STUDY_DEMO_SIZE", "USAM_STUDY_ARMS", "USAM_STUDY_WARMUP")}
    assert StudySettings.from_env(dict(blank, USAM_STUDY_ADMIN_PASSWORD="")) == StudySettings()


def test_every_variable_is_parsed(tmp_path):
    env = {"USAM_STUDY_DB": "postgresql+psycopg://u@h/db", "USAM_STUDY_DATA": str(tmp_path / "d"),
           "USAM_STUDY_SESSION_HOURS": "1.5", "USAM_STUDY_DEMO_SIZE": "small",
           "USAM_STUDY_ARMS": "manual, usam_p,ai_edit", "USAM_STUDY_ADMIN_PASSWORD": " pass word ",
           "USAM_STUDY_WARMUP": "0", "UNRELATED": "x"}
    s = StudySettings.from_env(env)
    assert s.db_url == "postgresql+psycopg://u@h/db" and s.database_url() == "postgresql+psycopg://u@h/db"
    assert s.data_dir == tmp_path / "d" and not s.data_dir.exists()        # parsing creates nothing
    assert s.session_ttl == timedelta(minutes=90)
    assert (s.demo_size, s.demo_arms, s.warmup) == ("small", ("manual", "usam_p", "ai_edit"), "0")
    assert s.admin_password == " pass word "                                # a password is taken as typed
    assert "pass word" not in repr(s)                                       # and never shown
    with pytest.raises(AttributeError):
        s.session_hours = 3                                                 # frozen


def test_login_limits_parsed():
    assert StudySettings.from_env({}).login == LoginLimits() == LoginLimits(3, 2.0, 900.0, 3600.0, 100, 3600.0)
    lim = StudySettings.from_env({"USAM_LOGIN_FREE_FAILURES": "5", "USAM_LOGIN_BACKOFF_S": "0.5",
                                  "USAM_LOGIN_BACKOFF_MAX_S": "60", "USAM_LOGIN_PAIR_RESET_S": "10",
                                  "USAM_LOGIN_ADDRESS_LIMIT": "7", "USAM_LOGIN_ADDRESS_WINDOW_S": "0"}).login
    assert lim == LoginLimits(5, 0.5, 60.0, 10.0, 7, 0.0) and isinstance(lim.free_failures, int)


@pytest.mark.parametrize("name, value, words", [
    ("USAM_LOGIN_FREE_FAILURES", "2.5", "a whole number"),
    ("USAM_LOGIN_ADDRESS_LIMIT", "-1", "a whole number"),
    ("USAM_LOGIN_BACKOFF_S", "soon", "a number of seconds"),
    ("USAM_LOGIN_PAIR_RESET_S", "inf", "a number of seconds"),
])
def test_a_bad_login_limit_names_the_variable(name, value, words):
    with pytest.raises(SettingsError) as e:
        StudySettings.from_env({name: value})
    assert name in str(e.value) and words in str(e.value) and repr(value) in str(e.value)


def test_sqlite_in_the_data_folder_by_default(tmp_path):
    s = StudySettings.from_env({"USAM_STUDY_DATA": str(tmp_path / "data")})
    assert s.database_url() == f"sqlite:///{(tmp_path / 'data' / 'study.db').resolve()}"
    assert (tmp_path / "data").is_dir()


@pytest.mark.parametrize("name, value, words", [
    ("USAM_STUDY_SESSION_HOURS", "twelve", "number of hours"),
    ("USAM_STUDY_SESSION_HOURS", "0", "above 0"),
    ("USAM_STUDY_SESSION_HOURS", "-3", "above 0"),
    ("USAM_STUDY_SESSION_HOURS", "nan", "above 0"),
    ("USAM_STUDY_SESSION_HOURS", "inf", "at most"),
    ("USAM_STUDY_DEMO_SIZE", "huge", "full, small"),
    ("USAM_STUDY_ARMS", "manual,robot", "manual, usam_p, usam_b, ai_edit"),
    ("USAM_STUDY_ARMS", "manual,", "comma-separated"),
    ("USAM_STUDY_WARMUP", "yes", "auto, 0, 1"),
])
def test_a_bad_value_names_the_variable(name, value, words):
    with pytest.raises(SettingsError) as e:
        StudySettings.from_env({name: value})
    assert name in str(e.value) and words in str(e.value) and repr(value.strip()) in str(e.value)


def test_the_settings_reach_the_database_service_and_demo_set_up(tmp_path, monkeypatch):
    """The data folder, demo arms, admin password and session length come from the object passed
    in, not from the process environment (which is set to other values here)."""
    from study import ops
    from study.db import Database
    from study.errors import AuthError, RateLimited
    from study.models import AuthSession, Study
    from study.service import StudyService

    monkeypatch.setenv("USAM_STUDY_SESSION_HOURS", "99")
    monkeypatch.setenv("USAM_STUDY_ARMS", "usam_b")
    monkeypatch.setenv("USAM_STUDY_ADMIN_PASSWORD", "not-this-one-please")
    monkeypatch.setenv("USAM_LOGIN_FREE_FAILURES", "50")
    s = StudySettings.from_env({"USAM_STUDY_DATA": str(tmp_path / "data"), "USAM_STUDY_SESSION_HOURS": "2",
                                "USAM_STUDY_ARMS": "manual,usam_p", "USAM_LOGIN_FREE_FAILURES": "1",
                                "USAM_STUDY_ADMIN_PASSWORD": "demo-admin-password-7"})
    db = Database(settings=s)
    assert db.url == f"sqlite:///{(tmp_path / 'data' / 'study.db').resolve()}"
    db.migrate()
    calls = []
    monkeypatch.setattr("study.cases.demo_cohort",
                        lambda size=None, folder=None, settings=None: calls.append((size, settings)) or tmp_path)
    monkeypatch.setattr(ops, "import_cases", lambda s, st, folder: calls.append(("import", folder)))
    monkeypatch.setattr(ops, "study_cases", lambda s, sid: [])
    sid, pw_file = ops.ensure_demo_study(db)
    assert calls[0] == (None, s) and calls[1] == ("import", tmp_path) and pw_file is None
    with db.session() as ses:
        assert ses.get(Study, sid).arms == ["manual", "usam_p"]
    svc = StudyService(db)
    token = svc.login("admin", "demo-admin-password-7", "127.0.0.1")
    assert token
    with db.session() as ses:
        row = ses.query(AuthSession).one()
        assert abs((row.expires_at - row.created_at) - timedelta(hours=2)) < timedelta(seconds=1)
    # the login throttle uses the settings' limits: one free failure, then this address waits
    with pytest.raises(AuthError, match="Wrong login or password"):
        svc.login("admin", "wrong-password-1", "10.0.0.9")
    with pytest.raises(RateLimited):
        svc.login("admin", "wrong-password-2", "10.0.0.9")
    db.dispose()


def test_the_cli_reads_its_settings_once_and_refuses_a_bad_value(tmp_path, capsys):
    from study.__main__ import main

    assert main(["init"], environ={"USAM_STUDY_SESSION_HOURS": "soon"}) == 2
    err = capsys.readouterr().err
    assert "USAM_STUDY_SESSION_HOURS" in err and "Traceback" not in err and "SettingsError" not in err
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["init"], environ={"USAM_STUDY_DB": url}) == 0
    assert "database ready" in capsys.readouterr().out and (tmp_path / "cli.db").exists()
