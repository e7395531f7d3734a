"""The observer study's configuration: one frozen StudySettings read from the environment once at start-up.

The app (app/settings.parse_config, into AppConfig.study) and the CLI (study/__main__.py) call
``StudySettings.from_env`` once and pass the object down (Database, StudyService, ops, cases); nothing below them reads the
environment. The variables, their defaults and meanings are listed once: USAM_STUDY_* in README
("Observer study"), USAM_LOGIN_* in docs/SECURITY.md ("Limits"); each field below names its variable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Mapping

from usam.errors import UsamError

DEMO_SIZES = ("full", "small")
WARMUP_CHOICES = ("auto", "0", "1")
MAX_SESSION_HOURS = 24 * 366.0


class SettingsError(UsamError):
    """A USAM_STUDY_* variable with a value the study cannot use (the message names it)."""


@dataclass(frozen=True)
class LoginLimits:
    """The login throttle's rules (study/throttle.py explains them); the defaults are the documented ones."""

    free_failures: int = 3              # USAM_LOGIN_FREE_FAILURES: failures of one (login, address) before waits
    backoff_s: float = 2.0              # USAM_LOGIN_BACKOFF_S: first wait, doubling
    backoff_max_s: float = 900.0        # USAM_LOGIN_BACKOFF_MAX_S: longest wait
    pair_reset_s: float = 3600.0        # USAM_LOGIN_PAIR_RESET_S: quiet time that forgets a pair's failures
    address_limit: int = 100            # USAM_LOGIN_ADDRESS_LIMIT: failures per address per window
    address_window_s: float = 3600.0    # USAM_LOGIN_ADDRESS_WINDOW_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LoginLimits:
        """Parse the USAM_LOGIN_* variables (unset or empty: the default); SettingsError names a bad one."""
        values = {}
        for f in fields(cls):
            name = "USAM_LOGIN_" + f.name.upper()
            text = (environ.get(name) or "").strip()
            if not text:
                continue
            try:
                v = float(text)
            except ValueError:
                v = math.nan
            whole = f.type in (int, "int")
            if not (math.isfinite(v) and v >= 0) or (whole and v != int(v)):
                kind = "a whole number" if whole else "a number of seconds"
                raise SettingsError(f"{name} must be {kind} of at least 0, not {text[:40]!r}")
            values[f.name] = int(v) if whole else v
        return cls(**values)


@dataclass(frozen=True)
class StudySettings:
    """What the study's environment configures; the defaults are the documented ones."""

    db_url: str | None = None                  # USAM_STUDY_DB; None: SQLite in data_dir
    data_dir: Path = Path("data/study")        # USAM_STUDY_DATA
    session_hours: float = 12.0                # USAM_STUDY_SESSION_HOURS
    demo_size: str = "full"                    # USAM_STUDY_DEMO_SIZE
    demo_arms: tuple[str, ...] = ("manual",)   # USAM_STUDY_ARMS
    admin_password: str | None = field(default=None, repr=False)   # USAM_STUDY_ADMIN_PASSWORD; never shown
    warmup: str = "auto"                       # USAM_STUDY_WARMUP
    login: LoginLimits = LoginLimits()         # USAM_LOGIN_*

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StudySettings:
        """Parse the USAM_STUDY_* variables of `environ` (unset or empty: the default); SettingsError names a bad one."""
        from study.ops import CLINICIAN_ARMS   # here, not at import: ops imports the models

        def get(name: str) -> str | None:
            v = environ.get(name)
            return v.strip() if isinstance(v, str) and v.strip() else None

        d = cls()
        hours = get("USAM_STUDY_SESSION_HOURS")
        if hours is None:
            session_hours = d.session_hours
        else:
            try:
                session_hours = float(hours)
            except ValueError:
                session_hours = math.nan
            if not (0 < session_hours <= MAX_SESSION_HOURS):
                raise SettingsError(f"USAM_STUDY_SESSION_HOURS must be a number of hours above 0 and at most "
                                    f"{MAX_SESSION_HOURS:g}, not {hours[:40]!r}")
        size = get("USAM_STUDY_DEMO_SIZE") or d.demo_size
        if size not in DEMO_SIZES:
            raise SettingsError(f"USAM_STUDY_DEMO_SIZE must be one of {', '.join(DEMO_SIZES)}, not {size[:40]!r}")
        arms_text = get("USAM_STUDY_ARMS")
        arms = d.demo_arms if arms_text is None else tuple(a.strip() for a in arms_text.split(","))
        bad = [a for a in arms if a not in CLINICIAN_ARMS]
        if bad or not arms:
            raise SettingsError(f"USAM_STUDY_ARMS must be a comma-separated list of {', '.join(CLINICIAN_ARMS)}, "
                                f"not {arms_text[:80]!r}")
        warmup = get("USAM_STUDY_WARMUP") or d.warmup
        if warmup not in WARMUP_CHOICES:
            raise SettingsError(f"USAM_STUDY_WARMUP must be one of {', '.join(WARMUP_CHOICES)}, not {warmup[:40]!r}")
        data = get("USAM_STUDY_DATA")
        return cls(db_url=get("USAM_STUDY_DB"), data_dir=Path(data).expanduser() if data else d.data_dir,
                   session_hours=session_hours, demo_size=size, demo_arms=arms,
                   admin_password=environ.get("USAM_STUDY_ADMIN_PASSWORD") or None, warmup=warmup,
                   login=LoginLimits.from_env(environ))

    @property
    def session_ttl(self) -> timedelta:
        """How long a login stays valid."""
        return timedelta(hours=self.session_hours)

    def data_folder(self) -> Path:
        """The data folder, created when missing."""
        path = Path(self.data_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def database_url(self) -> str:
        """USAM_STUDY_DB, else the SQLite file in the data folder."""
        return self.db_url or f"sqlite:///{(self.data_folder() / 'study.db').resolve()}"
