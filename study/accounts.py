"""Accounts: registration with the study code, login (throttled, equal timing), logout and the
caller's own account, on top of study.auth (hashes, tokens), study.throttle and study.logins.

Registration and login take the Database, not one open session: each step commits on its own
(a throttle charge must be visible to parallel guesses before the password is checked)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from study import ops, throttle
from study.audit import audit
from study.auth import check_credentials, current_browser, open_session, revoke
from study.db import Database
from study.errors import AuthError, Conflict, InvalidInput, RateLimited
from study.inputs import check_years, optional_group
from study.logins import normalize_login
from study.models import Clinician, LoginAttempt, Study, utcnow


def register(db: Database, study_code: str, login: str, password: str, name: str = "",
             group: int | None = None, years: float | None = None, specialty: str = "",
             address: str = "") -> dict:
    """Create a reader account with the study's registration code (group may be set later)."""
    if not all(isinstance(v, str) for v in (study_code, login, password, name or "", specialty or "")):
        raise InvalidInput("Study code, login, password, name and specialty are text.")
    years = check_years(years)
    with db.session() as s:
        study = s.scalar(select(Study).where(Study.code == (study_code or "").strip()))
    if study is None:
        refusal = reserve(db, "register:" + normalize_login(login)[:50], address)
        if refusal is not None:          # an unknown code costs a throttled attempt, like a wrong password
            raise RateLimited(refusal.message())
        raise AuthError("Unknown study code.")
    group = optional_group(group)
    try:
        with db.session() as s:
            user = ops.add_clinician(s, login, password, "reader", name, group, years, specialty,
                                     s.get(Study, study.id))
            return {"id": user.id, "login": user.login, "group": user.group}
    except IntegrityError:   # the same login registered at the same moment by someone else
        raise Conflict(f"The login {normalize_login(login)[:64]!r} is taken.") from None


def reserve(db: Database, login: str, address: str) -> throttle.Refusal | None:
    """Charge one attempt before the password is checked (committed at once, so parallel
    guesses see it); a throttle.Refusal, written to the audit log, when it must wait."""
    address = (address or "")[:64]
    for _ in range(8):
        try:
            with db.session() as s:
                refusal = throttle.reserve(s, login, address, limits=db.settings.login)
                if refusal is not None:
                    audit(s, None, "login_throttled", login[:128], address=address, scope=refusal.scope,
                          wait_s=round(refusal.wait_s, 1))
                return refusal
        except throttle.Raced:
            continue
    return throttle.Refusal("login", 1.0)      # kept losing races: a flood of parallel guesses


def login(db: Database, login: str, password: str, address: str = "") -> str:
    """Token for a correct login/password. Throttled per (login, address) with back-off and
    per address (study.throttle); an unknown login costs the same argon2 time as a known one."""
    if not isinstance(login, str) or not isinstance(password, str) or len(login) > 256:
        raise AuthError("Wrong login or password.")
    if current_browser() == "":
        raise AuthError("Your browser did not send this site's session cookie. Allow cookies for this "
                        "site (or open the app in its own tab, not inside another page) and reload.")
    canon = normalize_login(login)[:128]
    address = (address or "")[:64]
    refusal = reserve(db, canon, address)
    if refusal is not None:
        raise RateLimited(refusal.message())
    with db.session() as s:
        user = check_credentials(s, login, password)
        s.add(LoginAttempt(login=canon[:64], address=address, success=user is not None, t=utcnow()))
        if user is None:
            audit(s, None, "login_failed", canon[:64], address=address)
        else:
            throttle.settle_success(s, canon, address)
    if user is None:
        raise AuthError("Wrong login or password.")
    with db.session() as s:
        user = s.get(Clinician, user.id)
        if user.status == "dropped":
            raise AuthError("This account was closed by the study administrator.")
        token = open_session(s, user, ttl=db.settings.session_ttl)
        audit(s, user.id, "login", f"clinician:{user.id}", address=address)
        return token


def logout(s: Session, token: str) -> None:
    """End a session (the token stops working)."""
    revoke(s, token)


def me(user: Clinician) -> dict:
    """The caller's own account (no hash)."""
    return {"id": user.id, "login": user.login, "name": user.name, "role": user.role, "group": user.group,
            "study_id": user.study_id, "status": user.status}
