"""Login throttling that slows an attacker down without ever locking out an account's owner.

Two counters, both in the login_throttle table:
  - per (login, address): FREE_FAILURES failures go through at once, then each further attempt
    waits BACKOFF_S, 2*BACKOFF_S, 4*BACKOFF_S, ... up to BACKOFF_MAX_S; a success, or
    PAIR_RESET_S without an attempt, forgets the failures. A guesser at one address gets a
    handful of guesses an hour; the owner at any other address is not affected at all.
  - per address: at most ADDRESS_LIMIT failures in ADDRESS_WINDOW_S over all logins (guessing
    many accounts, or one account under many names, from one address).

An attempt is charged BEFORE the password is checked (`reserve`), in its own short
transaction, with a compare-and-set on the row's version: of N parallel guesses at most the
allowed number pass, whatever the backend (SQLite serialises the writers; on PostgreSQL a
racing update finds the version changed and the caller retries). `settle_success` gives the
reservation back. There is no per-login limit across addresses, since any such limit is a
lockout that an attacker can trigger against the owner; what bounds a guesser with many
addresses is the per-address limit, argon2's cost and the refusal of common passwords.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from study.models import LoginThrottle, utcnow
from study.settings import LoginLimits


# The defaults (LoginLimits, from USAM_LOGIN_* via StudySettings); the service passes its settings'
# limits, callers without settings (tests, tools) get these module values.
_DEFAULTS = LoginLimits()
FREE_FAILURES = _DEFAULTS.free_failures
BACKOFF_S = _DEFAULTS.backoff_s
BACKOFF_MAX_S = _DEFAULTS.backoff_max_s
PAIR_RESET_S = _DEFAULTS.pair_reset_s
ADDRESS_LIMIT = _DEFAULTS.address_limit
ADDRESS_WINDOW_S = _DEFAULTS.address_window_s


def _limits(limits: LoginLimits | None) -> LoginLimits:
    """The given limits, else the module's defaults (read at call time)."""
    if limits is not None:
        return limits
    return LoginLimits(FREE_FAILURES, BACKOFF_S, BACKOFF_MAX_S, PAIR_RESET_S, ADDRESS_LIMIT, ADDRESS_WINDOW_S)


class Raced(Exception):
    """Another attempt changed a counter between our read and our write: retry the transaction."""


@dataclass
class Refusal:
    """Why an attempt is refused and for how long."""
    scope: str           # "login" (this login from this address) | "address"
    wait_s: float

    def message(self) -> str:
        """The user's message: what to do and when."""
        wait = max(1, int(round(self.wait_s)))
        when = f"{wait} seconds" if wait < 120 else f"{(wait + 59) // 60} minutes"
        if self.scope == "address":
            return f"Too many failed logins from your network; try again in {when}."
        return f"Too many failed logins for this account from your network; try again in {when}."


def _utc(t: datetime) -> datetime:
    from datetime import timezone

    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def backoff_s(failures: int, limits: LoginLimits | None = None) -> float:
    """Seconds an attempt must wait after `failures` failures of one (login, address)."""
    lim = _limits(limits)
    if failures < lim.free_failures:
        return 0.0
    return min(lim.backoff_s * 2.0 ** (failures - lim.free_failures), lim.backoff_max_s)


def pair_key(login: str, address: str) -> str:
    """Counter key of one login at one address."""
    return f"p:{login[:128]}|{address[:64]}"


def address_key(address: str) -> str:
    """Counter key of one address."""
    return f"a:{address[:64]}"


def _row(s: Session, key: str, now: datetime) -> LoginThrottle:
    """The counter row of a key, inserted when missing (insert-or-ignore: safe under races)."""
    dialect = s.get_bind().dialect.name
    values = dict(key=key, failures=0, window_start=now, next_allowed=now, last_t=now, version=0)
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        s.execute(insert(LoginThrottle).values(**values).on_conflict_do_nothing(index_elements=["key"]))
    elif s.scalar(select(LoginThrottle.id).where(LoginThrottle.key == key)) is None:
        s.add(LoginThrottle(**values))
        s.flush()
    return s.scalars(select(LoginThrottle).where(LoginThrottle.key == key)
                     .execution_options(populate_existing=True)).one()


def _cas(s: Session, row: LoginThrottle, **values) -> None:
    n = s.execute(update(LoginThrottle).where(LoginThrottle.id == row.id, LoginThrottle.version == row.version)
                  .values(version=row.version + 1, **values).execution_options(synchronize_session=False)).rowcount
    if n != 1:
        raise Raced()


def reserve(s: Session, login: str, address: str, now: datetime | None = None,
            limits: LoginLimits | None = None) -> Refusal | None:
    """Charge one failed attempt to both counters before the password is checked; a Refusal
    (nothing charged) when either counter says wait. Raises Raced: roll back and call again."""
    lim = _limits(limits)
    now = now or utcnow()
    pair = _row(s, pair_key(login, address), now)
    if pair.version == 0:                # a new key: drop counters nobody needs any more (bounded table)
        prune(s, now, lim)
    addr = _row(s, address_key(address), now)
    pf = 0 if (now - _utc(pair.last_t)).total_seconds() > lim.pair_reset_s else pair.failures
    if pf and now < _utc(pair.next_allowed):
        return Refusal("login", (_utc(pair.next_allowed) - now).total_seconds())
    window_open = (now - _utc(addr.window_start)).total_seconds() <= lim.address_window_s
    af = addr.failures if window_open else 0
    if af >= lim.address_limit:
        return Refusal("address", lim.address_window_s - (now - _utc(addr.window_start)).total_seconds())
    _cas(s, pair, failures=pf + 1, next_allowed=now + timedelta(seconds=backoff_s(pf + 1, lim)), last_t=now)
    _cas(s, addr, failures=af + 1, window_start=addr.window_start if window_open else now, last_t=now)
    return None


def prune(s: Session, now: datetime | None = None, limits: LoginLimits | None = None) -> int:
    """Delete counters whose last attempt is older than both windows (they would be reset anyway)."""
    lim = _limits(limits)
    now = now or utcnow()
    horizon = now - timedelta(seconds=max(lim.pair_reset_s, lim.address_window_s, lim.backoff_max_s) + 60)
    return s.execute(delete(LoginThrottle).where(LoginThrottle.last_t < horizon)
                     .execution_options(synchronize_session=False)).rowcount


def settle_success(s: Session, login: str, address: str, now: datetime | None = None) -> None:
    """A correct password: forget this (login, address)'s failures and give back the address's charge."""
    now = now or utcnow()
    s.execute(update(LoginThrottle).where(LoginThrottle.key == pair_key(login, address))
              .values(failures=0, next_allowed=now, last_t=now, version=LoginThrottle.version + 1)
              .execution_options(synchronize_session=False))
    s.execute(update(LoginThrottle).where(LoginThrottle.key == address_key(address), LoginThrottle.failures > 0)
              .values(failures=LoginThrottle.failures - 1, version=LoginThrottle.version + 1)
              .execution_options(synchronize_session=False))
