"""Shared set-up of the reliability tests: a tiny study database, the app as a subprocess on
127.0.0.1, gradio_client helpers for the study tab and database snapshots."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "admin-password-123"
STUDY_CODE = "SOAK1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cheap_argon2() -> None:
    """Cheap argon2 in this process (tests only); the server subprocess keeps its own setting."""
    from argon2 import PasswordHasher

    from study import auth

    auth._HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def make_study_db(url: str, cohort: Path, group_sizes=(15, 14, 17), k: int = 3, arms=("manual",),
                  seed: int = 7) -> int:
    """Migrate `url`, create a study (code STUDY_CODE) with the cohort's cases and an admin."""
    from study import ops
    from study.db import Database

    db = Database(url)
    db.migrate()
    with db.session() as s:
        st = ops.create_study(s, "reliability", code=STUDY_CODE, k=k, group_sizes=list(group_sizes),
                              arms=list(arms), seed=seed)
        ops.import_cases(s, st, cohort)
        ops.add_clinician(s, "admin", ADMIN_PASSWORD, role="admin")
        sid = st.id
    db.dispose()
    return sid


def for_tests(demo):
    """An app built in the test process, before launch: no shutdown clean-up of Gradio's cache.

    Apps in one process share its Gradio cache (GRADIO_TEMP_DIR is read per request), the cache
    is content-addressed (the same blank layer or slice image is one file for every app), and an
    app deletes every file it created when it shuts down. A closing test app (its shutdown can
    outlast Blocks.close()'s 5 s join on a loaded machine) deleted images another live test app
    had just handed out: 403 on download. The app's own set-up is otherwise unchanged; the test
    session's cache folder is removed at the end (tests/conftest.py)."""
    demo.delete_cache = None
    return demo


def server_env(db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of an app subprocess: this study database and data folder, its own Gradio cache."""
    env = dict(os.environ)
    env.update(USAM_STUDY_DB=db_url, USAM_STUDY_DATA=str(data_dir), USAM_STUDY_WARMUP="0",
               GRADIO_TEMP_DIR=str(Path(data_dir) / "gradio_cache"),
               USAM_STUDY_DEMO_SIZE="small", GRADIO_ANALYTICS_ENABLED="False", USAM_DEVICE="cpu",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra)
    return env


class AppProcess:
    """`python app.py` on 127.0.0.1:port as a subprocess (log captured to a file)."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=str(ROOT), env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 240.0) -> "AppProcess":
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=5) as r:
                    if r.status == 200:
                        return self
            except Exception:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"app not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        """SIGKILL, no clean-up: a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()


@contextlib.contextmanager
def running_app(env: dict[str, str], log_path: Path) -> Iterator[AppProcess]:
    app = AppProcess(env, log_path)
    try:
        yield app.wait_ready()
    finally:
        app.stop()


# Per-request limits of the test clients: httpx's default 5 s (gradio_client's file uploads and
# downloads use it) fails requests that are merely queued on a loaded 2-core machine; a browser
# waits too. A server that makes no progress is still caught by these limits and the tests' caps.
HTTP_TIMEOUT_S = float(os.environ.get("USAM_TEST_HTTP_TIMEOUT", "300"))


def client(url: str, downloads: Path | None = None):
    """gradio_client.Client that downloads output files like a browser (into `downloads` if given)."""
    import httpx
    from gradio_client import Client

    kw = {"download_files": str(downloads)} if downloads else {}
    return Client(url, verbose=False, analytics_enabled=False,
                  httpx_kwargs={"timeout": httpx.Timeout(HTTP_TIMEOUT_S, connect=60.0)}, **kw)


def val(v):
    """A component value, also when the server sent a gr.update(...) dict."""
    return v.get("value") if isinstance(v, dict) and v.get("__type__") == "update" else v


def mask_text(labels: np.ndarray) -> str:
    """The study page's mask text of a label map (what the contouring tool sends)."""
    from study.masks import encode_labels

    return encode_labels(labels)


def shown_labels(payload: dict) -> np.ndarray:
    """The label map the contouring tool shows for a payload (the stored mask; zeros when none)."""
    from study.masks import decode_labels

    if not payload.get("mask"):
        return np.zeros((payload["h"], payload["w"]), np.uint8)
    return decode_labels(payload["mask"], (payload["h"], payload["w"]))


def table_snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every study table (sorted), for before/after comparisons."""
    from sqlalchemy import create_engine, inspect, text

    eng = create_engine(url)
    out = {}
    try:
        with eng.connect() as c:
            for t in sorted(inspect(eng).get_table_names()):
                if t == "alembic_version":
                    continue
                rows = c.execute(text(f'SELECT * FROM "{t}"')).fetchall()
                out[t] = sorted((tuple(repr(v) for v in r) for r in rows))
    finally:
        eng.dispose()
    return out
