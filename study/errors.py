"""Errors a study user can cause; the message is shown as is and no stored data changes."""
from __future__ import annotations

from usam.errors import UsamError


class StudyError(UsamError):
    """Base of every observer-study error a user can cause."""


class AuthError(StudyError):
    """Not logged in, wrong credentials or an expired session."""


class RateLimited(AuthError):
    """Too many failed logins for this login name or address."""


class PermissionDenied(StudyError):
    """The caller's role or ownership does not allow this action."""


class NotFound(StudyError):
    """A study, case or assignment that does not exist (or is not visible to the caller)."""


class InvalidInput(StudyError):
    """Arguments of the wrong shape, range or value."""


class Conflict(StudyError):
    """The action clashes with the stored state (already submitted, login taken, ...)."""
