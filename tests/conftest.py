"""Session-wide test set-up.

Gradio's file cache (GRADIO_TEMP_DIR, default /tmp/gradio) is content-addressed and shared by
every Gradio app that uses the same folder, and an app deletes every file it created when it
shuts down. A test run gets its own folder so that apps of other processes on the machine
(another test run, a developer's server) cannot delete images our test apps are serving, and
ours cannot delete theirs. (Apps inside one test process: see
tests/reliability/helpers.py::for_tests; app subprocesses get their own folder from server_env.)
"""
from __future__ import annotations

import os
import shutil
import tempfile

if not os.environ.get("GRADIO_TEMP_DIR"):
    _OWN_GRADIO_TMP = tempfile.mkdtemp(prefix="usam_tests_gradio_")
    os.environ["GRADIO_TEMP_DIR"] = _OWN_GRADIO_TMP
else:
    _OWN_GRADIO_TMP = None


def pytest_unconfigure(config) -> None:
    if _OWN_GRADIO_TMP:
        shutil.rmtree(_OWN_GRADIO_TMP, ignore_errors=True)
