"""Database connection: the settings' URL (SQLite by default), sessions and migrations."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from study.settings import StudySettings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers go on while one clinician's save writes; busy_timeout makes concurrent
    # writers wait instead of failing with "database is locked".
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    """Engine for an SQLAlchemy URL; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        if url not in ("sqlite://", "sqlite:///:memory:"):
            Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    """One database: engine + session factory; `session()` is a commit-or-rollback scope."""

    def __init__(self, url: str | None = None, settings: StudySettings | None = None):
        self.settings = settings or StudySettings()   # what ops / the service read (session length, demo set-up)
        self.url = url or self.settings.database_url()
        self.engine = make_engine(self.url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        """Whether the backend is SQLite (backups use its backup API)."""
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Transaction scope: commit on success, roll back on any error (no partial writes)."""
        s = self._factory()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        from alembic import command

        command.upgrade(alembic_config(self), "head")

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def alembic_config(database: Database):
    """Programmatic Alembic config (no alembic.ini needed) bound to this database's engine."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    cfg.attributes["engine"] = database.engine
    return cfg


_DEFAULT: dict[str, Database] = {}


def get_database(url: str | None = None, migrate: bool = True, settings: StudySettings | None = None) -> Database:
    """Shared Database for a URL (default: the settings' URL), migrated on first use."""
    settings = settings or StudySettings()
    url = url or settings.database_url()
    if url not in _DEFAULT:
        db = Database(url, settings)
        if migrate:
            db.migrate()
        _DEFAULT[url] = db
    return _DEFAULT[url]
