"""The real app's Blocks launched in this process on 127.0.0.1 with a fake predictor and an
injected study service (cheap: no model load, no subprocess), for API-level tests."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from tests.reliability.helpers import for_tests, free_port


@contextlib.contextmanager
def launched_app(db_url: str, data_dir: Path, max_file_size: str | None = None,
                 export_keep_s: float | None = None) -> Iterator[tuple[str, object, object]]:
    """Yield (url, blocks, study service) of the full app (all tabs) on a free loopback port, launched
    with the app's own launch_kwargs (max_file_size may be lowered to test the limit cheaply); the
    study's data folder (exports) is `data_dir`, and exports stay `export_keep_s` after delivery."""
    import dataclasses

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.main import build_app, launch_kwargs
    from study.cases import CaseCache
    from study.db import Database
    from study.service import StudyService
    from study.settings import StudySettings
    from tests.app.conftest import FakeContext

    ctx = FakeContext()
    if export_keep_s is not None:
        ctx.config = dataclasses.replace(ctx.config, export_keep_s=export_keep_s)
    db = Database(db_url, settings=StudySettings(data_dir=data_dir, warmup="0"))
    ctx.study_service = StudyService(db, cache=CaseCache(), session_factory=ctx.new_session,
                                     model_name="fake", checkpoint_hash="f" * 64)
    demo = for_tests(build_app(ctx))
    demo.queue(default_concurrency_limit=4)
    port = free_port()
    ctx.config.host, ctx.config.port = "127.0.0.1", port
    kw = launch_kwargs(ctx)
    kw.update(prevent_thread_lock=True, quiet=True)
    if max_file_size:
        kw["max_file_size"] = max_file_size
    demo.launch(**kw)
    try:
        yield f"http://127.0.0.1:{port}/", demo, ctx.study_service
    finally:
        demo.close()
        db.dispose()


@contextlib.contextmanager
def launched_small_study_app(tmp: Path, max_file_size: str | None = None) -> Iterator[tuple[str, str]]:
    """launched_app on a fresh small study in `tmp` (3 phantom cases, one reader slot per group);
    yields (app url, database url)."""
    from tests.reliability.helpers import cheap_argon2, make_study_db
    from tests.study.conftest import write_tiny_cohort

    cheap_argon2()
    db_url = f"sqlite:///{tmp / 'study.db'}"
    make_study_db(db_url, write_tiny_cohort(tmp / "cohort", 3), group_sizes=(1, 1, 1), k=1)
    with launched_app(db_url, tmp / "data", max_file_size=max_file_size) as (app_url, _demo, _svc):
        yield app_url, db_url
