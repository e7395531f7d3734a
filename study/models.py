"""ORM tables of the observer study (SQLAlchemy 2). Submissions and the audit log are append-only."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String,
                        Text, UniqueConstraint, event)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


def utcnow() -> datetime:
    """Current UTC time, timezone-aware."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of all study tables."""


TS = DateTime(timezone=True)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(64), unique=True)          # registration code
    arms: Mapped[list] = mapped_column(JSON, default=lambda: ["manual"])  # clinician arms
    k: Mapped[int] = mapped_column(Integer, default=10)                  # min reads per case
    group_sizes: Mapped[list] = mapped_column(JSON, default=lambda: [15, 14, 17])
    seed: Mapped[int] = mapped_column(Integer, default=0)
    idle_threshold_s: Mapped[float] = mapped_column(Float, default=120.0)
    nsd_tolerance_mm: Mapped[float] = mapped_column(Float, default=2.0)
    is_demo: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Clinician(Base):
    __tablename__ = "clinicians"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[Optional[int]] = mapped_column(ForeignKey("studies.id"), nullable=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))              # argon2id
    role: Mapped[str] = mapped_column(String(16), default="reader")      # reader | admin
    group: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)  # 1 novice, 2, 3 expert
    years_experience: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    specialty: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="active")    # active | dropped
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AuthSession(Base):
    __tablename__ = "auth_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)     # sha256 of the token
    clinician_id: Mapped[int] = mapped_column(ForeignKey("clinicians.id"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(TS)
    last_seen: Mapped[datetime] = mapped_column(TS, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # sha256 of the secret of the browser that logged in (an HttpOnly cookie): the token works
    # only together with it (None: a session opened through the library, e.g. the simulator)
    browser_hash: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)


class LoginAttempt(Base):
    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(64), default="", index=True)
    success: Mapped[bool] = mapped_column(Boolean, default=False)
    t: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)


class LoginThrottle(Base):
    """Failed-login counter of one key: "p:<login>|<address>" (back-off) or "a:<address>" (window)."""
    __tablename__ = "login_throttle"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(TS, default=utcnow)
    next_allowed: Mapped[datetime] = mapped_column(TS, default=utcnow)
    last_t: Mapped[datetime] = mapped_column(TS, default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=0)           # compare-and-set


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("study_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    key: Mapped[str] = mapped_column(String(128))                        # case id in the cohort
    position: Mapped[int] = mapped_column(Integer, default=0)
    volume_path: Mapped[str] = mapped_column(Text)
    gt_path: Mapped[str] = mapped_column(Text)
    gt_sha256: Mapped[str] = mapped_column(String(64))                   # locks the ground truth
    start_slice: Mapped[int] = mapped_column(Integer)                    # inclusive
    end_slice: Mapped[int] = mapped_column(Integer)                      # inclusive
    spacing: Mapped[list] = mapped_column(JSON)                          # [sz, sy, sx] mm
    shape: Mapped[list] = mapped_column(JSON)                            # [z, y, x]


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("study_id", "arm", "group", "slot", "case_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    arm: Mapped[str] = mapped_column(String(16), default="manual")
    group: Mapped[int] = mapped_column(Integer)
    slot: Mapped[int] = mapped_column(Integer)                           # reader slot in the group
    order: Mapped[int] = mapped_column(Integer)                          # position in the reader's list
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    clinician_id: Mapped[Optional[int]] = mapped_column(ForeignKey("clinicians.id"), nullable=True,
                                                        index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")   # pending|open|submitted|reassigned
    reassigned_from: Mapped[Optional[int]] = mapped_column(ForeignKey("assignments.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AnnotationSession(Base):
    __tablename__ = "annotation_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    clinician_id: Mapped[int] = mapped_column(ForeignKey("clinicians.id"))
    opened_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    last_z: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)


class SliceMask(Base):
    __tablename__ = "slice_masks"
    __table_args__ = (UniqueConstraint("assignment_id", "z"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    z: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)                     # zlib of uint8 (h, w) 0/1/2
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16), default="manual")    # manual|model|copy|empty
    saves: Mapped[int] = mapped_column(Integer, default=1)
    saved_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class PromptEvent(Base):
    __tablename__ = "prompt_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    z: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))                         # point | box
    cls: Mapped[int] = mapped_column(Integer)                            # 1 normal, 2 tumor, 0 union
    x: Mapped[float] = mapped_column(Float)                              # slice pixels
    y: Mapped[float] = mapped_column(Float)
    x2: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    y2: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    positive: Mapped[bool] = mapped_column(Boolean, default=True)
    acquisition_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    model: Mapped[str] = mapped_column(String(64), default="")
    checkpoint_hash: Mapped[str] = mapped_column(String(64), default="")
    t: Mapped[datetime] = mapped_column(TS, default=utcnow)


class ModelOutput(Base):
    __tablename__ = "model_outputs"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[Optional[int]] = mapped_column(ForeignKey("assignments.id"), nullable=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    z: Mapped[int] = mapped_column(Integer)
    arm: Mapped[str] = mapped_column(String(16))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    inference_ms: Mapped[float] = mapped_column(Float, default=0.0)
    model: Mapped[str] = mapped_column(String(64), default="")
    checkpoint_hash: Mapped[str] = mapped_column(String(64), default="")
    t: Mapped[datetime] = mapped_column(TS, default=utcnow)


class ActivityEvent(Base):
    __tablename__ = "activity_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    session_id: Mapped[Optional[int]] = mapped_column(ForeignKey("annotation_sessions.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))   # open|save|heartbeat|hidden|visible|prompt|submit
    active: Mapped[bool] = mapped_column(Boolean, default=True)          # counts as user activity
    z: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    t: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (UniqueConstraint("assignment_id", "revision"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    assignment_id: Mapped[Optional[int]] = mapped_column(ForeignKey("assignments.id"), nullable=True)
    clinician_id: Mapped[Optional[int]] = mapped_column(ForeignKey("clinicians.id"), nullable=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    group: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    arm: Mapped[str] = mapped_column(String(16))                         # manual|usam|usam_p|usam_b|ai_edit
    revision: Mapped[int] = mapped_column(Integer, default=1)
    data: Mapped[bytes] = mapped_column(LargeBinary)                     # zlib of uint8 (n, h, w) over start..end
    shape: Mapped[list] = mapped_column(JSON)
    active_s: Mapped[float] = mapped_column(Float, default=0.0)
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_s: Mapped[float] = mapped_column(Float, default=0.0)
    inference_s: Mapped[float] = mapped_column(Float, default=0.0)
    scores: Mapped[dict] = mapped_column(JSON)                           # case_metrics output, JSON-safe
    gt_sha256: Mapped[str] = mapped_column(String(64))
    submitted_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    t: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)
    actor_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)   # never passwords or tokens


APPEND_ONLY = (Submission, AuditLog)


@event.listens_for(Session, "before_flush")
def _append_only(session: Session, _ctx, _instances) -> None:
    """Refuse updates and deletes of submissions and audit rows: a revision is a new row."""
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, APPEND_ONLY) and (obj in session.deleted or session.is_modified(obj)):
            raise PermissionError(f"{type(obj).__name__} rows are append-only")
