"""A throwaway PostgreSQL cluster for tests: initdb into a temp folder, start on 127.0.0.1 with a
free port and a private socket folder, create a database, stop and delete everything afterwards.

Uses Debian's server binaries (/usr/lib/postgresql/<v>/bin; .ci/run installs the `postgresql`
package when they are missing). The tests run as root, which PostgreSQL refuses, so the server
runs as the `postgres` system user (runuser/su) when we are root.

    with throwaway_postgres() as url:        # postgresql+psycopg://postgres@127.0.0.1:PORT/usam_test
        ...

`pg_or_fail()` is what a test calls: it skips when PostgreSQL is unavailable on a developer's
machine but FAILS with the reason in CI (CI=true), so a broken set-up is never a silent skip.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries are missing or the cluster could not be started."""


def pg_bin() -> Path:
    """Folder of the newest installed PostgreSQL server binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        raise PostgresUnavailable("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); "
                                  "install Debian's `postgresql` package (.ci/run does).")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """Run a command as the postgres user when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    import shlex

    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(shlex.quote(c) for c in cmd)]


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise PostgresUnavailable(f"{' '.join(cmd[:2])} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return p


@contextlib.contextmanager
def throwaway_postgres(dbname: str = "usam_test") -> Iterator[str]:
    """Start a private cluster; yield an SQLAlchemy URL; stop and delete the cluster on exit."""
    bindir = pg_bin()
    root = Path(tempfile.mkdtemp(prefix="usam_pg_"))
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = _free_port()
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--no-sync", "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C"])
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c max_connections=200 "
                f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB")
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w",
              "-t", "60", "start"])
        started = True
        _run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", dbname])
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{dbname}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10).stdout.lower()
    except Exception:
        return False
    return "c.utf8" in out or "c.utf-8" in out


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip on a developer machine, fail in CI (never a silent skip there)."""
    import pytest

    if in_ci():
        pytest.fail(f"PostgreSQL is required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@contextlib.contextmanager
def pg_or_fail(dbname: str = "usam_test") -> Iterator[str]:
    """throwaway_postgres() for a test: skip locally / fail in CI when it cannot start."""
    try:
        cm = throwaway_postgres(dbname)
        url = cm.__enter__()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
        return
    try:
        yield url
    except BaseException:
        if not cm.__exit__(*__import__("sys").exc_info()):
            raise
    else:
        cm.__exit__(None, None, None)


def wait_ready(url: str, timeout: float = 30.0) -> None:
    """Poll until a connection succeeds."""
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    t0 = time.monotonic()
    try:
        while True:
            try:
                with eng.connect() as c:
                    c.execute(text("select 1"))
                return
            except Exception:
                if time.monotonic() - t0 > timeout:
                    raise
                time.sleep(0.3)
    finally:
        eng.dispose()
