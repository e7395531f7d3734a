"""The audit trail: one append-only row per action of a reader, an administrator or the system."""
from __future__ import annotations

from sqlalchemy.orm import Session

from study.models import AuditLog


def audit(s: Session, actor_id: int | None, action: str, target: str = "", **detail) -> None:
    """Append an audit row (never pass passwords or tokens in detail)."""
    s.add(AuditLog(actor_id=actor_id, action=action, target=target, detail=detail))
