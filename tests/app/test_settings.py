"""The app's settings: read once, at start-up, by app.settings.parse_config (issue 14, Configuration)."""
from __future__ import annotations

import ast
from pathlib import Path

from app.settings import parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_spaces_listen_on_all_interfaces_unless_told_otherwise():
    assert parse_config([], {}).host == "127.0.0.1"
    assert parse_config([], {"SPACE_ID": "user/space"}).host == "0.0.0.0"
    assert parse_config([], {"SPACE_ID": "user/space", "USAM_HOST": "10.0.0.2"}).host == "10.0.0.2"
    assert parse_config(["--host", "127.0.0.1"], {"SPACE_ID": "user/space"}).host == "127.0.0.1"


def _environment_reads(path: Path) -> list[int]:
    """Lines of `path` that read the process environment (os.environ[...] / .get / `in`, os.getenv);
    os.environ.setdefault (a default written before gradio is imported) is not a read."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        is_environ = (isinstance(node, ast.Attribute) and node.attr == "environ"
                      and isinstance(node.value, ast.Name) and node.value.id == "os")
        is_getenv = isinstance(node, ast.Attribute) and node.attr == "getenv"
        if is_getenv:
            lines.append(node.lineno)
        elif is_environ:
            up = parents.get(node)
            if isinstance(up, ast.Attribute) and up.attr == "setdefault":
                continue
            lines.append(node.lineno)
    return lines


def test_only_parse_config_reads_the_environment():
    files = [ROOT / "app.py", *sorted((ROOT / "app").rglob("*.py"))]
    # not yet folded in: app/study_tab.py (the study service's settings) and app/security.py
    # (USAM_TRUSTED_PROXIES, USAM_COOKIE_SAMESITE, USAM_EXPORT_KEEP_S), each with its own owner
    later = {"study_tab.py", "security.py"}
    reads = {str(f.relative_to(ROOT)): _environment_reads(f) for f in files if f.name not in later}
    reads = {k: v for k, v in reads.items() if v}
    assert set(reads) == {"app/settings.py"}, reads
    assert len(reads["app/settings.py"]) == 1   # parse_config: `os.environ if environ is None else environ`
