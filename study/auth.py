"""Passwords (argon2id), login checks with equal timing, expiring session tokens (only their
hash stored) bound to the secret of the browser that logged in."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from typing import Iterator

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from study.errors import AuthError, InvalidInput
from study.logins import normalize_login
from study.models import AuthSession, Clinician, utcnow
from study.passwords import MAX_PASSWORD, MIN_PASSWORD
from study.settings import StudySettings

_HASHER = PasswordHasher()
SESSION_TTL = StudySettings().session_ttl    # the default; the service passes its settings' session_ttl
_DUMMY: dict[tuple, str] = {}       # hasher parameters -> hash of a random password

# The secret of the browser making the current call (the app's HttpOnly cookie), set by the
# study tab around every handler: None outside the app (library, CLI, simulator), "" for an
# app call whose browser sent no secret.
_BROWSER: ContextVar[str | None] = ContextVar("usam_study_browser", default=None)


@contextmanager
def browser(secret: str | None) -> Iterator[None]:
    """Run the enclosed study calls on behalf of the browser holding `secret` ("" / None: none sent)."""
    tok = _BROWSER.set(secret if isinstance(secret, str) else "")
    try:
        yield
    finally:
        _BROWSER.reset(tok)


def current_browser() -> str | None:
    """The calling browser's secret ("" when it sent none), None outside the app."""
    return _BROWSER.get()


def as_utc(t: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def hash_password(password: str) -> str:
    """argon2id hash of a password that meets the minimum length."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"Passwords need at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput("Password too long.")
    return _HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True when the password matches the argon2 hash; never raises for a mismatch."""
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> str:
    """sha256 of a session token: the database never holds a usable token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _dummy_hash() -> str:
    """A hash made with the current hasher's parameters, verified for unknown logins."""
    key = (_HASHER.time_cost, _HASHER.memory_cost, _HASHER.parallelism, _HASHER.hash_len)
    if key not in _DUMMY:
        _DUMMY[key] = _HASHER.hash(secrets.token_urlsafe(16))
    return _DUMMY[key]


def find_login(s: Session, login: str) -> Clinician | None:
    """The account of a login as typed (canonical form; accounts older than it by their old form)."""
    canon = normalize_login(login)
    user = s.scalar(select(Clinician).where(Clinician.login == canon)) if canon else None
    legacy = (login or "").strip().lower() if isinstance(login, str) else ""
    if user is None and legacy and legacy != canon:
        user = s.scalar(select(Clinician).where(Clinician.login == legacy))
    return user


def check_credentials(s: Session, login: str, password: str) -> Clinician | None:
    """The clinician when the password is right, else None; an unknown login costs one argon2
    verification too (against a dummy hash), so the answer time does not tell which logins exist."""
    user = find_login(s, login)
    pw = password if isinstance(password, str) else ""
    if user is None:
        verify_password(_dummy_hash(), pw)
        return None
    return user if verify_password(user.password_hash, pw) else None


def open_session(s: Session, user: Clinician, now: datetime | None = None, ttl: timedelta = SESSION_TTL) -> str:
    """Create a session that expires after `ttl` and return its token (shown once, stored hashed)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    b = _BROWSER.get()
    s.add(AuthSession(token_hash=token_digest(token), clinician_id=user.id, created_at=now,
                      expires_at=now + ttl, last_seen=now, browser_hash=token_digest(b) if b else None))
    return token


def _check_browser(row: AuthSession) -> None:
    """AuthError unless the calling browser is the one the session was opened in."""
    b = _BROWSER.get()
    if row.browser_hash is None:
        if b is not None:                # a session opened outside the app is not usable through it
            raise AuthError("Please log in.")
        return
    if not b or not hmac.compare_digest(row.browser_hash, token_digest(b)):
        raise AuthError("Please log in.")


def resolve_token(s: Session, token: str | None, now: datetime | None = None) -> Clinician:
    """The clinician behind a live token; AuthError for a missing, unknown, revoked or expired one."""
    if not token or not isinstance(token, str) or len(token) > 256:
        raise AuthError("Please log in.")
    now = now or utcnow()
    row = s.scalar(select(AuthSession).where(AuthSession.token_hash == token_digest(token)))
    if row is None or row.revoked:
        raise AuthError("Please log in.")
    _check_browser(row)
    if as_utc(row.expires_at) <= now:
        raise AuthError("Your session expired; please log in again.")
    user = s.get(Clinician, row.clinician_id)
    if user is None or user.status == "dropped":
        raise AuthError("Please log in.")
    if (now - as_utc(row.last_seen)).total_seconds() > 60:   # one write a minute, not one per call
        row.last_seen = now
    return user


def revoke(s: Session, token: str) -> None:
    """Log out: the token stops working at once (AuthError from a browser it is not bound to)."""
    if not isinstance(token, str) or len(token) > 256:
        return
    row = s.scalar(select(AuthSession).where(AuthSession.token_hash == token_digest(token or "")))
    if row is not None and not row.revoked:
        _check_browser(row)
        row.revoked = True
