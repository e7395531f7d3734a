"""Passwords (argon2id), login rate limits and expiring session tokens (only their hash stored)."""
from __future__ import annotations

import hashlib
import os
import secrets
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from study.errors import AuthError, InvalidInput, RateLimited
from study.models import AuthSession, Clinician, LoginAttempt, utcnow

_HASHER = PasswordHasher()
SESSION_TTL = timedelta(hours=float(os.environ.get("USAM_STUDY_SESSION_HOURS", "12")))
MAX_FAILURES = 5                 # failed logins allowed per window, per login and per address
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 8


def as_utc(t: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def hash_password(password: str) -> str:
    """argon2id hash of a password that meets the minimum length."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"Passwords need at least {MIN_PASSWORD} characters.")
    if len(password) > 1024:
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


def check_rate_limit(s: Session, login: str, address: str, now: datetime | None = None) -> None:
    """Raise RateLimited after MAX_FAILURES failed logins in FAILURE_WINDOW for the login or address."""
    now = now or utcnow()
    since = now - FAILURE_WINDOW
    by_login = s.scalar(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.login == login, LoginAttempt.success.is_(False), LoginAttempt.t >= since))
    by_addr = 0
    if address:
        by_addr = s.scalar(select(func.count()).select_from(LoginAttempt).where(
            LoginAttempt.address == address, LoginAttempt.success.is_(False), LoginAttempt.t >= since))
    if by_login >= MAX_FAILURES or by_addr >= MAX_FAILURES:
        raise RateLimited("Too many failed logins; try again in 15 minutes.")


def authenticate(s: Session, login: str, password: str, address: str = "",
                 now: datetime | None = None) -> Clinician | None:
    """Check the rate limit and the password and record the attempt; the clinician or None.

    Returns None instead of raising so that the caller can commit the failed attempt (which
    the rate limit counts) before reporting the error."""
    login = (login or "").strip().lower()
    address = (address or "")[:64]
    check_rate_limit(s, login, address, now)
    user = s.scalar(select(Clinician).where(Clinician.login == login))
    ok = user is not None and verify_password(user.password_hash, password or "")
    s.add(LoginAttempt(login=login[:64], address=address, success=ok, t=now or utcnow()))
    return user if ok else None


def open_session(s: Session, user: Clinician, now: datetime | None = None) -> str:
    """Create an expiring session and return its token (shown once, stored hashed)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    s.add(AuthSession(token_hash=token_digest(token), clinician_id=user.id, created_at=now,
                      expires_at=now + SESSION_TTL, last_seen=now))
    return token


def resolve_token(s: Session, token: str | None, now: datetime | None = None) -> Clinician:
    """The clinician behind a live token; AuthError for a missing, unknown, revoked or expired one."""
    if not token or not isinstance(token, str) or len(token) > 256:
        raise AuthError("Please log in.")
    now = now or utcnow()
    row = s.scalar(select(AuthSession).where(AuthSession.token_hash == token_digest(token)))
    if row is None or row.revoked:
        raise AuthError("Please log in.")
    if as_utc(row.expires_at) <= now:
        raise AuthError("Your session expired; please log in again.")
    user = s.get(Clinician, row.clinician_id)
    if user is None or user.status == "dropped":
        raise AuthError("Please log in.")
    if (now - as_utc(row.last_seen)).total_seconds() > 60:   # one write a minute, not one per call
        row.last_seen = now
    return user


def revoke(s: Session, token: str) -> None:
    """Log out: the token stops working at once."""
    row = s.scalar(select(AuthSession).where(AuthSession.token_hash == token_digest(token or "")))
    if row is not None:
        row.revoked = True
